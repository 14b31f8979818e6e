"""Notebook parameters and result reuse: what a user passes is checked, and reruns never mix runs.

Unit checks (fast):
  - `notebook.parameters`: a misspelt name injected by papermill stops the notebook naming it and the close
    matches; strings given for list / number parameters are read as YAML (`-p divergences '[js]'`, `-p divergences
    js`); a wrong type is an error naming the parameter; every parameters cell is typed (papermill shows the types);
  - every preset file of every notebook passes the same checks;
  - the committed results carry the experiment and the fingerprint of their cpu preset, so the cpu preset (and
    `make figures`) reuses them instead of retraining.
Executed (slow; notebook 00 at a reduced size, then 06 into the same folder):
  - a second run with the same parameters trains nothing and leaves the files untouched; a run with other
    parameters trains anew and its tables show only its own runs; a second notebook given the same out_dir runs.
"""
import json

import nbformat
import papermill
import pytest

from conftest import load_script
from fdpg_core.kit import notebook, results
from fdpg_core.kit.notebook import NOTEBOOK_DIR, list_notebooks, parameters, preset_values, run_notebook

NOTEBOOKS = list_notebooks()
ids = [p.stem for p in NOTEBOOKS]


def _defaults(name):
    nb = nbformat.read(NOTEBOOK_DIR / f"{name}.ipynb", as_version=4)
    return {k: v for k, (v, _) in notebook.parameters_cell(nb)[1].items()}


def _injected(name, **given):
    """The namespace of notebook `name` after papermill injected `given` (as its injected cell does)."""
    cell = "# Parameters\n" + "\n".join(f"{k} = {v!r}" for k, v in given.items())
    return {**_defaults(name), **given, "In": ["", cell]}


def test_a_misspelt_parameter_stops_the_notebook_naming_it():
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['beta'\] \('beta': did you mean \['betas'\]\?\); "
                                         r"allowed: \[.*'betas'"):
        parameters(_injected("01_scalar_preference", beta=0.3), "01_scalar_preference")
    with pytest.raises(ValueError, match=r"\['divergnce'\].*did you mean \['divergences'\]"):
        parameters(_injected("00_toy_exact", divergnce="js"), "00_toy_exact")
    assert parameters({**_defaults("00_toy_exact"), "In": ["x = 1"]}, "00_toy_exact")  # JupyterLab: no injection


@pytest.mark.parametrize("given, expected", [
    ("[js]", ["js"]), ("js", ["js"]), ('["js", "kl"]', ["js", "kl"]), ("[js, kl]", ["js", "kl"]), (["tv"], ["tv"])])
def test_list_parameters_take_papermill_strings(given, expected):
    ns = _injected("01_scalar_preference", divergences=given)
    assert parameters(ns, "01_scalar_preference")["divergences"] == expected and ns["divergences"] == expected


def test_numbers_are_read_and_bad_types_named():
    ns = _injected("01_scalar_preference", lr="1e-3", betas="[0.1, 1]", n_steps="20", rerun="true")
    got = parameters(ns, "01_scalar_preference")
    assert (got["lr"], got["betas"], got["n_steps"], got["rerun"]) == (1e-3, [0.1, 1.0], 20, True)
    assert isinstance(got["betas"][1], float)
    for bad, msg in [({"n_steps": "abc"}, r"n_steps='abc' is not int"), ({"n_steps": 2.5}, r"n_steps=2.5 is not int"),
                     ({"betas": "[a]"}, r"betas='\[a\]' is not list\[float\]"), ({"rerun": 1}, "rerun=1 is not bool"),
                     ({"divergences": "[js"}, "divergences='\\[js': cannot read")]:
        with pytest.raises(ValueError, match=msg):
            parameters(_injected("01_scalar_preference", **bad), "01_scalar_preference")
    ok = parameters(_injected("03_pointwise_constraints", base_model="reviews"), "03_pointwise_constraints")
    assert ok["base_model"] == "reviews" and _defaults("03_pointwise_constraints")["base_model"] is None


@pytest.mark.parametrize("path", NOTEBOOKS, ids=ids)
def test_parameters_are_typed_and_presets_are_valid(path):
    seen = papermill.inspect_notebook(str(path))  # what `papermill --help-notebook` shows
    untyped = [k for k, v in seen.items() if v["inferred_type_name"] in ("None", None)]
    assert not untyped, f"parameters without a type annotation: {untyped}"
    assert "rerun" in seen and seen["rerun"]["default"] == "False"
    # a progress bar per training run by default; it changes no number, so it is not in the runs' fingerprint
    assert seen["progress"]["default"] == "True" and "progress" in results.PRESENTATION_PARAMS
    for preset_file in sorted((NOTEBOOK_DIR / "params").glob(f"{path.stem}.*.yaml")):
        preset = preset_file.name.split(".")[-2]
        assert preset_values(path.stem, preset)["preset"] == preset  # raises on an unknown key or a bad value


@pytest.mark.parametrize("path", NOTEBOOKS, ids=ids)
def test_committed_results_are_the_cpu_presets_own(path):
    experiment, fp = notebook.preset_fingerprint(path.stem, "cpu")
    out = notebook.REPO_ROOT / preset_values(path.stem, "cpu")["out_dir"]
    files = sorted(out.glob("*.json"))
    assert files, f"no committed results in {out}"
    for f in files:
        r = json.loads(f.read_text())
        assert (r["experiment"], r["preset"], r["fingerprint"]) == (experiment, "cpu", fp), f.name
        assert f.name == results.run_filename(r["divergence"], r["seed"], r["setting"], experiment=experiment,
                                              fingerprint=fp)


COMMITTED_EXTRA = [(f.name.split(".")[0], f.name.split(".")[-2]) for f in sorted((NOTEBOOK_DIR / "params").glob("*.yaml"))
                   if f.name.split(".")[-2] not in ("cpu", "paper")]  # cpu-long, cpu-smollm, ...


@pytest.mark.parametrize("name,preset", COMMITTED_EXTRA, ids=[f"{n[:2]}-{p}" for n, p in COMMITTED_EXTRA])
def test_committed_results_of_the_other_presets_are_their_own(name, preset):
    """A preset beyond cpu and paper writes to its own out_dir and fig_dir (never the cpu preset's), and the runs
    committed there carry its experiment, name and fingerprint, so that rerunning the preset reuses them."""
    values, cpu = preset_values(name, preset), preset_values(name, "cpu")
    assert values["out_dir"] != cpu["out_dir"] and values["fig_dir"].startswith(cpu["fig_dir"] + "/")
    experiment, fp = notebook.preset_fingerprint(name, preset)
    for f in sorted((notebook.REPO_ROOT / values["out_dir"]).glob("*.json")):
        r = json.loads(f.read_text())
        assert (r["experiment"], r["preset"], r["fingerprint"]) == (experiment, preset, fp), f.name


def test_run_notebooks_accepts_every_preset_with_a_file_and_names_them_otherwise(capsys):
    run_notebooks = load_script("run_notebooks")
    presets = run_notebooks.available_presets()
    assert presets[:3] == ["smoke", "cpu", "paper"] and {p for _, p in COMMITTED_EXTRA} <= set(presets)
    with pytest.raises(SystemExit):
        run_notebooks.main(["--preset", "nope", "--only", "03"])
    assert f"--preset 'nope': no notebooks/params/*.nope.yaml file; allowed: {presets}" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # a preset another notebook has: the error names this notebook's presets
        run_notebooks.main(["--preset", "cpu-long", "--only", "00"])
    assert "00_toy_exact: no preset file 00_toy_exact.cpu-long.yaml; allowed presets: ['smoke', 'cpu', 'paper']" \
        in capsys.readouterr().err


# ------------------------------------------------------------------------------------- executed
SMALL_00 = {"divergences": ["kl", "js"], "alphas": [], "n_steps": 3, "eval_every": 3, "is_sizes": [16]}


def _run(name, tmp_path, tag, out, **params):
    nb = run_notebook(NOTEBOOK_DIR / f"{name}.ipynb", tmp_path / f"{name}.{tag}.ipynb",
                      {"out_dir": str(out), "fig_dir": str(tmp_path / f"fig_{tag}"), **params})
    return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))


@pytest.mark.slow
def test_reruns_reuse_their_runs_and_never_mix_with_others(tmp_path):
    out = tmp_path / "shared"
    text = _run("00_toy_exact", tmp_path, "a", out, **SMALL_00)
    first = {p.name: p.stat().st_mtime_ns for p in out.glob("*.json")}
    assert len(first) == 4 and "results: 4 run(s) of toy_exact" in text and text.count(" seed 0: KL(p‖π)") == 4
    # the same parameters again: every run reused, nothing trained, nothing rewritten
    text = _run("00_toy_exact", tmp_path, "b", out, **SMALL_00)
    assert " seed 0: KL(p‖π)" not in text and "results: 4 run(s) of toy_exact" in text
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.json")} == first
    # other parameters: trained anew beside the old runs; the tables show the new runs only
    text = _run("00_toy_exact", tmp_path, "c", out, **{**SMALL_00, "n_steps": 4, "divergences": ["kl"]})
    assert len(list(out.glob("*.json"))) == 6 and "results: 2 run(s) of toy_exact" in text
    assert "skipped 4 (4 other parameters)" in text
    table = (tmp_path / "fig_c" / "final_exact.csv").read_text()
    assert table.count("\n") == 3 and ",js," not in table  # header + kl on two settings
    # another notebook with the same out_dir (06 also names its setting "well")
    text = _run("06_well_specified", tmp_path, "d", out, divergences=["kl"], n_steps=2, eval_every=2, n_ref=32,
                n_curve=8)
    assert "results: 1 run(s) of well_specified" in text and "skipped 6 (6 other experiment)" in text
    assert len(list(out.glob("*.json"))) == 7
