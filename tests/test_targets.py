"""Targets and λ fitting: exact composition of log P, floor semantics, closed-form λ recovery, bad input."""
import math

import pytest
import torch

from fdpg_core import sampling
from fdpg_core.targets import BinaryFactor, ExponentialFactor, ScalarFactor, Target, fit_lam
from fdpg_core.kit.toy import enumerate_support, tiny_gpt2


pytestmark = pytest.mark.usefixtures("one_thread")  # 2 shared cores: avoid oversubscription


@pytest.fixture(scope="module")
def toy():
    base = tiny_gpt2(4, seed=3)
    support = enumerate_support(base, 3)  # 40 sequences, log_q = exact log a
    return base, support


def _has0(s):
    return ((s.tokens == 0) & s.mask).any(-1)


def _n1(s):
    return ((s.tokens == 1) & s.mask).sum(-1).float()


def _phi(s):
    return torch.stack([_has0(s).float(), s.mask.sum(-1).float()], -1)  # (B, 2): has word 0, length


# ------------------------------------------------------------------------------------------ fit_lam
def _known_problem(N=60, K=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    log_a = torch.log_softmax(torch.randn(N, generator=g, dtype=torch.float64) * 1.5, 0)  # categorical a
    phi = torch.cat([(torch.rand(N, 1, generator=g) < 0.4).double(), torch.randn(N, K - 1, generator=g,
                                                                                 dtype=torch.float64)], 1)
    lam_star = torch.tensor([0.7, -1.3][:K], dtype=torch.float64)
    log_p = torch.log_softmax(log_a + phi @ lam_star, 0)  # p ∝ a·exp(λ*·φ)
    mu_bar = log_p.exp() @ phi  # exact E_p[φ]
    return log_a, phi, lam_star, mu_bar


def test_fit_lam_recovers_known_lambda_on_full_support():
    log_a, phi, lam_star, mu_bar = _known_problem()
    fit = fit_lam(phi, mu_bar, log_w=log_a, tol=1e-12)
    assert torch.allclose(fit.lam, lam_star, atol=1e-6), (fit.lam, lam_star)
    assert fit.max_error < 1e-12
    assert torch.allclose(fit.moments, mu_bar, atol=1e-12)
    w = torch.softmax(log_a + phi @ fit.lam, 0)
    assert fit.ess == pytest.approx(1 / (w ** 2).sum().item(), rel=1e-9)  # ESS of the tilted weights
    assert 0 < fit.ess_frac <= 1


def test_fit_lam_samples_from_a_and_from_a_proposal():
    log_a, phi, lam_star, mu_bar = _known_problem(K=2)
    g = torch.Generator().manual_seed(1)
    M = 40_000
    # samples ~ a: log_w None
    idx = torch.multinomial(log_a.exp(), M, replacement=True, generator=g)
    fit_a = fit_lam(phi[idx], mu_bar, tol=1e-9)
    assert torch.allclose(fit_a.lam, lam_star, atol=0.08), fit_a.lam
    assert torch.allclose(fit_a.moments, mu_bar, atol=1e-9)  # SNIS moments matched exactly
    # samples ~ q (uniform) with w = a/q
    log_q = torch.full_like(log_a, -math.log(len(log_a)))
    idx = torch.randint(len(log_a), (M,), generator=g)
    fit_q = fit_lam(phi[idx], mu_bar, log_w=log_a[idx] - log_q[idx], tol=1e-9)
    assert torch.allclose(fit_q.lam, lam_star, atol=0.08), fit_q.lam
    assert fit_q.ess < M  # IS loses samples


def test_fit_lam_single_feature_1d_phi_and_negative_lambda():
    log_a, phi, _, _ = _known_problem(K=1)
    lam_star = torch.tensor([-2.0], dtype=torch.float64)
    mu_bar = torch.softmax(log_a + phi @ lam_star, 0) @ phi
    fit = fit_lam(phi[:, 0], mu_bar.tolist(), log_w=log_a, tol=1e-12)
    assert fit.lam.shape == (1,)
    assert fit.lam.item() == pytest.approx(-2.0, abs=1e-6)


@pytest.mark.parametrize("mu", [1.0, 0.0, 1.5, -0.1])
def test_fit_lam_moment_outside_or_on_boundary_raises(mu):
    log_a, phi, _, _ = _known_problem(K=1)
    with pytest.raises(ValueError) as e:
        fit_lam(phi, [mu], log_w=log_a)
    msg = str(e.value)
    assert "mu_bar[0]" in msg and f"{mu:g}" in msg and "(0, 1)" in msg and "BinaryFactor" in msg


def test_fit_lam_bad_shapes_and_infeasible_hull():
    log_a, phi, _, mu_bar = _known_problem(K=2)
    with pytest.raises(ValueError, match="K=2"):
        fit_lam(phi, mu_bar[:1])
    with pytest.raises(ValueError, match="log_w"):
        fit_lam(phi, mu_bar, log_w=log_a[:5])
    # two mutually exclusive binary features: each moment is inside (0, 1) but their sum can't exceed 1
    excl = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]] * 5)
    with pytest.raises(ValueError, match="convex hull"):
        fit_lam(excl, [0.6, 0.6], max_iter=50)


# ------------------------------------------------------------------------------------------ targets
def test_log_P_is_log_a_plus_sum_of_factor_terms(toy):
    base, support = toy
    lam = [0.5, -0.25]
    t0 = Target(base)
    t1 = t0 * BinaryFactor("has0", _has0, log_floor=-3.0)
    t2 = t1 * ScalarFactor("n1", _n1, beta=0.5)
    t3 = t2 * ExponentialFactor("phi", _phi, lam, mu_bar=[0.5, 2.0], feature_names=("has0_f", "length"))
    assert t0.factors == () and len(t1.factors) == 1 and len(t3.factors) == 3  # immutable: new objects
    s = t3.score(support)
    with torch.no_grad():
        log_a = sampling.score(base, support)
    assert torch.equal(s.log_a, log_a)
    b = _has0(support)
    want = log_a.double() + torch.where(b, 0.0, -3.0) + _n1(support).double() / 0.5 \
        + _phi(support).double() @ torch.tensor(lam, dtype=torch.float64)
    assert torch.allclose(s.log_P.double(), want, atol=1e-5)
    assert set(s.features) == {"has0", "n1", "has0_f", "length"}
    assert torch.equal(s.features["has0"], b.float())
    # a precomputed log_a is used as is
    s2 = t3.score(support, log_a=torch.zeros(len(support)))
    assert torch.allclose(s2.log_P.double(), want - log_a.double(), atol=1e-5)


def test_binary_floor_semantics(toy):
    base, support = toy
    b = _has0(support)
    log_a = support.log_q
    hard = (Target(base) * BinaryFactor("b", _has0)).score(support).log_P
    assert torch.all(hard[~b] == -math.inf) and torch.allclose(hard[b], log_a[b])
    floor = -4.0
    soft = (Target(base) * BinaryFactor("b", _has0, log_floor=floor)).score(support).log_P
    # p ∝ a·max(b, e^floor)
    want = log_a + torch.log(torch.clamp(b.float(), min=math.exp(floor)))
    assert torch.allclose(soft, want, atol=1e-5)
    assert 0.0 < b.float().mean() < 1.0  # the support has both kinds of sequences
    p_soft = torch.softmax(soft.double(), 0)
    p_hard = torch.softmax(hard.double(), 0)
    assert p_soft[~b].sum() > 0 and p_hard[~b].sum() == 0
    assert p_soft[b].sum() > 0.5  # most of the mass stays on b = 1 with this floor
    with pytest.raises(ValueError, match="log_floor"):
        BinaryFactor("b", _has0, log_floor=1.0)
    with pytest.raises(ValueError, match="0 or 1"):
        (Target(base) * BinaryFactor("b", lambda s: s.mask.sum(-1).float())).score(support)


@pytest.mark.parametrize("beta", [0.0, -1.0, float("inf"), float("nan")])
def test_scalar_factor_beta_must_be_positive(beta):
    with pytest.raises(ValueError) as e:
        ScalarFactor("r", _n1, beta=beta)
    assert repr(beta) in str(e.value) and "> 0" in str(e.value)


def test_conditional_scorer_sees_the_context():
    base = tiny_gpt2(4, seed=5)
    prompt_ids = torch.tensor([[3, 3], [0, 3]])  # two contexts (the second prompt has an extra token)
    prompt_mask = torch.ones_like(prompt_ids)
    support = enumerate_support(base, 2, prompt_ids, prompt_mask)
    # b(x, c) = 1 iff the first generated token equals c
    tgt = Target(base) * BinaryFactor("first_is_c", lambda s: s.tokens[:, 0] == s.context_ids)
    out = tgt.score(support)
    b = support.tokens[:, 0] == support.context_ids
    assert torch.all(out.log_P[~b] == -math.inf) and torch.allclose(out.log_P[b], out.log_a[b])
    assert not torch.allclose(out.log_a[:len(support) // 2], out.log_a[len(support) // 2:])  # a(x|c) depends on c


def test_target_bad_factors_and_shapes(toy):
    base, support = toy
    with pytest.raises(ValueError, match="duplicate"):
        Target(base) * ScalarFactor("r", _n1, 1.0) * BinaryFactor("r", _has0)
    with pytest.raises(ValueError, match="not a factor"):
        Target(base, factors=(lambda s: s,))
    with pytest.raises(ValueError, match="K=3"):
        (Target(base) * ExponentialFactor("phi", _phi, [1.0, 2.0, 3.0])).score(support)
    with pytest.raises(ValueError, match="expected"):
        (Target(base) * ScalarFactor("r", _phi, 1.0)).score(support)  # (B, 2) for a scalar factor
    with pytest.raises(ValueError, match="mu_bar"):
        ExponentialFactor("phi", _phi, [1.0, 2.0], mu_bar=[0.5])


def test_fitted_exponential_target_has_the_requested_moment(toy):
    base, support = toy
    phi = _phi(support)[:, :1]  # has word 0
    fit = fit_lam(phi, [0.5], log_w=support.log_q, tol=1e-10)  # exact: the whole support weighted by a
    tgt = Target(base) * ExponentialFactor("has0", _has0, fit.lam, mu_bar=[0.5])
    p = torch.softmax(tgt.score(support).log_P.double(), 0)
    assert (p * _has0(support)).sum().item() == pytest.approx(0.5, abs=1e-5)
