"""Drawing one token, shared by the reference sampler (fdpg_core.sampling) and the fast paths (fdpg_core.fast).

    draw(logits, u)                              exact categorical draw by inverse CDF -> (idx (B,), log-prob (B,))
    truncate_logits(logits, temperature, top_k, top_p)   evaluation-only truncation used by sample()

The draw: w = exp(l − max l), cdf = cumsum(w), u = (1 − U)·cdf[-1] with U ~ U[0, 1) so u ∈ (0, total],
idx = searchsorted(cdf, u). This is exact (a token with w = 0 is never drawn) and several times faster than
torch.multinomial on CPU for V ≥ 5k (one U per row instead of RNG over B×V).
"""
from __future__ import annotations

import math

import torch

__all__ = ["draw", "truncate_logits"]


# ----------------------------------------------------------------------------------------------------------------
# Drawing one token
# ----------------------------------------------------------------------------------------------------------------
def truncate_logits(logits: torch.Tensor, temperature: float = 1.0, top_k=None, top_p=None) -> torch.Tensor:
    """Evaluation-only truncation of (B, V) logits: l/temperature, keep the top_k largest (ties kept), keep the
    smallest set of most likely tokens whose mass ≥ top_p. Removed tokens get −inf. Identity with the defaults."""
    if temperature != 1.0:
        logits = logits / temperature
    if top_k is not None and top_k > 0 and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, -math.inf)
    if top_p is not None and top_p < 1.0:
        sorted_l, order = torch.sort(logits, dim=-1, descending=True)  # (B, V)
        p = torch.softmax(sorted_l, dim=-1)
        mass_before = p.cumsum(-1) - p  # mass of strictly more likely tokens
        drop_sorted = mass_before >= top_p  # the most likely token always kept (mass_before = 0 < top_p)
        drop = torch.zeros_like(drop_sorted).scatter_(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, -math.inf)
    return logits


def draw(logits: torch.Tensor, u: torch.Tensor, work: torch.Tensor | None = None):
    """Exact categorical draw from softmax(logits (B, V)) by inverse CDF -> (idx (B,), log-prob (B,)).

    u (B, 1): uniforms in [0, 1) (drawn before the decode loop). work: optional reusable fp32 (B, V) buffer for the
    cumulative weights (a fresh tensor of tens of MB per step costs page faults on CPU)."""
    logits = logits.float()
    m = logits.amax(-1, keepdim=True)  # (B, 1) (amax: max(-1) also computes indices, ~10× slower on CPU)
    w = torch.sub(logits, m, out=work) if work is not None else logits - m
    cdf = w.exp_().cumsum_(-1)  # (B, V) unnormalised CDF, in place: cdf_j = Σ_{i ≤ j} exp(l_i − m)
    total = cdf[:, -1:]  # (B, 1)
    idx = torch.searchsorted(cdf, (1.0 - u) * total)  # (B, 1), first j with cdf_j ≥ u' for u' ∈ (0, total]
    idx = idx.clamp_(max=cdf.shape[-1] - 1)
    # log q(idx) = l_idx − logsumexp(l) = (l_idx − m) − log Σ_j exp(l_j − m)
    logp = (logits.gather(-1, idx) - m - total.log()).squeeze(-1)  # (B,)
    return idx.squeeze(-1), logp
