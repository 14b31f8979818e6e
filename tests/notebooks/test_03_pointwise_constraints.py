"""Executed smoke run of notebooks/03_pointwise_constraints.ipynb.

The notebook runs through papermill at its smoke defaults into tmp_path (marked slow;
about 30–90 s each on 2 cores) and its recorded result JSONs must show that training moved π TOWARDS THE TARGET, by
margins measured over seeds 0, 1, 2 and torch_threads 2 (stated beside each check; no digit of a stochastic run is
compared). A run that trained nothing (lr = 1e-12: π = a) or one that diverged fails:
  every run  KL(π‖a) on fresh samples is above a measured floor (0 for π = a) and finite (06: KL(π‖p) finite);
  03  E_π[b] rose from the base rate Ẑ = E_a[b], on average over the divergences;
Every run: one file per default divergence, finite losses, the history ends at n_steps; figures and tables exist;
the summary printed a table of finite numbers (run_smoke).
"""
import math

import pytest

from fdpg_core.kit.notebook import NOTEBOOK_DIR, parameters_cell
from nbsmoke import _read, check_outputs, smoke_runs


@pytest.mark.slow
def test_smoke_run_of_03_pointwise_constraints(tmp_path):
    name = "03_pointwise_constraints"
    tasks = parameters_cell(_read(NOTEBOOK_DIR / f"{name}.ipynb"))[1]["tasks"][0]
    # KL(π‖a) on fresh samples, 0 for an untrained π: 4.6 (rkl) … 14.9 (tv); on a log scale (KL is a scale quantity)
    # exp(min − 3 sd) ≥ 1.4 (tv: 6.2 / 10.6 / 14.9), exp(max + 3 sd) ≤ 65 (tv)
    runs, params, figs = smoke_runs(name, tmp_path, tasks, (1.0, 100.0))
    rises = []
    for (task, div), r in runs.items():
        f, h = r["final"], r["history"]
        Z = f["Z_ref"]
        # Ẑ = E_a[b] on the reference sample of a (problem_seed, not the training seed): 50 of 512 = 0.098 on every
        # measured run (s.e. 0.013): the constraint matters and Ẑ can be estimated
        assert 0.005 < Z < 0.4
        assert f["log_Z_ref"] == pytest.approx(math.log(Z), abs=1e-4)
        assert h[0]["ref/kl"] == pytest.approx(-f["log_Z_ref"], abs=1e-4)  # KL(p‖a) = −log Z at π = a
        rises.append(f["eval/align/b"] - Z)
        assert math.isfinite(f["ref/kl"]) and math.isfinite(f["log_Z_train"])
        assert f["log_floor"] == (params["log_floor"][0] if div == "rkl" else -math.inf) or (
            div != "rkl" and f["log_floor"] is None)  # JSON stores −inf as null
        assert 0 < f["eval/distinct/1"] <= f["eval/distinct/2"] <= 1
        assert 0 <= f["eval/self_bleu/5"] <= f["eval/self_bleu/3"] <= 1
    # E_π[b] − Ẑ on 128 fresh samples of π. Per divergence (min / mean / max): kl 0.137 / 0.271 / 0.457 (sd 0.161),
    # rkl 0.285 / 0.379 / 0.504 (sd 0.111), js 0.316 / 0.361 / 0.395, tv 0.355 / 0.402 / 0.426: forward and reverse KL
    # are not 3 sd clear of 0 at 8 steps, so each divergence's rise is not checked alone. Mean over the divergences:
    # 0.305 / 0.354 / 0.420, sd 0.056 -> min − 3 sd = 0.14; a run that trained nothing has a rise of 0 ± 0.029
    # (binomial s.e. of 128 samples against 512 at Ẑ = 0.098; the 4 divergences then share one sample): 0.12 = 4 s.e.
    assert sum(rises) / len(rises) >= 0.12, rises
    check_outputs(figs, ["curves", "curves_kl_p_pi", "curves_kl_pi_a", "curves_log_z", "final_metrics",
                         "alignment_vs_diversity", "floor_effect"],
                   ["final", "floor", "claims"])
