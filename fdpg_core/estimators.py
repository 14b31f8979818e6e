"""Monte-Carlo metrics from samples x_1..x_N ~ q, given log values at the samples (each (B,)).

All returns are 0-d tensors (reduce on device; call ``.item()`` when logging). Formulas:

    Ẑ           = (1/N) Σ_i P(x_i)/q(x_i)                                  (log_Z_hat, in log space)
    ESS         = (Σ_i w_i)² / Σ_i w_i²,  fraction = ESS / N                  (ess)
    D_f(π‖p)    ≈ (1/N) Σ_i [ 1{P>0} (P/q)(x_i)/Ẑ · f(π Ẑ/P) + 1{P=0} (π/q)(x_i) f_inf ]   (is_divergence)
    KL(π‖a)     = E_π[log π − log a] ≈ (1/N) Σ_i (π/q)(x_i) (log π − log a)(x_i)  (kl_pi_a)
    H(π)        = −E_π[log π] ≈ −(1/N) Σ_i log π(x_i),  x_i ~ π               (sequence_entropy)

With key ``kl`` the divergence estimate is KL(p‖π) = −log Ẑ + (1/Ẑ) mean_i[(P/q)(log P − log π)].
"""
from __future__ import annotations

import math

import torch

from fdpg_core.divergences import Divergence, get_divergence

Tensor = torch.Tensor

__all__ = ["log_Z_hat", "ess", "is_divergence", "kl_pi_a", "sequence_entropy"]


def _check_same_shape(**tensors: Tensor) -> None:
    """ValueError unless every argument is a 1-D+ tensor of one common shape."""
    shapes = {}
    for name, t in tensors.items():
        if not isinstance(t, Tensor):
            raise ValueError(f"{name} must be a torch tensor of shape (B,); got {type(t).__name__}")
        shapes[name] = tuple(t.shape)
    if len(set(shapes.values())) != 1 or any(len(s) == 0 or 0 in s for s in shapes.values()):
        raise ValueError(f"expected non-empty tensors of one common shape (B,); got {shapes}")


def log_Z_hat(log_P: Tensor, log_q: Tensor) -> Tensor:
    """log Ẑ = log (1/N) Σ_i P(x_i)/q(x_i) = logmeanexp(log P − log q); −inf if no sample has P > 0."""
    _check_same_shape(log_P=log_P, log_q=log_q)
    log_r = (log_P - log_q).flatten()  # (N,)
    return torch.logsumexp(log_r, dim=0) - math.log(log_r.numel())  # logmeanexp


def ess(log_w: Tensor, *, fraction: bool = False) -> Tensor:
    """Effective sample size (Σw)²/Σw² from log-weights, in log space (no overflow); in [1, N].

    ``fraction=True`` returns ESS/N ∈ (0, 1]. All weights zero (every log_w = −inf) gives 0.
    """
    _check_same_shape(log_w=log_w)
    lw = log_w.flatten()
    log_ess = 2.0 * torch.logsumexp(lw, dim=0) - torch.logsumexp(2.0 * lw, dim=0)  # log (Σw)² − log Σw²
    out = torch.exp(log_ess).clamp(max=lw.numel())  # ≤ N exactly (equal weights can round a last bit above)
    out = torch.where(torch.isneginf(lw).all(), torch.zeros_like(out), out)
    return out / lw.numel() if fraction else out


def is_divergence(divergence: str | Divergence, log_pi: Tensor, log_P: Tensor, log_q: Tensor, log_Z=None) -> Tensor:
    """Importance-sampling estimate of D_f(π‖p) = E_p[f(π/p)] from x_i ~ q (so ``kl`` gives KL(p‖π)).

    D_f ≈ (1/N) Σ_i [ 1{P>0} (P/q)(x_i)/Ẑ · f(log π − log P + log Ẑ) + 1{P=0} (π/q)(x_i) f_inf ].
    The second term is the π-mass outside the target's support (x with p = 0), cost f_inf each.
    log_Z: float or 0-d tensor (the true or running log Z); None uses log_Z_hat(log_P, log_q) from
    the same samples (a ratio estimator: consistent, O(1/N) bias). q must cover supp(p) ∪ supp(π).
    """
    div = get_divergence(divergence)
    _check_same_shape(log_pi=log_pi, log_P=log_P, log_q=log_q)
    log_pi, log_P, log_q = (t.detach() for t in (log_pi, log_P, log_q))
    if log_Z is None:
        log_Z = log_Z_hat(log_P, log_q)
    log_Z = torch.as_tensor(log_Z, dtype=log_pi.dtype, device=log_pi.device)
    if log_Z.dim() != 0 or not torch.isfinite(log_Z):
        raise ValueError(f"log_Z must be a finite scalar (Ẑ > 0); got {log_Z}")
    p_pos = log_P > -math.inf                                               # (B,)
    zero = torch.zeros_like(log_pi)
    log_p = log_P - log_Z                                                   # (B,) log p(x_i)
    log_t = torch.where(p_pos, log_pi - log_p, zero)                        # (B,) log π/p
    in_support = torch.exp(log_p - log_q) * div.f(log_t)                   # (p/q) f(π/p)
    pi_pos = log_pi > -math.inf
    if math.isfinite(div.f_inf):
        off_support = torch.exp(log_pi - log_q) * div.f_inf                 # (π/q) f_inf
    else:
        off_support = torch.where(pi_pos, torch.full_like(log_pi, math.inf), zero)
    terms = torch.where(p_pos, in_support, torch.where(pi_pos, off_support, zero))  # (B,)
    return terms.mean()


def kl_pi_a(log_pi: Tensor, log_a: Tensor, log_q: Tensor | None = None) -> Tensor:
    """KL(π‖a) = E_π[log π − log a]; with samples from q ≠ π, mean_i (π/q)(x_i)(log π − log a)(x_i).

    Plain (not self-normalised) importance sampling: unbiased because π and q are normalised.
    """
    if log_q is None:
        _check_same_shape(log_pi=log_pi, log_a=log_a)
        return (log_pi - log_a).detach().mean()
    _check_same_shape(log_pi=log_pi, log_a=log_a, log_q=log_q)
    log_pi, log_a, log_q = (t.detach() for t in (log_pi, log_a, log_q))
    pi_pos = log_pi > -math.inf
    terms = torch.exp(log_pi - log_q) * (log_pi - log_a)                   # (B,) (π/q)(log π − log a)
    return torch.where(pi_pos, terms, torch.zeros_like(terms)).mean()      # π = 0 terms are 0


def sequence_entropy(log_pi: Tensor) -> Tensor:
    """H(π) ≈ −(1/N) Σ_i log π(x_i) for x_i ~ π (on-policy samples, in nats per sequence)."""
    _check_same_shape(log_pi=log_pi)
    return -log_pi.detach().mean()
