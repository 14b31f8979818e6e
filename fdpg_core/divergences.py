"""The table of f-divergences used by the f-DPG loss and by the metrics.

Convention (the paper's): for a policy π and a normalised target p,

    D_f(π‖p) = Σ_x p(x) f(π(x)/p(x)),        f convex, f(1) = 0.

Every f and f′ here is a torch function of ``log_t = log π − log p`` (never of t itself), so that
the loss and the estimators can stay in log space. The functions return the correct limit at
``log_t = ±inf`` (t = 0 or t = ∞) wherever the limit exists, possibly ±inf, and have finite
gradients at every finite ``log_t``.

``f_inf = lim_{t→∞} f(t)/t`` is the cost per unit of π-mass where p = 0: such an x contributes
``π(x)·f_inf`` to D_f. Where π = 0 and p > 0 the contribution is ``p(x)·f(0)``, i.e. ``p·f(log_t=−inf)``.
For a convex f, ``f′(t=∞) = f_inf``.

| key | D_f(π‖p) | f(t) | f′(t) | f(0) | f_inf |
|---|---|---|---|---|---|
| kl | KL(p‖π) = Σ p log(p/π) | −log t | −1/t | ∞ | 0 |
| rkl | KL(π‖p) = Σ π log(π/p) | t log t | log t + 1 | 0 | ∞ |
| js | ½KL(π‖m) + ½KL(p‖m), m = (π+p)/2 | ½[t log(2t/(1+t)) + log(2/(1+t))] | ½ log(2t/(1+t)) | ½ log 2 | ½ log 2 |
| tv | ½ Σ \\|π − p\\| | ½\\|t − 1\\| | ½ sign(t − 1) | ½ | ½ |
| chi2 | χ²(p‖π) = Σ (p − π)²/π | (1 − t)²/t | 1 − 1/t² | ∞ | 1 |
| rchi2 | χ²(π‖p) = Σ (π − p)²/p | (t − 1)² | 2(t − 1) | 1 | ∞ |
| hellinger | ½ Σ (√π − √p)² (squared Hellinger, in [0, 1]) | ½(√t − 1)² | ½(1 − 1/√t) | ½ | ½ |

Amari α-family (``alpha_divergence(alpha)``), with the linear terms that make the limits exist:

    f_α(t) = (t^α − α t − (1 − α)) / (α(α − 1)),      f′_α(t) = (t^(α−1) − 1) / (α − 1)
    D_α(π‖p) = (Σ_x π^α p^(1−α) − 1) / (α(α − 1))     (normalised π, p)

α → 0: f_0(t) = t − 1 − log t (forward KL(p‖π)); α → 1: f_1(t) = t log t − t + 1 (reverse KL(π‖p)).
α = −1 gives ½χ²(p‖π), α = 2 gives ½χ²(π‖p), α = ½ gives 2Σ(√π − √p)² = 4·hellinger.
f_α(0) = 1/α for α > 0 (∞ for α ≤ 0); f_inf = 1/(1 − α) for α < 1 (∞ for α ≥ 1).
The α = 0 and α = 1 members differ from ``kl`` / ``rkl`` by the linear term ±(t − 1), which changes
neither D_f on normalised distributions nor the f-DPG gradient (f′ shifts by a constant, i.e. a baseline).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

Tensor = torch.Tensor
LOG2 = math.log(2.0)
INF = math.inf

__all__ = ["Divergence", "DIVERGENCES", "alpha_divergence", "get_divergence", "exact_divergence"]


@dataclass(frozen=True)
class Divergence:
    """One row of the divergence table.

    name: key (e.g. ``"js"``); direction: what D_f(π‖p) is in plain words (e.g. ``"KL(p‖π)"``);
    f, f_prime: torch functions of ``log_t = log π − log p`` (elementwise, any shape);
    f_inf: lim_{t→∞} f(t)/t (a float, possibly ``math.inf``).
    """

    name: str
    direction: str
    f: Callable[[Tensor], Tensor]
    f_prime: Callable[[Tensor], Tensor]
    f_inf: float

    def __repr__(self) -> str:  # the callables make the default repr unreadable
        return f"Divergence(name={self.name!r}, direction={self.direction!r}, f_inf={self.f_inf})"


def _with_limits(fn: Callable[[Tensor], Tensor], at_zero: float, at_inf: float) -> Callable[[Tensor], Tensor]:
    """Wrap ``fn(log_t)`` so that log_t = −inf returns ``at_zero`` and +inf returns ``at_inf``.

    ``fn`` only ever sees finite values (infinities are replaced by 0 before the call: the
    "double where" trick), so neither the value nor the gradient can become NaN.
    """

    def wrapped(log_t: Tensor) -> Tensor:
        finite = torch.isfinite(log_t)
        out = fn(torch.where(finite, log_t, torch.zeros_like(log_t)))
        out = torch.where(log_t == -INF, torch.full_like(out, at_zero), out)
        out = torch.where(log_t == INF, torch.full_like(out, at_inf), out)
        return torch.where(torch.isnan(log_t), log_t, out)  # NaN in, NaN out (the callers validate)

    wrapped.__name__ = getattr(fn, "__name__", "f")
    wrapped.__doc__ = fn.__doc__
    return wrapped


def _row(name, direction, f, fp, f_zero, fp_zero, f_inf, f_at_inf=INF) -> Divergence:
    """One table row; f(∞) is +∞ for every member except kl (−log t → −∞)."""
    return Divergence(name, direction, _with_limits(f, f_zero, f_at_inf), _with_limits(fp, fp_zero, f_inf), f_inf)


# One row per divergence: key, direction, f(s) and f′(s) with s = log t (each formula above its row, written in forms
# without cancellation), then f(0), f′(0), f_inf.
DIVERGENCES: dict[str, Divergence] = {
    # f(t) = −log t;  f′(t) = −1/t
    "kl": _row("kl", "KL(p‖π) (forward KL, DPG)", lambda s: -s, lambda s: -torch.exp(-s), INF, -INF, 0.0,
               f_at_inf=-INF),
    # f(t) = t log t;  f′(t) = log t + 1
    "rkl": _row("rkl", "KL(π‖p) (reverse KL, KL-regularised RL)", lambda s: torch.exp(s) * s, lambda s: s + 1.0,
                0.0, -INF, INF),
    # f(t) = ½[t log(2t/(1+t)) + log(2/(1+t))];  f′(t) = ½ log(2t/(1+t)); with log(2t/(1+t)) = log 2 − softplus(−s)
    # and log(2/(1+t)) = log 2 − softplus(s)
    "js": _row("js", "JS(π, p) = ½KL(π‖m) + ½KL(p‖m), m = (π+p)/2",
               lambda s: 0.5 * (torch.exp(s) * (LOG2 - F.softplus(-s)) + (LOG2 - F.softplus(s))),
               lambda s: 0.5 * (LOG2 - F.softplus(-s)), 0.5 * LOG2, -INF, 0.5 * LOG2),
    # f(t) = ½|t − 1|;  f′(t) = ½ sign(t − 1) (0 at t = 1, a subgradient)
    "tv": _row("tv", "TV(π, p) = ½Σ|π − p|", lambda s: 0.5 * torch.abs(torch.expm1(s)), lambda s: 0.5 * torch.sign(s),
               0.5, -0.5, 0.5),
    # f(t) = (1 − t)²/t = (√t − 1/√t)² = 4 sinh²(s/2) (no cancellation near t = 1);  f′(t) = 1 − 1/t² = −expm1(−2s)
    "chi2": _row("chi2", "χ²(p‖π) = Σ(p − π)²/π", lambda s: 4.0 * torch.sinh(0.5 * s) ** 2,
                 lambda s: -torch.expm1(-2.0 * s), INF, -INF, 1.0),
    # f(t) = (t − 1)²;  f′(t) = 2(t − 1)
    "rchi2": _row("rchi2", "χ²(π‖p) = Σ(π − p)²/p", lambda s: torch.expm1(s) ** 2, lambda s: 2.0 * torch.expm1(s),
                  1.0, -2.0, INF),
    # f(t) = ½(√t − 1)²;  f′(t) = ½(1 − 1/√t) = −½ expm1(−s/2)
    "hellinger": _row("hellinger", "H²(π, p) = ½Σ(√π − √p)²", lambda s: 0.5 * torch.expm1(0.5 * s) ** 2,
                      lambda s: -0.5 * torch.expm1(-0.5 * s), 0.5, -INF, 0.5),
}


def alpha_divergence(alpha: float) -> Divergence:
    """Amari α-divergence f_α(t) = (t^α − α t − (1 − α)) / (α(α − 1)) (see the module docstring).

    α = 0 and α = 1 are the exact limits (t − 1 − log t and t log t − t + 1). Computed in a form
    that is stable for α near 0 and near 1 (expm1 of small arguments divided by small numbers).
    """
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha):
        raise ValueError(f"alpha must be a finite real number, got {alpha!r}")
    a = float(alpha)
    b = a - 1.0

    if a == 0.0:
        def f(s):  # t − 1 − log t
            return torch.expm1(s) - s

        def fp(s):  # 1 − 1/t
            return -torch.expm1(-s)
    elif a == 1.0:
        def f(s):  # t log t − t + 1
            return torch.exp(s) * s - torch.expm1(s)

        def fp(s):  # log t
            return s
    else:
        if a <= 0.5:
            def f(s):  # [(t^α − 1)/α − (t − 1)] / (α − 1)
                return (torch.expm1(a * s) / a - torch.expm1(s)) / b
        else:
            def f(s):  # [t (t^(α−1) − 1)/(α − 1) − (t − 1)] / α  (same value, stable near α = 1)
                return (torch.exp(s) * torch.expm1(b * s) / b - torch.expm1(s)) / a

        def fp(s):  # (t^(α−1) − 1)/(α − 1)
            return torch.expm1(b * s) / b

    f_zero = 1.0 / a if a > 0 else INF                    # f_α(0)
    f_inf = 1.0 / (1.0 - a) if a < 1 else INF             # lim f_α(t)/t = f′_α(∞)
    fp_zero = -1.0 / b if a > 1 else -INF                 # f′_α(0)
    return Divergence(name=f"alpha={a!r}", direction=f"Amari α-divergence, α={a!r} (α→0: KL(p‖π), α→1: KL(π‖p))",
                      f=_with_limits(f, f_zero, INF), f_prime=_with_limits(fp, fp_zero, f_inf), f_inf=f_inf)


def get_divergence(name_or_div: str | Divergence) -> Divergence:
    """Return the table row for a key, the α-divergence named ``"alpha=<α>"`` (the name `alpha_divergence` gives,
    so a config's ``to_dict()`` round-trips), or the ``Divergence`` itself. Unknown keys raise ValueError."""
    if isinstance(name_or_div, Divergence):
        return name_or_div
    if isinstance(name_or_div, str) and name_or_div in DIVERGENCES:
        return DIVERGENCES[name_or_div]
    if isinstance(name_or_div, str) and name_or_div.startswith("alpha="):
        try:
            alpha = float(name_or_div[len("alpha="):])
        except ValueError:
            alpha = None
        if alpha is not None and math.isfinite(alpha):
            return alpha_divergence(alpha)
    raise ValueError(f"unknown divergence {name_or_div!r}; allowed keys: {sorted(DIVERGENCES)}, 'alpha=<a>' with a "
                     "finite real a (e.g. 'alpha=0.5'), or a Divergence (e.g. alpha_divergence(0.5))")


def exact_divergence(name_or_div: str | Divergence, log_pi: Tensor, log_p: Tensor) -> Tensor:
    """D_f(π‖p) = Σ_x p(x) f(π(x)/p(x)) over an enumerated support (the last dim).

    log_pi, log_p: normalised log-probabilities of the same shape (..., S); −inf allowed.
    Returns shape (...). Terms: p > 0, π > 0: p f(π/p); p > 0, π = 0: p f(0); p = 0, π > 0: π f_inf;
    p = π = 0: 0. Differentiable w.r.t. log_pi (finite gradients wherever the value is finite).
    """
    div = get_divergence(name_or_div)
    if not (isinstance(log_pi, Tensor) and isinstance(log_p, Tensor)):
        raise ValueError("log_pi and log_p must be torch tensors")
    if log_pi.shape != log_p.shape or log_pi.dim() == 0:
        raise ValueError(f"log_pi and log_p must have the same shape (..., S) with the support last; "
                         f"got {tuple(log_pi.shape)} and {tuple(log_p.shape)}")
    if torch.isnan(log_pi).any() or torch.isnan(log_p).any() or (log_pi == INF).any() or (log_p == INF).any():
        raise ValueError("log_pi and log_p must be log-probabilities (no NaN, no +inf)")
    atol = 1e-4 if log_pi.dtype == torch.float64 else 1e-2  # catches logits / unnormalised log P, not rounding
    for nm, lv in (("log_pi", log_pi), ("log_p", log_p)):
        log_mass = torch.logsumexp(lv.detach(), dim=-1)  # (...)
        if (log_mass.abs() > atol).any():
            raise ValueError(f"{nm} must be normalised over the last dim (logsumexp = 0 within {atol:g}); "
                             f"got logsumexp in [{log_mass.min().item():.3g}, {log_mass.max().item():.3g}]. "
                             "Pass log_softmax(...) / log P − log Z, not logits or unnormalised log P.")

    pi_pos = log_pi > -INF                                 # (..., S)
    p_pos = log_p > -INF                                   # (..., S)
    both = pi_pos & p_pos
    zero = torch.zeros_like(log_pi)
    log_t = torch.where(both, log_pi - log_p, zero)        # finite everywhere (double where)
    p = torch.exp(log_p)
    term_both = p * div.f(log_t)                           # p f(π/p)
    f_zero = float(div.f(torch.full((), -INF, dtype=torch.float64)))  # f(0) = f(log_t = −inf)
    if math.isfinite(f_zero):
        term_pi_zero = p * f_zero                           # p f(0)
    else:
        term_pi_zero = torch.full_like(log_p, INF)          # p > 0 on this branch: p·∞ = ∞
    if math.isfinite(div.f_inf):
        term_p_zero = torch.exp(torch.where(pi_pos, log_pi, zero)) * div.f_inf  # π f_inf
    else:
        term_p_zero = torch.full_like(log_pi, INF)          # π > 0 on this branch: π·∞ = ∞
    terms = torch.where(both, term_both, zero)
    terms = torch.where(p_pos & ~pi_pos, term_pi_zero, terms)
    terms = torch.where(pi_pos & ~p_pos, term_p_zero, terms)
    return terms.sum(dim=-1)                                # (...)
