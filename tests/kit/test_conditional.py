"""Unit tests of fdpg_core.kit.conditional: per-context evaluation, Ẑ_c read-back, ROUGE, references under p."""
import math

import pytest
import torch

from fdpg_core.kit import conditional as cd
from fdpg_core.kit.contexts import ContextSet


# ------------------------------------------------------------------------------------------------ unit tests
def test_entity_b_from_evaluate_equals_the_scorer():
    """evaluate derives b from one NER pass (entity_stats): it must equal EntityConsistency itself."""
    pytest.importorskip("spacy")
    from fdpg_core.kit.scorers import EntityConsistency

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


def test_evaluate_per_context_rates_and_kl(tiny_gpt2):
    """A scorer that is 1 exactly on context 1: per-context rates 0 and 1; KL(π‖a) = 0 for π = a, > 0 otherwise."""
    import copy

    ids, mask = torch.tensor([[0, 3, 4], [2, 0, 5]]), torch.tensor([[1, 1, 1], [0, 1, 1]])
    cs = ContextSet("t", ids, mask, ["c0", "c1"])

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


def test_history_log_Z_is_train_running_mean(tiny_gpt2):
    """The Ẑ_c that train() returns (History.log_Z) equals the mean of P/q over every sample of the context: with
    b ≡ 1 and π = a frozen (lr tiny, one step), P/q = a/π = 1, so Ẑ_c = 1 for every sampled context."""
    from fdpg_core.targets import BinaryFactor, Target
    from fdpg_core.train import FDPGConfig, train

    ids, mask = torch.tensor([[0, 3], [0, 4], [0, 5]]), torch.ones(3, 2, dtype=torch.long)
    target = Target(tiny_gpt2) * BinaryFactor("one", lambda s: torch.ones(len(s)))
    policy = __import__("copy").deepcopy(tiny_gpt2)
    cfg = FDPGConfig(divergence="js", n_steps=1, batch_size=4, samples_per_context=2, max_new_tokens=3, lr=1e-12,
                     warmup_steps=0, progress=False, eos_token_id=1, pad_token_id=2)
    history = train(policy, target, (ids, mask), cfg, sampler=cd.sample_trimmed)
    log_Z, n = history.log_Z.tolist(), history.count.tolist()
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


def test_train_and_evaluate_saves_each_run_once(tmp_path, tiny_gpt2, monkeypatch):
    """The notebooks' loop: one result file per (divergence, seed) holding π's, a's and the target's metrics, Ẑ_c
    per training context, the curve from a (step 0) to the final π (step n_steps), examples with references only
    when asked; a second call with the same fingerprint reuses the file instead of training again."""
    from fdpg_core.kit import results
    from fdpg_core.targets import BinaryFactor, Target

    class Tok:  # decode only needs eos_token_id and batch_decode
        eos_token_id = 1

        @staticmethod
        def batch_decode(seqs, skip_special_tokens=True):
            return [" ".join(map(str, s)) for s in seqs]

    ids, mask = torch.tensor([[0, 3], [0, 4]]), torch.ones(2, 2, dtype=torch.long)
    sets = {"train": ContextSet("train", ids, mask, ["c0", "c1"]),
            "held": ContextSet("held", ids, mask, ["h0", "h1"], [["r0"], ["r1"]])}
    b = {"b": lambda s: (s.context_ids == 1).float()}  # 1 exactly on context 1
    scorers = {k: b for k in sets}
    eval_kw = dict(max_new_tokens=3, tokenizer=Tok(), eos_token_id=1, pad_token_id=2, base=tiny_gpt2, seed=5)
    base_eval = {k: cd.evaluate(tiny_gpt2, cs, b, n_per_context=2, **eval_kw) for k, cs in sets.items()}
    ref = {k: cd.reference_under_p(ev, "b") for k, ev in base_eval.items()}
    kw = dict(tokenizer=Tok(), divergences=["js"], seeds=[0], constraint="b", scorers=scorers,
              train_kw=dict(n_steps=2, batch_size=4, samples_per_context=2, max_new_tokens=3, lr=1e-3,
                            eos_token_id=1, pad_token_id=2, eval_every=1),
              eval_kw=eval_kw, base_eval=base_eval, ref=ref, eval_samples=2, eval_curve_samples=2,
              curve_metrics=["b", "kl_pi_a"], heldout=["held"], n_examples=1, with_references=True,
              out_path=tmp_path, experiment="x", fingerprint="f", params={}, preset="smoke", setting="s",
              config={"extra": 7})
    target = Target(tiny_gpt2) * BinaryFactor("b", b["b"], log_floor=-5.0)
    (run,) = cd.train_and_evaluate(tiny_gpt2, target, sets, **kw)
    f, arrays = run["final"], run["arrays"]
    assert f["base/held/b"] == base_eval["held"].metrics["b"] == 0.5 and f["ref/train/z_zero"] == 0.5
    assert f["held/b"] == f["train/b"] == 0.5  # b is a function of the context only
    assert {"z/z_mean", "seconds", "held/kl_pi_a"} <= set(f) and list(run["config"])[-1] == "extra"
    assert len(arrays["log_Z_c"]) == 2 and sum(arrays["n_c"]) == 2 * 4  # two steps of four samples
    assert arrays["examples"][0]["context"] == "h0" and arrays["examples"][0]["reference"] == ["r0"]
    steps = [h["step"] for h in run["history"] if "held/b" in h]
    assert steps[0] == 0 and steps[-1] == 2  # the curve runs from a to the final π
    monkeypatch.setattr(cd, "train", lambda *a, **k: pytest.fail("a saved run was trained again"))
    assert cd.train_and_evaluate(tiny_gpt2, target, sets, **kw)[0]["final"] == f
    assert len(results.load_runs(tmp_path, experiment="x", verbose=False)) == 1
