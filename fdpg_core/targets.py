"""Composable target distributions p(x) = P(x) / Z for f-DPG (docs/METHOD.md, "Targets").

A target is a base model a (an HF language model, scored with `sampling.score`) times factors:

    log P(x) = log a(x) + Σ_k log factor_k(x)

    BinaryFactor       p ∝ a(x) · b(x),          b ∈ {0, 1}       (pointwise constraint, Z = E_a[b])
    ScalarFactor       p ∝ a(x) · exp(r(x)/β)                     (KL-regularised RL / RLHF target)
    ExponentialFactor  p ∝ a(x) · exp(λ·φ(x)),   φ (B, K)         (distributional constraint E_p[φ] = μ̄)

Products (hybrids) are several factors: `Target(a) * BinaryFactor(...) * ExponentialFactor(...)`.
Targets are immutable: `target * factor` returns a new `Target`.
Conditional targets p_c(x) ∝ a(x|c) b(x, c) need nothing special: `sampling.score` scores the base
given each row's prompt, and a scorer receives the whole `Samples` (prompt_ids, prompt_mask,
context_ids, tokens, mask, texts) so b may depend on the context.

A scorer is any callable `scorer(samples) -> Tensor` of shape (B,) (binary, scalar) or (B, K)
(exponential). Scorers are called under `torch.no_grad()`.

`fit_lam` fits λ for an `ExponentialFactor` by self-normalised importance-sampled moment matching (E_{p_λ}[φ] = μ̄).
"""
from __future__ import annotations

import math
import reprlib
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch import Tensor

from fdpg_core import sampling
from fdpg_core.sampling import _eval_mode
from fdpg_core.losses import NonFiniteLossError

Scorer = Callable[..., Tensor]

__all__ = ["Scored", "Target", "BinaryFactor", "ScalarFactor", "ExponentialFactor", "LamFit", "fit_lam"]


def _call_scorer(name: str, scorer: Scorer, samples, expect_dim: int) -> Tensor:
    """Run a scorer and check its output shape: (B,) when expect_dim == 1, (B, K) when 2."""
    with torch.no_grad():
        raw = scorer(samples)
    B = samples.tokens.shape[0]
    want = "(B,)" if expect_dim == 1 else "(B, K)"
    try:
        out = torch.as_tensor(raw)
    except (TypeError, ValueError, RuntimeError):  # None, strings, ragged lists, dicts
        out = None
    if out is None or out.is_complex():
        got = "None (does the scorer return its value?)" if raw is None else \
            f"a {type(raw).__name__} {reprlib.repr(raw)}"
        raise ValueError(f"scorer of factor {name!r} returned {got}; expected a tensor (or list) of numbers or bools "
                         f"of shape {want} with B={B}")
    if expect_dim == 2 and out.dim() == 1:
        out = out[:, None]  # (B,) -> (B, 1): a single feature
    if out.dim() != expect_dim or out.shape[0] != B:
        raise ValueError(f"scorer of factor {name!r} returned shape {tuple(out.shape)}; expected {want} "
                         f"with B={B}")
    return out


# --------------------------------------------------------------------------------------- factors
@dataclass(frozen=True)
class BinaryFactor:
    """Pointwise constraint p(x) ∝ a(x) · b(x) with b(x) ∈ {0, 1} (`scorer` returns 0/1 or bool, (B,)).

    log b = 0 where b = 1 and `log_floor` where b = 0. With the default floor −∞ the target is
    exactly a restricted to {b = 1}. With a finite floor the target becomes p ∝ a · max(b, e^floor):
    needed for reverse KL (key `rkl`), whose pseudo-reward −f′ = −(log t + 1) is −∞ wherever
    P(x) = 0. Forward KL, JS and TV handle P(x) = 0 without a floor. The floor is a modelling choice
    that the method leaves open (docs/METHOD.md, "Targets"); the notebooks show its effect.
    """

    name: str
    scorer: Scorer
    log_floor: float = float("-inf")

    def __post_init__(self):
        if not (self.log_floor == float("-inf") or (math.isfinite(self.log_floor) and self.log_floor <= 0)):
            raise ValueError(f"BinaryFactor {self.name!r}: log_floor={self.log_floor!r}; allowed: -inf or a "
                             "finite value <= 0 (log of the weight given to b = 0)")

    def log_factor(self, samples) -> tuple[Tensor, dict[str, Tensor]]:
        """Returns log b (B,) and the feature {name: b} (B,) as float."""
        b = _call_scorer(self.name, self.scorer, samples, 1)
        if b.dtype != torch.bool:
            if not torch.all((b == 0) | (b == 1)):
                bad = b[(b != 0) & (b != 1)][:3].tolist()
                raise ValueError(f"BinaryFactor {self.name!r}: scorer returned values {bad}; allowed: 0 or 1")
            b = b.bool()
        log_b = torch.zeros(b.shape, dtype=torch.float64, device=b.device)
        log_b = log_b.masked_fill(~b, self.log_floor)  # log b = 0 or log_floor, (B,)
        return log_b, {self.name: b.to(torch.float32)}


@dataclass(frozen=True)
class ScalarFactor:
    """Scalar preference p(x) ∝ a(x) · exp(r(x)/β) (`scorer` returns r, (B,)).

    Reverse KL to this target is the KL-regularised RL objective:
    KL(π‖p) = −(E_π[r] − β KL(π‖a))/β + log Z.
    """

    name: str
    scorer: Scorer
    beta: float

    def __post_init__(self):
        beta = float(self.beta)
        if not (math.isfinite(beta) and beta > 0 and math.isfinite(1.0 / beta)):
            raise ValueError(f"ScalarFactor {self.name!r}: beta={self.beta!r}; allowed: a finite value > 0 whose "
                             "inverse 1/beta is finite")

    def log_factor(self, samples) -> tuple[Tensor, dict[str, Tensor]]:
        """Returns r/β (B,) and the feature {name: r} (B,)."""
        r = _call_scorer(self.name, self.scorer, samples, 1)
        return r.to(torch.float64) / float(self.beta), {self.name: r.to(torch.float32)}


@dataclass(frozen=True, eq=False)
class ExponentialFactor:
    """Distributional constraint p(x) ∝ a(x) · exp(λ·φ(x)) (`scorer` returns φ, (B, K) or (B,) for K = 1).

    `lam` (K,) is usually fitted with `fit_lam` so that E_p[φ] = `mu_bar`; `mu_bar` is only recorded
    (for reports). Features are named `feature_names` (default `name` for K = 1, else `name/k`).
    """

    name: str
    scorer: Scorer
    lam: Sequence[float] | Tensor
    mu_bar: Sequence[float] | Tensor | None = None
    feature_names: tuple[str, ...] | None = None

    def __post_init__(self):
        lam = torch.as_tensor(self.lam, dtype=torch.float64).detach().reshape(-1).clone()  # (K,)
        if not torch.all(torch.isfinite(lam)):
            raise ValueError(f"ExponentialFactor {self.name!r}: lam={lam.tolist()}; allowed: finite values")
        object.__setattr__(self, "lam", lam)
        K = lam.numel()
        if self.mu_bar is not None:
            mu = torch.as_tensor(self.mu_bar, dtype=torch.float64).reshape(-1).clone()
            if mu.numel() != K:
                raise ValueError(f"ExponentialFactor {self.name!r}: mu_bar has {mu.numel()} entries but lam has "
                                 f"K={K}; they must match")
            object.__setattr__(self, "mu_bar", mu)
        names = self.feature_names
        if names is None:
            names = (self.name,) if K == 1 else tuple(f"{self.name}/{k}" for k in range(K))
        names = tuple(names)
        if len(names) != K:
            raise ValueError(f"ExponentialFactor {self.name!r}: {len(names)} feature_names for K={K} features")
        object.__setattr__(self, "feature_names", names)

    def log_factor(self, samples) -> tuple[Tensor, dict[str, Tensor]]:
        """Returns λ·φ (B,) and one feature (B,) per column of φ."""
        phi = _call_scorer(self.name, self.scorer, samples, 2)  # (B, K)
        if phi.shape[1] != self.lam.numel():
            raise ValueError(f"ExponentialFactor {self.name!r}: scorer returned K={phi.shape[1]} features but "
                             f"lam has K={self.lam.numel()}")
        phi64 = phi.to(torch.float64)
        log_f = phi64 @ self.lam.to(phi64.device)  # λ·φ, (B,)
        return log_f, {n: phi[:, k].to(torch.float32) for k, n in enumerate(self.feature_names)}


# ---------------------------------------------------------------------------------------- target
@dataclass(frozen=True, eq=False)
class Scored:
    """Target scores of a batch: log_a (B,), log_P = log a + Σ log factors (B,), features name -> (B,)."""

    log_a: Tensor
    log_P: Tensor
    features: dict[str, Tensor] = field(default_factory=dict)


@dataclass(frozen=True, eq=False)
class Target:
    """Unnormalised target P(x) = a(x) · Π_k factor_k(x) with `base` the model a.

    `base` is an HF model scored with `sampling.score` (under no_grad, in eval mode); it may be None
    when every call passes a precomputed `log_a`.
    """

    base: torch.nn.Module | None
    factors: tuple = ()

    def __post_init__(self):
        factors = tuple(self.factors)
        for f in factors:
            if not hasattr(f, "log_factor"):
                raise ValueError(f"Target factor {f!r} is not a factor; allowed: BinaryFactor, ScalarFactor, "
                                 "ExponentialFactor")
        names = [n for f in factors for n in (getattr(f, "feature_names", None) or (f.name,))]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"Target: duplicate factor/feature names {dup}; every factor needs its own name")
        object.__setattr__(self, "factors", factors)

    def __mul__(self, factor) -> "Target":
        """p ∝ P · factor: a new Target with one more factor (self is unchanged)."""
        return Target(self.base, self.factors + (factor,))

    def score(self, samples, log_a: Tensor | None = None) -> Scored:
        """log_a (B,) (from `sampling.score(base, samples)` unless given), log_P (B,), features."""
        if log_a is None:
            if self.base is None:
                raise ValueError("Target.base is None: pass log_a to Target.score")
            with torch.no_grad(), _eval_mode(self.base):
                log_a = sampling.score(self.base, samples)  # (B,)
        log_a = log_a.detach()
        log_P = log_a.to(torch.float64)  # accumulate the factor terms in float64
        features: dict[str, Tensor] = {}
        terms = [("the base model a (log_a)", None, log_a)]
        for f in self.factors:
            log_f, feats = f.log_factor(samples)  # (B,), {name: (B,)}
            log_P = log_P + log_f.to(log_P.device)  # log P = log a + Σ log factor
            features.update(feats)
            terms.append((f"factor {f.name!r} ({type(f).__name__})", f, log_f))
        log_P = log_P.to(log_a.dtype)
        _check_log_P(terms, log_P)
        return Scored(log_a=log_a, log_P=log_P, features=features)


def _check_log_P(terms: list, log_P: Tensor) -> None:
    """NonFiniteLossError naming each term of log P = log a + Σ log factor (the base model or a factor) that is NaN
    or +inf, or finite but beyond the range of log P's dtype (it would become ±inf there). −inf (zero mass, e.g.
    b = 0) is allowed. One host sync when everything is finite."""
    big = torch.finfo(log_P.dtype).max
    flags = [torch.isnan(t) | (t == math.inf) | (torch.isfinite(t) & (t.abs() > big)) for _, _, t in terms]
    flags.append(torch.isnan(log_P) | (log_P == math.inf))  # e.g. a sum that overflows
    if not torch.stack([m.any().to(log_P.device) for m in flags]).any():
        return
    parts = []
    for (name, f, t), m in zip(terms + [("log P itself (the sum of the terms)", None, log_P)], flags):
        if not m.any():
            continue
        rows = m.nonzero().flatten()
        vals = t[rows[:3]].tolist()
        kind = "NaN" if torch.isnan(t[m]).any() else ("+inf" if (t[m] == math.inf).any()
                                                      else f"values beyond the {log_P.dtype} range")
        msg = f"{name} gave {kind} on {rows.numel()} of {t.numel()} samples (rows {rows[:5].tolist()}, values {vals})"
        if isinstance(f, ScalarFactor):
            msg += f"; its term is r/beta with beta={f.beta!r}: check the scorer, or use a larger beta"
        parts.append(msg)
    raise NonFiniteLossError("Target.score: log P = log a + Σ log factors is not finite: " + "; ".join(parts) +
                             ". Allowed: finite values, or -inf for zero mass (a BinaryFactor's b = 0); check that "
                             "scorer or model")


# -------------------------------------------------------------------------------------- fit_lam
@dataclass(frozen=True, eq=False)
class LamFit:
    """Result of `fit_lam`: lam (K,) float64, SNIS moments E_{p_λ}[φ] (K,), ESS of the tilted weights
    (count and fraction of N), max |moment − μ̄|, iterations used."""

    lam: Tensor
    moments: Tensor
    ess: float
    ess_frac: float
    max_error: float
    n_iter: int


def _tilted(phi: Tensor, log_w: Tensor, lam: Tensor, mu_bar: Tensor):
    """Dual value L(λ), SNIS weights ŵ (N,) of p_λ ∝ w·exp(λ·φ)."""
    logits = log_w + phi @ lam  # log w_i + λ·φ_i, (N,)
    lse = torch.logsumexp(logits, 0)
    L = lse - lam @ mu_bar  # L(λ) = log Σ_i w_i e^{λ·φ_i} − λ·μ̄
    w_hat = torch.exp(logits - lse)  # (N,), Σ = 1
    return L, w_hat


def fit_lam(phi: Tensor, mu_bar, log_w: Tensor | None = None, *, tol: float = 1e-6, max_iter: int = 200,
            lam0=None) -> LamFit:
    """Fit λ so that the SNIS estimate of E_{p_λ}[φ] equals μ̄ for p_λ ∝ a·exp(λ·φ).

    phi (N, K) (or (N,)) are features of samples x_i ~ q; log_w (N,) = log a(x_i) − log q(x_i)
    (None when the samples come from a itself; −inf drops a sample). Minimises the convex dual
        L(λ) = log Σ_i w_i exp(λ·φ_i) − λ·μ̄,   ∇L = E_λ[φ] − μ̄,   ∇²L = Cov_λ[φ]
    in float64 by damped Newton (pseudo-inverse of the covariance, Armijo backtracking) until
    max_k |E_λ[φ_k] − μ̄_k| < tol.

    Raises ValueError when K does not match, when a requested moment lies outside or on the boundary
    of the observed feature range (λ = ±∞; use a BinaryFactor for a 100% constraint), or when no
    finite λ reaches the moments (μ̄ outside the interior of the convex hull of the observed φ).
    """
    phi = torch.as_tensor(phi).detach().to(torch.float64).cpu()
    if phi.dim() == 1:
        phi = phi[:, None]  # (N,) -> (N, 1)
    if phi.dim() != 2:
        raise ValueError(f"fit_lam: phi has shape {tuple(phi.shape)}; expected (N, K) or (N,)")
    N, K = phi.shape
    mu_bar = torch.as_tensor(mu_bar, dtype=torch.float64).reshape(-1).cpu()  # (K,)
    if mu_bar.numel() != K:
        raise ValueError(f"fit_lam: mu_bar has {mu_bar.numel()} entries but phi has K={K} features")
    if log_w is None:
        log_w = torch.zeros(N, dtype=torch.float64)
    log_w = torch.as_tensor(log_w).detach().to(torch.float64).cpu().reshape(-1)  # (N,)
    if log_w.numel() != N:
        raise ValueError(f"fit_lam: log_w has {log_w.numel()} entries but phi has N={N} rows")
    if torch.isnan(log_w).any() or (log_w == float("inf")).any():
        raise ValueError("fit_lam: log_w contains NaN or +inf; allowed: finite values or -inf (weight 0)")
    keep = torch.isfinite(log_w)
    if not keep.any():
        raise ValueError("fit_lam: every log_w is -inf (no sample has positive weight)")
    phi, log_w = phi[keep], log_w[keep]
    if not torch.isfinite(phi).all():
        raise ValueError("fit_lam: phi contains non-finite values")
    if not torch.isfinite(mu_bar).all():
        raise ValueError(f"fit_lam: mu_bar={mu_bar.tolist()}; allowed: finite values")

    # 1. range check: each μ̄_k must lie strictly inside the observed range of φ_k
    lo, hi = phi.min(0).values, phi.max(0).values  # (K,)
    for k in range(K):
        m, a, b = mu_bar[k].item(), lo[k].item(), hi[k].item()
        if not (a < m < b):
            raise ValueError(
                f"fit_lam: requested moment mu_bar[{k}]={m:g} is outside or on the boundary of the observed "
                f"range of phi[:, {k}]; allowed: the open interval ({a:g}, {b:g}). A moment on the boundary "
                "needs lambda = ±inf: for a 100% (or 0%) constraint use BinaryFactor instead")

    # 2. damped Newton on the convex dual
    lam = torch.zeros(K, dtype=torch.float64) if lam0 is None else \
        torch.as_tensor(lam0, dtype=torch.float64).reshape(-1).clone()
    it = 0
    for it in range(max_iter + 1):
        L, w_hat = _tilted(phi, log_w, lam, mu_bar)
        moments = w_hat @ phi  # E_λ[φ], (K,)
        g = moments - mu_bar  # ∇L, (K,)
        if g.abs().max().item() < tol or it == max_iter:
            break
        centred = phi - moments  # (N, K)
        H = (centred * w_hat[:, None]).T @ centred  # Cov_λ[φ] = ∇²L, (K, K)
        evals, evecs = torch.linalg.eigh(H)
        inv = torch.where(evals > evals.max() * 1e-12, 1.0 / evals, torch.zeros_like(evals))
        step = -(evecs * inv) @ (evecs.T @ g)  # −H⁺ g, (K,)
        if not (g @ step < 0):  # not a descent direction (degenerate H): fall back to gradient
            step = -g
        s, slope = 1.0, (g @ step).item()
        for _ in range(60):  # Armijo backtracking
            L_new, _ = _tilted(phi, log_w, lam + s * step, mu_bar)
            if L_new <= L + 1e-4 * s * slope:
                break
            s *= 0.5
        lam = lam + s * step
    max_error = g.abs().max().item()
    if not max_error < tol:
        raise ValueError(
            f"fit_lam: no finite lambda reached mu_bar={mu_bar.tolist()} (max moment error {max_error:.3g} "
            f"> tol={tol:g} after {it} Newton steps, lambda={lam.tolist()}): mu_bar must lie in the interior "
            "of the convex hull of the observed features")
    ess = 1.0 / (w_hat ** 2).sum().item()  # (Σŵ)² / Σŵ² with Σŵ = 1
    return LamFit(lam=lam, moments=moments, ess=ess, ess_frac=ess / N, max_error=max_error, n_iter=it)
