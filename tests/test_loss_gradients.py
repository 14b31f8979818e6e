"""fdpg_loss gives ∇_θ D_f(π_θ‖p): exactly when every outcome is a "sample" with IS weights, and
within Monte-Carlo error with sampled outcomes (on- and off-policy). Plus the error contract."""
import math

import pytest
import torch

from fdpg_core.divergences import DIVERGENCES, Divergence, alpha_divergence, exact_divergence
from fdpg_core.losses import fdpg_loss, pseudo_reward

D64 = torch.float64
S = 30  # outcomes of the softmax policy
ALL = [DIVERGENCES[k] for k in DIVERGENCES] + [alpha_divergence(a) for a in (-1.0, 0.5, 2.0)]
IDS = [d.name for d in ALL]


def _setup(seed=0):
    """Policy logits θ (S,), unnormalised target log P with Z = e^{3.7}·Σ softmax ≠ 1, true log Z."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(S, dtype=D64, generator=gen)
    log_P = 1.5 * torch.randn(S, dtype=D64, generator=gen) + 3.7
    log_Z = torch.logsumexp(log_P, 0)
    assert abs(log_Z.item()) > 1.0
    return logits, log_P, log_Z


def _exact_grad(div, logits, log_P, log_Z):
    th = logits.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(exact_divergence(div, torch.log_softmax(th, 0), log_P - log_Z), th)
    return g


def _loss_grad_all_outcomes(div, logits, log_P, log_Z, baseline=0.0):
    """Every outcome once, q uniform: mean_x (π/q) f′ ∇log π = Σ_x π f′ ∇log π exactly."""
    th = logits.clone().requires_grad_(True)
    log_pi = torch.log_softmax(th, 0)                                   # (S,)
    log_q = torch.full((S,), -math.log(S), dtype=D64)
    (g,) = torch.autograd.grad(fdpg_loss(log_pi, log_P, log_Z, div, log_q=log_q, baseline=baseline), th)
    return g


@pytest.mark.parametrize("div", ALL, ids=IDS)
def test_exact_weights_give_exact_gradient(div):
    logits, log_P, log_Z = _setup()
    g_exact = _exact_grad(div, logits, log_P, log_Z)
    g_loss = _loss_grad_all_outcomes(div, logits, log_P, log_Z)
    assert g_exact.norm() > 1e-3
    torch.testing.assert_close(g_loss, g_exact, rtol=1e-6, atol=1e-10)
    # log_Z as a float, a 0-d tensor and a (B,) tensor are the same thing
    torch.testing.assert_close(_loss_grad_all_outcomes(div, logits, log_P, float(log_Z)), g_loss)
    torch.testing.assert_close(_loss_grad_all_outcomes(div, logits, log_P, log_Z.expand(S).clone()), g_loss)


@pytest.mark.parametrize("div", ALL, ids=IDS)
def test_constant_baseline_leaves_gradient_unchanged(div):
    """Σ_x π ∇log π = 0, so subtracting any constant from f′ changes nothing (up to rounding)."""
    logits, log_P, log_Z = _setup(1)
    g0 = _loss_grad_all_outcomes(div, logits, log_P, log_Z)
    for b in (0.7, -3.0, torch.tensor(12.5, dtype=D64)):
        torch.testing.assert_close(_loss_grad_all_outcomes(div, logits, log_P, log_Z, baseline=b), g0,
                                   rtol=1e-6, atol=1e-10)


def test_alpha_limits_give_kl_and_rkl_gradients():
    """α = 0 / 1 have f′ shifted by a constant from kl / rkl: same f-DPG gradient."""
    logits, log_P, log_Z = _setup(2)
    for a, key in ((0.0, "kl"), (1.0, "rkl")):
        torch.testing.assert_close(_loss_grad_all_outcomes(alpha_divergence(a), logits, log_P, log_Z),
                                   _loss_grad_all_outcomes(key, logits, log_P, log_Z), rtol=1e-6, atol=1e-10)


def test_per_context_log_Z():
    """Two contexts, one Ẑ per row: the loss gradient is ∇ of the mean over contexts of D_f(π_c‖p_c)."""
    (l1, P1, Z1), (l2, P2, Z2) = _setup(3), _setup(4)
    th = torch.stack([l1, l2]).requires_grad_(True)                     # (C=2, S)
    log_pi = torch.log_softmax(th, -1)
    log_Z_rows = torch.cat([Z1.expand(S), Z2.expand(S)])                # (B = C·S,)
    log_q = torch.full((2 * S,), -math.log(S), dtype=D64)
    loss = fdpg_loss(log_pi.reshape(-1), torch.cat([P1, P2]), log_Z_rows, "js", log_q=log_q)
    (g_loss,) = torch.autograd.grad(loss, th)
    th2 = th.detach().clone().requires_grad_(True)
    log_p = torch.stack([P1 - Z1, P2 - Z2])
    (g_exact,) = torch.autograd.grad(exact_divergence("js", torch.log_softmax(th2, -1), log_p).mean(), th2)
    torch.testing.assert_close(g_loss, g_exact, rtol=1e-6, atol=1e-10)


def _pop_moments(div, logits, log_P, log_Z, log_q_all):
    """Exact mean and variance (per logit) of one per-sample contribution c(x) = w(x) f′(x) (e_x − π), x ~ q."""
    pi = torch.softmax(logits, 0)
    log_pi = torch.log(pi)
    w = torch.exp(log_pi - log_q_all)                                   # (S,) π/q
    fp = div.f_prime(log_pi - (log_P - log_Z))                          # (S,)
    c = (w * fp)[:, None] * (torch.eye(S, dtype=D64) - pi[None, :])     # (S outcomes, S logits)
    q = torch.exp(log_q_all)
    mean = (q[:, None] * c).sum(0)
    var = (q[:, None] * c ** 2).sum(0) - mean ** 2
    return mean, var


@pytest.mark.parametrize("policy", ["on", "off"])
@pytest.mark.parametrize("div", ALL, ids=IDS)
def test_sampled_gradient_within_monte_carlo_error(div, policy):
    """N = 300k samples: each logit's gradient is a mean of N i.i.d. contributions c(x_i), whose exact
    variance under q we compute over the 30 outcomes; we allow 5 standard errors (two-sided chance
    ≈ 6e-7 per logit, and the seed is fixed). We also check that this tolerance is tight: ‖5 SE‖ <
    ¼‖∇D‖, while a flipped sign errs by 2‖∇D‖ and a factor 2 in f′ or w by ‖∇D‖, so neither could pass."""
    N = 300_000
    logits, log_P, log_Z = _setup(5)
    gen = torch.Generator().manual_seed(6)
    if policy == "on":
        log_q_all = torch.log_softmax(logits, 0)
    else:  # a different proposal, mixed with uniform so π/q is bounded
        other = torch.softmax(torch.randn(S, dtype=D64, generator=gen), 0)
        log_q_all = torch.log(0.5 * other + 0.5 / S)
    x = torch.multinomial(torch.exp(log_q_all), N, replacement=True, generator=gen)  # (N,)
    th = logits.clone().requires_grad_(True)
    log_pi = torch.log_softmax(th, 0)[x]                               # (N,)
    loss = fdpg_loss(log_pi, log_P[x], log_Z, div, log_q=None if policy == "on" else log_q_all[x])
    (g_mc,) = torch.autograd.grad(loss, th)
    g_exact = _exact_grad(div, logits, log_P, log_Z)
    mean, var = _pop_moments(div, logits, log_P, log_Z, log_q_all)
    torch.testing.assert_close(mean, g_exact, rtol=1e-6, atol=1e-10)    # the estimator is unbiased
    se = torch.sqrt(var / N)
    assert (5 * se).norm() < 0.25 * g_exact.norm(), "test has too little power at this N"
    assert ((g_mc - g_exact).abs() <= 5 * se + 1e-12).all(), ((g_mc - g_exact).abs() / se).max()


def test_wrong_sign_or_direction_would_fail():
    """The equality tests above are not vacuous: a flipped f′, or kl and rkl swapped, gives other gradients."""
    logits, log_P, log_Z = _setup(7)
    kl, rkl = DIVERGENCES["kl"], DIVERGENCES["rkl"]
    g_kl, g_rkl = _exact_grad(kl, logits, log_P, log_Z), _exact_grad(rkl, logits, log_P, log_Z)
    assert (g_kl - g_rkl).norm() > 0.1 * g_kl.norm()
    assert not torch.allclose(_loss_grad_all_outcomes("rkl", logits, log_P, log_Z), g_kl, rtol=1e-3)
    for div in ALL:
        flipped = Divergence(div.name, div.direction, div.f, lambda s, fp=div.f_prime: -fp(s), div.f_inf)
        g = _exact_grad(div, logits, log_P, log_Z)
        assert not torch.allclose(_loss_grad_all_outcomes(flipped, logits, log_P, log_Z), g, rtol=1e-3), div.name
    # direction: kl's loss gradient equals the gradient of Σ p log(p/π) written out by hand
    th = logits.clone().requires_grad_(True)
    p = torch.exp(log_P - log_Z)
    (g_hand,) = torch.autograd.grad((p * (torch.log(p) - torch.log_softmax(th, 0))).sum(), th)
    torch.testing.assert_close(_loss_grad_all_outcomes("kl", logits, log_P, log_Z), g_hand, rtol=1e-6, atol=1e-10)
    th = logits.clone().requires_grad_(True)
    pi = torch.softmax(th, 0)
    (g_hand,) = torch.autograd.grad((pi * (torch.log(pi) - (log_P - log_Z))).sum(), th)
    torch.testing.assert_close(_loss_grad_all_outcomes("rkl", logits, log_P, log_Z), g_hand, rtol=1e-6, atol=1e-10)


@pytest.mark.parametrize("div", ALL, ids=IDS)
def test_gradient_descent_on_the_loss_decreases_the_divergence(div):
    """Small normalised steps θ ← θ − η ∇L/‖∇L‖ decrease D_f at every step (a flipped f′ would ascend)."""
    logits, log_P, log_Z = _setup(8)
    th = logits.clone().requires_grad_(True)
    log_q = torch.full((S,), -math.log(S), dtype=D64)
    log_p = log_P - log_Z
    values = []
    for _ in range(15):
        log_pi = torch.log_softmax(th, 0)
        values.append(exact_divergence(div, log_pi.detach(), log_p).item())
        (g,) = torch.autograd.grad(fdpg_loss(log_pi, log_P, log_Z, div, log_q=log_q), th)
        with torch.no_grad():
            th -= 0.05 * g / g.norm()
    assert all(b < a for a, b in zip(values, values[1:])), (div.name, values)
    assert values[-1] < 0.95 * values[0], (div.name, values[0], values[-1])


def test_pseudo_reward_values():
    logits, log_P, log_Z = _setup(9)
    log_pi = torch.log_softmax(logits, 0)
    log_t = log_pi - (log_P - log_Z)
    r = pseudo_reward(log_pi.requires_grad_(True), log_P, log_Z, "kl")
    assert not r.requires_grad and r.shape == (S,)
    torch.testing.assert_close(r, torch.exp(-log_t))                    # kl: R = p/π
    torch.testing.assert_close(pseudo_reward(log_pi, log_P, log_Z, "js"),
                               -0.5 * torch.log(2 * torch.exp(log_t) / (1 + torch.exp(log_t))))
    # rkl on p ∝ a·exp(r/β): β·R = r − β log(π/a) − β(log Z + 1), the KL-regularised RL reward
    gen = torch.Generator().manual_seed(10)
    log_a = torch.log_softmax(torch.randn(S, dtype=D64, generator=gen), 0)
    reward, beta = torch.randn(S, dtype=D64, generator=gen), 0.3
    log_P_rl = log_a + reward / beta
    log_Z_rl = torch.logsumexp(log_P_rl, 0)
    R = pseudo_reward(log_pi.detach(), log_P_rl, log_Z_rl, "rkl")
    torch.testing.assert_close(beta * R, reward - beta * (log_pi.detach() - log_a) - beta * (log_Z_rl + 1))


def test_minus_inf_target_is_finite_for_kl_js_tv_and_an_error_for_rkl():
    logits, log_P, log_Z = _setup(11)
    log_P = log_P.clone()
    log_P[:5] = -math.inf                                               # b(x) = 0 for the first outcomes
    log_Z = torch.logsumexp(log_P, 0)
    log_pi = torch.log_softmax(logits, 0)
    for key in ("kl", "js", "tv", "chi2", "hellinger"):
        loss = fdpg_loss(log_pi, log_P, log_Z, key)
        assert torch.isfinite(loss), key
        R = pseudo_reward(log_pi, log_P, log_Z, key)
        assert (R[:5] == -DIVERGENCES[key].f_inf).all(), key           # f′(∞) = f_inf
    assert pseudo_reward(log_pi, log_P, log_Z, "js")[0].item() == pytest.approx(-0.5 * math.log(2), rel=1e-15)
    # the exact-weight gradient is still exact with zeros in P (π mass outside supp p costs f_inf)
    for key in ("kl", "js", "tv"):
        torch.testing.assert_close(_loss_grad_all_outcomes(key, logits, log_P, log_Z),
                                   _exact_grad(key, logits, log_P, log_Z), rtol=1e-6, atol=1e-10)
    for key in ("rkl", "rchi2"):
        with pytest.raises(ValueError, match=r"(?s)non-finite pseudo-reward.*floor on log b"):
            fdpg_loss(log_pi, log_P, log_Z, key)
    with pytest.raises(ValueError, match="non-finite"):
        fdpg_loss(log_pi, log_P * math.nan, log_Z, "kl")


def test_errors():
    logits, log_P, log_Z = _setup(12)
    log_pi = torch.log_softmax(logits, 0)
    with pytest.raises(ValueError, match=r"'reverse_kl'.*allowed keys.*'js'.*'kl'.*'rkl'.*'tv'"):
        fdpg_loss(log_pi, log_P, log_Z, "reverse_kl")
    with pytest.raises(ValueError, match="same shape"):
        fdpg_loss(log_pi, log_P[:-1], log_Z, "kl")
    with pytest.raises(ValueError, match="log_q"):
        fdpg_loss(log_pi, log_P, log_Z, "kl", log_q=log_pi[:-1])
    with pytest.raises(ValueError, match="log_Z"):
        fdpg_loss(log_pi, log_P, torch.zeros(3, dtype=D64), "kl")
    with pytest.raises(ValueError, match="log_Z"):
        fdpg_loss(log_pi, log_P, -math.inf, "kl")
    with pytest.raises(ValueError, match="baseline"):
        fdpg_loss(log_pi, log_P, log_Z, "kl", baseline=torch.zeros(2, dtype=D64))
    with pytest.raises(ValueError, match="log_pi"):
        fdpg_loss(log_pi[0], log_P[0], log_Z, "kl")                      # 0-d: not a batch
