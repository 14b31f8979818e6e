"""Tests for the fast paths: fdpg_core.fast.decoders (lean static-cache decoder, static / CUDA-graph sampling loop)
and score()'s chunked head (no (B, T, V) log-softmax).

On CPU (always):
  * the static-shape step (device-side counters, index_copy_ cache writes, attention over all slots) gives the
    same logits as the eager lean stepper and as a cache-free HF forward on the unpadded sequence; the attention
    branch CUDA takes (scaled_dot_product_attention, bool masks) gives the same samples when forced on CPU;
  * impl="static" / "lean" / "hf" draw the same tokens from the same generator, and log_q equals teacher-forced
    score() (fp32, 1e-5), for GPT-2 (incl. an LM-head bias) and Llama (grouped-query attention), with left padding
    and EOS; the result does not depend on sync_every; greedy truncation equals generate(do_sample=False);
  * score()'s two head paths (logits of counted tokens kept / head recomputed in chunks) equal a plain
    log_softmax reference in value and in gradient, and the recomputing path allocates nothing of size (N, V);
  * unsupported models and impossible choices raise ValueError naming the allowed values.
On CUDA (marker `cuda`, skipped without a GPU): the graph-captured sampler equals the eager static sampler token
for token, its log_q equals score() in fp32 (1e-4), cached graphs see in-place weight updates, and bf16 runs.
"""
import math

import pytest
import torch

from fdpg_core import sampling
from fdpg_core.fast import decoders, logprobs
from fdpg_core.fast.decoders import StaticSampler, unsupported_reason
from fdpg_core.sampling import left_pad, make_stepper, repeat_prompts, sample, score

BOS, EOS, PAD = 0, 1, 2
CUDA = torch.cuda.is_available()


def _prompts():
    ids, mask = left_pad([[BOS, 5, 6, 7], [BOS], [BOS, 3, 4, 5, 6, 7]], PAD)
    return repeat_prompts(ids, mask, 3)  # 9 rows, prompt lengths 4, 1, 6


def _models(make_tiny_lm):
    return {
        "gpt2": make_tiny_lm("gpt2", vocab_size=32, seed=0, eos_bias=2.0, init=0.3),  # LM head with a bias
        "llama": make_tiny_lm("llama", vocab_size=32, seed=1, eos_bias=2.0, init=0.3),  # 2 heads, 1 kv head
    }


# ------------------------------------------------------------------------------------------------------------
# 1. The static step equals the eager step and the HF forward
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_static_step_logits_equal_eager_and_hf(make_tiny_lm, kind):
    model = _models(make_tiny_lm)[kind]
    ids, mask, _ = _prompts()
    ids, mask = ids[::3], mask[::3]  # the 3 distinct prompts
    T = 6
    x = torch.randint(3, 32, (3, T), generator=torch.Generator().manual_seed(0))  # fed tokens
    U = torch.zeros(T, 3, 1)
    with torch.no_grad():
        eager = make_stepper(model, ids, mask, T, impl="lean")
        e_logits = torch.stack([eager.prefill()] + [eager.step(x[:, t]) for t in range(T - 1)], 1)  # (3, T, V)
        st = StaticSampler(model, 3, ids.shape[1], T, eos_ids=[], pad_id=PAD)
        st.run(ids, mask, U)  # fills the buffers (its own draws); now replay the feeding by hand
        st.key_valid.zero_()
        st.key_valid[:, : ids.shape[1]] = mask.bool()
        h = st.dec.forward(ids, decoders._position_ids(mask), 0, st.key_valid)
        s_logits = [st.dec.logits(h[:, -1])]
        st.t.fill_(1)
        for t in range(T - 1):
            st.prev.copy_(x[:, t])
            c = st.t + (st.Tp - 1)
            st.key_valid.index_fill_(1, c, True)
            h = st.dec.forward(st.prev[:, None], st.n_real + (st.t - 1), c, st.key_valid)
            s_logits.append(st.dec.logits(h[:, -1]))
            st.t += 1
        s_logits = torch.stack(s_logits, 1)
        torch.testing.assert_close(s_logits, e_logits, atol=1e-5, rtol=1e-5)
        for i in range(3):  # HF forward on the unpadded sequence
            full = torch.cat([ids[i, mask[i].bool()][None], x[i: i + 1, :-1]], 1)
            ref = model(input_ids=full).logits[0, -T:]
            torch.testing.assert_close(e_logits[i], ref, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------------------------------
# 2. Same draws for every impl; log_q == score
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_impls_draw_the_same_tokens_and_log_q_equals_score(make_tiny_lm, kind):
    model = _models(make_tiny_lm)[kind]
    ids, mask, ctx = _prompts()
    out = {}
    for impl in ("hf", "lean", "static"):
        g = torch.Generator().manual_seed(7)
        out[impl] = sample(model, ids, mask, 12, eos_token_id=EOS, pad_token_id=PAD, context_ids=ctx,
                           generator=g, impl=impl)
    s = out["static"]
    assert (~s.mask).any() and s.mask[:, 0].all(), "eos_bias should stop some rows early"
    for impl in ("hf", "lean"):
        assert torch.equal(out[impl].tokens, s.tokens) and torch.equal(out[impl].mask, s.mask)
        torch.testing.assert_close(out[impl].log_q, s.log_q, atol=1e-5, rtol=0)
    torch.testing.assert_close(score(model, s), s.log_q, atol=1e-5, rtol=0)
    assert (s.tokens[~s.mask] == PAD).all()


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_cuda_attention_branch_equals_cpu_branch(make_tiny_lm, monkeypatch, kind):
    """The scaled_dot_product_attention branch (the one CUDA takes: bool masks, GQA rows) run on CPU gives the same
    samples and log-probs as the CPU branch."""
    model = _models(make_tiny_lm)[kind]
    ids, mask, _ = _prompts()
    kw = dict(eos_token_id=EOS, pad_token_id=PAD, impl="static")
    a = sample(model, ids, mask, 10, generator=torch.Generator().manual_seed(5), **kw)
    monkeypatch.setattr(decoders, "_use_sdpa", lambda device: True)
    b = sample(model, ids, mask, 10, generator=torch.Generator().manual_seed(5), **kw)
    assert torch.equal(a.tokens, b.tokens)
    torch.testing.assert_close(a.log_q, b.log_q, atol=1e-5, rtol=0)
    torch.testing.assert_close(score(model, b), b.log_q, atol=1e-5, rtol=0)  # lean score also on the SDPA branch


def test_static_results_do_not_depend_on_sync_every(make_tiny_lm):
    model = _models(make_tiny_lm)["gpt2"]
    ids, mask, _ = _prompts()
    runs = [sample(model, ids, mask, 12, eos_token_id=EOS, pad_token_id=PAD, impl="static", sync_every=k,
                   generator=torch.Generator().manual_seed(3)) for k in (1, 5, 100)]
    for r in runs[1:]:
        assert torch.equal(r.tokens, runs[0].tokens) and torch.equal(r.log_q, runs[0].log_q)


def test_static_greedy_equals_generate(make_tiny_lm):
    model = _models(make_tiny_lm)["llama"]
    ids, mask, _ = _prompts()
    ids, mask = ids[::3], mask[::3]
    s = sample(model, ids, mask, 8, eos_token_id=EOS, pad_token_id=PAD, top_k=1, impl="static")
    g = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=8, do_sample=False, eos_token_id=EOS,
                       pad_token_id=PAD)[:, ids.shape[1]:]
    T = s.tokens.shape[1]
    assert torch.equal(s.tokens, g[:, :T])
    torch.testing.assert_close(s.log_q, torch.zeros(3), atol=1e-6, rtol=0)


def test_bf16_sampling_matches_bf16_scoring(make_tiny_lm):
    model = _models(make_tiny_lm)["gpt2"].to(torch.bfloat16)
    ids, mask, _ = _prompts()
    s = sample(model, ids, mask, 10, eos_token_id=EOS, pad_token_id=PAD, generator=torch.Generator().manual_seed(0))
    tok = score(model, s, return_token_logprobs=True)
    err = (tok.sum(-1) - s.log_q).abs() / s.lengths  # per token
    assert err.max() < 0.05, f"bf16 log_q vs score per-token error {err.max():.3g}"


# ------------------------------------------------------------------------------------------------------------
# 3. score(): both head paths equal log_softmax in value and gradient; no (N, V) allocation when recomputing
# ------------------------------------------------------------------------------------------------------------
def _reference_logprob(model, s):
    """The plain way: a full forward and log_softmax over (B, T, V)."""
    x = torch.cat([s.prompt_ids.masked_fill(s.prompt_mask == 0, 0), s.tokens.masked_fill(~s.mask, 0)], 1)
    attn = torch.cat([s.prompt_mask, s.mask.long()], 1)
    logits = model(input_ids=x, attention_mask=attn, position_ids=(attn.cumsum(-1) - 1).clamp(min=0)).logits
    Tp = s.prompt_ids.shape[1]
    lp = logits[:, Tp - 1: -1].log_softmax(-1).gather(-1, s.tokens.masked_fill(~s.mask, 0)[..., None]).squeeze(-1)
    return (lp * s.mask).sum(-1)


@pytest.mark.parametrize("path", ["keep_logits", "recompute_head", "generic_logits"])
def test_score_paths_equal_log_softmax_in_value_and_gradient(make_tiny_lm, monkeypatch, path):
    model = _models(make_tiny_lm)["gpt2"]
    ids, mask, _ = _prompts()
    s = sample(model, ids, mask, 9, eos_token_id=EOS, pad_token_id=PAD, generator=torch.Generator().manual_seed(2))
    assert (~s.mask).any()
    if path == "recompute_head":
        monkeypatch.setattr(logprobs, "_SCORE_LOGITS_BYTES", 0)
        monkeypatch.setattr(logprobs, "_HEAD_CHUNK_ROWS", 7)  # several chunks, a ragged last one
    if path == "generic_logits":  # the path of models without a known head (T5, ...)
        monkeypatch.setattr(logprobs, "_FUSED_HEAD_MODELS", ())
    monkeypatch.setattr(logprobs, "_SCORE_CHUNK_ELEMS", 32 * 5)  # 5 rows per logsumexp chunk
    w = torch.randn(len(s), generator=torch.Generator().manual_seed(0))
    params = [p for p in model.parameters()]
    ours = score(model, s)
    g_ours = torch.autograd.grad((w * ours).sum(), params)
    ref = _reference_logprob(model, s)
    g_ref = torch.autograd.grad((w * ref).sum(), params)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)
    for a, b in zip(g_ours, g_ref):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    assert model.lm_head.bias is not None and g_ours[-1].abs().sum() > 0  # the head bias gets its gradient


def test_recomputing_head_allocates_no_full_vocabulary_tensor(make_tiny_lm, monkeypatch):
    model = make_tiny_lm("gpt2", vocab_size=4096, seed=0, init=0.05)
    ids, mask = sampling.bos_prompts(32, BOS)
    s = sample(model, ids, mask, 16, eos_token_id=None, pad_token_id=PAD, generator=torch.Generator().manual_seed(0))
    N, V = s.mask.sum().item(), 4096
    monkeypatch.setattr(logprobs, "_SCORE_LOGITS_BYTES", 0)
    monkeypatch.setattr(logprobs, "_HEAD_CHUNK_ROWS", 64)
    with torch.profiler.profile(profile_memory=True) as prof:
        score(model, s).sum().backward()
    biggest = max(e.cpu_memory_usage for e in prof.events())
    assert biggest < N * V * 4 / 4, f"an allocation of {biggest} bytes ≥ a quarter of the (N, V) logits"
    model.zero_grad()
    monkeypatch.setattr(logprobs, "_SCORE_LOGITS_BYTES", 1 << 40)  # the keep-logits path does hold (N, V)
    with torch.profiler.profile(profile_memory=True) as prof:
        score(model, s).sum().backward()
    assert max(e.cpu_memory_usage for e in prof.events()) >= N * V * 4


def test_cpu_speedups_are_bitwise_neutral(make_tiny_lm, monkeypatch):
    """The lean decoder's CPU shortcuts change no bit: the GPT-2 blocks with their modules inlined
    (_gpt2_direct) and the LM head computed block by block over the vocabulary give the same tokens, log_q,
    teacher-forced log-probs and gradients as the module-by-module forward with one head product."""
    model = make_tiny_lm("gpt2", vocab_size=300, seed=0, eos_bias=2.0, init=0.3)
    ids, mask, ctx = _prompts()
    monkeypatch.setattr(decoders, "_HEAD_BLOCK", 64)  # 300 = 4 blocks of 64 + one of 44
    assert decoders.LeanDecoder(model, 2, 4)._direct  # the stock GPT-2 modules take the inlined path
    init = decoders.LeanDecoder.__init__
    out = {}
    for fast in (True, False):
        def patched(self, *a, _fast=fast, **k):
            init(self, *a, **k)
            self._direct = self._direct and _fast
        monkeypatch.setattr(decoders.LeanDecoder, "__init__", patched)
        monkeypatch.setattr(decoders, "_HEAD_BLOCK_MAX_ROWS", 128 if fast else 0)
        s = sample(model, ids, mask, 10, eos_token_id=EOS, pad_token_id=PAD, context_ids=ctx,
                   generator=torch.Generator().manual_seed(3))
        model.zero_grad(set_to_none=True)
        lp = score(model, s, return_token_logprobs=True)
        lp.sum().backward()
        out[fast] = (s.tokens, s.log_q, lp.detach(), [p.grad.clone() for p in model.parameters()])
    (t1, q1, l1, g1), (t0, q0, l0, g0) = out[True], out[False]
    assert torch.equal(t1, t0) and torch.equal(q1, q0) and torch.equal(l1, l0)
    assert all(torch.equal(a, b) for a, b in zip(g1, g0))


# ------------------------------------------------------------------------------------------------------------
# 4. Which models, bad choices
# ------------------------------------------------------------------------------------------------------------
def test_unsupported_models_take_the_hf_path_and_bad_impls_raise(make_tiny_lm):
    neo = make_tiny_lm("gpt_neo", vocab_size=32, seed=0)
    t5 = make_tiny_lm("t5", vocab_size=32, seed=0)
    assert "GPTNeoForCausalLM" in unsupported_reason(neo) and unsupported_reason(t5)
    assert unsupported_reason(make_tiny_lm("gpt2")) is None and unsupported_reason(make_tiny_lm("llama")) is None
    assert sampling._resolve_impl(neo, "auto", torch.device("cpu")) == "hf"
    assert sampling._resolve_impl(make_tiny_lm("gpt2"), "auto", torch.device("cpu")) == "lean"
    assert sampling._resolve_impl(make_tiny_lm("gpt2"), "auto", torch.device("cuda")) == "graph"
    ids, mask = sampling.bos_prompts(2, BOS)
    kw = dict(eos_token_id=EOS, pad_token_id=PAD)
    with pytest.raises(ValueError, match="allowed for it: 'auto', 'hf'"):
        sample(neo, ids, mask, 3, impl="lean", **kw)
    with pytest.raises(ValueError, match="needs a CUDA model"):
        sample(make_tiny_lm("gpt2"), ids, mask, 3, impl="graph", **kw)
    with pytest.raises(ValueError, match="impl must be one of"):
        sample(make_tiny_lm("gpt2"), ids, mask, 3, impl="fast", **kw)
    with pytest.raises(ValueError, match="use_graph=True needs a CUDA model"):
        StaticSampler(make_tiny_lm("gpt2"), 2, 1, 3, eos_ids=[EOS], pad_id=PAD, use_graph=True)


# ------------------------------------------------------------------------------------------------------------
# 4b. impl="compile" (opt-in): torch.compile'd static step (skipped where torch.compile cannot build CPU code)
# ------------------------------------------------------------------------------------------------------------
COMPILE_SKIP = decoders.compile_unavailable_reason()
needs_compile = pytest.mark.skipif(COMPILE_SKIP is not None, reason=f"torch.compile unavailable: {COMPILE_SKIP}")


@needs_compile
@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_compiled_sampler_equals_lean_and_score(make_tiny_lm, kind):
    """Same generator -> the same tokens as the eager lean path (the two-level draw rounds its sums differently
    from one long cumsum, so a token could differ only if a uniform fell within ~1e-7 of a CDF boundary: not the
    case for these seeds; the exact-support and distribution tests below do not depend on it), and log_q equals
    teacher-forced score() within 1e-5. A second call reuses the cached compiled sampler."""
    decoders.clear_graph_cache()
    model = _models(make_tiny_lm)[kind]
    ids, mask, ctx = _prompts()
    kw = dict(eos_token_id=EOS, pad_token_id=PAD, context_ids=ctx)
    for seed in (7, 8):
        c = sample(model, ids, mask, 12, generator=torch.Generator().manual_seed(seed), impl="compile", **kw)
        e = sample(model, ids, mask, 12, generator=torch.Generator().manual_seed(seed), impl="lean", **kw)
        assert (~c.mask).any() and c.mask[:, 0].all(), "eos_bias should stop some rows early"
        assert torch.equal(c.tokens, e.tokens) and torch.equal(c.mask, e.mask)
        torch.testing.assert_close(c.log_q, e.log_q, atol=1e-5, rtol=0)
        torch.testing.assert_close(score(model, c), c.log_q, atol=1e-5, rtol=0)
    (st,) = decoders._GRAPHS[model].values()
    assert st.compile and st.compile_s > 0
    decoders.clear_graph_cache()


@needs_compile
def test_compiled_sampler_sees_in_place_updates(make_tiny_lm):
    """The cached compiled step reads the current weights (an optimiser's in-place update), not a frozen copy."""
    decoders.clear_graph_cache()
    model = _models(make_tiny_lm)["gpt2"]
    ids, mask, _ = _prompts()
    kw = dict(eos_token_id=EOS, pad_token_id=PAD)
    sample(model, ids, mask, 8, generator=torch.Generator().manual_seed(0), impl="compile", **kw)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.5)
    c = sample(model, ids, mask, 8, generator=torch.Generator().manual_seed(1), impl="compile", **kw)
    assert len(decoders._GRAPHS[model]) == 1, "the in-place update should reuse the cached sampler"
    e = sample(model, ids, mask, 8, generator=torch.Generator().manual_seed(1), impl="lean", **kw)
    assert torch.equal(c.tokens, e.tokens)
    torch.testing.assert_close(score(model, c), c.log_q, atol=1e-5, rtol=0)
    decoders.clear_graph_cache()


def test_blocked_draw_is_exact_in_support_and_distribution():
    """The compiled path's two-level inverse-CDF draw (run eagerly here): never a token of weight 0 (incl. the
    padding of a ragged last block and a block that ends in zeros), and the same token as the one-level draw
    away from CDF boundaries; its log-prob equals log_softmax."""
    from fdpg_core.fast.draw import draw

    g = torch.Generator().manual_seed(0)
    V = 150  # blocks of 64: 64, 64, 22 (+ 42 padding)
    logits = torch.randn(4000, V, generator=g) * 3
    logits[:, 60:70] = -math.inf  # zeros at the end of block 0 / start of block 1
    logits[:, 140:] = -math.inf  # a ragged last block ending in zeros
    logits[0, :] = -math.inf
    logits[0, 63] = 0.0  # one possible token, last of its block
    u = torch.rand(4000, 1, generator=g)
    u[1] = 0.0  # (1 − u)·total = total: the top end
    idx, lp = decoders._draw_blocked(logits, u)
    ref_idx, ref_lp = draw(logits, u)
    assert torch.isfinite(logits.gather(1, idx[:, None])).all(), "a token of weight 0 was drawn"
    assert idx[0] == 63
    assert (idx == ref_idx).float().mean() > 0.999
    torch.testing.assert_close(lp, logits.log_softmax(-1).gather(1, idx[:, None]).squeeze(1), atol=1e-5, rtol=0)


def test_compile_impl_is_opt_in_and_unavailable_compiler_is_a_clear_error(make_tiny_lm, monkeypatch):
    assert sampling._resolve_impl(make_tiny_lm("gpt2"), "auto", torch.device("cpu")) == "lean"
    monkeypatch.setattr(decoders, "compile_unavailable_reason",
                        lambda: "torch.compile needs a C++ compiler; allowed impls without one: 'auto', 'hf'")
    ids, mask = sampling.bos_prompts(2, BOS)
    with pytest.raises(ValueError, match="impl='compile' is unavailable.*allowed impls"):
        sample(make_tiny_lm("gpt2"), ids, mask, 3, eos_token_id=EOS, pad_token_id=PAD, impl="compile")
    monkeypatch.undo()
    monkeypatch.setattr("shutil.which", lambda name: None)
    assert "C++ compiler" in decoders.compile_unavailable_reason()


# ------------------------------------------------------------------------------------------------------------
# 5. CUDA graphs (skipped without a GPU)
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_cuda_graph_equals_eager_static_and_score(make_tiny_lm, kind):
    decoders.clear_graph_cache()
    model = _models(make_tiny_lm)[kind].cuda()
    ids, mask, ctx = _prompts()
    ids, mask = ids.cuda(), mask.cuda()
    kw = dict(eos_token_id=EOS, pad_token_id=PAD, sync_every=4)
    runs = {}
    for impl in ("static", "graph", "graph"):  # the second graph call replays the cached graph
        g = torch.Generator(device="cuda").manual_seed(11)
        runs.setdefault(impl, []).append(sample(model, ids, mask, 12, generator=g, impl=impl, **kw))
    e = runs["static"][0]
    for s in runs["graph"]:
        assert torch.equal(s.tokens, e.tokens) and torch.equal(s.mask, e.mask)
        torch.testing.assert_close(s.log_q, e.log_q, atol=1e-5, rtol=0)
        torch.testing.assert_close(score(model, s), s.log_q, atol=1e-4, rtol=0)  # fp32 on GPU
    (st,) = decoders._GRAPHS[model].values()
    assert st.graph is not None, "the step was not captured as a CUDA graph"


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_cuda_graph_sees_in_place_updates_and_new_dtype(make_tiny_lm):
    decoders.clear_graph_cache()
    model = _models(make_tiny_lm)["gpt2"].cuda()
    ids, mask = sampling.bos_prompts(16, BOS, device="cuda")
    kw = dict(eos_token_id=None, pad_token_id=PAD)
    sample(model, ids, mask, 8, impl="graph", generator=torch.Generator(device="cuda").manual_seed(0), **kw)
    with torch.no_grad():  # an optimiser-like in-place update: the captured graph must use the new weights
        for p in model.parameters():
            p.mul_(1.5)
    g = sample(model, ids, mask, 8, impl="graph", generator=torch.Generator(device="cuda").manual_seed(1), **kw)
    e = sample(model, ids, mask, 8, impl="static", generator=torch.Generator(device="cuda").manual_seed(1), **kw)
    assert torch.equal(g.tokens, e.tokens)
    torch.testing.assert_close(g.log_q, score(model, g), atol=1e-4, rtol=0)
    m16 = model.to(torch.bfloat16)  # new tensors -> a new graph
    b = sample(m16, ids, mask, 8, impl="graph", generator=torch.Generator(device="cuda").manual_seed(2), **kw)
    err = ((score(m16, b) - b.log_q).abs() / b.lengths).max().item()
    assert math.isfinite(err) and err < 0.05
