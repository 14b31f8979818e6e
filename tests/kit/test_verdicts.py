"""fdpg_core.kit.verdicts: the one rule on synthetic frames (holds / does not hold / inconclusive, ≈ and ≥, chains), and
scripts/make_claims.py: the committed verdict tables and the numbers quoted around them are what the results give."""
import importlib.util
import re
import sys
from pathlib import Path

import pandas as pd
import pytest

from fdpg_core.kit import verdicts as V

HOLDS, FAILS, INC = V.HOLDS, V.FAILS, V.INCONCLUSIVE


def frame(**by_name):
    """{name: [value per seed]} → a final_frame-shaped frame with column m."""
    return pd.DataFrame([{"divergence": n, "seed": s, "m": v} for n, vals in by_name.items()
                         for s, v in enumerate(vals)])


def link(f, chain):
    (lk,) = V.decide_chain(f, "m", chain)
    return lk


def test_pooled_std_is_the_equal_weight_pooled_sample_std():
    assert V.pooled_std([1.0, 3.0], [2.0, 2.0]) == pytest.approx((2.0 / 2) ** 0.5)  # ((1·2 + 1·0) / 2)^½
    assert V.pooled_std([1.0, 2.0, 3.0], [5.0, 5.0, 5.0]) == pytest.approx(0.5 ** 0.5)  # var 1 and 0, pooled ½
    assert V.pooled_std([1.0], [7.0]) == 0.0


def test_greater_holds_only_in_every_seed_and_beyond_the_pooled_std():
    f = frame(a=[1.0, 1.2, 1.1], b=[0.5, 0.6, 0.55])  # every seed, Δ 0.55 ≫ σ ≈ 0.08
    assert link(f, "a > b").verdict == HOLDS and link(f, "a > b").reason == ""
    assert link(f, "b > a").verdict == FAILS and "a > b" in link(f, "b > a").reason
    assert link(f, "b < a").verdict == HOLDS and link(f, "a < b").verdict == FAILS
    one_seed_reversed = frame(a=[1.0, 1.2, 0.4], b=[0.5, 0.6, 0.45])  # Δ large but seed 2 reversed
    lk = link(one_seed_reversed, "a > b")
    assert lk.verdict == INC and "seed 2: a 0.400 < b 0.450" in lk.reason
    assert "seed 2: a 0.400 < b 0.450" in link(one_seed_reversed, "b < a").reason  # named, whatever the wording
    assert link(one_seed_reversed, "b > a").verdict == INC  # not the reverse either
    within_spread = frame(a=[1.0, 2.0, 3.0], b=[0.9, 1.9, 2.9])  # every seed, but Δ 0.1 ≤ σ 1
    assert link(within_spread, "a > b").verdict == INC
    assert "Δ 0.100 ≤ σ 1.000" in link(within_spread, "a > b").reason
    tie = frame(a=[1.0, 2.0], b=[1.0, 1.0])  # a tie in one seed is not "exceeds in every seed"
    assert link(tie, "a > b").verdict == INC


def test_approx_and_at_least():
    close = frame(a=[1.0, 1.2, 0.8], b=[1.05, 0.95, 1.1])  # |Δ| 0.017 ≤ σ
    assert link(close, "a ≈ b").verdict == HOLDS and link(close, "a ~ b").verdict == HOLDS
    apart = frame(a=[2.0, 2.1, 2.2], b=[1.0, 1.1, 1.2])
    assert link(apart, "a ≈ b").verdict == FAILS and link(apart, "b ≈ a").verdict == FAILS
    assert "a > b" in link(apart, "b ≈ a").reason
    apart_but_mixed = frame(a=[2.0, 2.0, 0.9], b=[1.0, 1.0, 1.0])  # |Δ| 0.63 > σ 0.45, seed 2 reversed
    assert link(apart_but_mixed, "a ≈ b").verdict == INC
    # ≥: not below by more than σ; the reverse > makes it fail; otherwise inconclusive
    assert link(apart, "a ≥ b").verdict == HOLDS and link(close, "b >= a").verdict == HOLDS
    assert link(apart_but_mixed, "a ≥ b").verdict == HOLDS  # ahead by more than σ, one seed behind: still ≥
    assert link(apart, "b ≥ a").verdict == FAILS
    assert link(apart_but_mixed, "b ≥ a").verdict == INC
    assert "b below a" in link(apart_but_mixed, "b ≥ a").reason
    assert "a above b" in link(apart_but_mixed, "a ≈ b").reason
    assert link(apart, "b ≤ a").verdict == HOLDS and link(apart, "a ≤ b").verdict == FAILS


def test_chain_decomposition_and_conjunction():
    assert V.parse_chain("rkl ≥ js ≈ tv > kl") == ([["rkl"], ["js", "tv"], ["kl"]], ["≥", ">"])
    assert V.chain_links("rkl ≥ js ≈ tv > kl") == [("rkl", "≥", "js"), ("rkl", "≥", "tv"), ("js", "≈", "tv"),
                                                   ("js", ">", "kl"), ("tv", ">", "kl")]
    assert V.chain_links("a ≈ b ≈ c") == [("a", "≈", "b"), ("a", "≈", "c"), ("b", "≈", "c")]
    assert V.chain_links("kl <= js < rkl") == [("kl", "≤", "js"), ("js", "<", "rkl")]
    f = frame(rkl=[0.9, 0.95, 0.92], js=[0.6, 0.62, 0.58], tv=[0.61, 0.6, 0.6], kl=[0.4, 0.41, 0.39])
    links = V.decide_chain(f, "m", "rkl ≥ js ≈ tv > kl")
    assert [lk.text for lk in links] == ["rkl ≥ js", "rkl ≥ tv", "js ≈ tv", "js > kl", "tv > kl"]
    assert V.combine(links) == HOLDS
    f2 = f.copy()
    f2.loc[(f2.divergence == "tv") & (f2.seed == 2), "m"] = 0.38  # seed 2: tv below kl
    v2 = {lk.text: lk.verdict for lk in V.decide_chain(f2, "m", "rkl ≥ js ≈ tv > kl")}
    assert v2["tv > kl"] == INC and V.combine(v2.values()) == INC
    f3 = frame(rkl=[0.1, 0.12, 0.11], js=[0.6, 0.62, 0.58], tv=[0.61, 0.6, 0.6], kl=[0.4, 0.41, 0.39])
    assert V.combine(V.decide_chain(f3, "m", "rkl ≥ js ≈ tv > kl")) == FAILS  # one failing link: does not hold
    assert V.combine([HOLDS, INC, FAILS]) == FAILS and V.combine([HOLDS, INC]) == INC


def test_bad_inputs_raise_with_the_bad_value():
    f = frame(a=[1.0, 2.0], b=[0.0, 1.0])
    with pytest.raises(ValueError, match="'zz'"):
        V.decide_chain(f, "m", "a > zz")
    with pytest.raises(ValueError, match="'nope'"):
        V.decide_chain(f, "nope", "a > b")
    with pytest.raises(ValueError, match="mixes"):
        V.parse_chain("a > b < c")
    with pytest.raises(ValueError, match="more than once"):
        V.parse_chain("a > b > a")
    with pytest.raises(ValueError, match="seeds differ"):
        V.decide("a", pd.Series([1.0, 2.0], index=[0, 1]), ">", "b", pd.Series([0.0, 1.0], index=[0, 2]))
    with pytest.raises(ValueError, match="non-finite"):
        V.decide("a", [1.0, float("nan")], ">", "b", [0.0, 0.0])
    with pytest.raises(ValueError, match="'!'"):
        V.decide("a", [1.0], "!", "b", [0.0])
    with pytest.raises(ValueError, match="unknown verdicts"):
        V.combine(["holds", "maybe"])


# the committed text ------------------------------------------------------------------------------------------------

def _load_make_claims():
    """scripts/make_claims.py as a module, registered in sys.modules (its dataclasses need their module)."""
    path = Path(__file__).resolve().parents[2] / "scripts" / "make_claims.py"
    spec = importlib.util.spec_from_file_location("make_claims", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["make_claims"] = mod
    spec.loader.exec_module(mod)
    return mod


claims = _load_make_claims()


@pytest.mark.parametrize("name", claims.FILES)
def test_committed_verdict_regions_are_what_make_claims_writes(name):
    text = (claims.REPO / name).read_text(encoding="utf-8")
    assert text == claims.rewrite(text, where=name), f"{name} is out of date: run `make claims`"


def test_every_region_is_used():
    texts = "".join((claims.REPO / n).read_text(encoding="utf-8") for n in claims.FILES)
    used = set(re.findall(r"<!-- claims:begin (\S+) -->", texts))
    assert used == set(claims.REGIONS), f"generated regions not in the Markdown files: {set(claims.REGIONS) - used}"


@pytest.mark.parametrize("name", claims.FILES)
def test_quoted_mean_pm_std_are_the_runs_numbers(name):
    """Every 'm ± s' in an experiment's section is a mean ± std over seeds of that experiment's runs."""
    text = (claims.REPO / name).read_text(encoding="utf-8")
    assert claims.unmatched_quotes(text) == []


def test_rewrite_rejects_unknown_or_unclosed_regions():
    with pytest.raises(ValueError, match="'nope'"):
        claims.rewrite("<!-- claims:begin nope -->\nx\n<!-- claims:end -->\n")
    with pytest.raises(ValueError, match="markers"):
        claims.rewrite("<!-- claims:begin glance -->\nx\n")
