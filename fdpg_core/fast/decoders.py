"""Fast decode paths for `sampling.sample`: a lean static-KV-cache decoder and a CUDA-graph sampling loop.

Why: for the small models f-DPG is run with, Hugging Face's generic forward spends most of a decode step in Python
(cache objects, mask builders, output dataclasses), and on CUDA a step is hundreds of kernel launches issued one by
one from Python. This module removes both costs without changing the maths.

  LeanDecoder    runs a supported model's OWN modules (weights shared, nothing copied) on a preallocated KV cache,
                 one (B, H_kv, T_max, hd) key and value tensor per layer. Attention sees slot j from query slot i iff
                 key_valid[b, j] and j ≤ i (or j = i, so a padded query never has an empty row). Two addressing
                 modes: an int cache position (eager: writes slots c … c+S−1, attends to the first c+S slots) or a
                 LongTensor (S,) of positions (static shapes: index_copy_ writes, attention over all T_max slots),
                 which is what a CUDA graph can capture.
                 CPU shortcuts (bitwise neutral, tested): stock GPT-2 blocks run with their Conv1D / LayerNorm
                 modules inlined (_gpt2_direct: ~30 fewer Python calls per layer per token), and with a reusable
                 logits buffer the LM head of ≤ 128 rows is one product per 1024-row block of the vocabulary
                 (~25-35 % faster than a single (B, E) x (E, V) product at V ≈ 50k on this CPU).
  LeanStepper    the `make_stepper` interface (`prefill()`, `step(tok)`) on a LeanDecoder (the CPU fast path).
  StaticSampler  one whole ancestral-sampling step (decode, inverse-CDF draw with uniforms drawn before the loop,
                 EOS bookkeeping) on static buffers indexed by a device-side step counter, so that it is captured
                 once as a CUDA graph and replayed T − 1 times with no host synchronisation (an optional
                 `finished.all()` check every `sync_every` steps lets a batch stop early). use_graph=False runs the
                 same code eagerly (CPU tests, debugging).
  impl="compile" (opt-in; StaticSampler(compile=True)) the same static step compiled by torch.compile (CPU: needs a
                 C++ compiler) into two Inductor graphs, body and draw + bookkeeping, with the eager blocked LM head
                 between them writing a reused logits buffer, and a two-level inverse-CDF draw (_draw_blocked: no
                 (B, V) cumsum). Compiled on the first step, cached like the graphs. log_q equals score() within
                 1e-5; a token can differ from the eager paths' only when a uniform falls within rounding of a CDF
                 boundary (the sums are rounded differently).
  sample_static  the entry point used by `sampling.sample(impl="static" | "graph" | "compile")`; graphs are cached
                 per model and shape (keyed by the parameters' storage, so in-place optimiser updates are seen by
                 the graph, while `model.to(...)`, which makes new tensors, makes a new graph).

Supported models: GPT2LMHeadModel and LlamaForCausalLM (RoPE types whose tables do not depend on the sequence
length). Anything else takes the Hugging Face path in fast/steppers.py (`unsupported_reason(model)` says why).
Exactness: the same per-token maths as the HF forward (same modules, same RoPE tables and scalings); the tests check
log_q against teacher-forced `sampling.score` (fp32: 1e-5 on CPU, 1e-4 on CUDA).
"""
from __future__ import annotations

import contextlib
import math
import os
import time
import warnings
import weakref
from collections import OrderedDict

import torch
import torch.nn.functional as F

from fdpg_core.fast.draw import draw, truncate_logits
from fdpg_core.samples import _position_ids

__all__ = ["unsupported_reason", "LeanDecoder", "LeanStepper", "StaticSampler", "sample_static"]

# LeanDecoder.logits on CPU: vocabulary rows per head product when the batch has ≤ _HEAD_BLOCK_MAX_ROWS rows
_HEAD_BLOCK = 1024
_HEAD_BLOCK_MAX_ROWS = 128
# impl="compile" (StaticSampler(compile=True)): tokens per block of the two-level draw _draw_blocked
_DRAW_BLOCK = 64


# ----------------------------------------------------------------------------------------------------------------
# Which models
# ----------------------------------------------------------------------------------------------------------------
def _kind(model) -> str | None:
    name = type(model).__name__
    return {"GPT2LMHeadModel": "gpt2", "LlamaForCausalLM": "llama"}.get(name)


def unsupported_reason(model) -> str | None:
    """None if LeanDecoder can run `model` exactly; else a short reason (the HF path is used instead)."""
    kind = _kind(model)
    if kind is None:
        return f"{type(model).__name__} is not one of GPT2LMHeadModel, LlamaForCausalLM"
    cfg = model.config
    head = model.get_output_embeddings()
    if not isinstance(head, torch.nn.Linear):
        return "the output head is not an nn.Linear"
    if getattr(cfg, "final_logit_softcapping", None) or getattr(cfg, "logit_scale", None):
        return "logit soft-capping / scaling is not implemented"
    if kind == "gpt2":
        if getattr(cfg, "add_cross_attention", False):
            return "GPT-2 with cross-attention"
    else:
        rope_type = str(getattr(model.model.rotary_emb, "rope_type", "default"))
        if "dynamic" in rope_type or "longrope" in rope_type:
            return f"RoPE type {rope_type!r} depends on the sequence length"
        if getattr(cfg, "sliding_window", None) or getattr(cfg, "pretraining_tp", 1) not in (None, 1):
            return "sliding-window attention / pretraining_tp"
    return None


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def _use_sdpa(device) -> bool:
    """Attention kernel choice: torch's scaled_dot_product_attention on CUDA, an explicit baddbmm on CPU."""
    return device.type == "cuda"


def _attend(q, k, v, mask, scale) -> torch.Tensor:
    """Masked attention softmax(q kᵀ·scale + mask) v. q (B, nh, S, hd), k/v (B, nkv, Sk, hd) -> (B, S, nh·hd).

    Grouped-query attention without copying the cache: the g = nh/nkv query heads sharing a kv head become g·S
    query rows of that head (HF's repeat_kv order: head h uses kv head h // g). `mask` comes from _attn_mask: on
    CUDA a bool (B, 1, S or g·S, Sk) for scaled_dot_product_attention; on CPU an additive (B·nkv, g·S, Sk) bias
    for one baddbmm (torch's CPU flash kernel costs ~1 ms per call for one query row)."""
    B, nh, S, hd = q.shape
    nkv, Sk = k.shape[1], k.shape[2]
    g = nh // nkv
    if _use_sdpa(q.device):
        q = q.reshape(B, nkv, g * S, hd)  # (B, nkv, g·S, hd)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)  # (B, nkv, g·S, hd)
    else:
        q3 = q.reshape(B * nkv, g * S, hd)
        a = torch.baddbmm(mask, q3, k.reshape(B * nkv, Sk, hd).transpose(1, 2), alpha=scale)  # mask + q kᵀ·scale
        # softmax in float32 (a no-op for float32 scores): in bf16 (scores under autocast) its sums round
        # differently for a decode step's Sk keys and for a full pass's longer rows of masked keys
        y = torch.bmm(a.softmax(-1, dtype=torch.float32).to(v.dtype), v.reshape(B * nkv, Sk, hd))  # (B·nkv, g·S, hd)
    return y.reshape(B, nh, S, hd).transpose(1, 2).reshape(B, S, nh * hd)


def _attn_mask(allowed, nkv: int, g: int, dtype) -> torch.Tensor:
    """allowed (B, 1, S, Sk) bool -> the mask _attend takes (built once per forward, shared by the layers)."""
    B, _, S, Sk = allowed.shape
    if _use_sdpa(allowed.device):
        return allowed.repeat(1, 1, g, 1) if (g > 1 and S > 1) else allowed  # rows ordered (g, S) like q
    bias = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill_(~allowed, float("-inf"))
    return bias[:, :, None].expand(B, nkv, g, S, Sk).reshape(B * nkv, g * S, Sk)  # (B·nkv, g·S, Sk)


# ----------------------------------------------------------------------------------------------------------------
# LeanDecoder
# ----------------------------------------------------------------------------------------------------------------
class LeanDecoder:
    """A supported causal LM's modules run on a preallocated KV cache for `batch_size` rows and `max_len` slots.

    cache=False: no cache (one differentiable pass over whole sequences, used by score())."""

    def __init__(self, model, batch_size: int, max_len: int, cache: bool = True):
        reason = unsupported_reason(model)
        if reason is not None:
            raise ValueError(f"LeanDecoder cannot run this model: {reason}; use sampling.sample(impl='hf')")
        # NB no reference to `model` itself: the graph cache is a WeakKeyDictionary keyed by the model, whose
        # entries (holding this decoder) must not keep their key alive
        self.kind = _kind(model)
        cfg = model.config
        self.head = model.get_output_embeddings()
        # the residual stream's dtype (the KV cache, RoPE tables and masks follow it): the input embedding's; the
        # head may hold another one (precision.autocast_copy: a bf16 head on a float32 stream, run under autocast)
        device, dtype = self.head.weight.device, model.get_input_embeddings().weight.dtype
        if self.kind == "gpt2":
            self.body = model.transformer
            self.blocks = list(self.body.h)
            nh = nkv = cfg.n_head
            self.E = cfg.n_embd
            hd = self.E // nh
            # HF GPT2Attention.scaling: 1/√hd (scale_attn_weights), further / (layer + 1) if by inverse layer idx
            base = hd ** -0.5 if cfg.scale_attn_weights else 1.0
            self.scales = [base / (i + 1) if cfg.scale_attn_by_inverse_layer_idx else base
                           for i in range(len(self.blocks))]
            # gelu_new is ½x(1 + tanh(√(2/π)(x + 0.044715x³))): the same function as torch's fused tanh-GELU
            tanh_gelu = cfg.activation_function in ("gelu_new", "gelu_pytorch_tanh")
            self.act = (lambda x: F.gelu(x, approximate="tanh")) if tanh_gelu else self.blocks[0].mlp.act
            # _gpt2_direct when every block is made of the stock modules (a wrapped / replaced one, e.g. an
            # adapter, keeps the module calls)
            from transformers.pytorch_utils import Conv1D

            plain = all(type(b.ln_1) is torch.nn.LayerNorm and type(b.ln_2) is torch.nn.LayerNorm
                        and all(type(c) is Conv1D for c in (b.attn.c_attn, b.attn.c_proj, b.mlp.c_fc, b.mlp.c_proj))
                        for b in self.blocks) and type(self.body.ln_f) is torch.nn.LayerNorm
            self._direct = plain
            if plain:
                def ln(m):
                    return (m.weight, m.bias, m.eps)

                self._gpt2_params = [(ln(b.ln_1), (b.attn.c_attn.weight, b.attn.c_attn.bias),
                                      (b.attn.c_proj.weight, b.attn.c_proj.bias), ln(b.ln_2),
                                      (b.mlp.c_fc.weight, b.mlp.c_fc.bias), (b.mlp.c_proj.weight, b.mlp.c_proj.bias))
                                     for b in self.blocks]
                self._ln_f = ln(self.body.ln_f)
        else:
            self.body = model.model
            self.blocks = list(self.body.layers)[: cfg.num_hidden_layers]
            at = self.blocks[0].self_attn
            nh, nkv = cfg.num_attention_heads, cfg.num_key_value_heads
            hd = at.head_dim
            self.scales = [at.scaling] * len(self.blocks)
            # RoPE tables for every position a row can reach (< max_len), exactly as the HF rotary module makes them
            pos = torch.arange(max_len, device=device)[None]  # (1, T_max)
            probe = torch.zeros((1, 1, 1), device=device, dtype=dtype)
            cos, sin = self.body.rotary_emb(probe, position_ids=pos)  # (1, T_max, hd) each, in the model dtype
            self.cos, self.sin = cos[0], sin[0]  # (T_max, hd)
        self.nh, self.nkv, self.hd, self.dtype = nh, nkv, hd, dtype
        self.B, self.T_max = batch_size, max_len
        shape = (batch_size, nkv, max_len, hd)
        n = len(self.blocks) if cache else 0
        # under autocast (a sampling copy, fast.precision) keys and values are cached in the autocast dtype: its
        # products read them in it anyway, and a float32 cache would be cast whole again at every step
        kv = torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else dtype
        self.k = [torch.zeros(shape, device=device, dtype=kv) for _ in range(n)]  # per layer (B, nkv, T_max, hd)
        self.v = [torch.zeros(shape, device=device, dtype=kv) for _ in range(n)]
        self.kpos = torch.arange(max_len, device=device)  # (T_max,) slot index

    # --- one forward over S new tokens ----------------------------------------------------------------------
    def forward(self, x: torch.Tensor, pos: torch.Tensor, cache_pos, key_valid: torch.Tensor) -> torch.Tensor:
        """x (B, S) token ids at model positions pos (B, S), written to cache slots cache_pos (int c: slots
        c … c+S−1; or LongTensor (S,)). key_valid (B, T_max) bool must already be True for the new slots of real
        tokens. Returns the final-normed hidden states (B, S, E)."""
        B, S = x.shape
        if isinstance(cache_pos, int):
            qpos = self.kpos[cache_pos: cache_pos + S]  # (S,)
            Sk = cache_pos + S
        else:
            qpos, Sk = cache_pos, self.T_max
        kpos = self.kpos[:Sk]
        # allowed[b, i, j] = (key_valid[b, j] ∧ j ≤ i) ∨ j = i   (the diagonal keeps padded queries finite)
        allowed = (key_valid[:, None, :Sk] & (kpos <= qpos[:, None])) | (kpos == qpos[:, None])  # (B, S, Sk)
        mask = _attn_mask(allowed[:, None], self.nkv, self.nh // self.nkv, self.dtype)
        if self.kind == "gpt2":
            return self._gpt2(x, pos, cache_pos, qpos, Sk, mask)
        return self._llama(x, pos, cache_pos, qpos, Sk, mask)

    def _write(self, i, k, v, cache_pos, qpos, Sk):
        """Store k, v (B, nkv, S, hd) in layer i's cache; return the (B, nkv, Sk, hd) views to attend to."""
        if not self.k:  # no cache: a whole sequence at once (cache_pos = 0, Sk = S)
            return k, v
        if isinstance(cache_pos, int):
            self.k[i][:, :, cache_pos: cache_pos + k.shape[2]] = k
            self.v[i][:, :, cache_pos: cache_pos + k.shape[2]] = v
        else:
            self.k[i].index_copy_(2, qpos, k)
            self.v[i].index_copy_(2, qpos, v)
        return self.k[i][:, :, :Sk], self.v[i][:, :, :Sk]

    def _gpt2(self, x, pos, cache_pos, qpos, Sk, mask):
        if self._direct:
            return self._gpt2_direct(x, pos, cache_pos, qpos, Sk, mask)
        B, S = x.shape
        h = self.body.wte(x) + self.body.wpe(pos)  # (B, S, E); embedding dropout is off in eval mode
        for i, blk in enumerate(self.blocks):
            q, k, v = blk.attn.c_attn(blk.ln_1(h)).split(self.E, dim=2)  # 3 × (B, S, E)
            q = q.view(B, S, self.nh, self.hd).transpose(1, 2)  # (B, nh, S, hd)
            k = k.view(B, S, self.nh, self.hd).transpose(1, 2)
            v = v.view(B, S, self.nh, self.hd).transpose(1, 2)
            kc, vc = self._write(i, k, v, cache_pos, qpos, Sk)
            h = h + blk.attn.c_proj(_attend(q, kc, vc, mask, self.scales[i]))  # residual
            mlp = blk.mlp  # c_fc -> act -> c_proj (its dropout is the identity in eval mode: skipped)
            h = h + mlp.c_proj(self.act(mlp.c_fc(blk.ln_2(h))))
        return self.body.ln_f(h)

    def _gpt2_direct(self, x, pos, cache_pos, qpos, Sk, mask):
        """_gpt2 with the blocks' plain Conv1D / LayerNorm modules inlined: the same kernels on the same tensors
        (bitwise equal results, differentiable), without ~30 Python module calls and views per layer, which at
        decode (S = 1, small E) cost as much as the products themselves."""
        B, S = x.shape
        E, nh, hd = self.E, self.nh, self.hd
        h = self.body.wte(x) + self.body.wpe(pos)  # (B, S, E); embedding dropout is off in eval mode
        h = h.view(B * S, E)
        for i, (ln1, (wa, ba), (wp, bp), ln2, (wf, bf), (wm, bm)) in enumerate(self._gpt2_params):
            qkv = torch.addmm(ba, F.layer_norm(h, (E,), *ln1), wa).view(B, S, 3, nh, hd)  # c_attn
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 × (B, nh, S, hd)
            kc, vc = self._write(i, k, v, cache_pos, qpos, Sk)
            h = h + torch.addmm(bp, _attend(q, kc, vc, mask, self.scales[i]).reshape(B * S, E), wp)  # c_proj
            h = h + torch.addmm(bm, self.act(torch.addmm(bf, F.layer_norm(h, (E,), *ln2), wf)), wm)  # mlp
        return F.layer_norm(h, (E,), *self._ln_f).view(B, S, E)

    def _llama(self, x, pos, cache_pos, qpos, Sk, mask):
        B, S = x.shape
        h = self.body.embed_tokens(x)  # (B, S, E)
        cos, sin = self.cos[pos][:, None], self.sin[pos][:, None]  # (B, 1, S, hd)
        for i, blk in enumerate(self.blocks):
            at = blk.self_attn
            a = blk.input_layernorm(h)
            q = at.q_proj(a).view(B, S, self.nh, self.hd).transpose(1, 2)  # (B, nh, S, hd)
            k = at.k_proj(a).view(B, S, self.nkv, self.hd).transpose(1, 2)  # (B, nkv, S, hd)
            v = at.v_proj(a).view(B, S, self.nkv, self.hd).transpose(1, 2)
            q = q * cos + _rotate_half(q) * sin  # RoPE: x·cos + rotate_half(x)·sin
            k = k * cos + _rotate_half(k) * sin
            kc, vc = self._write(i, k, v, cache_pos, qpos, Sk)
            h = h + at.o_proj(_attend(q, kc, vc, mask, self.scales[i]))
            h = h + blk.mlp(blk.post_attention_layernorm(h))
        return self.body.norm(h)

    def logits(self, h: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """LM head on (B, E) hidden states -> (B, V). `out`: optional reusable (B, V) buffer of the head's dtype
        (on CPU a fresh multi-MB tensor per step costs page faults)."""
        W, b = self.head.weight, self.head.bias
        h = h.to(W.dtype)  # a bf16 head on a float32 stream: the cast autocast makes (the products below use out=)
        packed = getattr(self.head, "packed", None)  # a sampling copy's head, pre-packed for oneDNN (fast.precision)
        if packed is not None:
            return torch.ops.mkldnn._linear_pointwise(h, packed, b, "none", [], "")  # (B, V), = F.linear bit for bit
        if out is None:
            return F.linear(h, W, b)
        V = W.shape[0]
        # CPU, few rows, big vocabulary: one product per block of _HEAD_BLOCK vocabulary rows, written into its
        # column slice of `out`. Same dot products, bitwise equal results (the reduction over E is unchanged), but
        # a W block stays in cache while it is used: ~25-35 % faster than one (B, E) x (E, V) product for
        # B ≤ 64, V ≈ 50k on the 2-core CPU of the benchmark (figures/bench; docs/PERFORMANCE.md).
        C = V if (h.device.type != "cpu" or h.shape[0] > _HEAD_BLOCK_MAX_ROWS or V < 2 * _HEAD_BLOCK) \
            else _HEAD_BLOCK
        for s in range(0, V, C):
            e = min(V, s + C)
            o = out if C == V else out[:, s:e]
            if b is None:
                torch.mm(h, W[s:e].t(), out=o)
            else:
                torch.addmm(b[s:e], h, W[s:e].t(), out=o)
        return out


def lean_hidden(model, input_ids, attention_mask, position_ids) -> torch.Tensor:
    """Final-normed hidden states (B, L, E) of a supported model (eval mode: no dropout) for left-padded inputs,
    differentiable; the same maths as `model.base_model(...).last_hidden_state` with less overhead (fused tanh-GELU,
    explicit attention on CPU). Used by sampling.score()."""
    B, L = input_ids.shape
    dec = LeanDecoder(model, B, L, cache=False)
    return dec.forward(input_ids, position_ids, 0, attention_mask.bool())


# ----------------------------------------------------------------------------------------------------------------
# LeanStepper: the make_stepper interface
# ----------------------------------------------------------------------------------------------------------------
class LeanStepper:
    """`prefill() -> logits (B, V)`, `step(tok (B,)) -> logits (B, V)` on a LeanDecoder (eager, int cache slots).

    reuse_buffers=True returns the same (B, V) logits buffer every step (valid until the next call): sample()
    consumes the logits before stepping again."""

    def __init__(self, model, prompt_ids, prompt_mask, max_new_tokens, *, reuse_buffers: bool = False):
        B, Tp = prompt_ids.shape
        self.dec = LeanDecoder(model, B, Tp + max_new_tokens)
        dev = self.dec.kpos.device
        self.prompt_ids = prompt_ids.to(dev)
        self.prompt_mask = prompt_mask.to(dev).long()
        self.key_valid = torch.zeros((B, self.dec.T_max), dtype=torch.bool, device=dev)  # (B, T_max)
        self.key_valid[:, :Tp] = self.prompt_mask.bool()
        self.pos = self.prompt_mask.sum(-1, keepdim=True)  # (B, 1) model position of the first generated token
        self.L = Tp  # filled cache slots
        self._buf = None
        if reuse_buffers:
            V = self.dec.head.weight.shape[0]
            self._buf = torch.empty((B, V), device=dev, dtype=self.dec.head.weight.dtype)

    def prefill(self) -> torch.Tensor:
        h = self.dec.forward(self.prompt_ids, _position_ids(self.prompt_mask), 0, self.key_valid)  # (B, Tp, E)
        return self.dec.logits(h[:, -1], out=self._buf)  # (B, V): the last slot is real (left padding)

    def step(self, tok: torch.Tensor) -> torch.Tensor:
        self.key_valid[:, self.L] = True
        h = self.dec.forward(tok[:, None], self.pos, self.L, self.key_valid)  # (B, 1, E)
        self.L += 1
        self.pos = self.pos + 1
        return self.dec.logits(h[:, -1], out=self._buf)  # (B, V)


def _draw_blocked(logits: torch.Tensor, u: torch.Tensor, C: int = _DRAW_BLOCK):
    """draw.draw's inverse-CDF draw in two levels, for the compiled step: the weights w = exp(l − max l) are
    summed per block of C tokens (one fused pass, no (B, V) cumulative sum), the block is found on the cumulative
    block sums, then the token inside it on the cumulative sum of its C weights. The same distribution; the sums
    are rounded differently from one long cumsum, so a draw can differ from draw's only when u falls within
    rounding of a CDF boundary. Exact support: a token of weight 0 is never drawn. -> (idx (B,), log-prob (B,))."""
    logits = logits.float()
    B, V = logits.shape
    nb = -(-V // C)
    m = logits.amax(-1, keepdim=True)  # (B, 1)
    lb = F.pad(logits, (0, nb * C - V), value=-math.inf).view(B, nb, C)  # (B, nb, C), padding weighs 0
    bc = (lb - m[:, :, None]).exp().sum(-1).cumsum(-1)  # (B, nb) cumulative block sums
    total = bc[:, -1:]  # (B, 1)
    target = (1.0 - u) * total  # (B, 1) in (0, total]
    j = torch.searchsorted(bc, target).clamp_(max=nb - 1)  # (B, 1) first block with bc ≥ target (weight > 0)
    before = torch.where(j > 0, bc.gather(1, (j - 1).clamp(min=0)), 0.0)  # (B, 1) mass of the blocks before
    wj = (lb.gather(1, j[:, :, None].expand(B, 1, C))[:, 0] - m).exp()  # (B, C) the chosen block's weights
    k = torch.searchsorted(wj.cumsum(-1), target - before)  # (B, 1)
    # rounding may put target − before past the block's own total: take its last token of weight > 0
    last = torch.where(wj > 0, torch.arange(C, device=logits.device), -1).amax(-1, keepdim=True)  # (B, 1)
    idx = j * C + torch.minimum(k, last)  # (B, 1)
    logp = (logits.gather(-1, idx) - m - total.log()).squeeze(-1)  # (B,)
    return idx.squeeze(-1), logp


# ----------------------------------------------------------------------------------------------------------------
# StaticSampler: the whole sampling step on static buffers (CUDA-graph capturable)
# ----------------------------------------------------------------------------------------------------------------
class StaticSampler:
    """Ancestral sampling for B rows, prompts of Tp slots and T new tokens with static shapes.

    State (all device tensors, updated in place): t (1,) the index of the next token to draw; prev (B,) the last
    drawn token; tokens (B, T), mask (B, T), log_q (B,), finished (B,). `_record(logits)` draws x_t; `_decode_step()`
    feeds x_{t−1} at cache slot Tp + t − 1 and records x_t. On CUDA with use_graph=True, `_decode_step` is captured
    once (after two eager warm-up steps on a side stream, which are real steps) and replayed.
    """

    def __init__(self, model, B: int, Tp: int, T: int, *, eos_ids, pad_id: int, truncation=(1.0, None, None),
                 use_graph: bool = False, compile: bool = False):
        self._draw_fn, self._truncate_fn = draw, truncate_logits
        self.dec = LeanDecoder(model, B, -(-(Tp + T) // 8) * 8)  # T_max rounded up to 8 (aligned masks)
        dev = self.dec.kpos.device
        if use_graph and dev.type != "cuda":
            raise ValueError(f"use_graph=True needs a CUDA model, got device {dev}; allowed: use_graph=False")
        self.B, self.Tp, self.T, self.use_graph = B, Tp, T, use_graph
        self.truncation = truncation
        self.truncated = truncation[0] != 1.0 or bool(truncation[1]) or (
            truncation[2] is not None and truncation[2] < 1.0)
        long = dict(device=dev, dtype=torch.long)
        self.prompt_ids = torch.zeros((B, Tp), **long)
        self.prompt_pos = torch.zeros((B, Tp), **long)
        self.key_valid = torch.zeros((B, self.dec.T_max), device=dev, dtype=torch.bool)  # (B, T_max)
        self.n_real = torch.zeros((B, 1), **long)  # (B, 1) real prompt tokens = position of the first new token
        self.U = torch.zeros((T, B, 1), device=dev, dtype=torch.float32)  # uniforms of every step
        self.t = torch.zeros((1,), **long)
        self.prev = torch.zeros((B,), **long)
        self.pad = int(pad_id)
        self.tokens = torch.full((B, T), self.pad, **long)  # (B, T)
        self.mask = torch.zeros((B, T), device=dev, dtype=torch.bool)
        self.log_q = torch.zeros((B,), device=dev, dtype=torch.float32)
        self.finished = torch.zeros((B,), device=dev, dtype=torch.bool)
        self.eos = torch.tensor(list(eos_ids), **long)  # (E,)
        self.graph = None
        self.compile, self.compile_s = compile, None  # impl="compile"; seconds of the compiled step's first call
        if compile:
            if use_graph:
                raise ValueError("StaticSampler: use_graph and compile are exclusive; allowed: one or neither")
            reason = compile_unavailable_reason()
            if reason is not None:
                raise ValueError(f"compile=True: {reason}")
            self._draw_fn = _draw_blocked  # every draw of this sampler, the eager prefill's included
            V = self.dec.head.weight.shape[0]
            self._logits = torch.empty((B, V), device=dev, dtype=self.dec.head.weight.dtype)  # reused
            self._feed_c = torch.compile(self._feed, fullgraph=True, dynamic=False)
            self._record_c = torch.compile(self._record, fullgraph=True, dynamic=False)

    def _record(self, logits: torch.Tensor) -> None:
        """Draw x_t ~ softmax(logits) with U[t] (draw.draw; _draw_blocked when compiled); finished rows emit
        pad and count nothing; t += 1."""
        if self.truncated:
            logits = self._truncate_fn(logits.float(), *self.truncation)
        u = self.U.index_select(0, self.t)[0]  # (B, 1)
        tok, logp = self._draw_fn(logits, u)  # (B,), (B,)
        alive = ~self.finished
        tok = torch.where(alive, tok, self.pad)
        self.tokens.index_copy_(1, self.t, tok[:, None])
        self.mask.index_copy_(1, self.t, alive[:, None])
        self.log_q.add_(torch.where(alive, logp, 0.0))  # log q(x) = Σ_t log q(x_t | x_<t)
        if self.eos.numel():
            self.finished |= (tok[:, None] == self.eos).any(-1) & alive
        self.prev.copy_(tok)
        self.t += 1

    def _feed(self) -> torch.Tensor:
        """Feed x_{t−1} at cache slot Tp + t − 1 -> final hidden states (B, E)."""
        c = self.t + (self.Tp - 1)  # (1,) cache slot of x_{t−1}
        self.key_valid.index_fill_(1, c, True)
        pos = self.n_real + (self.t - 1)  # (B, 1) model position of x_{t−1}
        return self.dec.forward(self.prev[:, None], pos, c, self.key_valid)[:, -1]  # (B, E)

    def _decode_step(self) -> None:
        self._record(self.dec.logits(self._feed()))

    def _compiled_step(self) -> None:
        """One step of impl="compile": _feed and _record compiled, the eager LM head between them writing a reused
        (B, V) buffer (an Inductor graph would allocate a fresh multi-MB logits tensor per step: page faults)."""
        self._record_c(self.dec.logits(self._feed_c(), out=self._logits))

    def _capture(self) -> int:
        """Two eager warm-up steps on a side stream (they are real steps), then capture one step. Returns the
        number of steps run. If capture fails, warn and stay eager (same results, static shapes, no graph)."""
        warm = min(2, self.T - 1)
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(warm):
                self._decode_step()
        torch.cuda.current_stream().wait_stream(s)
        if self.T - 1 - warm > 0:
            g = torch.cuda.CUDAGraph()
            try:
                with torch.cuda.graph(g):  # recorded, not executed: the state stays after the warm-up steps
                    self._decode_step()
                self.graph = g
            except RuntimeError as e:
                self.use_graph = False
                warnings.warn(f"CUDA graph capture of the sampling step failed ({e}); sampling eagerly with "
                              "static shapes instead (same results, slower)", RuntimeWarning, stacklevel=3)
        return warm

    def run(self, prompt_ids, prompt_mask, U, sync_every: int = 16):
        """prompt_ids/prompt_mask (B, Tp) left padded, U (T, B, 1) uniforms in [0, 1) ->
        (tokens (B, T), mask (B, T), log_q (B,)) as fresh tensors (the static buffers are reused next call)."""
        B, Tp = prompt_ids.shape
        if (B, Tp) != (self.B, self.Tp) or U.shape != self.U.shape:
            raise ValueError(f"StaticSampler built for B={self.B}, Tp={self.Tp}, T={self.T}; got prompts "
                             f"{tuple(prompt_ids.shape)} and U {tuple(U.shape)}")
        pm = prompt_mask.long()
        self.prompt_ids.copy_(prompt_ids)
        self.prompt_pos.copy_(_position_ids(pm))
        self.n_real.copy_(pm.sum(-1, keepdim=True))
        self.U.copy_(U)
        self.key_valid.zero_()
        self.key_valid[:, :Tp] = pm.bool()
        self.t.zero_()
        self.tokens.fill_(self.pad)
        self.mask.zero_()
        self.log_q.zero_()
        self.finished.zero_()
        # 1. prefill (eager, int slots 0 … Tp−1) and x_0
        h = self.dec.forward(self.prompt_ids, self.prompt_pos, 0, self.key_valid)  # (B, Tp, E)
        self._record(self.dec.logits(h[:, -1]))
        # 2. x_1 … x_{T−1}: graph replays (or eager steps); a host sync only every sync_every steps, if EOS exists
        done = 0
        if self.use_graph and self.graph is None and self.T > 1:
            done = self._capture()
        check = self.eos.numel() > 0
        # compiled samplers share their methods' code objects: Dynamo keeps one cache entry per sampler
        limit = (torch._dynamo.config.patch(recompile_limit=_COMPILE_RECOMPILE_LIMIT) if self.compile
                 else contextlib.nullcontext())
        with limit:
            for i in range(done, self.T - 1):
                if check and i % sync_every == 0 and bool(self.finished.all()):
                    break
                if self.graph is not None:
                    self.graph.replay()
                elif self.compile:
                    t0 = time.perf_counter()
                    self._compiled_step()
                    if self.compile_s is None:  # the first call traced and compiled (seconds) before running
                        self.compile_s = time.perf_counter() - t0
                else:
                    self._decode_step()
        return self.tokens.clone(), self.mask.clone(), self.log_q.clone()


# ----------------------------------------------------------------------------------------------------------------
# Entry point with a per-model cache of captured graphs
# ----------------------------------------------------------------------------------------------------------------
_GRAPHS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # model -> OrderedDict[key, StaticSampler]
_GRAPHS_PER_MODEL = 2  # captured graphs hold a KV cache each: keep few
_COMPILE_RECOMPILE_LIMIT = 64  # torch.compile'd samplers share one code object: one cache entry per sampler


def _storage_key(model) -> tuple:
    """Identity of the model's tensors: new tensors (model.to, reassigned weights) mean a new graph."""
    return tuple(p.data_ptr() for p in model.parameters()) + tuple(b.data_ptr() for b in model.buffers())


def sample_static(model, prompt_ids, prompt_mask, U, *, eos_ids, pad_id, truncation=(1.0, None, None),
                  use_graph: bool, sync_every: int = 16, compile: bool = False):
    """Run StaticSampler (graph-captured, or torch.compile'd, and then cached per model/shape) -> tokens, mask,
    log_q."""
    B, Tp = prompt_ids.shape
    T = U.shape[0]
    if not (use_graph or compile):
        s = StaticSampler(model, B, Tp, T, eos_ids=eos_ids, pad_id=pad_id, truncation=truncation)
        return s.run(prompt_ids, prompt_mask, U, sync_every)
    key = ("compile" if compile else "graph", B, Tp, T, tuple(eos_ids), int(pad_id), tuple(truncation),
           _storage_key(model))
    cache = _GRAPHS.setdefault(model, OrderedDict())
    s = cache.pop(key, None)
    if s is None:
        while len(cache) >= _GRAPHS_PER_MODEL:
            cache.popitem(last=False)  # drop the least recently used graph (and its KV cache)
        s = StaticSampler(model, B, Tp, T, eos_ids=eos_ids, pad_id=pad_id, truncation=truncation,
                          use_graph=use_graph, compile=compile)
    cache[key] = s
    return s.run(prompt_ids, prompt_mask, U, sync_every)


def compile_unavailable_reason() -> str | None:
    """None if torch.compile can build CPU code here (Inductor needs a C++ compiler), else why not."""
    if not hasattr(torch, "compile"):
        return "this torch has no torch.compile"
    import shutil

    cxx = [c for c in (os.environ.get("CXX"), "g++", "c++", "clang++") if c]
    if not any(shutil.which(c) for c in cxx):
        return (f"torch.compile needs a C++ compiler on PATH for CPU code (looked for {', '.join(cxx)}); "
                "allowed impls without one: 'auto', 'hf', 'lean', 'static'")
    return None


def clear_graph_cache(model=None) -> None:
    """Forget captured graphs (of one model, or all) and free their KV caches."""
    if model is None:
        _GRAPHS.clear()
    else:
        _GRAPHS.pop(model, None)
