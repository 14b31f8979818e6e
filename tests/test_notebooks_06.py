"""Executed smoke runs of the conditional notebooks: 07_summarization and 08_code.

The static conventions (parameters cell, presets, clean commit, imports) are checked for every notebook by
tests/test_notebooks.py; this file runs each conditional notebook through papermill at its smoke defaults into
tmp_path and checks the recorded result JSONs (marked slow; 07 about 2–4 min, 08 about 1.5 min on 2 cores), with
margins measured over seeds 0, 1, 2 and torch_threads 2 (stated beside each check; no digit of a stochastic run is
compared):
  * one run per default divergence, finite losses, the history ends at n_steps, a's evaluation at step 0;
  * π moved away from a (KL(π‖a) above a measured floor, finite); the constraint rate rose on the training contexts
    (no run lost much; on average by a measured margin) and, on average over divergences, on held-out contexts:
    a run that trained nothing evaluates exactly like a (same sampler seed), so it fails; so does one that diverged;
  * the per-context Ẑ_c statistics are finite;
  * figures and tables were rebuilt from the result files; the summary printed a table of finite numbers.
Plus fast unit tests of fdpg_core.conditional (per-context evaluation, Ẑ_c read-back, ROUGE, references under p).
"""
import math

import pytest
import torch

from fdpg_core import conditional as cd
from test_notebooks import DEFAULT_DIVERGENCES, check_outputs, run_smoke


def _smoke(name, tmp_path, **parameters):
    """Run notebook `name` at its defaults (plus `parameters`; summary checked by run_smoke); check the generic
    properties of its runs; return (runs keyed divergence, params, figs)."""
    params, runs, figs = run_smoke(name, tmp_path, **parameters)
    assert sorted((d, seed) for _, d, seed in runs) == sorted((d, params["seed"][0]) for d in DEFAULT_DIVERGENCES)
    runs = {d: r for (_, d, _), r in runs.items()}
    n_steps = params["n_steps"][0]
    for r in runs.values():
        assert r["preset"] == "smoke" and r["config"]["batch_size"] > 0
        h = r["history"]
        assert all(math.isfinite(x["train/loss"]) for x in h if x.get("train/loss") is not None)
        assert h[0]["step"] == 0 and h[-1]["step"] == n_steps
    return runs, params, figs


def _check_rise(runs, constraint, heldout, *, kl_range, min_each_train, min_mean_train, min_mean_heldout):
    """The constraint rate b of the final π against a's, both evaluated with the same sampler seed (eval_seed):
    a run that trained nothing evaluates exactly like a (rise 0). Checked: KL(π‖a) on the first held-out set in
    kl_range (untrained: 0); each run's rise on its training contexts > min_each_train (no collapse); averaged over
    divergences the rise on the training contexts > min_mean_train and on the held-out sets > min_mean_heldout."""
    train, held = [], []
    for div, r in runs.items():
        f = r["final"]
        train.append(f[f"train/{constraint}"] - f[f"base/train/{constraint}"])
        held += [f[f"{k}/{constraint}"] - f[f"base/{k}/{constraint}"] for k in heldout]
        assert train[-1] > min_each_train, (div, f[f"base/train/{constraint}"], f[f"train/{constraint}"])
        assert kl_range[0] < f[f"{heldout[0]}/kl_pi_a"] < kl_range[1], (div, f[f"{heldout[0]}/kl_pi_a"])
        assert all(math.isfinite(f[f"z/{m}"]) for m in ("z_mean", "z_median", "z_max")), div
        # a's evaluation is recorded at step 0, the final π's at step n_steps
        h0, hn = r["history"][0], r["history"][-1]
        assert h0[f"{heldout[0]}/{constraint}"] == pytest.approx(f[f"base/{heldout[0]}/{constraint}"])
        assert hn[f"{heldout[0]}/{constraint}"] == pytest.approx(f[f"{heldout[0]}/{constraint}"])
    assert sum(train) / len(train) > min_mean_train, train
    assert sum(held) / len(held) > min_mean_heldout, held


# Margins: measured on seeds 0, 1, 2 at torch_threads 1 and seed 0 at torch_threads 2 (AMD EPYC, 2 cores); values
# "min / mean / max" over those runs, sd their standard deviation; bounds ≥ 3 sd beyond the worst run. Rates are over
# contexts × eval_samples = 4 samples each (binomial s.e. of one rate ≈ 0.06 on 64 samples): a single divergence's
# rise on one held-out set is not 3 sd clear of 0 at smoke scale, so held-out rises are checked on the mean.
# ------------------------------------------------------------------------------------------------ 08_code
@pytest.mark.slow
def test_smoke_run_of_08_code(tmp_path):
    runs, params, figs = _smoke("08_code", tmp_path)
    c = params["constraint"][0]
    heldout = ["stdlib_test"] + (["humaneval"] if params["humaneval_contexts"][0] else [])
    # KL(π‖a) 3.6 … 12.1 (kl: 4.7 / 7.3 / 12.1); log scale exp(min − 3 sd) ≥ 1.39 (kl), exp(max + 3 sd) ≤ 42 (kl).
    # Rise on the training contexts per run: kl 0.203 / 0.322 / 0.375, rkl 0.273 / 0.352 / 0.414, js 0.297 / 0.338 /
    # 0.359, tv 0.172 / 0.277 / 0.398 (sd 0.097 -> −0.12, the widest); mean over divergences 0.287 / 0.322 / 0.369
    # (sd 0.035 -> 0.20). Held-out (stdlib_test and humaneval) per divergence and set: −0.031 (kl stdlib_test,
    # seed 2) … 0.469; mean 0.191 / 0.259 / 0.320, sd 0.055 -> 0.027. An untrained π: every rise exactly 0.
    _check_rise(runs, c, heldout, kl_range=(1.0, 50.0), min_each_train=-0.15, min_mean_train=0.2,
                min_mean_heldout=0.02)
    for r in runs.values():
        f = r["final"]
        # a's rates and the references under p do not depend on the training seed: base stdlib_test rate 0.609,
        # KL(p‖a) on the training contexts 0.681, length under p 22.3 tokens on every measured run
        assert 0 <= f[f"base/stdlib_test/{c}"] < 0.9  # the constraint is not already met by a
        assert f["ref/train/kl_p_a"] > 0 and 0 < f["ref/stdlib_test/length_p"] < params["max_new_tokens"][0] + 1
        assert len(r["arrays"]["log_Z_c"]) == params["train_contexts"][0]
        assert sum(r["arrays"]["n_c"]) == params["n_steps"][0] * params["batch_size"][0]  # every sample counted once
    check_outputs(figs, [f"{n}_{c}" for n in ("curves", "rates", "z_per_context", "tradeoff")],
                   [f"final_{c}", f"z_{c}"])


# ------------------------------------------------------------------------------------------------ 07_summarization
@pytest.mark.slow
def test_smoke_run_of_07_summarization(tmp_path):
    runs, params, figs = _smoke("07_summarization", tmp_path)
    # KL(π‖a) 8.8 … 19.8; log scale exp(min − 3 sd) ≥ 4.2 (js: 9.7 at seed 2), exp(max + 3 sd) ≤ 43 (js).
    # Rate of b on the 16 training articles per run: kl 0.172 / 0.230 / 0.328, rkl 0.266 / 0.352 / 0.438,
    # js 0.125 / 0.191 / 0.297, tv 0.078 / 0.191 / 0.297 (sd 0.095 -> −0.21, the widest); mean over divergences
    # 0.203 / 0.241 / 0.262 (sd 0.026 -> 0.125). Held-out per divergence: 0.000 (kl, seed 0) … 0.391; mean
    # 0.129 / 0.198 / 0.234, sd 0.047 -> −0.013: forward KL generalises slowest and the held-out mean is only
    # 2.7 sd clear of 0 (the weakest margin of the notebook tests), so it is checked > 0: an untrained π's rises are
    # exactly 0 (paired evaluation) and fail it.
    _check_rise(runs, "entities", ["heldout"], kl_range=(1.0, 100.0), min_each_train=-0.25, min_mean_train=0.1,
                min_mean_heldout=0.0)
    k = params["min_entities"][0]
    for r in runs.values():
        f = r["final"]
        # a's held-out rate, ROUGE-L and entities per summary do not depend on the training seed: 0.422, 0.157, 1.25
        assert 0 < f["base/heldout/entities"] < 0.9  # neither 0 nor 100 % under a
        assert 0 < f["base/heldout/rougeL"] < 1 and 0 <= f["heldout/rougeL"] < 1  # ROUGE against references
        assert f["base/heldout/n_entities"] > 0.5  # a's summaries do name entities
        assert r["config"]["min_entities"] == k
        assert len(r["arrays"]["log_Z_c"]) == params["train_contexts"][0]
    check_outputs(figs, [f"{n}_min{k}" for n in ("curves", "rates", "z_per_context", "tradeoff")],
                  [f"final_min{k}", f"z_min{k}"])


# ------------------------------------------------------------------------------------------------ unit tests
def test_entity_b_from_evaluate_equals_the_scorer():
    """evaluate derives b from one NER pass (entity_stats): it must equal EntityConsistency itself."""
    pytest.importorskip("spacy")
    from fdpg_core.scorers import EntityConsistency

    src = ["Paul Batchelor said AMP will raise capital in Sydney.", "The storm hit Queensland on Monday."]
    texts = ["AMP and Paul Batchelor met in Sydney.", "AMP met Microsoft in Paris.", "the storm was bad",
             "Queensland was hit.", "John Howard visited Queensland and Canberra."]
    ctx = [0, 0, 0, 1, 1]
    for k in (0, 1, 2):
        sc = EntityConsistency(src, min_entities=k)
        st = cd.entity_stats(sc, texts, [src[c] for c in ctx])
        derived = [float(n_src == n and n >= k) for n, n_src in zip(st["n_entities"], st["n_in_source"])]
        assert derived == sc.score_pairs(texts, [src[c] for c in ctx]).tolist(), k
    assert st["n_entities"][2] == 0 and st["n_in_source"][1] < st["n_entities"][1]


def test_trim_left_and_subset_keep_prompts():
    ids = torch.tensor([[2, 2, 2, 5, 6], [2, 2, 7, 8, 9], [2, 2, 2, 2, 4]])
    mask = (ids != 2).long()
    cs = cd.ContextSet("x", ids, mask, ["a", "b", "c"], [["ra"], ["rb"], ["rc"]])
    s = cs.sorted_by_length()
    assert s.contexts == ["c", "a", "b"] and s.references == [["rc"], ["ra"], ["rb"]]
    sub = cs.subset([2, 0])
    assert sub.ids.tolist() == [[2, 4], [5, 6]] and sub.mask.tolist() == [[0, 1], [1, 1]]
    with pytest.raises(ValueError, match="must agree"):
        cd.ContextSet("bad", ids, mask, ["a"])


def test_evaluate_per_context_rates_and_kl(tiny_gpt2):
    """A scorer that is 1 exactly on context 1: per-context rates 0 and 1; KL(π‖a) = 0 for π = a, > 0 otherwise."""
    import copy

    ids, mask = torch.tensor([[0, 3, 4], [2, 0, 5]]), torch.tensor([[1, 1, 1], [0, 1, 1]])
    cs = cd.ContextSet("t", ids, mask, ["c0", "c1"])

    class Tok:  # decode only needs eos_token_id and batch_decode
        eos_token_id = 1

        @staticmethod
        def batch_decode(seqs, skip_special_tokens=True):
            return [" ".join(map(str, s)) for s in seqs]

    scorer = {"b": lambda s: (s.context_ids == 1).float()}
    kw = dict(n_per_context=5, max_new_tokens=4, tokenizer=Tok(), eos_token_id=1, pad_token_id=2, seed=3)
    ev = cd.evaluate(tiny_gpt2, cs, scorer, base=tiny_gpt2, **kw)
    assert ev.per_context["b"] == [0.0, 1.0] and ev.metrics["b"] == 0.5 and "kl_pi_a" not in ev.metrics
    assert ev.context_ids == [0] * 5 + [1] * 5 and len(ev.texts) == 10
    other = copy.deepcopy(tiny_gpt2)
    with torch.no_grad():
        other.lm_head.weight.mul_(3.0)  # a different π (tied embeddings: every logit scaled)
    ev2 = cd.evaluate(other, cs, scorer, base=tiny_gpt2, **kw)
    assert ev2.metrics["kl_pi_a"] > 0
    ref = cd.reference_under_p(ev, "b")
    assert ref["z_zero"] == 0.5 and ref["kl_p_a"] == pytest.approx(0.0)  # Z_1 = 1 → −log Z = 0


def test_context_log_Z_reads_train_running_mean(tmp_path, tiny_gpt2):
    """Ẑ_c read back from the checkpoint equals the mean of P/q over every sample of the context: with b ≡ 1 and
    π = a frozen (lr tiny, one step), P/q = a/π = 1, so Ẑ_c = 1 for every sampled context."""
    from fdpg_core.targets import BinaryFactor, Target
    from fdpg_core.train import FDPGConfig, train

    ids, mask = torch.tensor([[0, 3], [0, 4], [0, 5]]), torch.ones(3, 2, dtype=torch.long)
    target = Target(tiny_gpt2) * BinaryFactor("one", lambda s: torch.ones(len(s)))
    policy = __import__("copy").deepcopy(tiny_gpt2)
    cfg = FDPGConfig(divergence="js", n_steps=1, batch_size=4, samples_per_context=2, max_new_tokens=3, lr=1e-12,
                     warmup_steps=0, progress=False, out_dir=str(tmp_path), eos_token_id=1, pad_token_id=2)
    train(policy, target, (ids, mask), cfg, sampler=cd.sample_trimmed)
    log_Z, n = cd.context_log_Z(tmp_path)
    assert n == [2.0, 2.0, 0.0]  # two contexts in the one batch, two samples each
    assert log_Z[0] == pytest.approx(0.0, abs=1e-5) and log_Z[1] == pytest.approx(0.0, abs=1e-5)
    assert math.isnan(log_Z[2])
    z = cd.z_stats(log_Z)
    assert z["z_mean"] == pytest.approx(1.0, abs=1e-4) and z["z_zero"] == 0.0


def test_rouge_is_the_maximum_over_references():
    pytest.importorskip("rouge_score")
    out = cd.rouge(["the cat sat on the mat", "dogs run"], [["the cat sat on the mat", "nothing alike"], []], [0, 1])
    assert out["rouge1"][0] == pytest.approx(1.0) and out["rougeL"][0] == pytest.approx(1.0)
    assert math.isnan(out["rouge2"][1])  # no reference for context 1
