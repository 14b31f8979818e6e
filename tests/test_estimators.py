"""Monte-Carlo estimators against closed forms on a 20-outcome categorical.

Tolerances: every estimate is compared with its exact value within 5 standard errors, where the
standard error is computed exactly over the support (population variance of the per-sample term
for plain means; the delta method, i.e. the gradient of the estimator w.r.t. the sample frequencies,
for the ratio estimators that use Ẑ). Each test also checks that 5 SE is small against the quantity,
so that a factor-2 or sign error (or a wrong direction kl ↔ rkl) could not pass."""
import math

import pytest
import torch

from fdpg_core.divergences import exact_divergence, get_divergence
from fdpg_core.estimators import ess, is_divergence, kl_pi_a, log_Z_hat, sequence_entropy

D64 = torch.float64
S, N = 20, 200_000


def _problem(seed=0, zeros_in_P=False):
    """Policy π, proposal q (full support), unnormalised log P with Z ≠ 1, original model a."""
    gen = torch.Generator().manual_seed(seed)
    rnd = lambda: torch.randn(S, dtype=D64, generator=gen)  # noqa: E731
    log_pi = torch.log_softmax(rnd(), 0)
    log_q = torch.log(0.5 * torch.softmax(rnd(), 0) + 0.5 / S)
    log_a = torch.log_softmax(2.0 * rnd(), 0)                            # peaked: KL(π‖a) ≠ KL(a‖π)
    log_P = 3.0 * rnd() + 2.0                                            # peaked: KL(p‖π) ≠ KL(π‖p)
    if zeros_in_P:
        log_P[:4] = -math.inf
    return log_pi, log_q, log_a, log_P, torch.logsumexp(log_P, 0), gen


def _draw(log_q, gen, n=N):
    return torch.multinomial(torch.exp(log_q), n, replacement=True, generator=gen)  # (n,)


def _delta_se(estimator_of_freq, log_q, n=N):
    """SE of T(ĉ) with ĉ the empirical frequencies of n draws from q: √(∇Tᵀ (diag q − q qᵀ) ∇T / n)."""
    q = torch.exp(log_q)
    c = q.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(estimator_of_freq(c), c)
    cov = torch.diag(q) - q[:, None] * q[None, :]
    return math.sqrt((g @ cov @ g).item() / n)


def test_log_Z_hat_hand_and_limits():
    log_P = torch.tensor([0.0, math.log(3.0)], dtype=D64)
    log_q = torch.log(torch.tensor([0.5, 0.5], dtype=D64))
    assert log_Z_hat(log_P, log_q).item() == pytest.approx(math.log(4.0), rel=1e-14)  # mean(2, 6) = 4
    assert log_Z_hat(torch.full((3,), -math.inf, dtype=D64), torch.zeros(3, dtype=D64)).item() == -math.inf
    assert math.isfinite(log_Z_hat(torch.full((3,), 800.0, dtype=D64), torch.zeros(3, dtype=D64)).item())
    with pytest.raises(ValueError, match="shape"):
        log_Z_hat(log_P, log_q[:1])


@pytest.mark.parametrize("zeros_in_P", [False, True])
def test_log_Z_hat_converges_to_log_Z(zeros_in_P):
    log_pi, log_q, _, log_P, log_Z, gen = _problem(1, zeros_in_P)
    x = _draw(log_q, gen)
    est = log_Z_hat(log_P[x], log_q[x]).item()
    se = _delta_se(lambda c: torch.log((c * torch.exp(log_P - log_q)).sum()), log_q)
    assert 5 * se < 0.1 * math.log(2)         # a factor 2 in Ẑ (log 2 in log Ẑ) is far outside
    assert abs(est - log_Z.item()) < 5 * se


def test_ess_hand_computed():
    L = lambda w: torch.log(torch.tensor(w, dtype=D64))  # noqa: E731
    assert ess(L([1.0, 1.0, 1.0, 1.0])).item() == pytest.approx(4.0, rel=1e-14)
    assert ess(L([1.0, 1.0, 1.0, 1.0]), fraction=True).item() == pytest.approx(1.0, rel=1e-14)
    assert ess(L([1.0, 0.0, 0.0, 0.0])).item() == pytest.approx(1.0, rel=1e-14)
    assert ess(L([1.0, 2.0, 3.0])).item() == pytest.approx(36.0 / 14.0, rel=1e-14)   # (1+2+3)²/(1+4+9)
    assert ess(L([1.0, 2.0, 3.0]), fraction=True).item() == pytest.approx(12.0 / 14.0, rel=1e-14)
    assert ess(L([1.0, 2.0, 3.0]) + 1000.0).item() == pytest.approx(36.0 / 14.0, rel=1e-12)  # no overflow
    assert ess(L([0.0, 0.0])).item() == 0.0
    # equal float32 log-weights: the log-space formula rounds to 1 + 5e-7 here; the fraction stays in (0, 1]
    assert ess(torch.full((64,), 0.3), fraction=True).item() == 1.0


@pytest.mark.parametrize("key", ["kl", "tv", "js"])
@pytest.mark.parametrize("zeros_in_P", [False, True])
def test_is_divergence_matches_exact(key, zeros_in_P):
    """Known log Z (plain mean, SE from the population variance) and estimated Ẑ (delta method)."""
    div = get_divergence(key)
    log_pi, log_q, _, log_P, log_Z, gen = _problem(2, zeros_in_P)
    log_p = log_P - log_Z
    exact = exact_divergence(key, log_pi, log_p).item()
    x = _draw(log_q, gen)

    def T(c, log_Z_of_c):
        """The estimator as a function of the sample frequencies c over the support (for the SE only)."""
        lz = log_Z_of_c(c)
        lp = log_P - lz
        p_pos = log_P > -math.inf
        lt = torch.where(p_pos, log_pi - lp, torch.zeros_like(lp))
        h = torch.where(p_pos, torch.exp(lp - log_q) * div.f(lt), torch.exp(log_pi - log_q) * div.f_inf)
        return (c * h).sum()

    known = is_divergence(key, log_pi[x], log_P[x], log_q[x], log_Z).item()
    se_known = _delta_se(lambda c: T(c, lambda _: log_Z), log_q)
    est_Z = lambda c: torch.log((c * torch.exp(log_P - log_q)).sum())  # noqa: E731
    hat = is_divergence(key, log_pi[x], log_P[x], log_q[x]).item()      # Ẑ from the same samples
    se_hat = _delta_se(lambda c: T(c, est_Z), log_q)
    for est, se in ((known, se_known), (hat, se_hat)):
        assert 5 * se < 0.1 * exact           # a factor 2 (e.g. JS/TV without the ½) cannot pass
        assert abs(est - exact) < 5 * se, (key, est, exact, se)
    if key == "kl":  # the direction: KL(p‖π), not KL(π‖p)
        assert abs(exact - exact_divergence("rkl", log_pi, log_p).item()) > 10 * se_known  # est within 5 SE of one only
        # and the paper's formula −log Ẑ + (1/Ẑ) mean (P/q)(log P − log π)
        lw = torch.where(log_P[x] > -math.inf, log_P[x] - log_q[x], torch.full_like(log_q[x], -math.inf))
        lz = log_Z_hat(log_P[x], log_q[x])
        terms = torch.where(lw > -math.inf, torch.exp(lw - lz) * (log_P[x] - log_pi[x]), torch.zeros_like(lw))
        assert hat == pytest.approx((terms.mean() - lz).item(), rel=1e-9)


def test_is_divergence_hand_example():
    """Two samples, known Z = 1: D = mean_i (p/q) f(π/p)."""
    log_pi = torch.log(torch.tensor([0.5, 0.25], dtype=D64))
    log_P = torch.log(torch.tensor([0.25, 0.25], dtype=D64))
    log_q = torch.log(torch.tensor([0.5, 0.5], dtype=D64))
    # tv: ½[(0.5)·½|2−1| + (0.5)·½|1−1|] = 0.125
    assert is_divergence("tv", log_pi, log_P, log_q, 0.0).item() == pytest.approx(0.125, rel=1e-14)
    # kl: ½[0.5·(−log 2) + 0] = −log(2)/4
    assert is_divergence("kl", log_pi, log_P, log_q, 0.0).item() == pytest.approx(-math.log(2) / 4, rel=1e-14)
    # a sample outside supp p costs (π/q)·f_inf: tv, π = 0.25, q = 0.5 -> 0.5·0.5 / 2 samples
    log_P0 = torch.tensor([-math.inf, -math.inf], dtype=D64)
    assert is_divergence("tv", log_pi, log_P0, log_q, 0.0).item() == pytest.approx((1.0 * 0.5 + 0.5 * 0.5) / 2)
    assert is_divergence("rkl", log_pi, log_P0, log_q, 0.0).item() == math.inf
    with pytest.raises(ValueError, match="log_Z"):
        is_divergence("kl", log_pi, log_P0, log_q)                      # Ẑ = 0
    with pytest.raises(ValueError, match="allowed keys"):
        is_divergence("kl_p_pi", log_pi, log_P, log_q, 0.0)


@pytest.mark.parametrize("policy", ["on", "off"])
def test_kl_pi_a(policy):
    log_pi, log_q, log_a, _, _, gen = _problem(3)
    exact = (torch.exp(log_pi) * (log_pi - log_a)).sum().item()         # KL(π‖a)
    reverse = (torch.exp(log_a) * (log_a - log_pi)).sum().item()
    lq = log_pi if policy == "on" else log_q
    x = _draw(lq, gen)
    est = kl_pi_a(log_pi[x], log_a[x], None if policy == "on" else log_q[x]).item()
    se = _delta_se(lambda c: (c * torch.exp(log_pi - lq) * (log_pi - log_a)).sum(), lq)
    assert 5 * se < 0.1 * exact and abs(exact - reverse) > 20 * se
    assert abs(est - exact) < 5 * se, (est, exact, se)
    assert kl_pi_a(torch.tensor([-1.0, -2.0]), torch.tensor([-1.5, -1.0])).item() == pytest.approx(-0.25)


def test_sequence_entropy():
    assert sequence_entropy(torch.tensor([-1.0, -3.0])).item() == pytest.approx(2.0)
    log_pi, *_, gen = _problem(4)
    H = -(torch.exp(log_pi) * log_pi).sum().item()
    x = _draw(log_pi, gen)
    se = math.sqrt(((torch.exp(log_pi) * log_pi ** 2).sum().item() - H ** 2) / N)
    assert 5 * se < 0.05 * H
    assert abs(sequence_entropy(log_pi[x]).item() - H) < 5 * se
