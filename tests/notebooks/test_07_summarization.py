"""Executed smoke run of notebooks/07_summarization.ipynb (marked slow).

The static conventions (parameters cell, presets, clean commit, imports) are checked for every notebook by
tests/notebooks/test_conventions.py; this file runs the notebook through papermill at its smoke defaults into
tmp_path and checks the recorded result JSONs (marked slow; 07 about 2–4 min, 08 about 1.5 min on 2 cores), with
margins measured over seeds 0, 1, 2 and torch_threads 2 (stated beside each check; no digit of a stochastic run is
compared):
  * one run per default divergence, finite losses, the history ends at n_steps, a's evaluation at step 0;
  * π moved away from a (KL(π‖a) above a measured floor, finite); the constraint rate rose on the training contexts
    (no run lost much; on average by a measured margin) and, on average over divergences, on held-out contexts:
    a run that trained nothing evaluates exactly like a (same sampler seed), so it fails; so does one that diverged;
  * the per-context Ẑ_c statistics are finite;
  * figures and tables were rebuilt from the result files; the summary printed a table of finite numbers.
"""
import pytest

from nbsmoke import check_outputs, check_rise, smoke_conditional


# Margins: measured on seeds 0, 1, 2 at torch_threads 1 and seed 0 at torch_threads 2 (AMD EPYC, 2 cores); values
# "min / mean / max" over those runs, sd their standard deviation; bounds ≥ 3 sd beyond the worst run. Rates are over
# contexts × eval_samples = 4 samples each (binomial s.e. of one rate ≈ 0.06 on 64 samples): a single divergence's
# rise on one held-out set is not 3 sd clear of 0 at smoke scale, so held-out rises are checked on the mean.
@pytest.mark.slow
def test_smoke_run_of_07_summarization(tmp_path):
    runs, params, figs = smoke_conditional("07_summarization", tmp_path)
    # KL(π‖a) 8.8 … 19.8; log scale exp(min − 3 sd) ≥ 4.2 (js: 9.7 at seed 2), exp(max + 3 sd) ≤ 43 (js).
    # Rate of b on the 16 training articles per run: kl 0.172 / 0.230 / 0.328, rkl 0.266 / 0.352 / 0.438,
    # js 0.125 / 0.191 / 0.297, tv 0.078 / 0.191 / 0.297 (sd 0.095 -> −0.21, the widest); mean over divergences
    # 0.203 / 0.241 / 0.262 (sd 0.026 -> 0.125). Held-out per divergence: 0.000 (kl, seed 0) … 0.391; mean
    # 0.129 / 0.198 / 0.234, sd 0.047 -> −0.013: forward KL generalises slowest and the held-out mean is only
    # 2.7 sd clear of 0 (the weakest margin of the notebook tests), so it is checked > 0: an untrained π's rises are
    # exactly 0 (paired evaluation) and fail it.
    check_rise(runs, "entities", ["heldout"], kl_range=(1.0, 100.0), min_each_train=-0.25, min_mean_train=0.1,
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
