"""Teacher-forced log-probabilities without a (B, T, V) log-softmax: the score kernels behind sampling.score.

log π(x_t) = l_{x_t} − logsumexp(l), chunked over rows, with a hand-written backward (g·(1[j = x_t] − softmax))
written in place. For GPT-2 / GPT-Neo / Llama (`fused_head`) the body runs first (decoders.lean_hidden for GPT-2 /
Llama in eval mode) and the LM head is applied to the counted tokens only; when their logits would exceed
_SCORE_LOGITS_BYTES the head is recomputed chunk by chunk in backward instead of being stored.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from fdpg_core.fast.decoders import lean_hidden, unsupported_reason
from fdpg_core.fast.steppers import _decoder_start_id, _is_encoder_decoder
from fdpg_core.samples import _position_ids

__all__ = ["token_logprobs", "fused_head", "fused_head_logprobs", "lean_ok", "teacher_forced_logprobs"]

# Max number of fp32 logits score() processes at once for its logsumexp and gradient (512k floats = 2 MiB: the
# chunk stays in cache, and the (N, V) tensors are read / written once per pass).
_SCORE_CHUNK_ELEMS = 1 << 19
# Rows per head product when score() recomputes the LM head chunk by chunk (big enough for an efficient matmul).
_HEAD_CHUNK_ROWS = 512
# score() keeps the logits of the counted tokens for backward when they take at most this many bytes (fastest);
# above it, the head is recomputed chunk by chunk in backward (one extra head product, bounded memory).
_SCORE_LOGITS_BYTES = 1 << 28

# Causal LMs whose forward is exactly `lm_head(base_model(...).last_hidden_state)`: score() runs the head itself,
# chunk by chunk, and never materialises the (B, T, V) logits.
_FUSED_HEAD_MODELS = ("GPT2LMHeadModel", "GPTNeoForCausalLM", "LlamaForCausalLM")


def _lse(l: torch.Tensor, buf: torch.Tensor) -> torch.Tensor:
    """fp32 logsumexp over the last dim of (r, V) logits `l` (any float dtype) -> (r,), with the fp32 (r, V) `buf`
    as scratch (overwritten; buf may be l itself when l is fp32)."""
    m = l.amax(-1, keepdim=True).float()  # (r, 1)
    return (m + torch.sub(l, m, out=buf).exp_().sum(-1, keepdim=True).log_()).squeeze(-1)  # m + log Σ exp(l − m)


def _head_into(h: torch.Tensor, W: torch.Tensor, b, buf: torch.Tensor) -> torch.Tensor:
    """fp32 logits h Wᵀ + b of r rows written into buf (r, V), computed in the weights' dtype like nn.Linear."""
    if W.dtype == torch.float32 and h.dtype == torch.float32:
        return torch.mm(h, W.t(), out=buf) if b is None else torch.addmm(b, h, W.t(), out=buf)
    return buf.copy_(F.linear(h, W, b))  # e.g. bf16 logits, upcast (what score() did with model(...).logits)


class _HeadLogProb(torch.autograd.Function):
    """log softmax(h Wᵀ + b)[y] for N rows, (N,) fp32, without the (N, V) logits: rows go through the head in
    chunks of R into one reused fp32 buffer; backward recomputes each chunk's logits (one more head product)
    instead of storing them.  ∂ log p_n / ∂ l_{n,j} = 1[j = y_n] − softmax(l_n)_j."""

    @staticmethod
    def forward(ctx, h, W, b, y, R):
        N, V = h.shape[0], W.shape[0]
        out = torch.empty(N, dtype=torch.float32, device=h.device)  # (N,)
        lse = torch.empty(N, dtype=torch.float32, device=h.device)  # (N,)
        buf = torch.empty((max(1, min(R, N)), V), dtype=torch.float32, device=h.device)  # (R, V) reused
        for s in range(0, N, R):
            e = min(N, s + R)
            l = _head_into(h[s:e], W, b, buf[: e - s])  # (r, V)
            chosen = l.gather(1, y[s:e, None]).squeeze(1)  # l_y before _lse overwrites l
            lse[s:e] = _lse(l, l)
            out[s:e] = chosen - lse[s:e]  # log p(y) = l_y − logsumexp(l)
        ctx.save_for_backward(h, W, b, y, lse)
        ctx.R = R
        return out

    @staticmethod
    def backward(ctx, g):
        h, W, b, y, lse = ctx.saved_tensors
        need_h, need_W, need_b = ctx.needs_input_grad[:3]
        N, R = h.shape[0], ctx.R
        g = g.float().contiguous()  # (N,)
        gh = torch.empty_like(h) if need_h else None
        gW = torch.zeros(W.shape, dtype=torch.float32, device=W.device) if need_W else None
        gb = torch.zeros(W.shape[0], dtype=torch.float32, device=W.device) if (need_b and b is not None) else None
        buf = torch.empty((max(1, min(R, N)), W.shape[0]), dtype=torch.float32, device=h.device)
        for s in range(0, N, R):
            e = min(N, s + R)
            d = _head_into(h[s:e], W, b, buf[: e - s]).sub_(lse[s:e, None]).exp_()  # (r, V) softmax
            d.mul_(-g[s:e, None]).scatter_add_(1, y[s:e, None], g[s:e, None])  # g·(1[j = y] − softmax)
            dw = d if W.dtype == torch.float32 else d.to(W.dtype)
            if need_h:
                gh[s:e] = dw @ W  # (r, E)
            if need_W:
                gW.addmm_(d.t(), h[s:e].float())  # (V, E) += dᵀ h
            if gb is not None:
                gb += d.sum(0)
        return (gh, None if gW is None else gW.to(W.dtype), None if gb is None else gb.to(b.dtype), None, None)


class _LogitsLogProb(torch.autograd.Function):
    """log softmax(logits)[y] for (N, V) logits (any model), (N,) fp32, chunked over rows; backward writes the one
    (N, V) gradient chunk by chunk, in place (autograd through slices would allocate a full-size zero tensor per
    chunk, and log_softmax keeps a second (N, V) tensor)."""

    @staticmethod
    def forward(ctx, logits, y, R):
        N, V = logits.shape
        out = torch.empty(N, dtype=torch.float32, device=logits.device)
        lse = torch.empty(N, dtype=torch.float32, device=logits.device)
        buf = torch.empty((max(1, min(R, N)), V), dtype=torch.float32, device=logits.device)  # (R, V) reused
        for s in range(0, N, R):
            e = min(N, s + R)
            l = logits[s:e]  # (r, V)
            lse[s:e] = _lse(l, buf[: e - s])
            out[s:e] = l.gather(1, y[s:e, None]).squeeze(1).float() - lse[s:e]  # log p(y) = l_y − lse
        ctx.save_for_backward(logits, y, lse)
        ctx.R = R
        return out

    @staticmethod
    def backward(ctx, g):
        logits, y, lse = ctx.saved_tensors
        N, R = logits.shape[0], ctx.R
        g = g.float().contiguous()
        grad = torch.empty_like(logits)  # (N, V)
        fp32 = logits.dtype == torch.float32
        buf = None if fp32 else torch.empty((max(1, min(R, N)), logits.shape[1]), device=logits.device)
        for s in range(0, N, R):
            e = min(N, s + R)
            d = torch.sub(logits[s:e], lse[s:e, None], out=grad[s:e] if fp32 else buf[: e - s]).exp_()  # softmax
            d.mul_(-g[s:e, None]).scatter_add_(1, y[s:e, None], g[s:e, None])  # g·(1[j = y] − softmax)
            if not fp32:
                grad[s:e] = d
        return grad, None, None


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[targets] for (B, T, V) logits -> (B, T), without a (B, T, V) log_softmax copy."""
    B, T, V = logits.shape
    R = max(1, _SCORE_CHUNK_ELEMS // V)
    return _LogitsLogProb.apply(logits.reshape(B * T, V), targets.reshape(B * T), R).view(B, T)


def lean_ok(model) -> bool:
    """score() runs the lean (cache-free) forward of decoders.lean_hidden: a supported model with no module in training
    mode (the lean forward has no dropout)."""
    if any(m.training for m in model.modules()):
        return False
    return unsupported_reason(model) is None


def fused_head(model) -> bool:
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return type(model).__name__ in _FUSED_HEAD_MODELS and isinstance(head, torch.nn.Linear)


def fused_head_logprobs(model, inputs: dict, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-token log π(x_t) (B, T) of a fused-head model (`fused_head(model)`): the body's hidden states, then the
    LM head over the counted tokens only. inputs: the causal forward's keyword arguments (prompt ++ x_<T);
    tokens (B, T) with 0 where mask (B, T) is False; positions outside mask are left 0."""
    B, T = tokens.shape
    device = tokens.device
    # hidden states only; the head runs over the counted positions only (in chunks when recomputed)
    if lean_ok(model):
        ids, attn, pos = inputs["input_ids"], inputs["attention_mask"], inputs["position_ids"]
        hidden = lean_hidden(model, ids, attn, pos)[:, -T:]  # (B, T, E)
    else:
        hidden = model.base_model(**inputs).last_hidden_state[:, -T:]  # (B, T, E)
    rows = mask.reshape(-1).nonzero().squeeze(1)  # (N,) flat indices of counted tokens
    head = model.get_output_embeddings()
    W, b = head.weight, head.bias  # (V, E), (V,) or None
    h = hidden.reshape(-1, hidden.shape[-1]).index_select(0, rows)  # (N, E)
    y = tokens.reshape(-1).index_select(0, rows)  # (N,)
    if h.shape[0] * W.shape[0] * 4 <= _SCORE_LOGITS_BYTES:
        R = max(1, _SCORE_CHUNK_ELEMS // W.shape[0])
        lp = _LogitsLogProb.apply(F.linear(h, W, b), y, R)  # (N,); logits of counted tokens only
    else:
        lp = _HeadLogProb.apply(h, W, b, y, _HEAD_CHUNK_ROWS)  # (N,); no (N, V) tensor at all
    tok_logp = torch.zeros(B * T, dtype=lp.dtype, device=device).scatter(0, rows, lp).view(B, T)
    return tok_logp


def teacher_forced_logprobs(model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, tokens: torch.Tensor,
                            mask: torch.Tensor) -> torch.Tensor:
    """The (B, T) log π(x_t | x_<t, prompt) of sampling.score (the caller zeroes the positions after EOS): an
    encoder-decoder's decoder from its start token; a causal LM on prompt ++ x_<T, with the fused LM head when
    `fused_head(model)`. Inputs on the model's device, padded slots holding a valid id."""
    T = tokens.shape[1]
    if _is_encoder_decoder(model):
        start = torch.full_like(tokens[:, :1], _decoder_start_id(model))
        logits = model(input_ids=prompt_ids, attention_mask=prompt_mask, use_cache=False,
                       decoder_input_ids=torch.cat([start, tokens[:, :-1]], dim=1)).logits  # (B, T, V); shifted right
        tok_logp = token_logprobs(logits, tokens)  # (B, T)
    else:
        # input = prompt ++ x_<T (B, Tp + T − 1); the last T positions predict x_0 … x_{T−1}
        attn = torch.cat([prompt_mask, mask[:, :-1].long()], dim=1)
        inputs = dict(input_ids=torch.cat([prompt_ids, tokens[:, :-1]], dim=1), attention_mask=attn,
                      position_ids=_position_ids(attn), use_cache=False)
        if fused_head(model):
            tok_logp = fused_head_logprobs(model, inputs, tokens, mask)  # (B, T)
        else:
            logits = model(**inputs, logits_to_keep=T).logits  # (B, T, V)
            tok_logp = token_logprobs(logits, tokens)  # (B, T)
    return tok_logp
