"""Ancestral sampling and teacher-forced scoring for Hugging Face LMs.

f-DPG (Go et al. 2023, Algorithm 1) needs, for every batch,
  * samples x_i ~ q(.|c) with their exact log-probability log_q(x_i|c) under the distribution actually sampled
    from (pure ancestral sampling: q = π_θ, temperature 1, no truncation), and
  * log π_θ(x_i|c) with gradient (and log a(x_i|c) without), by teacher forcing.

Public API (Samples and the prompt helpers left_pad, repeat_prompts, bos_prompts are re-exported from samples.py;
make_stepper, the swappable KV-cache decode step, and truncate_logits from fast/)
  sample(model, prompt_ids, prompt_mask, max_new_tokens, *, eos_token_id, pad_token_id, ...) -> Samples
  score(model, samples, *, return_token_logprobs=False) -> (B,) (or (B, T)) log-probs, differentiable
  decode(samples, tokenizer) -> list[str]  (also stored in samples.texts)

Supported models: causal HF LMs taking (input_ids, attention_mask, position_ids, cache, logits_to_keep)
(GPT2LMHeadModel, GPTNeoForCausalLM, LlamaForCausalLM) and encoder-decoders (T5ForConditionalGeneration).
Written against transformers 5.24 (KV cache argument `cache`); older 5.x (`past_key_values`) is detected.

Conventions
  * Prompts are LEFT padded (prompt_mask 0 on the left) for causal models; the position of a token is the number of
    real tokens before it (position_ids = cumsum(mask) − 1), so a row's result does not depend on its padding.
  * tokens (B, T): T ≤ max_new_tokens is the longest generated row; after EOS a row holds pad_token_id and
    mask False (mask is True up to and including EOS). Nothing after EOS enters log_q or score().
  * A categorical draw is exact, by inverse CDF (fast/draw.py), with one uniform per row and step; all the U (T, B)
    are drawn from `generator` before the loop, so every decode implementation (`impl`, see sample()) makes the same
    draws, and a CUDA graph needs no RNG inside. The decode steps and their host syncs: fast/steppers.py.
  * score() never builds a (B, T, V) log-softmax: the kernels of fast.logprobs compute log π(x_t) of the
    counted tokens only, with a hand-written backward.
  * Truncation (temperature ≠ 1, top_k, top_p) exists for EVALUATION only. It changes the sampling distribution:
    log_q is then the log-prob under the truncated distribution actually sampled from, which is not π_θ, so
    importance weights π_θ/q built from such samples are biased/undefined off the truncated support. Never train
    on truncated samples.
"""
from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from contextlib import contextmanager

import torch

from fdpg_core.fast.draw import truncate_logits
from fdpg_core.fast.logprobs import teacher_forced_logprobs
from fdpg_core.fast.steppers import _is_encoder_decoder, _resolve_impl, _sample_loop, make_stepper
from fdpg_core.samples import Samples, bos_prompts, left_pad, repeat_prompts

__all__ = ["Samples", "sample", "score", "decode", "left_pad", "repeat_prompts", "bos_prompts", "make_stepper",
           "truncate_logits"]


@contextmanager
def _eval_mode(model):
    """model.eval() for the duration (yields the model), then restore every submodule's own training flag."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, flag in flags:
            m.training = flag


# -------------------------------------------------------------------------------------------------------------- sample
def _vocab_size(model) -> int:
    emb = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if emb is not None and hasattr(emb, "weight"):
        return int(emb.weight.shape[0])
    return int(model.config.vocab_size)


def _check_id(name, value, V) -> int:
    try:
        i = None if isinstance(value, bool) else operator.index(value)
    except TypeError:
        i = None
    if i is None or not 0 <= i < V:
        raise ValueError(f"{name} must be an int in [0, {V}) (the model's vocabulary), got {value!r}")
    return i


def _validate_prompts(model, prompt_ids, prompt_mask, max_new_tokens, V):
    if not isinstance(prompt_ids, torch.Tensor) or not isinstance(prompt_mask, torch.Tensor):
        raise ValueError("prompt_ids and prompt_mask must be torch tensors (see left_pad / bos_prompts)")
    if prompt_ids.ndim != 2 or prompt_ids.shape != prompt_mask.shape or prompt_ids.shape[1] == 0:
        raise ValueError("prompt_ids and prompt_mask must both have shape (B, Tp) with Tp ≥ 1, got "
                         f"{tuple(prompt_ids.shape)} and {tuple(prompt_mask.shape)}")
    if prompt_ids.dtype not in (torch.long, torch.int32, torch.int64):
        raise ValueError(f"prompt_ids must be an integer tensor, got dtype {prompt_ids.dtype}")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an int ≥ 1, got {max_new_tokens!r}")
    m = prompt_mask.long()
    if ((m != 0) & (m != 1)).any():
        raise ValueError("prompt_mask must contain only 0 (padding) and 1 (real token)")
    if (m.sum(-1) == 0).any():
        raise ValueError("every prompt row needs ≥ 1 real token (use bos_prompts for unconditional generation)")
    real = prompt_ids[m.bool()]
    if real.min() < 0 or real.max() >= V:
        raise ValueError(f"prompt token ids must be in [0, {V}), got range [{int(real.min())}, {int(real.max())}]")
    if not _is_encoder_decoder(model):
        if (m[:, 1:] < m[:, :-1]).any():
            raise ValueError("prompts must be LEFT padded for causal models (prompt_mask 0…0 1…1 per row)")
        n_pos = getattr(model.config, "n_positions", None) or getattr(model.config, "max_position_embeddings", None)
        longest = int(m.sum(-1).max()) + max_new_tokens
        if n_pos is not None and longest > n_pos:
            raise ValueError(f"longest prompt + max_new_tokens = {longest} exceeds the model's {n_pos} positions")


def sample(model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, max_new_tokens: int, *,
           eos_token_id: int | Sequence[int] | None, pad_token_id: int, context_ids: torch.Tensor | None = None,
           generator: torch.Generator | None = None, temperature: float = 1.0, top_k: int | None = None,
           top_p: float | None = None, sync_every: int = 8, impl: str = "auto") -> Samples:
    """Batched ancestral sampling x ~ q(.|prompt) with a KV cache; returns Samples with log_q = log q(x|prompt).

    model: HF causal LM or encoder-decoder (run in eval mode here; each submodule's training flag is restored).
    prompt_ids, prompt_mask: (B, Tp), left padded for causal models (encoder input for encoder-decoders).
    eos_token_id: int, several ints, or None (never stop early). pad_token_id: filler after EOS (may equal EOS).
    context_ids: (B,) context index per row (default zeros), carried into Samples.
    generator: torch.Generator on the model's device, for reproducible draws.
    temperature/top_k/top_p: EVALUATION ONLY (they bias importance weights; log_q is then under the truncated
      distribution). top_k None or 0 and top_p None or 1.0 mean no truncation.
    sync_every: check "all rows finished" (a host sync) every this many steps; T never depends on it.
    impl: decode implementation, identical distributions (the uniforms are drawn before the loop, so the same
      generator state gives the same draws up to rounding of the logits):
      "auto"   "graph" on CUDA / "lean" on CPU when fast.decoders supports the model (GPT-2, Llama), else "hf";
      "hf"     the model's own forward and KV cache, one call per token (any HF causal LM or encoder-decoder);
      "lean"   fast.decoders.LeanStepper: the model's modules on a preallocated KV cache, no HF overhead;
      "static" fast.decoders.StaticSampler eagerly (device-side step counter, static shapes; for tests);
      "graph"  the same captured as one CUDA graph per step and replayed (CUDA only; cached per model/shape);
      "compile" (opt-in, never chosen by "auto") the "static" step compiled by torch.compile (fast/decoders.py;
               needs a C++ compiler, ~5-60 s on the first call per model/shape): log_q agrees to rounding, and a
               token can differ only when a uniform falls within rounding of a CDF boundary.
    """
    # 1. validate
    V = _vocab_size(model)
    _validate_prompts(model, prompt_ids, prompt_mask, max_new_tokens, V)
    if eos_token_id is None:  # EOS first: a pad id defaulted to the EOS id is then reported as eos_token_id
        eos_list = []
    elif isinstance(eos_token_id, (Sequence, torch.Tensor)) and not isinstance(eos_token_id, str):
        eos_list = [_check_id("eos_token_id", e, V) for e in list(eos_token_id)]
    else:
        eos_list = [_check_id("eos_token_id", eos_token_id, V)]
    pad_token_id = _check_id("pad_token_id", pad_token_id, V)
    if not (isinstance(temperature, (int, float)) and temperature > 0 and math.isfinite(temperature)):
        raise ValueError(f"temperature must be a finite number > 0 (1.0 = no change), got {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0):
        raise ValueError(f"top_k must be None, 0 (off) or an int ≥ 1, got {top_k!r}")
    if top_p is not None and not (isinstance(top_p, (int, float)) and 0 < top_p <= 1):
        raise ValueError(f"top_p must be None or in (0, 1] (1.0 = off), got {top_p!r}")
    if not isinstance(sync_every, int) or sync_every < 1:
        raise ValueError(f"sync_every must be an int ≥ 1, got {sync_every!r}")
    device = next(model.parameters()).device
    if generator is not None and generator.device.type != device.type:
        raise ValueError(f"generator is on {generator.device} but the model is on {device}; create it there")
    B = prompt_ids.shape[0]
    if context_ids is None:
        context_ids = torch.zeros(B, dtype=torch.long, device=device)
    elif context_ids.shape != (B,):
        raise ValueError(f"context_ids must have shape ({B},), got {tuple(context_ids.shape)}")
    truncated = temperature != 1.0 or bool(top_k) or (top_p is not None and top_p < 1.0)
    impl = _resolve_impl(model, impl, device)

    prompt_mask = prompt_mask.to(device=device, dtype=torch.long)
    # padded slots may hold any id (e.g. −100); give the embedding a valid one
    prompt_ids = prompt_ids.to(device=device, dtype=torch.long).masked_fill(prompt_mask == 0, pad_token_id)
    # 2. one uniform per row and step, drawn up front: no RNG inside the loop (CUDA graphs), same draws for any impl
    U = torch.rand((max_new_tokens, B, 1), generator=generator, device=device, dtype=torch.float32)  # (T, B, 1)

    with _eval_mode(model), torch.no_grad():  # no_grad (not inference_mode): outputs feed later grad forwards
        if impl in ("static", "graph", "compile"):
            from fdpg_core.fast.decoders import sample_static

            tokens, mask, log_q = sample_static(model, prompt_ids, prompt_mask, U, eos_ids=eos_list,
                                                pad_id=pad_token_id, truncation=(temperature, top_k, top_p),
                                                use_graph=impl == "graph", sync_every=sync_every,
                                                compile=impl == "compile")
        else:
            tokens, mask, log_q = _sample_loop(model, prompt_ids, prompt_mask, U, eos_list, pad_token_id,
                                               (temperature, top_k, top_p) if truncated else None, sync_every, impl)

    # 5. trim to the longest row (one sync; independent of sync_every)
    T = int(mask.any(0).nonzero().max()) + 1
    return Samples(prompt_ids=prompt_ids, prompt_mask=prompt_mask, tokens=tokens[:, :T].contiguous(),
                   mask=mask[:, :T].contiguous(), log_q=log_q, context_ids=context_ids.to(device),
                   pad_token_id=pad_token_id)


# --------------------------------------------------------------------------------------------------------------- score
def score(model, samples: Samples, *, return_token_logprobs: bool = False) -> torch.Tensor:
    """Teacher-forced log π(x | prompt) = Σ_{t: mask} log π(x_t | x_<t, prompt), (B,), differentiable.

    Runs in the model's CURRENT mode (dropout active if model.training): call model.eval() when you want exact
    log-probs with gradient (f-DPG wants log π without dropout, matching log_q). Use torch.no_grad() for log a.
    With return_token_logprobs=True returns the (B, T) per-token log-probs instead (0 where mask is False).
    """
    tokens, mask = samples.tokens, samples.mask
    if tokens.ndim != 2 or mask.shape != tokens.shape or tokens.shape[1] == 0:
        raise ValueError(f"samples.tokens and samples.mask must both be (B, T) with T ≥ 1, got {tuple(tokens.shape)} "
                         f"and {tuple(mask.shape)}")
    device = next(model.parameters()).device
    mask = mask.to(device).bool()
    prompt_mask = samples.prompt_mask.to(device).long()
    # whatever fills padded / post-EOS slots (pad id, −100, ...) cannot change counted log-probs: make it id 0
    tokens = tokens.to(device).long().masked_fill(~mask, 0)
    prompt_ids = samples.prompt_ids.to(device).long().masked_fill(prompt_mask == 0, 0)
    tok_logp = teacher_forced_logprobs(model, prompt_ids, prompt_mask, tokens, mask)  # (B, T)
    tok_logp = torch.where(mask, tok_logp, 0.0)  # nothing after EOS counts
    return tok_logp if return_token_logprobs else tok_logp.sum(-1)


# -------------------------------------------------------------------------------------------------------------- decode
def decode(samples: Samples, tokenizer, *, skip_special_tokens: bool = True) -> list[str]:
    """Text of each generated part (tokens under mask, final EOS dropped); also stored in samples.texts."""
    eos = getattr(tokenizer, "eos_token_id", None)
    lengths = samples.mask.sum(-1).tolist()
    rows = samples.tokens.tolist()
    seqs = []
    for row, n in zip(rows, lengths):  # host-side text post-processing, not the sampling hot path
        ids = row[:n]
        if n and eos is not None and ids[-1] == eos:
            ids = ids[:-1]
        seqs.append(ids)
    texts = tokenizer.batch_decode(seqs, skip_special_tokens=skip_special_tokens)
    samples.texts = texts
    return texts
