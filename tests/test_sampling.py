"""Tests for fdpg_core.sampling: exactness of the sampler and of teacher-forced scoring.

What is checked (CPU, tiny seeded models built from configs in conftest.py):
  * log_q returned by sample() equals score() (fp32, atol 1e-5) with left-padded prompts of different lengths and
    EOS inside the batch, for GPT-2, GPT-Neo, Llama and T5;
  * KV-cache logits at every step equal a cache-free forward on the UNPADDED sequence (left padding is invisible);
  * enumerable model (V = 5, 3 new tokens, EOS): Σ_x exp(score(x)) = 1 and the empirical distribution of
    100k samples matches the exact one (χ² test, TV bound), plain and truncated (top_k/top_p/temperature), and
    log_q of every draw equals the exact log-prob of the drawn sequence;
  * top_k = 1 is greedy and equals generate(do_sample=False) with left padding;
  * after EOS: pad, mask False, nothing counted; results identical for any pad id and any sync_every;
  * bad inputs raise ValueError naming the problem.
"""

import math

import pytest
import torch

from fdpg_core.fast import logprobs
from fdpg_core.sampling import (
    Samples,
    bos_prompts,
    decode,
    left_pad,
    make_stepper,
    repeat_prompts,
    sample,
    score,
    truncate_logits,
)

BOS, EOS, PAD = 0, 1, 2  # the tiny causal models' special ids (tests/conftest.py)
KINDS = ["gpt2", "gpt_neo", "llama", "t5"]


def _prompts(kind):
    """Three contexts of lengths 4, 1, 6 (left padded), each repeated 4 times -> 12 rows."""
    if kind == "t5":  # encoder input; T5's pad id is 0
        ids, mask = left_pad([[5, 6, 7, EOS], [9], [3, 4, 5, 6, 7, EOS]], 0)
    else:
        ids, mask = left_pad([[BOS, 5, 6, 7], [BOS], [BOS, 3, 4, 5, 6, 7]], PAD)
    return repeat_prompts(ids, mask, 4)


def _pad_id(kind):
    return 0 if kind == "t5" else PAD


# ------------------------------------------------------------------------------------------------------------
# 1. log_q == score, EOS structure
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_log_q_equals_score_with_left_padding_and_eos(make_tiny_lm, kind):
    model = make_tiny_lm(kind, vocab_size=32, seed=0, eos_bias=3.0, init=0.02 if kind == "t5" else 0.3)
    ids, mask, ctx = _prompts(kind)
    g = torch.Generator().manual_seed(0)
    s = sample(model, ids, mask, 10, eos_token_id=EOS, pad_token_id=_pad_id(kind), context_ids=ctx, generator=g)
    B, T = s.tokens.shape
    assert B == 12 and T <= 10 and torch.equal(s.context_ids, ctx)
    lengths = s.mask.sum(-1)
    assert (lengths < 10).any(), "eos_bias should make some rows stop early"
    # mask is a prefix; a row shorter than max_new_tokens ends with EOS and has no earlier EOS; pad afterwards
    assert torch.equal(s.mask, torch.arange(T)[None] < lengths[:, None])
    last = s.tokens.gather(1, (lengths - 1)[:, None]).squeeze(1)
    assert (last[lengths < 10] == EOS).all()
    early_eos = (s.tokens == EOS) & s.mask & (torch.arange(T)[None] < (lengths - 1)[:, None])
    assert not early_eos.any()
    assert (s.tokens[~s.mask] == _pad_id(kind)).all()
    # log_q == teacher-forced log-prob; per-token log-probs sum to it and are 0 off the mask
    lp = score(model, s)
    assert lp.shape == (B,) and s.log_q.dtype == torch.float32 and not s.log_q.requires_grad
    torch.testing.assert_close(lp.detach(), s.log_q, atol=1e-5, rtol=0)
    tok = score(model, s, return_token_logprobs=True)
    assert tok.shape == (B, T) and (tok[~s.mask] == 0).all() and (tok[s.mask] < 0).all()
    torch.testing.assert_close(tok.sum(-1), lp, atol=1e-6, rtol=0)


def test_training_flags_restored_and_score_is_differentiable(make_tiny_lm):
    model = make_tiny_lm("gpt2", vocab_size=32, seed=1, eos_bias=1.0, init=0.3)
    model.train()  # dropout 0.1 active in train mode
    model.transformer.h[0].eval()  # a mixed state must be restored exactly
    flags = [m.training for m in model.modules()]
    ids, mask, ctx = _prompts("gpt2")
    s = sample(model, ids, mask, 6, eos_token_id=EOS, pad_token_id=PAD, generator=torch.Generator().manual_seed(0))
    assert [m.training for m in model.modules()] == flags
    model.eval()  # sampling ran without dropout: matches the eval-mode score
    lp = score(model, s)
    torch.testing.assert_close(lp.detach(), s.log_q, atol=1e-5, rtol=0)
    assert lp.requires_grad
    lp.sum().backward()
    assert model.transformer.wte.weight.grad.abs().sum() > 0


def test_score_chunking_matches_log_softmax(make_tiny_lm, monkeypatch):
    model = make_tiny_lm("gpt2", vocab_size=32, seed=2, init=0.3)
    ids, mask, _ = _prompts("gpt2")
    s = sample(model, ids, mask, 7, eos_token_id=EOS, pad_token_id=PAD, generator=torch.Generator().manual_seed(1))
    full = score(model, s, return_token_logprobs=True)
    monkeypatch.setattr(logprobs, "_SCORE_CHUNK_ELEMS", 1)  # one position per chunk
    torch.testing.assert_close(score(model, s, return_token_logprobs=True), full, atol=0, rtol=0)
    # reference: explicit log_softmax on a cache-free forward of the whole (prompt ++ tokens) sequence
    x = torch.cat([s.prompt_ids, s.tokens], 1)
    attn = torch.cat([s.prompt_mask, s.mask.long()], 1)
    logits = model(input_ids=x, attention_mask=attn, position_ids=(attn.cumsum(-1) - 1).clamp(min=0)).logits
    Tp = ids.shape[1]
    ref = logits[:, Tp - 1 : -1].log_softmax(-1).gather(-1, s.tokens[..., None]).squeeze(-1) * s.mask
    torch.testing.assert_close(full, ref, atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------------------------------------
# 2. KV cache with left padding == cache-free forward on the unpadded sequence
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_kv_cache_step_logits_equal_full_forward(make_tiny_lm, kind):
    model = make_tiny_lm(kind, vocab_size=32, seed=3, init=0.02 if kind == "t5" else 0.3)
    ids, mask, _ = _prompts(kind)
    ids, mask = ids[::4], mask[::4]  # the 3 distinct prompts
    steps = 6
    x = torch.randint(3, 32, (3, steps), generator=torch.Generator().manual_seed(0))  # (B, steps) fed tokens
    with torch.no_grad():
        st = make_stepper(model, ids, mask, steps)
        cached = [st.prefill()] + [st.step(x[:, t]) for t in range(steps - 1)]
        cached = torch.stack(cached, 1)  # (B, steps, V)
        for i in range(3):
            prompt = ids[i, mask[i].bool()][None]  # (1, Tp_i) without padding
            if kind == "t5":
                dec = torch.cat([torch.zeros(1, 1, dtype=torch.long), x[i : i + 1, :-1]], 1)
                ref = model(input_ids=prompt, decoder_input_ids=dec).logits[0]  # (steps, V)
            else:
                full = torch.cat([prompt, x[i : i + 1, :-1]], 1)
                ref = model(input_ids=full).logits[0, -steps:]  # (steps, V)
            torch.testing.assert_close(cached[i], ref, atol=1e-5, rtol=1e-5)


def test_greedy_top_k_1_equals_generate_with_left_padding(make_tiny_lm):
    model = make_tiny_lm("gpt2", vocab_size=32, seed=4, eos_bias=1.5, init=0.3)
    ids, mask, _ = _prompts("gpt2")
    ids, mask = ids[::4], mask[::4]
    s = sample(model, ids, mask, 8, eos_token_id=EOS, pad_token_id=PAD, top_k=1)
    torch.testing.assert_close(s.log_q, torch.zeros(3), atol=1e-6, rtol=0)  # truncated distribution is a point mass
    g = model.generate(
        input_ids=ids, attention_mask=mask, max_new_tokens=8, do_sample=False, eos_token_id=EOS, pad_token_id=PAD
    )[:, ids.shape[1] :]
    T = s.tokens.shape[1]
    assert torch.equal(s.tokens, g[:, :T]) and (g[:, T:] == PAD).all()
    # top_p → 0 is greedy too
    s2 = sample(model, ids, mask, 8, eos_token_id=EOS, pad_token_id=PAD, top_p=1e-6)
    assert torch.equal(s2.tokens, s.tokens)


# ------------------------------------------------------------------------------------------------------------
# 3. Exact distribution of an enumerable model
# ------------------------------------------------------------------------------------------------------------
V_ENUM, T_ENUM = 5, 3


def _enumerate_outcomes(n_ctx):
    """All outcomes with ≤ T_ENUM new tokens: sequences ending in EOS early, or T_ENUM tokens without early EOS.
    Returns tokens (K, T) padded with PAD and mask (K, T)."""
    seqs = [[]]
    out = []
    for t in range(T_ENUM):
        nxt = []
        for s in seqs:
            for v in range(V_ENUM):
                (out if v == EOS or t == T_ENUM - 1 else nxt).append(s + [v])
        seqs = nxt
    toks = torch.full((len(out), T_ENUM), PAD)
    msk = torch.zeros((len(out), T_ENUM), dtype=torch.bool)
    for i, s in enumerate(out):
        toks[i, : len(s)] = torch.tensor(s)
        msk[i, : len(s)] = True
    return toks, msk


def _outcome_key(tokens, mask):
    """Injective code of the masked part of each row: Σ_t (x_t + 1)·(V + 1)^t over mask."""
    w = (V_ENUM + 1) ** torch.arange(tokens.shape[1])
    return ((tokens + 1) * mask * w).sum(-1)


def _exact_log_probs(model, prompts, trunc):
    """(C, K) exact log-probs of every outcome per context, by teacher forcing (optionally truncated per step)."""
    toks, msk = _enumerate_outcomes(len(prompts))
    K = toks.shape[0]
    ids, mask = left_pad(prompts, PAD)
    rows, rmask, ctx = repeat_prompts(ids, mask, K)
    tokens, tmask = toks.repeat(len(prompts), 1), msk.repeat(len(prompts), 1)
    s = Samples(rows, rmask, tokens, tmask, torch.zeros(len(ctx)), ctx, pad_token_id=PAD)
    with torch.no_grad():
        if not trunc:
            return score(model, s).view(len(prompts), K), toks, msk
        x = torch.cat([rows, tokens[:, :-1]], 1)
        attn = torch.cat([rmask, tmask[:, :-1].long()], 1)
        logits = model(input_ids=x, attention_mask=attn, position_ids=(attn.cumsum(-1) - 1).clamp(min=0)).logits
        logits = logits[:, -T_ENUM:]  # (C·K, T, V)
        lt = _ref_truncate(logits.reshape(-1, V_ENUM), **trunc).view_as(logits).log_softmax(-1)
        tok = lt.gather(-1, tokens[..., None]).squeeze(-1)
        return torch.where(tmask, tok, 0.0).sum(-1).view(len(prompts), K), toks, msk


def _ref_truncate(logits, temperature=1.0, top_k=None, top_p=None):
    """Independent row-by-row reference for evaluation truncation (−inf on removed tokens)."""
    out = logits.clone() / temperature
    for row in out:  # small test tensors only
        if top_k:
            row[row < sorted(row.tolist())[-top_k]] = -math.inf
        if top_p is not None:
            p = row.softmax(-1).tolist()
            kept, mass = set(), 0.0
            for j in sorted(range(len(p)), key=lambda j: -p[j]):
                if mass >= top_p:
                    break
                kept.add(j)
                mass += p[j]
            row[[j for j in range(len(p)) if j not in kept]] = -math.inf
    return out


def test_truncate_logits_closed_form():
    l = torch.tensor([[3.0, 1.0, 2.0, 0.0, -1.0]])
    assert torch.equal(truncate_logits(l), l)
    torch.testing.assert_close(truncate_logits(l, temperature=0.5), 2 * l)
    inf = -math.inf
    assert truncate_logits(l, top_k=2).tolist() == [[3.0, inf, 2.0, inf, inf]]
    p = l.softmax(-1)[0]  # sorted masses: p0 = .636, p2 = .234, p1 = .086, ...
    top_p = (p[0] + p[2]).item() - 1e-4  # the two most likely tokens reach top_p
    assert truncate_logits(l, top_p=top_p).tolist() == [[3.0, inf, 2.0, inf, inf]]
    assert truncate_logits(l, top_p=p[0].item() + 1e-4).tolist() == [[3.0, inf, 2.0, inf, inf]]
    assert truncate_logits(l, top_p=p[0].item() - 1e-4).tolist() == [[3.0, inf, inf, inf, inf]]
    lt = torch.randn(7, 11, generator=torch.Generator().manual_seed(0))
    for kw in [dict(top_k=3, temperature=0.7), dict(top_p=0.5, temperature=1.3), dict(top_k=4, top_p=0.8)]:
        assert torch.equal(truncate_logits(lt, **kw), _ref_truncate(lt, **kw))


def _chi2_pvalue(counts, probs):
    """Pearson χ² goodness of fit (bins with expected count < 5 merged); p-value by Wilson–Hilferty."""
    n = counts.sum()
    exp = probs * n
    small = exp < 5
    obs = torch.cat([counts[~small], counts[small].sum(0, keepdim=True)])
    exp = torch.cat([exp[~small], exp[small].sum(0, keepdim=True)])
    keep = exp > 0
    obs, exp = obs[keep], exp[keep]
    stat = ((obs - exp) ** 2 / exp).sum().item()
    k = len(exp) - 1
    z = ((stat / k) ** (1 / 3) - (1 - 2 / (9 * k))) / math.sqrt(2 / (9 * k))
    return 0.5 * math.erfc(z / math.sqrt(2))


@pytest.mark.parametrize(
    "trunc",
    [{}, {"top_k": 2, "temperature": 0.8}, {"top_p": 0.6}],
    ids=["pure", "topk2_temp0.8", "topp0.6"],
)
def test_empirical_distribution_matches_enumeration(make_tiny_lm, trunc):
    model = make_tiny_lm("gpt2", vocab_size=V_ENUM, seed=5, init=0.1)
    prompts = [[BOS, 3], [BOS]]  # two contexts of different lengths (left padded)
    log_p, toks, msk = _exact_log_probs(model, prompts, trunc)  # (C, K)
    if not trunc:  # score() is a normalised distribution over the support
        torch.testing.assert_close(log_p.exp().sum(-1), torch.ones(2), atol=1e-5, rtol=0)
    p = log_p.exp()
    p = p / p.sum(-1, keepdim=True)
    if not trunc:
        assert p.max() < 0.3 and (p > 1e-3).sum(-1).min() > 60, "model too peaked to test much"
    else:
        assert (p > 1e-2).sum(-1).min() >= 4 and (p == 0).sum(-1).min() > 20, "truncation should matter"

    N = 50_000  # per context
    ids, mask = left_pad(prompts, PAD)
    rows, rmask, ctx = repeat_prompts(ids, mask, N)
    g = torch.Generator().manual_seed(123)
    s = sample(model, rows, rmask, T_ENUM, eos_token_id=EOS, pad_token_id=PAD, context_ids=ctx, generator=g, **trunc)

    keys_all = _outcome_key(toks, msk)  # (K,) distinct
    assert keys_all.unique().numel() == len(keys_all)
    order = keys_all.argsort()
    k = _outcome_key(s.tokens, s.mask)
    pos = torch.searchsorted(keys_all[order], k)
    outcome = order[pos.clamp(max=len(order) - 1)]  # (C·N,) outcome index of each draw
    assert torch.equal(keys_all[outcome], k), "a draw fell outside the enumerated support"
    # log_q of each draw equals the exact log-prob of the drawn sequence
    torch.testing.assert_close(s.log_q, log_p[ctx, outcome], atol=1e-5, rtol=0)

    K = len(keys_all)
    # TV tolerance: E[TV] ≤ ½ Σ_x sqrt(p(x)/N) ≤ ½ sqrt(K/N); allow 2× the bound
    for c in range(2):
        counts = torch.bincount(outcome[ctx == c], minlength=K).double()
        p_hat = counts / N
        tol = 2 * 0.5 * (p[c].double().sqrt().sum() / math.sqrt(N)).item()
        tv = 0.5 * (p_hat - p[c].double()).abs().sum().item()
        assert tv < tol, f"context {c}: TV {tv:.4f} ≥ tolerance {tol:.4f}"
        pval = _chi2_pvalue(counts, p[c].double())
        assert pval > 1e-4, f"context {c}: χ² p-value {pval:.2e}"
        if trunc:  # truncation removes outcomes: none of them may be drawn
            assert counts[p[c] == 0].sum() == 0


def test_enumeration_detects_a_wrong_distribution(make_tiny_lm):
    """The χ²/TV checks above have power: samples from a different model (other seed) are rejected."""
    m_a = make_tiny_lm("gpt2", vocab_size=V_ENUM, seed=5, init=0.1)
    m_b = make_tiny_lm("gpt2", vocab_size=V_ENUM, seed=6, init=0.1)
    log_p, toks, msk = _exact_log_probs(m_a, [[BOS]], {})
    rows, rmask = bos_prompts(20_000, BOS)
    s = sample(m_b, rows, rmask, T_ENUM, eos_token_id=EOS, pad_token_id=PAD, generator=torch.Generator().manual_seed(0))
    keys_all = _outcome_key(toks, msk)
    order = keys_all.argsort()
    outcome = order[torch.searchsorted(keys_all[order], _outcome_key(s.tokens, s.mask))]
    counts = torch.bincount(outcome, minlength=len(keys_all)).double()
    assert _chi2_pvalue(counts, log_p[0].exp().double()) < 1e-6


# ------------------------------------------------------------------------------------------------------------
# 4. After EOS
# ------------------------------------------------------------------------------------------------------------
def test_after_eos_nothing_counts_and_pad_id_is_irrelevant(make_tiny_lm):
    model = make_tiny_lm("gpt2", vocab_size=32, seed=7, eos_bias=3.0, init=0.3)
    ids, mask, ctx = _prompts("gpt2")
    kw = dict(eos_token_id=EOS, context_ids=ctx)
    a = sample(model, ids, mask, 10, pad_token_id=PAD, generator=torch.Generator().manual_seed(9), **kw)
    b = sample(model, ids, mask, 10, pad_token_id=7, generator=torch.Generator().manual_seed(9), sync_every=1, **kw)
    c = sample(model, ids, mask, 10, pad_token_id=PAD, generator=torch.Generator().manual_seed(9), sync_every=99, **kw)
    assert (~a.mask).any(), "need rows that stopped early"
    assert torch.equal(a.mask, b.mask) and torch.equal(a.tokens[a.mask], b.tokens[b.mask])
    assert (a.tokens[~a.mask] == PAD).all() and (b.tokens[~b.mask] == 7).all()
    torch.testing.assert_close(a.log_q, b.log_q, atol=0, rtol=0)
    assert torch.equal(a.tokens, c.tokens) and torch.equal(a.log_q, c.log_q)
    # score ignores whatever follows EOS
    garbage = torch.randint(0, 32, a.tokens.shape, generator=torch.Generator().manual_seed(0))
    a2 = Samples(a.prompt_ids, a.prompt_mask, torch.where(a.mask, a.tokens, garbage), a.mask, a.log_q, a.context_ids)
    torch.testing.assert_close(score(model, a2), score(model, a), atol=1e-6, rtol=0)
    # out-of-vocabulary fillers (the −100 label convention) in padded prompt slots and after EOS are harmless
    a3 = Samples(a.prompt_ids.masked_fill(a.prompt_mask == 0, -100), a.prompt_mask,
                 a.tokens.masked_fill(~a.mask, -100), a.mask, a.log_q, a.context_ids)
    torch.testing.assert_close(score(model, a3), score(model, a), atol=1e-6, rtol=0)
    b3 = sample(model, a3.prompt_ids, a3.prompt_mask, 10, pad_token_id=PAD,
                generator=torch.Generator().manual_seed(9), **kw)
    assert torch.equal(b3.tokens, a.tokens) and torch.equal(b3.prompt_ids, a.prompt_ids)


def test_all_rows_finished_stops_early_and_eos_none_runs_full_length(make_tiny_lm):
    model = make_tiny_lm("gpt2", vocab_size=32, seed=8, eos_bias=20.0, init=0.3)  # EOS almost surely first
    ids, mask = bos_prompts(5, BOS)
    s = sample(model, ids, mask, 30, eos_token_id=EOS, pad_token_id=PAD, generator=torch.Generator().manual_seed(0))
    assert s.tokens.shape == (5, 1) and (s.tokens == EOS).all() and s.mask.all()
    s = sample(model, ids, mask, 4, eos_token_id=None, pad_token_id=PAD, generator=torch.Generator().manual_seed(0))
    assert s.tokens.shape == (5, 4) and s.mask.all()
    s = sample(model, ids, mask, 4, eos_token_id=[EOS, 5], pad_token_id=PAD, generator=torch.Generator().manual_seed(0))
    assert s.tokens.shape == (5, 1)


# ------------------------------------------------------------------------------------------------------------
# 5. Helpers and bad inputs
# ------------------------------------------------------------------------------------------------------------
def test_helpers_samples_index_cat_decode(make_tiny_lm):
    ids, mask = left_pad([[4, 5, 6], [7]], PAD)
    assert ids.tolist() == [[4, 5, 6], [PAD, PAD, 7]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    r_ids, r_mask, ctx = repeat_prompts(ids, mask, 2)
    assert ctx.tolist() == [0, 0, 1, 1] and torch.equal(r_ids[2], ids[1])
    model = make_tiny_lm("gpt2", vocab_size=32, seed=9, eos_bias=3.0, init=0.3)
    a = sample(model, r_ids, r_mask, 6, eos_token_id=EOS, pad_token_id=PAD, context_ids=ctx,
               generator=torch.Generator().manual_seed(0))
    b = sample(model, *bos_prompts(3, BOS), 2, eos_token_id=EOS, pad_token_id=PAD,
               generator=torch.Generator().manual_seed(1))
    ab = Samples.cat([a, b])
    assert len(ab) == 7 and ab.tokens.shape[1] == a.tokens.shape[1] and ab.prompt_ids.shape[1] == 3
    torch.testing.assert_close(score(model, ab), torch.cat([a.log_q, b.log_q]), atol=1e-5, rtol=0)
    sub = ab.index(torch.tensor([6, 0]))
    assert torch.equal(sub.log_q, torch.stack([b.log_q[2], a.log_q[0]]))
    assert len(ab.index(ab.context_ids == 0)) == 5 and len(ab.to("cpu")) == 7

    class FakeTok:  # duck-typed tokenizer: decode drops the final EOS and everything after it
        eos_token_id = EOS

        def batch_decode(self, seqs, skip_special_tokens=True):
            return [" ".join(f"w{i}" for i in s) for s in seqs]

    texts = decode(a, FakeTok())
    assert a.texts == texts and len(texts) == 4
    for row, n, txt in zip(a.tokens.tolist(), a.mask.sum(-1).tolist(), texts):
        body = row[: n - 1] if row[n - 1] == EOS else row[:n]
        assert txt == " ".join(f"w{i}" for i in body)
    assert a.index(slice(1, 3)).texts == texts[1:3]


@pytest.mark.parametrize(
    "override, match",
    [
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"pad_token_id": 32}, "pad_token_id"),
        ({"eos_token_id": -1}, "eos_token_id"),
        ({"temperature": 0.0}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_k": -1}, "top_k"),
        ({"context_ids": torch.zeros(3, dtype=torch.long)}, "context_ids"),
        ({"prompt_mask": torch.ones(2, 4, dtype=torch.long)}, "shape"),
        ({"prompt_mask": torch.tensor([[1, 1, 0], [1, 1, 1]])}, "LEFT padded"),
        ({"prompt_mask": torch.tensor([[0, 0, 0], [1, 1, 1]])}, "real token"),
        ({"prompt_ids": torch.tensor([[4, 5, 99], [4, 5, 6]])}, r"\[0, 32\)"),
        ({"max_new_tokens": 62}, "positions"),
    ],
)
def test_bad_inputs_raise(tiny_gpt2, override, match):
    kw = dict(
        prompt_ids=torch.tensor([[4, 5, 6], [4, 5, 6]]), prompt_mask=torch.ones(2, 3, dtype=torch.long),
        max_new_tokens=3, eos_token_id=EOS, pad_token_id=PAD,
    )
    kw.update(override)
    with pytest.raises(ValueError, match=match):
        sample(tiny_gpt2, **kw)


def test_helper_bad_inputs():
    with pytest.raises(ValueError, match="n must be"):
        repeat_prompts(torch.ones(2, 3, dtype=torch.long), torch.ones(2, 3, dtype=torch.long), 0)
    with pytest.raises(ValueError, match="≥ 1 token"):
        left_pad([[1, 2], []], PAD)
    with pytest.raises(ValueError, match="pad_token_id"):
        Samples.cat([
            Samples(torch.ones(1, 1), torch.ones(1, 1), torch.ones(1, 2), torch.ones(1, 2, dtype=torch.bool),
                    torch.zeros(1), torch.zeros(1)),
            Samples(torch.ones(1, 1), torch.ones(1, 1), torch.ones(1, 3), torch.ones(1, 3, dtype=torch.bool),
                    torch.zeros(1), torch.zeros(1)),
        ])
