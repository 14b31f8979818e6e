"""Executed smoke run of notebooks/08_code.ipynb (marked slow).

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
def test_smoke_run_of_08_code(tmp_path):
    runs, params, figs = smoke_conditional("08_code", tmp_path)
    c = params["constraint"][0]
    heldout = ["stdlib_test"] + (["humaneval"] if params["humaneval_contexts"][0] else [])
    # KL(π‖a) 3.6 … 12.1 (kl: 4.7 / 7.3 / 12.1); log scale exp(min − 3 sd) ≥ 1.39 (kl), exp(max + 3 sd) ≤ 42 (kl).
    # Rise on the training contexts per run: kl 0.203 / 0.322 / 0.375, rkl 0.273 / 0.352 / 0.414, js 0.297 / 0.338 /
    # 0.359, tv 0.172 / 0.277 / 0.398 (sd 0.097 -> −0.12, the widest); mean over divergences 0.287 / 0.322 / 0.369
    # (sd 0.035 -> 0.20). Held-out (stdlib_test and humaneval) per divergence and set: −0.031 (kl stdlib_test,
    # seed 2) … 0.469; mean 0.191 / 0.259 / 0.320, sd 0.055 -> 0.027. An untrained π: every rise exactly 0.
    check_rise(runs, c, heldout, kl_range=(1.0, 50.0), min_each_train=-0.15, min_mean_train=0.2,
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
