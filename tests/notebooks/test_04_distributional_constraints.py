"""Executed smoke run of notebooks/04_distributional_constraints.ipynb.

The notebook runs through papermill at its smoke defaults into tmp_path (marked slow;
about 30–90 s each on 2 cores) and its recorded result JSONs must show that training moved π TOWARDS THE TARGET, by
margins measured over seeds 0, 1, 2 and torch_threads 2 (stated beside each check; no digit of a stochastic run is
compared). A run that trained nothing (lr = 1e-12: π = a) or one that diverged fails:
  every run  KL(π‖a) on fresh samples is above a measured floor (0 for π = a) and finite (06: KL(π‖p) finite);
  04  the moment error |E_π[φ] − μ̄| fell below that of a (on average; no divergence raised it); the fitted λ
      reproduces μ̄ on the fitting sample and moves the held-out moment towards μ̄;  (also at torch_threads 2)
Every run: one file per default divergence, finite losses, the history ends at n_steps; figures and tables exist;
the summary printed a table of finite numbers (run_smoke).
"""
import math

import pytest

from fdpg_core.kit.notebook import NOTEBOOK_DIR, parameters_cell
from nbsmoke import _read, check_outputs, smoke_runs


@pytest.mark.slow
def test_smoke_run_of_04_distributional_constraints(tmp_path, torch_threads):
    name = "04_distributional_constraints"
    tasks = parameters_cell(_read(NOTEBOOK_DIR / f"{name}.ipynb"))[1]["tasks"][0]
    # KL(π‖a), 0 for an untrained π: 0.66 (rkl) … 1.38 (kl); log scale exp(min − 3 sd) ≥ 0.48, exp(max + 3 sd) ≤ 2.1
    runs, params, figs = smoke_runs(name, tmp_path, tasks, (0.3, 50.0), torch_threads=torch_threads)
    gains = []
    for (task, div), r in runs.items():
        f, goals = r["final"], r["config"]["goals"]
        # a's moments and the fitted λ come from the samples of a drawn with problem_seed, not the training seed:
        # mean |E_a[φ] − μ̄| = 0.412 and err_p / err_a = 0.070 on every measured run
        err_a = sum(abs(f[f"base/{k}"] - v) for k, v in goals.items()) / len(goals)
        assert err_a > 0.2  # a is far from the constraints
        # the fitted p_λ has (on the held-out sample) moments much closer to μ̄ than a
        err_p = sum(abs(f[f"p/{k}"] - v) for k, v in goals.items()) / len(goals)
        assert err_p < 0.5 * err_a, (task, err_p, err_a)
        assert all(math.isfinite(v) and v > 0 for v in r["config"]["lam"])  # μ̄ above E_a[φ]: λ > 0
        assert 0 < f["ess_ref"] <= 1 and 0 < f["ess_fit"] <= 1
        # err_a − |E_π[φ] − μ̄| on 128 fresh samples of π (min / mean / max, sd): kl 0.209 / 0.277 / 0.342 (0.060),
        # rkl 0.115 / 0.160 / 0.209 (0.040), js 0.225 / 0.270 / 0.334 (0.046), tv 0.217 / 0.236 / 0.248 (0.014).
        # Each run: no divergence moved E_π[φ] away from μ̄ (bound: rkl's min − 3 sd = −0.005)
        gains.append(err_a - f["eval/constraint_err"])
        assert gains[-1] > -0.01, (task, div, err_a, f["eval/constraint_err"])
        assert math.isfinite(f["ref/kl"]) and f["ref/kl"] > 0  # KL(p‖π) 0.46 … 0.94
    # mean over divergences 0.215 / 0.236 / 0.250, sd 0.017 -> min − 3 sd = 0.165; a run that trained nothing:
    # 0 ± 0.028 (binomial s.e. of E[female] ≈ 0.09 on 128 samples against 512; one shared sample): 0.12 = 4 s.e.
    assert sum(gains) / len(gains) >= 0.12, gains
    check_outputs(figs, ["fitted_targets", "curves", "curves_divergences", "final_metrics", "final_moments"],
                  ["fit", "final", "claims"])
