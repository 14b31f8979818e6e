"""The divergence table: f(1) = 0, f′ = df/dt, limits at t = 0 and t = ∞, and exact_divergence
against closed forms written directly in p and π (independent of the f's in the table)."""
import math

import pytest
import torch

from fdpg_core.divergences import DIVERGENCES, Divergence, alpha_divergence, exact_divergence, get_divergence

D64 = torch.float64
INF = math.inf
ALPHAS = (-1.0, 0.5, 2.0)
ALL = [DIVERGENCES[k] for k in DIVERGENCES] + [alpha_divergence(a) for a in ALPHAS]
IDS = [d.name for d in ALL]

# f(0) = f(log_t = −inf) and f_inf = lim f(t)/t = f′(∞), derived by hand from f.
F_ZERO = {"kl": INF, "rkl": 0.0, "js": 0.5 * math.log(2), "tv": 0.5, "chi2": INF, "rchi2": 1.0, "hellinger": 0.5,
          "alpha=-1.0": INF, "alpha=0.5": 2.0, "alpha=2.0": 0.5}
F_INF = {"kl": 0.0, "rkl": INF, "js": 0.5 * math.log(2), "tv": 0.5, "chi2": 1.0, "rchi2": INF, "hellinger": 0.5,
         "alpha=-1.0": 0.5, "alpha=0.5": 2.0, "alpha=2.0": INF}


def _xlogy(x, y):
    """x log y with 0 log(anything) = 0."""
    return torch.where(x > 0, x * torch.log(torch.where(x > 0, y, torch.ones_like(y))), torch.zeros_like(x))


def _ratio_sq(num, den):
    """num²/den with 0/0 = 0 and num²/0 = inf."""
    return torch.where((num == 0) & (den == 0), torch.zeros_like(num), num ** 2 / den)


def closed_form(name, pi, p):
    """Independent closed forms in terms of the probabilities pi, p (..., S), reduced over S."""
    if name == "kl":
        return _xlogy(p, p / pi).sum(-1)
    if name == "rkl":
        return _xlogy(pi, pi / p).sum(-1)
    if name == "js":
        m = 0.5 * (pi + p)
        return (0.5 * _xlogy(pi, pi / m) + 0.5 * _xlogy(p, p / m)).sum(-1)
    if name == "tv":
        return 0.5 * (pi - p).abs().sum(-1)
    if name == "chi2":
        return _ratio_sq(p - pi, pi).sum(-1)
    if name == "rchi2":
        return _ratio_sq(pi - p, p).sum(-1)
    if name == "hellinger":
        return 0.5 * ((pi.sqrt() - p.sqrt()) ** 2).sum(-1)
    if name.startswith("alpha="):
        a = float(name[len("alpha="):])
        both_zero = (pi == 0) & (p == 0)
        prod = torch.where(both_zero, torch.zeros_like(p), pi ** a * p ** (1 - a))  # 0^neg = inf
        return (prod.sum(-1) - 1.0) / (a * (a - 1.0))
    raise KeyError(name)


def _dirichlet(gen, shape, conc=1.0):
    g = torch._standard_gamma(torch.full(shape, conc, dtype=D64), generator=gen)
    return g / g.sum(-1, keepdim=True)


def _pair(seed, shape=(4, 9), zeros=False):
    gen = torch.Generator().manual_seed(seed)
    pi, p = _dirichlet(gen, shape), _dirichlet(gen, shape)
    if zeros:  # zeros only in p, only in π, in both; every row keeps some mass in both
        p[..., 0] = 0.0
        pi[..., 1] = 0.0
        p[..., 2] = 0.0
        pi[..., 2] = 0.0
        pi, p = pi / pi.sum(-1, keepdim=True), p / p.sum(-1, keepdim=True)
    return pi, p


@pytest.mark.parametrize("div", ALL, ids=IDS)
def test_f_vanishes_at_t_equal_1(div):
    zero = torch.zeros(3, dtype=D64)
    torch.testing.assert_close(div.f(zero), torch.zeros(3, dtype=D64), rtol=0, atol=1e-15)


@pytest.mark.parametrize("div", ALL, ids=IDS)
def test_f_prime_is_derivative_in_t(div):
    """f′(t) = d f(log t)/dt by autograd w.r.t. t (not log t): a missing 1/t factor or a sign fails."""
    gen = torch.Generator().manual_seed(1)
    t = torch.exp(torch.empty(50, dtype=D64).uniform_(-4, 4, generator=gen))
    t = t[(t - 1).abs() > 1e-3].requires_grad_(True)       # tv is not differentiable at t = 1
    (grad,) = torch.autograd.grad(div.f(torch.log(t)).sum(), t)
    torch.testing.assert_close(div.f_prime(torch.log(t.detach())), grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("div", ALL, ids=IDS)
def test_limits_at_zero_and_infinity(div):
    """f(−inf) = f(0), f′(+inf) = f_inf (convexity), and f(t)/t → f_inf numerically."""
    neg, pos = torch.tensor([-INF], dtype=D64), torch.tensor([INF], dtype=D64)
    assert div.f(neg).item() == F_ZERO[div.name]
    assert div.f_inf == F_INF[div.name]
    assert div.f_prime(pos).item() == div.f_inf
    assert div.f(pos).item() == INF if div.name != "kl" else div.f(pos).item() == -INF
    T = torch.tensor([1e12], dtype=D64)
    ratio = (div.f(T.log()) / T).item()
    if math.isfinite(div.f_inf):
        assert ratio == pytest.approx(div.f_inf, rel=1e-5, abs=1e-9)
    else:
        assert ratio > 10.0
    small = div.f(torch.tensor([math.log(1e-14)], dtype=D64)).item()
    if math.isfinite(F_ZERO[div.name]):
        assert small == pytest.approx(F_ZERO[div.name], rel=1e-5, abs=1e-6)
    else:
        assert small > 10.0


@pytest.mark.parametrize("zeros", [False, True], ids=["full-support", "with-zeros"])
@pytest.mark.parametrize("div", ALL, ids=IDS)
def test_exact_divergence_matches_closed_form(div, zeros):
    pi, p = _pair(seed=2 + zeros, zeros=zeros)
    got = exact_divergence(div, pi.log(), p.log())                     # (4,)
    want = closed_form(div.name, pi, p)
    assert got.shape == (4,)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
    if zeros:  # divergences that are infinite when one side has mass where the other has none
        finite = math.isfinite(F_ZERO[div.name]) and math.isfinite(F_INF[div.name])
        assert bool(torch.isfinite(got).all()) == finite


def test_exact_divergence_by_key_and_names_of_directions():
    pi, p = _pair(seed=4)
    # kl is KL(p‖π) (forward), rkl is KL(π‖p): swapping the arguments swaps the keys
    torch.testing.assert_close(exact_divergence("kl", pi.log(), p.log()), exact_divergence("rkl", p.log(), pi.log()))
    torch.testing.assert_close(exact_divergence("chi2", pi.log(), p.log()), exact_divergence("rchi2", p.log(), pi.log()))
    assert not torch.allclose(exact_divergence("kl", pi.log(), p.log()), exact_divergence("rkl", pi.log(), p.log()))
    assert "KL(p‖π)" in DIVERGENCES["kl"].direction and "KL(π‖p)" in DIVERGENCES["rkl"].direction


def test_alpha_special_cases():
    """α = −1: ½χ²(p‖π); α = 2: ½χ²(π‖p); α = ½: 4·hellinger; α → 0 / 1: kl / rkl (and continuity)."""
    for zeros in (False, True):
        pi, p = _pair(seed=5, zeros=zeros)
        lpi, lp = pi.log(), p.log()
        D = lambda d: exact_divergence(d, lpi, lp)  # noqa: E731
        torch.testing.assert_close(D(alpha_divergence(-1)), 0.5 * D("chi2"), rtol=1e-9, atol=0)
        torch.testing.assert_close(D(alpha_divergence(2)), 0.5 * D("rchi2"), rtol=1e-9, atol=0)
        torch.testing.assert_close(D(alpha_divergence(0.5)), 4.0 * D("hellinger"), rtol=1e-9, atol=0)
        torch.testing.assert_close(D(alpha_divergence(0)), D("kl"), rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(D(alpha_divergence(1)), D("rkl"), rtol=1e-9, atol=1e-12)
    pi, p = _pair(seed=6)
    lpi, lp = pi.log(), p.log()
    for eps in (1e-4, 1e-7):  # the stable forms approach the limits at rate O(α), no cancellation blow-up
        torch.testing.assert_close(exact_divergence(alpha_divergence(eps), lpi, lp), exact_divergence("kl", lpi, lp),
                                   rtol=100 * eps, atol=0)
        torch.testing.assert_close(exact_divergence(alpha_divergence(1 - eps), lpi, lp),
                                   exact_divergence("rkl", lpi, lp), rtol=100 * eps, atol=0)
    # a generic α against its closed form
    a = alpha_divergence(0.3)
    torch.testing.assert_close(exact_divergence(a, lpi, lp), closed_form("alpha=0.3", pi, p), rtol=1e-9, atol=0)


@pytest.mark.parametrize("div", ALL, ids=IDS)
def test_exact_divergence_gradient_is_finite(div):
    pi, p = _pair(seed=7)
    logits = pi.log().clone().requires_grad_(True)
    exact_divergence(div, torch.log_softmax(logits, -1), p.log()).sum().backward()
    assert torch.isfinite(logits.grad).all()
    # p with zeros but π of full support: the gradient stays finite where the value is finite
    _, pz = _pair(seed=7, zeros=True)
    logits.grad = None
    value = exact_divergence(div, torch.log_softmax(logits, -1), pz.log()).sum()
    value.backward()
    assert not torch.isnan(logits.grad).any()
    if torch.isfinite(value):
        assert torch.isfinite(logits.grad).all()


def test_exact_divergence_gradient_matches_closed_form_gradient():
    """Autograd through exact_divergence equals autograd through the closed forms (full support)."""
    pi, p = _pair(seed=8)
    for div in ALL:
        l1 = pi.log().clone().requires_grad_(True)
        l2 = pi.log().clone().requires_grad_(True)
        exact_divergence(div, torch.log_softmax(l1, -1), p.log()).sum().backward()
        closed_form(div.name, torch.softmax(l2, -1), p).sum().backward()
        torch.testing.assert_close(l1.grad, l2.grad, rtol=1e-8, atol=1e-12, msg=div.name)


def test_get_divergence_and_errors():
    assert get_divergence("js") is DIVERGENCES["js"]
    d = alpha_divergence(0.5)
    assert get_divergence(d) is d and isinstance(d, Divergence)
    with pytest.raises(ValueError, match="'jensen'.*allowed keys.*'js'.*'kl'.*'rkl'.*'tv'"):
        get_divergence("jensen")
    with pytest.raises(ValueError, match="allowed keys"):
        exact_divergence("KL", torch.zeros(1, dtype=D64), torch.zeros(1, dtype=D64))
    with pytest.raises(ValueError, match="alpha"):
        alpha_divergence(math.nan)
    pi, p = _pair(seed=9)
    with pytest.raises(ValueError, match="same shape"):
        exact_divergence("kl", pi.log(), p.log()[:, :5])
    with pytest.raises(ValueError, match="normalised"):
        exact_divergence("kl", pi.log() + 1.0, p.log())  # logits, not log-probabilities
    with pytest.raises(ValueError, match="NaN"):
        exact_divergence("kl", pi.log() * math.nan, p.log())
    with pytest.raises(dataclasses_frozen_error()):
        DIVERGENCES["kl"].f_inf = 1.0


def dataclasses_frozen_error():
    import dataclasses
    return dataclasses.FrozenInstanceError


def test_batch_reduction_and_disjoint_supports():
    """Reduces over the last dim only; disjoint supports give the textbook maxima."""
    pi = torch.tensor([[0.5, 0.5, 0.0, 0.0], [0.25, 0.25, 0.25, 0.25]], dtype=D64)
    p = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.25, 0.25, 0.25, 0.25]], dtype=D64)
    lpi, lp = pi.log(), p.log()
    expect = {"kl": INF, "rkl": INF, "js": math.log(2), "tv": 1.0, "chi2": INF, "rchi2": INF, "hellinger": 1.0}
    for k, v in expect.items():
        out = exact_divergence(k, lpi, lp)
        assert out.shape == (2,)
        assert out[0].item() == pytest.approx(v, rel=1e-12)
        assert out[1].item() == pytest.approx(0.0, abs=1e-15)
