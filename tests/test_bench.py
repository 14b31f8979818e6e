"""Tests for scripts/bench.py: the FLOP formula on tiny models, the interleaved timing protocol, and a --quick run
(whose distribution check compares our sampler with generate() on an enumerable model and must also reject a
temperature-0.5 sampler, i.e. the check has power)."""
import json

import pytest
import torch

from conftest import load_script

bench = load_script("bench")


def test_flop_formula_on_tiny_models(make_tiny_lm):
    # GPT-2 (tied head): per layer c_attn E×3E + c_proj E×E + c_fc E×4E + mlp c_proj 4E×E = 12E²; head V×E once
    L, E, V = 2, 16, 32
    assert bench.matmul_params(make_tiny_lm("gpt2", vocab_size=V)) == L * 12 * E * E + V * E
    # Llama (untied head): q, o E×E; k, v E×(nkv·hd) = E×8; gate, up, down E×I (I = 32); head V×E
    llama = make_tiny_lm("llama", vocab_size=V)
    per_layer = 2 * E * E + 2 * E * 8 + 3 * E * 32
    assert bench.matmul_params(llama) == L * per_layer + V * E
    f = bench.step_flops(1000, n_sampled=64, n_scored=60)
    assert f == {"sample": 2 * 1000 * 64, "score_base": 2 * 1000 * 60, "policy_fwd_bwd": 6 * 1000 * 60,
                 "total": 1000 * (2 * 64 + 8 * 60)}


def test_interleaved_order_warmup_and_ratio():
    calls, now = [], [0.0]
    cost = {"ours": 1.0, "ref": 3.0}

    def clock():
        return now[0]

    def make(name):
        def fn():
            calls.append(name)
            now[0] += cost[name]
        return fn

    t = bench.interleaved({"ours": make("ours"), "ref": make("ref")}, reps=5, warmup=1, clock=clock)
    assert calls == ["ours", "ref"] * 6  # A B A B …, the first round is the warm-up
    assert t == {"ours": [1.0] * 5, "ref": [3.0] * 5}
    s = bench.summary(t, "ours", "ref")
    assert s["ratio"] == 3.0 and s["n_reps"] == 5
    with pytest.raises(ValueError, match="reps"):
        bench.interleaved({"a": lambda: None}, reps=0)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    res = bench.main(["--quick", "--out", str(out)])
    return res, out


def test_quick_run_writes_results_and_same_distribution(quick_run):
    res, out = quick_run
    assert res["errors"] == {}
    name = res["machine"] + "-quick"
    saved = json.loads((out / f"{name}.json").read_text())
    assert saved["machine"].startswith("cpu-") and saved["reps"] >= 5 and len(saved["load_avg_start"]) == 3
    d = saved["distribution_check"]
    assert d["tv_ours_vs_generate"] < d["tolerance"] < d["tv_control_temperature_0.5"] and d["passed"]
    assert saved["ours_impl"] == bench.default_impl("cpu")
    for row in saved["sampling"]:
        assert row["n_reps"] >= 5 and row["ratio"] > 0 and set(row["tokens_per_s"]) == {"ours", "generate"}
        assert row["impl"] == saved["ours_impl"]
        assert (row["compile_s"] > 0) if row["impl"] == "compile" else row["compile_s"] is None
    step = saved["fdpg_step"][0]
    assert step["flops"]["total"] == 10 * step["n_matmul_params"] * step["B"] * step["T"]
    assert 0 < step["efficiency"]["ours_vs_float32"] and step["ratio"] > 0
    md = (out / f"{name}.md").read_text()
    assert "| sampling tokens/s vs generate() |" in md and "f-DPG step" in md and "passed" in md


def test_quick_run_has_the_mixed_precision_rows(quick_run):
    """The JSON names the CPU and its bf16 flags (and the file name its bf16 units); each precision row times the
    three sampling sides and the three step sides, with the ESS of every bf16 step and the step's FLOPs."""
    from fdpg_core.fast.precision import cpu_bf16_flags, resolve_precision

    res, out = quick_run
    saved = json.loads((out / f"{res['machine']}-quick.json").read_text())
    flags = cpu_bf16_flags()
    assert saved["cpu_model"] and saved["cpu_bf16_flags"] == flags
    unit = "-amx" if "amx_bf16" in flags else "-avx512bf16" if "avx512_bf16" in flags else ""
    assert saved["machine"] == f"cpu-{saved['cpu_count']}core{unit}"
    pr = saved["precision"]
    assert pr["auto_precision"] == resolve_precision("auto", "cpu") and pr["cpu_bf16_flags"] == flags
    (samp,), (step,) = pr["sampling"], pr["fdpg_step"]
    assert set(samp["tokens_per_s"]) == {"ours_fp32", "ours_bf16", "generate_fp32"} and samp["n_reps"] >= 3
    assert set(step["samples_per_s"]) == {"fp32", "bf16", "bf16_base_bf16"}
    assert len(step["ess"]["every_step"]) == step["n_reps"] + 1  # warm-up round included
    assert 0.9 < step["ess"]["min"] <= 1.0
    assert step["flops"]["total"] == 10 * step["n_matmul_params"] * step["B"] * step["T"]
    assert 0 < step["efficiency"]["bf16"]["vs_bfloat16"] and 0 < step["efficiency"]["fp32"]["vs_float32"]
    md = (out / f"{res['machine']}-quick.md").read_text()
    assert "| mixed precision: sampling tokens/s |" in md and "| mixed precision: f-DPG step samples/s |" in md
