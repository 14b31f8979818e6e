"""fdpg_core.kit.reference: estimates against exact values on enumerable toys and categorical distributions.

  * ReferenceSample from a on the binary toy (p ∝ a·b): log Ẑ → log Z, E_p[b] = 1, KL(p‖π) → the exact value
    for a policy π ≠ a (this is rejection sampling: the rows with b = 1 are samples of p);
  * the same on the scalar toy (p ∝ a·exp(r/β), importance weights), and the SNIS moment E_p[r];
  * two_sample_js_tv → the exact JS and TV of two categorical distributions (a wrong ½ or a swapped π/p fails);
  * policy_metrics: KL(π‖a), entropy and KL(π‖p) from samples of π → exact values on the toy;
  * diversity_metrics on a hand-made set of texts.
"""
import math

import pytest
import torch

from fdpg_core.kit import reference, toy
from fdpg_core.divergences import exact_divergence
from fdpg_core.targets import Target


def _draw(pb, model, n, seed=0, **kw):
    return reference.ReferenceSample.draw(model, pb.target, pb.prompts, n, pb.max_new_tokens, tokenizer=None,
                                          seed=seed, chunk=n, eos_token_id=pb.eos_token_id,
                                          pad_token_id=pb.pad_token_id, **kw)


def _other_policy(pb, seed=7):
    """A policy π ≠ a of the same family (another random tiny GPT-2)."""
    return toy.tiny_gpt2(4, n_layer=2, seed=seed, init_std=0.5, n_positions=8)


@pytest.mark.parametrize("kind", ["binary", "scalar"])
def test_reference_sample_of_a_estimates_Z_and_forward_kl(kind):
    pb = toy.make_toy_problem(kind, seed=1)
    ref = _draw(pb, pb.target.base, 8_000)
    assert ref.log_Z == pytest.approx(pb.info["log_Z"][0], abs=0.05)
    pi = _other_policy(pb)
    log_pi = toy.exact_log_probs(pi, pb.support).detach().double()  # (40,)
    exact = float(exact_divergence("kl", log_pi, pb.log_p[0]))  # KL(p‖π)
    est = ref.divergences(pi)["ref/kl"]
    assert est == pytest.approx(exact, abs=0.08 * max(1.0, exact)), (est, exact)
    assert ref.divergences(pb.target.base)["ref/kl"] == pytest.approx(
        float(exact_divergence("kl", pb.support.log_q.double(), pb.log_p[0])), abs=0.08)  # KL(p‖a)
    p = pb.log_p[0].exp()
    feat = next(iter(ref.features))
    exact_moment = float(p @ pb.target.score(pb.support, log_a=pb.support.log_q).features[feat].double())
    assert ref.moments()[feat] == pytest.approx(exact_moment, abs=0.05)
    if kind == "binary":  # rejection sampling: every weight is 0 or the same constant, E_p[b] = 1 exactly
        assert ref.moments()[feat] == pytest.approx(1.0)
        assert ref.ess() == pytest.approx(float(ref.features[feat].sum()), rel=1e-6)


def test_reference_sample_from_p_with_known_Z_is_exact_kl():
    pb = toy.make_toy_problem("scalar", seed=2)
    # sample from p itself by a policy that equals p: the support's exact log p as a categorical
    idx = torch.multinomial(pb.log_p[0].exp(), 50_000, replacement=True, generator=torch.Generator().manual_seed(0))
    pi = _other_policy(pb, seed=3)
    log_pi = toy.exact_log_probs(pi, pb.support).detach().double()
    est = float((pb.log_p[0][idx] - log_pi[idx]).mean())  # what ReferenceSample(q = p, log Z known) computes
    assert est == pytest.approx(float(exact_divergence("kl", log_pi, pb.log_p[0])), abs=0.03)


def test_two_sample_js_tv_matches_exact_on_categoricals():
    g = torch.Generator().manual_seed(0)
    K, N = 30, 200_000
    log_p = torch.log_softmax(torch.randn(K, generator=g, dtype=torch.float64) * 1.5, 0)
    log_pi = torch.log_softmax(torch.randn(K, generator=g, dtype=torch.float64) * 1.5, 0)
    xp = torch.multinomial(log_p.exp(), N, replacement=True, generator=g)  # x ~ p
    xq = torch.multinomial(log_pi.exp(), N, replacement=True, generator=g)  # x ~ π
    got = reference.two_sample_js_tv(log_pi[xp], log_p[xp], log_pi[xq], log_p[xq])
    js = float(exact_divergence("js", log_pi, log_p))
    tv = float(exact_divergence("tv", log_pi, log_p))
    assert 0.02 < js < math.log(2) and 0.05 < tv < 1  # a non-trivial pair
    assert got["exact/js"] == pytest.approx(js, abs=0.005)
    assert got["exact/tv"] == pytest.approx(tv, abs=0.005)
    same = reference.two_sample_js_tv(log_p[xp], log_p[xp], log_p[xq], log_p[xq])  # π = p
    assert same["exact/js"] == pytest.approx(0.0, abs=1e-12) and same["exact/tv"] == pytest.approx(0.0, abs=1e-12)


def test_policy_metrics_match_exact_values_on_the_toy():
    pb = toy.make_toy_problem("scalar", seed=4)
    pi = _other_policy(pb, seed=5)
    x = reference.sample_policy(pi, pb.prompts, 8_000, pb.max_new_tokens, tokenizer=None, seed=0, chunk=8_000,
                                eos_token_id=pb.eos_token_id, pad_token_id=pb.pad_token_id)
    m = reference.policy_metrics(x, pb.target, log_Z=pb.info["log_Z"][0], diversity=False)
    log_pi = toy.exact_log_probs(pi, pb.support).detach().double()
    log_a = pb.support.log_q.double()
    pi_p = log_pi.exp()
    assert m["eval/kl_pi_a"] == pytest.approx(float(pi_p @ (log_pi - log_a)), abs=0.06)  # KL(π‖a)
    assert m["eval/entropy"] == pytest.approx(float(-(pi_p @ log_pi)), abs=0.06)  # H(π)
    assert m["eval/kl_pi_p"] == pytest.approx(float(exact_divergence("rkl", log_pi, pb.log_p[0])), abs=0.06)


def test_diversity_metrics_on_known_texts():
    same = reference.diversity_metrics(["a b c d e"] * 4)
    assert same["distinct/1"] == pytest.approx(5 / 20) and same["self_bleu/4"] == pytest.approx(1.0)
    diff = reference.diversity_metrics(["a b c d", "e f g h", "i j k l"])
    assert diff["distinct/2"] == pytest.approx(1.0) and diff["self_bleu/3"] == pytest.approx(0.0)


def test_cached_reference_saves_summaries_and_reuses_them_instead_of_drawing(tmp_path):
    """The first call draws and saves a record; the next returns its summaries without drawing (same numbers, to the
    7 stored digits) unless samples are needed (a run to train) or rerun; other parameters are another record."""
    pb = toy.make_toy_problem("binary", seed=1)
    draws = []

    def draw():
        draws.append(1)
        return _draw(pb, pb.target.base, 500)

    other = Target(pb.target.base, pb.target.factors)  # a second target object: the same sample rescored
    kw = dict(rescore={"p": other}, n_texts=5)  # the toy has no tokenizer: no texts are decoded, none kept
    ref, resc = reference.cached_reference(tmp_path, "toy-a", {"n": 500}, draw, need_samples=False, **kw)
    assert len(draws) == 1 and isinstance(ref, reference.ReferenceSummary) and set(resc) == {"p"}
    exact = _draw(pb, pb.target.base, 500)
    assert ref.log_Z == pytest.approx(exact.log_Z, rel=1e-6) and ref.ess() == pytest.approx(exact.ess(), rel=1e-6)
    assert ref.moments() == pytest.approx(exact.moments(), rel=1e-6) and len(ref) == 500
    assert ref.base_means() == pytest.approx(exact.base_means(), rel=1e-6)
    feat = next(iter(exact.features))
    assert torch.equal(ref.features[feat], exact.features[feat])  # 0/1 features: exact
    assert ref.texts(0) == []
    with pytest.raises(ValueError, match=r"rows \[0\] asked for, but the summary kept the texts of 0 rows"):
        ref.texts(1)
    with pytest.raises(ValueError, match="no samples"):
        ref.divergences(pb.target.base)
    again, _ = reference.cached_reference(tmp_path, "toy-a", {"n": 500}, draw, need_samples=False, **kw)
    assert len(draws) == 1 and again.log_Z == ref.log_Z and again.moments() == ref.moments()
    full, resc = reference.cached_reference(tmp_path, "toy-a", {"n": 500}, draw, need_samples=True, **kw)
    assert len(draws) == 2 and isinstance(full, reference.ReferenceSample)
    assert isinstance(resc["p"], reference.ReferenceSample)
    reference.cached_reference(tmp_path, "toy-a", {"n": 500}, draw, need_samples=False, rerun=True, **kw)
    reference.cached_reference(tmp_path, "toy-a", {"n": 501}, draw, need_samples=False, **kw)
    assert len(draws) == 4 and len(list((tmp_path / "reference").glob("toy-a-*.json"))) == 2


def test_summary_keeps_the_first_texts_and_those_where_a_feature_holds():
    pb = toy.make_toy_problem("binary", seed=1)
    ref = _draw(pb, pb.target.base, 300)
    ref.samples.texts = [f"text {i}" for i in range(300)]  # as decoded by a tokenizer
    feat = next(iter(ref.features))
    hit = ref.features[feat] > 0  # (N,)
    summ = reference.ReferenceSummary.from_record(ref.summary(2, where=hit).to_record())
    assert summ.texts(2) == ref.texts(2) and summ.texts(2, hit) == ref.texts(2, hit)
    assert set(summ.stored_texts) == {0, 1} | set(hit.nonzero().squeeze(1)[:2].tolist())
    with pytest.raises(ValueError, match="rows .* asked for"):
        summ.texts(3, ~hit)  # a third row without the feature: never kept
    kept = reference.ReferenceSummary.from_record(ref.summary(log_w=True).to_record())
    assert torch.equal(kept.log_w, ref.log_w) and (ref.log_w == -math.inf).any()  # −inf (b = 0) survives JSON
