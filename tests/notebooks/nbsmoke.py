"""Shared helpers of the notebook tests: read a notebook, run it at its smoke defaults (papermill) and check the
summary it printed, check the figures and tables it wrote, and the checks several notebooks share.

run_smoke runs papermill at the smoke defaults into tmp_path, then `check_summary` on the printed summary (a table
of finite numbers, one row per run). No test compares the digits of a stochastic run (they follow the CPU's
floating-point path); each effect a notebook shows is checked with a margin measured over seeds 0, 1, 2 and
torch_threads 2, stated beside the check, and must fail for a run that trained nothing (lr = 1e-12).
"""
import ast
import re
import math

import nbformat
import pytest

from fdpg_core.kit import results
from fdpg_core.kit.notebook import NOTEBOOK_DIR, clear_outputs, parameters_cell, run_notebook


DEFAULT_DIVERGENCES = ["kl", "rkl", "js", "tv"]


def _read(path):
    return nbformat.read(path, as_version=4)


def _src(cell):
    return cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])


def run_smoke(name, tmp_path, **parameters):
    """Run notebooks/<name>.ipynb at its smoke defaults, overridden by `parameters` (papermill parameters of the
    notebook, e.g. torch_threads=2 or seed=1), into tmp_path; check its summary with `check_summary`.
    -> (params of its parameters cell with `parameters` applied, runs keyed (setting, divergence, seed), figure dir).

    The summary's digits are not compared with the committed output: they come from a seeded stochastic run and
    follow the CPU's floating-point path. The tests check what the runs show, with margins measured."""
    path = NOTEBOOK_DIR / f"{name}.ipynb"
    params = parameters_cell(_read(path))[1]
    unknown = sorted(set(parameters) - set(params))
    assert not unknown, f"{unknown} are not parameters of {name} (papermill would only warn); allowed: {sorted(params)}"
    params = {**params, **{k: (v, params[k][1]) for k, v in parameters.items()}}
    out, figs = tmp_path / "results", tmp_path / "figures"
    ran = run_notebook(path, tmp_path / f"{name}.ipynb", {**parameters, "out_dir": str(out), "fig_dir": str(figs)})
    runs = {(r["setting"], r["divergence"], r["seed"]): r for r in results.load_runs(out)}
    check_summary(ran, runs)
    bars = progress_bars(ran)  # progress = True (the default): one bar per run trained, naming its divergence
    if params["progress"][0]:
        assert sorted(bars) == sorted(f"f-DPG[{r['config']['divergence']}]" for r in runs.values()), bars
    else:
        assert not bars, bars
    return params, runs, figs


def progress_bars(nb) -> list[str]:
    """The descriptions of the training progress bars an executed notebook showed (train's tqdm: a widget whose
    text/plain twin starts 'f-DPG[<divergence>]:')."""
    texts = [o.get("data", {}).get("text/plain", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs
             if o.output_type == "display_data"]
    return [t.split(":")[0] for t in texts if t.startswith("f-DPG[")]


def summary_tables(nb) -> list[list[list[str]]]:
    """The Markdown tables that the last code cell of an executed notebook (its summary, house style) showed: the
    text/plain of each table displayed with results.show_table (its HTML's Markdown twin) and any printed to stdout,
    in output order: a list of tables, each a list of rows (the header first, the |---| line dropped), each a list
    of cells."""
    cell = [c for c in nb.cells if c.cell_type == "code"][-1]
    assert not [o for o in cell.outputs if o.output_type == "error"], "the summary cell raised"
    texts = [o.get("text", "") if o.output_type == "stream" and o.get("name") == "stdout" else
             o.get("data", {}).get("text/plain", "") + "\n" if o.output_type in ("display_data", "execute_result")
             else "" for o in cell.outputs]
    lines = "".join(texts).splitlines()
    tables, cur = [], None
    for line in lines + [""]:
        if line.startswith("|") and line.endswith("|"):
            cells = [c.strip() for c in line[1:-1].split(" | ")]
            if cur is None:
                cur = [cells]
            elif not all(set(c) <= {"-"} and c for c in line[1:-1].split("|")):  # the |---| line is dropped
                cur.append(cells)
        elif cur is not None:
            tables.append(cur)
            cur = None
    return tables


def _number(cell):
    try:
        return float(cell)  # "nan", "inf" parse too: results.to_markdown prints ±inf as "inf"
    except ValueError:
        return None


def check_summary(nb, runs):
    """The executed notebook's summary (its last code cell) printed one or more tables: every row as wide as its
    header, every number in it finite, a number in every data row, one row per (setting, divergence) that ran
    (07 and 08 add a's row), every run's divergence named in it. A missing value prints as an en dash (–): where
    a notebook has none by design (a's KL(π‖a), the well-specified toy's off-target mass); each run's metrics are
    checked for finiteness on its result file by the test."""
    tables = summary_tables(nb)
    assert tables and all(len(t) >= 2 for t in tables), f"the summary printed no table with a data row: {tables}"
    labels = set()
    for t in tables:
        for row in t:
            assert len(row) == len(t[0]), (t[0], row)
        for row in t[1:]:
            numbers = [x for x in map(_number, row) if x is not None]
            assert numbers and all(math.isfinite(x) for x in numbers), row
            labels |= {c for c in row if _number(c) is None}
    pairs = {(setting, div) for setting, div, _ in runs}
    n_rows = sum(len(t) - 1 for t in tables)
    assert len(pairs) <= n_rows <= len(pairs) + 1, (n_rows, sorted(pairs))
    missing = {div for _, div in pairs} - labels
    assert not missing, f"divergences {missing} are not in the summary: {tables}"


def check_outputs(figs, names, tables=(), header="| "):
    """Figures `names` (PNG > 10 kB, and PDF) and tables (CSV, and Markdown starting with `header`) were written;
    every PNG in figs fits a notebook's width: at most results.FIG_WIDTH inches at save_figure's 150 dpi (plus the
    0.1-inch pad of bbox_inches="tight" on each side)."""
    for name in names:
        assert (figs / f"{name}.png").stat().st_size > 10_000 and (figs / f"{name}.pdf").exists(), name
    for png in figs.glob("*.png"):
        width = int.from_bytes(png.read_bytes()[16:20], "big")  # the PNG header's IHDR width
        assert width <= (results.FIG_WIDTH + 0.2) * 150 + 1, f"{png.name} is {width / 150:.2f} in wide"
    for name in tables:
        assert (figs / f"{name}.csv").exists() and (figs / f"{name}.md").read_text().startswith(header), name


def smoke_runs(name, tmp_path, settings, kl_range, **parameters):
    """Run notebook `name` at its defaults (plus `parameters`; summary checked by run_smoke); check the generic
    properties of its runs, and that KL(π‖a) (06: KL(π‖p)) of every final π lies in kl_range; return
    (runs keyed (setting, divergence), params, figs)."""
    params, runs, figs = run_smoke(name, tmp_path, **parameters)
    seed = params["seed"][0]
    assert set(runs) == {(s, d, seed) for s in settings for d in DEFAULT_DIVERGENCES}
    runs = {(s, d): r for (s, d, _), r in runs.items()}
    for r in runs.values():
        assert r["preset"] == "smoke" and r["config"]["batch_size"] == params["batch_size"][0]
        h = r["history"]
        assert all(math.isfinite(x["train/loss"]) for x in h if x.get("train/loss") is not None)
        assert h[0]["step"] == 0 and h[-1]["step"] == params["n_steps"][0]
        kl = r["final"]["eval/kl_pi_a" if name != "06_well_specified" else "eval/kl_pi_p"]
        assert kl_range[0] < kl < kl_range[1], (r["setting"], r["divergence"], kl)
    return runs, params, figs


def smoke_conditional(name, tmp_path, **parameters):
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


def check_rise(runs, constraint, heldout, *, kl_range, min_each_train, min_mean_train, min_mean_heldout):
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


# ------------------------------------------------------------------------------------------------- 01 and 02
# Margins measured as for 00 (seeds 0, 1, 2 at torch_threads 1, seed 0 at torch_threads 2; AMD EPYC, 2 cores): values
# "min / mean / max" over the 4 runs, sd their standard deviation, bounds ≥ 3 sd beyond the worst run. A run that
# trained nothing (lr = 1e-12, π = a) has KL(π‖a) = 0 and gains that are noise: the s.e. quoted for a gain is that
# run's (sd of its per-batch E[r] over 16 batches of 32: 01 0.062, 02 0.050 / 0.057 for ladder-xs / ladder-s).
def _batch_gain(r):
    """Mean per-batch alignment E_π[r] of the last 4 training batches minus that of the first 4 (θ_0 = a)."""
    ar = [x["align/r"] for x in r["history"]]
    return sum(ar[-4:]) / 4 - sum(ar[:4]) / 4


def _gain(r):
    """E_π[r] − E_a[r], each on fresh samples (64; a's and π's with different generator seeds)."""
    return r["final"]["E_r"] - r["final"]["base/E_r"]


def check_scalar_run(r, *, min_gain, min_batch_gain, kl_range):
    """One scalar-preference run (p ∝ a·exp(r/β)): π moved away from a by a finite KL(π‖a) in kl_range (an
    untrained π: 0; a diverged one: ∞ or NaN), its alignment did not collapse (the gains above the given lower
    bounds), every metric is finite and the recorded identities hold."""
    h, f, key = r["history"], r["final"], (r["setting"], r["divergence"])
    assert all(math.isfinite(x["train/loss"]) and x.get("train/skipped", 0) == 0 for x in h)
    assert all(x["div/kl_pi_a"] is not None and math.isfinite(x["div/kl_pi_a"]) for x in h)
    assert _batch_gain(r) > min_batch_gain, (key, [x["align/r"] for x in h])
    assert _gain(r) > min_gain, (key, f["E_r"], f["base/E_r"])
    assert kl_range[0] < f["kl_pi_a"] < kl_range[1], (key, f["kl_pi_a"])
    for k in ("entropy", "kl_p_pi", "kl_pi_p", "rl_objective", "log_Z", "distinct_2", "self_bleu_4"):
        assert f[k] is not None and math.isfinite(f[k]), k
    assert 0 < f["distinct_1"] <= f["distinct_2"] <= 1 and 0 <= f["self_bleu_5"] <= f["self_bleu_3"] <= 1
    # the RL identity recorded by the notebook: KL(π‖p) = log Z − J/β, J = E_π[r] − β KL(π‖a)
    beta = r["config"]["beta"]
    assert f["rl_objective"] == pytest.approx(f["E_r"] - beta * f["kl_pi_a"], abs=1e-5)
    assert f["kl_pi_p"] == pytest.approx(f["log_Z"] - f["rl_objective"] / beta, abs=1e-4)
    assert f["rl_optimum"] == pytest.approx(beta * f["log_Z"], abs=1e-5)
    # the target is sharper than a (importance-sampled from a's samples): E_p[r] − E_a[r] 0.643 / 0.667 / 0.736 in 01
    # (sd 0.046); KL(p‖a) 1.62 / 1.87 / 2.15
    assert f["p/E_r"] > f["base/E_r"] and f["p/kl_p_a"] > 0


def check_teaching_notebook(path):
    """A teaching notebook (not a numbered experiment) is committed clean, with a parameters cell papermill reads
    with its help text; no `!pip`, `%pip` or sys.path; no reference outside the repository."""
    import papermill

    nb = nbformat.read(path, as_version=4)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    assert nb.cells[0].cell_type == "markdown" and _src(nb.cells[0]).startswith("# ")
    assert clear_outputs(nb) == nb, "commit with outputs cleared"
    cell, params = parameters_cell(nb)  # one `name = literal  # help` per line
    assert nb.cells.index(cell) == next(i for i, c in enumerate(nb.cells) if c.cell_type == "code")
    seen = papermill.inspect_notebook(str(path))
    assert set(seen) == set(params) and all(seen[k]["help"] == c for k, (_, c) in params.items())
    for c in nb.cells:
        text = _src(c)
        assert "sys.path" not in text and not re.search(r"PAPER\.md|shared\/", text)
        if c.cell_type == "code":
            ast.parse(text)
            assert not any(line.lstrip().startswith(("!", "%pip", "%conda")) for line in text.splitlines())
