"""The f-DPG loss: REINFORCE on the pseudo-reward R_θ(x) = −f′(π_θ(x)/p(x)).

Gradient theorem (derived in docs/METHOD.md, "The f-DPG gradient"): for p = P/Z,

    ∇_θ D_f(π_θ‖p) = E_{x∼π_θ}[ f′(π_θ(x)/p(x)) ∇_θ log π_θ(x) ]
                   = E_{x∼q}[ (π_θ(x)/q(x)) (f′(π_θ(x)/p(x)) − B) ∇_θ log π_θ(x) ]

for any proposal q covering π_θ and any constant B (Σ_x π ∇log π = 0). ``fdpg_loss`` returns a
scalar *surrogate* whose gradient is the Monte-Carlo estimate of the right-hand side, so that
``loss.backward(); optimizer.step()`` (gradient *descent*) decreases D_f(π_θ‖p).

The state of the algorithm (running Ẑ, the baseline) lives in the training loop, not here.
"""
from __future__ import annotations

import math

import torch

from fdpg_core.divergences import Divergence, get_divergence

Tensor = torch.Tensor

__all__ = ["NonFiniteLossError", "fdpg_loss", "pseudo_reward"]


class NonFiniteLossError(FloatingPointError):
    """Training stopped at a step whose target scores, sample log-probabilities, pseudo-reward, loss or gradient
    are not finite (raised before any update of that step). Also raised by `Target.score` when a factor's value
    is NaN or +inf."""


def _as_tensor_like(value, ref: Tensor, name: str) -> Tensor:
    """A float / 0-d tensor / (B,) tensor -> tensor broadcastable to ``ref`` (same dtype/device)."""
    if isinstance(value, Tensor):
        t = value.detach().to(dtype=ref.dtype, device=ref.device)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        t = torch.tensor(float(value), dtype=ref.dtype, device=ref.device)
    else:
        raise ValueError(f"{name} must be a float, a 0-d tensor or a tensor of shape {tuple(ref.shape)}; got {type(value).__name__}")
    if t.dim() != 0 and t.shape != ref.shape:
        raise ValueError(f"{name} must be a float, a 0-d tensor or a tensor of shape {tuple(ref.shape)}; got shape {tuple(t.shape)}")
    return t


def _log_t(log_pi: Tensor, log_P: Tensor, log_Z) -> Tensor:
    """log t = log π − log p = log π − (log P − log Z), detached; shapes validated."""
    if not isinstance(log_pi, Tensor) or not isinstance(log_P, Tensor):
        raise ValueError("log_pi and log_P must be torch tensors of shape (B,)")
    if log_pi.dim() == 0 or log_pi.shape != log_P.shape:
        raise ValueError(f"log_pi and log_P must have the same shape (B,); got {tuple(log_pi.shape)} and "
                         f"{tuple(log_P.shape)}")
    log_Z = _as_tensor_like(log_Z, log_pi, "log_Z")
    if not torch.isfinite(log_Z).all():
        raise ValueError(f"log_Z must be finite (Ẑ > 0); got {log_Z}. Skip batches while Ẑ = 0.")
    return log_pi.detach() - (log_P.detach().to(log_pi.dtype) - log_Z)  # (B,)


def pseudo_reward(log_pi: Tensor, log_P: Tensor, log_Z, divergence: str | Divergence) -> Tensor:
    """R(x) = −f′(π(x)/p(x)) with log t = log π − (log P − log Z); detached, shape (B,).

    May contain −inf (e.g. ``rkl`` where log P = −inf); ``fdpg_loss`` rejects non-finite rewards.
    """
    div = get_divergence(divergence)
    return -div.f_prime(_log_t(log_pi, log_P, log_Z))


def fdpg_loss(log_pi: Tensor, log_P: Tensor, log_Z, divergence: str | Divergence, *, log_q: Tensor | None = None,
              baseline=0.0) -> Tensor:
    """Scalar surrogate  L = mean_i w_i (f′(t_i) − baseline) log π(x_i),  w_i = π(x_i)/q(x_i) (detached).

    ∇_θ L = (1/N) Σ_i w_i (f′(t_i) − baseline) ∇_θ log π_θ(x_i)  ≈  ∇_θ D_f(π_θ‖p)   (minimise L).

    log_pi: (B,) log π_θ(x_i), differentiable (the only tensor with a gradient path).
    log_P: (B,) unnormalised target log P(x_i); −inf allowed where f′(∞) = f_inf is finite
        (kl, js, tv, chi2, hellinger; e.g. js gives f′ = ½ log 2 there).
    log_Z: float, 0-d tensor or (B,) tensor (one Ẑ per context, repeated per row).
    divergence: a key of ``DIVERGENCES`` or a ``Divergence``.
    log_q: (B,) log q(x_i) of the proposal that drew x_i; None means on-policy (w = 1).
    baseline: float, 0-d or (B,) tensor subtracted from f′ (not from R = −f′): to use a running
        mean B̄ of the pseudo-rewards R, pass ``baseline = −B̄`` (i.e. the running mean of f′).
    """
    div = get_divergence(divergence)
    log_t = _log_t(log_pi, log_P, log_Z)                          # (B,)
    fp = div.f_prime(log_t)                                       # (B,) f′(t), detached
    if not torch.isfinite(fp).all():
        bad = ~torch.isfinite(fp)
        i = int(bad.nonzero()[0, 0])
        raise ValueError(f"non-finite pseudo-reward −f′(t) for divergence {div.name!r} at {int(bad.sum())} of "
                         f"{fp.numel()} samples (first: log_pi={log_pi.flatten()[i].item():.4g}, "
                         f"log_P={log_P.flatten()[i].item():.4g}). {div.name!r} has f′(0) = "
                         f"{div.f_prime(torch.tensor(-math.inf)).item()} and f′(∞) = {div.f_inf}, so it cannot handle "
                         "log P = −inf (or log π = −inf). For a binary factor b(x) ∈ {0, 1} put a floor on log b "
                         "(log b ≥ −ε_floor, e.g. BinaryFactor(..., log_floor=-10)), or use kl/js/tv.")
    if log_q is None:
        w = torch.ones_like(fp)                                   # on-policy: q = π
    else:
        if not isinstance(log_q, Tensor) or log_q.shape != log_pi.shape:
            shape = tuple(log_q.shape) if isinstance(log_q, Tensor) else type(log_q).__name__
            raise ValueError(f"log_q must be a tensor of shape {tuple(log_pi.shape)} like log_pi; got {shape}")
        log_w = log_pi.detach() - log_q.detach().to(log_pi.dtype)  # (B,) log π/q
        if torch.isnan(log_w).any() or (log_w == math.inf).any():
            raise ValueError("importance weights π/q are NaN or infinite: q(x) = 0 for a sampled x, or NaN inputs")
        w = torch.exp(log_w)                                      # (B,)
    b = _as_tensor_like(baseline, log_pi, "baseline")
    if not torch.isfinite(b).all():
        raise ValueError(f"baseline must be finite; got {b}")
    advantage = w * (fp - b)                                      # (B,) w_i (f′_i − baseline), constant
    terms = torch.where(w > 0, advantage * log_pi, torch.zeros_like(advantage))  # w = 0 ⇔ π(x) = 0: no term
    return terms.mean()                                           # scalar surrogate
