"""The batch of samples that flows through f-DPG, and the prompt helpers that build its prompts.

    Samples                      prompts + generated continuations, log_q, context ids (dataclass)
    left_pad(seqs, pad_id)       -> (ids, mask), left padded
    repeat_prompts(ids, mask, n) -> (ids, mask, context_ids), each prompt n times in a row
    bos_prompts(n, bos_token_id) -> (ids, mask), n prompts of just BOS (unconditional generation)
"""
from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch

__all__ = ["Samples", "left_pad", "repeat_prompts", "bos_prompts"]


# ------------------------------------------------------------------------------------------------------------- Samples
@dataclass
class Samples:
    """A batch of B generated sequences (one row per sample) and the prompts they continue."""

    prompt_ids: torch.Tensor  # (B, Tp) long, left padded
    prompt_mask: torch.Tensor  # (B, Tp) long, 1 = real prompt token
    tokens: torch.Tensor  # (B, T) long, pad_token_id after EOS
    mask: torch.Tensor  # (B, T) bool, True up to and including EOS
    log_q: torch.Tensor  # (B,) float32, Σ_t log q(x_t | x_<t, c) over mask, no grad
    context_ids: torch.Tensor  # (B,) long, which context (prompt) each row came from; all 0 if unconditional
    texts: list[str] | None = None  # decoded generated part, filled by decode()
    pad_token_id: int | None = None  # filler used after EOS (needed by Samples.cat for ragged lengths)

    def __len__(self) -> int:
        return self.tokens.shape[0]

    @property
    def lengths(self) -> torch.Tensor:
        """(B,) number of generated tokens counted in log_q (EOS included)."""
        return self.mask.sum(-1)

    def to(self, device) -> Samples:
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        for k, v in moved.items():
            if isinstance(v, torch.Tensor):
                moved[k] = v.to(device)
        return Samples(**moved)

    def index(self, rows) -> Samples:
        """Select rows (LongTensor of indices, bool mask (B,), slice or list of ints)."""
        if isinstance(rows, list):
            rows = torch.as_tensor(rows, dtype=torch.long)
        if isinstance(rows, torch.Tensor):
            rows = rows.to(self.tokens.device)
            if rows.dtype == torch.bool and rows.shape != (len(self),):
                raise ValueError(f"bool row mask must have shape ({len(self)},), got {tuple(rows.shape)}")
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        for k, v in out.items():
            if isinstance(v, torch.Tensor):
                out[k] = v[rows]
        if self.texts is not None:
            idx = torch.arange(len(self))[rows.cpu() if isinstance(rows, torch.Tensor) else rows]
            out["texts"] = [self.texts[i] for i in idx.reshape(-1).tolist()]
        return Samples(**out)

    @staticmethod
    def cat(parts: Sequence[Samples]) -> Samples:
        """Concatenate along the batch; ragged prompts are left padded and ragged continuations right padded
        (with each part's pad_token_id; prompt pads get mask 0, continuation pads get mask False)."""
        if len(parts) == 0:
            raise ValueError("Samples.cat needs at least one Samples, got an empty sequence")
        Tp = max(p.prompt_ids.shape[1] for p in parts)
        T = max(p.tokens.shape[1] for p in parts)
        pads = sorted({p.pad_token_id for p in parts if p.pad_token_id is not None})
        pad = pads[0] if len(pads) == 1 else None
        ragged = any(p.prompt_ids.shape[1] != Tp or p.tokens.shape[1] != T for p in parts)
        if ragged and pad is None:
            raise ValueError("Samples.cat: parts have different lengths and need one common pad_token_id to be padded, "
                             f"got pad ids {pads} (set Samples.pad_token_id)")

        def lpad(x, n, value):  # (B, t) -> (B, n), left
            return torch.nn.functional.pad(x, (n - x.shape[1], 0), value=value)

        def rpad(x, n, value):  # (B, t) -> (B, n), right
            return torch.nn.functional.pad(x, (0, n - x.shape[1]), value=value)

        texts = None
        if all(p.texts is not None for p in parts):
            texts = [t for p in parts for t in p.texts]
        return Samples(prompt_ids=torch.cat([lpad(p.prompt_ids, Tp, pad or 0) for p in parts]),
                       prompt_mask=torch.cat([lpad(p.prompt_mask, Tp, 0) for p in parts]),
                       tokens=torch.cat([rpad(p.tokens, T, pad or 0) for p in parts]),
                       mask=torch.cat([rpad(p.mask, T, False) for p in parts]),
                       log_q=torch.cat([p.log_q for p in parts]), context_ids=torch.cat([p.context_ids for p in parts]),
                       texts=texts, pad_token_id=pad)


# ------------------------------------------------------------------------------------------------------ Prompt helpers
def _position_ids(mask: torch.Tensor) -> torch.Tensor:
    """(B, L) 0/1 mask -> (B, L) positions = number of real tokens before each one (0 on left padding)."""
    return (mask.long().cumsum(-1) - 1).clamp_(min=0)


def left_pad(seqs: Sequence[Sequence[int]], pad_id: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Left pad lists of token ids -> ids (C, Tp) long, mask (C, Tp) long (1 = real token)."""
    try:
        pad = None if isinstance(pad_id, bool) else operator.index(pad_id)
    except TypeError:
        pad = None
    if pad is None or pad < 0:
        raise ValueError(f"left_pad: pad_id={pad_id!r}; allowed: an int token id >= 0 (e.g. tokenizer.pad_token_id, "
                         "or tokenizer.eos_token_id when the tokenizer has no pad token, as GPT-2's)")
    if len(seqs) == 0:
        raise ValueError("left_pad needs at least one sequence, got an empty list")
    lens = [len(s) for s in seqs]
    if min(lens) == 0:
        raise ValueError(f"left_pad: every sequence needs ≥ 1 token, got lengths {lens}")
    Tp = max(lens)
    ids = torch.full((len(seqs), Tp), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), Tp), dtype=torch.long)
    for i, s in enumerate(seqs):  # prompt construction, not the hot path
        ids[i, Tp - len(s):] = torch.as_tensor(list(s), dtype=torch.long)
        mask[i, Tp - len(s):] = 1
    return ids.to(device), mask.to(device)


def repeat_prompts(prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                   n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """C prompts -> C·n rows (each prompt n times, consecutively) and context_ids (C·n,) = [0]*n + [1]*n + ...."""
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"repeat_prompts: n must be an int ≥ 1, got {n!r}")
    if prompt_ids.ndim != 2 or prompt_ids.shape != prompt_mask.shape:
        raise ValueError(f"repeat_prompts: prompt_ids and prompt_mask must both be (C, Tp), got "
                         f"{tuple(prompt_ids.shape)} and {tuple(prompt_mask.shape)}")
    C = prompt_ids.shape[0]
    context_ids = torch.arange(C, device=prompt_ids.device).repeat_interleave(n)  # (C·n,)
    return prompt_ids[context_ids], prompt_mask[context_ids], context_ids


def bos_prompts(n: int, bos_token_id: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Unconditional generation: n prompts of just BOS -> ids (n, 1), mask (n, 1)."""
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"bos_prompts: n must be an int ≥ 1, got {n!r}")
    if bos_token_id is None:
        raise ValueError("bos_prompts: bos_token_id is None; pass the model's BOS id (GPT-2: eos = bos = 50256)")
    ids = torch.full((n, 1), int(bos_token_id), dtype=torch.long, device=device)
    return ids, torch.ones_like(ids)
