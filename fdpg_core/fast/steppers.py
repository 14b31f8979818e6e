"""The decode steps behind `sampling.sample`: the Hugging Face KV-cache steppers, the choice of implementation
(`impl`) and the eager decode loop. `sampling.sample` validates its input, draws the uniforms and calls these.

    make_stepper(model, prompt_ids, prompt_mask, max_new_tokens, *, impl)  .prefill() -> (B, V), .step(tok) -> (B, V)
    _resolve_impl(model, impl, device)   "auto" -> "graph" (CUDA) / "lean" (CPU) where fast.decoders supports the model
    _sample_loop(...)                    the eager loop (impl "hf" or "lean") -> tokens (B, T), mask (B, T), log_q (B,)

Host syncs: everything runs on the model's device. The decode loops perform no host sync except an "all rows
finished" check every `sync_every` steps (one bool transfer) and one at the end to trim T (input validation syncs a
few times before the loop). NB transformers' own create_causal_mask syncs once per step (it reads the 2-D padding
mask to decide whether SDPA may skip the mask): the "hf" path has that sync, the lean / static / graph paths build
their masks from a bool key_valid tensor and do not.
"""
from __future__ import annotations

import inspect

import torch

from fdpg_core.fast.draw import draw, truncate_logits
from fdpg_core.samples import _position_ids

__all__ = ["IMPLS", "make_stepper"]


def _is_encoder_decoder(model) -> bool:
    return bool(getattr(model.config, "is_encoder_decoder", False))


def _decoder_start_id(model) -> int:
    """T5's decoder starts from config.decoder_start_token_id (generation_config as a fallback)."""
    start = getattr(model.config, "decoder_start_token_id", None)
    if start is None and getattr(model, "generation_config", None) is not None:
        start = model.generation_config.decoder_start_token_id
    if start is None:
        raise ValueError(
            "encoder-decoder model has no decoder_start_token_id in config or generation_config "
            "(T5 uses the pad id, 0): set model.config.decoder_start_token_id"
        )
    return int(start)


def _cache_kwarg(model) -> str:
    """Name of the KV-cache argument: `cache` in transformers ≥ 5.2x (pinned 5.24), `past_key_values` before."""
    params = inspect.signature(model.forward).parameters  # follows functools.wraps to the real signature
    return "cache" if "cache" in params else "past_key_values"


def _out_cache(out):
    return out.cache if "cache" in out else out.past_key_values


class _CausalStepper:
    """KV-cache decoding for a causal LM with left-padded prompts.

    The attention mask (B, Tp + max_new) is preallocated (prompt mask then ones); positions continue from each
    row's number of real prompt tokens, so the cached run equals a full forward on the unpadded sequence.
    """

    def __init__(self, model, prompt_ids, prompt_mask, max_new_tokens):
        self.model = model
        B, Tp = prompt_ids.shape
        self.prompt_ids, self.prompt_mask = prompt_ids, prompt_mask
        self.attn = torch.ones((B, Tp + max_new_tokens), dtype=torch.long, device=prompt_ids.device)
        self.attn[:, :Tp] = prompt_mask  # (B, Tp + max_new)
        self.pos = prompt_mask.sum(-1, keepdim=True)  # (B, 1) position of the first generated token
        self.L = Tp  # tokens seen so far (cache length)
        self.cache, self.cache_kw = None, _cache_kwarg(model)

    def prefill(self) -> torch.Tensor:
        out = self.model(
            input_ids=self.prompt_ids,
            attention_mask=self.attn[:, : self.L],
            position_ids=_position_ids(self.prompt_mask),
            use_cache=True,
            logits_to_keep=1,
        )
        self.cache = _out_cache(out)
        return out.logits[:, -1]  # (B, V)

    def step(self, tok: torch.Tensor) -> torch.Tensor:
        """Feed tok (B,) at the next position; return next-token logits (B, V)."""
        self.L += 1
        out = self.model(
            input_ids=tok[:, None],
            attention_mask=self.attn[:, : self.L],
            position_ids=self.pos,
            use_cache=True,
            **{self.cache_kw: self.cache},
        )
        self.cache = _out_cache(out)
        self.pos = self.pos + 1
        return out.logits[:, -1]  # (B, V)


class _Seq2SeqStepper:
    """KV-cache decoding for an encoder-decoder: encoder once, decoder from decoder_start_token_id."""

    def __init__(self, model, prompt_ids, prompt_mask, max_new_tokens):
        self.model = model
        self.prompt_mask = prompt_mask
        self.enc = model.get_encoder()(input_ids=prompt_ids, attention_mask=prompt_mask)
        self.start = torch.full((prompt_ids.shape[0],), _decoder_start_id(model), device=prompt_ids.device)
        self.cache, self.cache_kw = None, _cache_kwarg(model)

    def prefill(self) -> torch.Tensor:
        return self.step(self.start)

    def step(self, tok: torch.Tensor) -> torch.Tensor:
        out = self.model(
            encoder_outputs=self.enc,
            attention_mask=self.prompt_mask,
            decoder_input_ids=tok[:, None],
            use_cache=True,
            **{self.cache_kw: self.cache},
        )
        self.cache = _out_cache(out)
        return out.logits[:, -1]  # (B, V)


IMPLS = ("auto", "hf", "lean", "static", "graph", "compile")


def _resolve_impl(model, impl: str, device) -> str:
    """auto -> graph (CUDA) or lean (CPU) for models fast.decoders supports, else hf. Explicit choices are checked."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if impl == "hf":
        return impl
    from fdpg_core.fast import decoders  # lazy: keeps `import fdpg_core.sampling` light

    reason = decoders.unsupported_reason(model)
    if impl == "auto":
        if reason is not None:
            return "hf"
        return "graph" if device.type == "cuda" else "lean"
    if reason is not None:
        raise ValueError(f"impl={impl!r} cannot run this model ({reason}); allowed for it: 'auto', 'hf'")
    if impl == "graph" and device.type != "cuda":
        raise ValueError(f"impl='graph' needs a CUDA model, got device {device}; allowed here: 'auto', 'hf', "
                         "'lean', 'static', 'compile'")
    if impl == "compile":
        why = decoders.compile_unavailable_reason()
        if why is not None:
            raise ValueError(f"impl='compile' is unavailable: {why}")
    return impl


def make_stepper(model, prompt_ids, prompt_mask, max_new_tokens, *, impl: str = "auto",
                 reuse_buffers: bool = False):
    """The decode step used by sample(): `.prefill() -> logits (B, V)` then `.step(tok (B,)) -> logits (B, V)`.

    impl: "auto" (the lean static-cache decoder of fast.decoders for GPT-2 / Llama models, HF otherwise), "hf"
    (the model's own forward with its KV cache) or "lean". reuse_buffers (lean only): return one reused (B, V)
    logits buffer, valid until the next call."""
    device = prompt_ids.device
    impl = _resolve_impl(model, impl, device)
    if impl in ("lean", "static", "graph", "compile"):
        from fdpg_core.fast.decoders import LeanStepper

        return LeanStepper(model, prompt_ids, prompt_mask, max_new_tokens, reuse_buffers=reuse_buffers)
    cls = _Seq2SeqStepper if _is_encoder_decoder(model) else _CausalStepper
    return cls(model, prompt_ids, prompt_mask, max_new_tokens)


def _sample_loop(model, prompt_ids, prompt_mask, U, eos_list, pad_token_id, truncation, sync_every, impl):
    """The eager decode loop over a stepper (impl "hf" or "lean") -> tokens (B, T), mask (B, T), log_q (B,)."""
    T, B = U.shape[0], prompt_ids.shape[0]
    device = prompt_ids.device
    eos = torch.tensor(eos_list, dtype=torch.long, device=device)  # (E,)
    tokens = torch.full((B, T), pad_token_id, dtype=torch.long, device=device)  # (B, T)
    mask = torch.zeros((B, T), dtype=torch.bool, device=device)  # (B, T)
    log_q = torch.zeros(B, dtype=torch.float32, device=device)  # (B,)
    finished = torch.zeros(B, dtype=torch.bool, device=device)  # (B,)
    # a) prefill: prompt through the model, logits for the first new token
    stepper = make_stepper(model, prompt_ids, prompt_mask, T, impl=impl, reuse_buffers=True)
    logits = stepper.prefill()  # (B, V)
    work = torch.empty(logits.shape, dtype=torch.float32, device=device)  # reused by every draw
    for t in range(T):
        # b) draw x_t ~ q(.|x_<t, c); finished rows emit pad and count nothing
        if truncation is not None:
            logits = truncate_logits(logits.float(), *truncation)
        tok, logp = draw(logits, U[t], work)  # (B,), (B,)
        alive = ~finished
        tok = torch.where(alive, tok, pad_token_id)
        tokens[:, t] = tok
        mask[:, t] = alive
        log_q += torch.where(alive, logp, 0.0)  # log q(x) = Σ_t log q(x_t | x_<t)
        if eos.numel():
            finished |= (tok[:, None] == eos).any(-1) & alive
        # c) stop at max length, or (host sync every sync_every steps) when every row has emitted EOS
        if t + 1 == T or ((t + 1) % sync_every == 0 and bool(finished.all())):
            break
        logits = stepper.step(tok)  # (B, V)
    return tokens, mask, log_q
