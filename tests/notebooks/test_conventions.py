"""Notebook conventions, for every notebooks/NN_*.ipynb (fast; each notebook's executed smoke run is in the test
file named after it).

Static checks, for every notebooks/NN_*.ipynb (fast):
  (a) every key of every notebooks/params/*.yaml is a parameter of its notebook (papermill only warns otherwise);
  (b) the parameters cell: one `name = literal  # help` per line, parsed identically by papermill (a `=` inside a
      comment silently hides the parameter from papermill), the required parameters, smoke defaults;
  (c) committed either with outputs cleared (except 00's exact `# NBVAL_CHECK_OUTPUT` cell, nbval's reference) or
      with a current rendering of the cpu preset (`make render`; tests/notebooks/test_rendered.py requires one),
      never with other outputs; kernelspec python3, imports only from fdpg_core / the standard library / torch,
      numpy, pandas, matplotlib, no `def` or `class`, no `!pip`/`%pip`, no sys.path;
  (d) the teaching notebooks (every other notebooks/*.ipynb: lesson_fdpg_step, align_your_own_model) may define
      short functions inline, where writing the code out teaches better than an import: at most
      TEACHING_DEF_LINES lines each, and no `class`.
"""
import ast
import sys

import nbformat
import yaml
import pytest

from fdpg_core.kit.notebook import (CHECK_MARK, NOTEBOOK_DIR, RENDER_KEY, clear_outputs, copy_checked_outputs,
                                    list_notebooks, parameters_cell, render_problems)
from nbsmoke import DEFAULT_DIVERGENCES, _read, _src, check_summary, summary_tables


NOTEBOOKS = list_notebooks()
TEACHING = sorted(p for p in NOTEBOOK_DIR.glob("*.ipynb") if p not in NOTEBOOKS)
TEACHING_DEF_LINES = 40  # longest function a teaching notebook may define inline
PARAM_FILES = sorted((NOTEBOOK_DIR / "params").glob("*.yaml"))
REQUIRED = {"seed", "divergences", "out_dir", "fig_dir", "preset"}  # plus one of seeds / n_seeds
EXACT_CHECKED = {"00_toy_exact"}  # notebooks with an exact cell marked NBVAL_CHECK_OUTPUT (compared by nbval)
ALLOWED_IMPORTS = {"fdpg_core", "torch", "numpy", "pandas", "matplotlib", "IPython"} | set(sys.stdlib_module_names)
ids = [p.stem for p in NOTEBOOKS]


def test_there_are_notebooks_and_preset_files():
    assert NOTEBOOKS, "no notebooks/NN_*.ipynb"
    for nb in NOTEBOOKS:
        assert (NOTEBOOK_DIR / "params" / f"{nb.stem}.cpu.yaml").exists(), f"{nb.name} has no cpu preset file"


# ------------------------------------------------------------------------------------------------- (a)
@pytest.mark.parametrize("path", PARAM_FILES, ids=[p.name for p in PARAM_FILES])
def test_every_preset_key_is_a_notebook_parameter(path):
    stem, preset = path.name.rsplit(".", 2)[:2]
    nb_path = NOTEBOOK_DIR / f"{stem}.ipynb"
    assert nb_path.exists(), f"{path.name}: no notebook {nb_path.name}"
    keys = yaml.safe_load(path.read_text()) or {}
    _, params = parameters_cell(_read(nb_path))
    unknown = sorted(set(keys) - set(params))
    assert not unknown, f"{path.name}: {unknown} are not parameters of {nb_path.name}; allowed: {sorted(params)}"
    assert keys.get("preset") == preset
    assert str(keys["out_dir"]).startswith("data/results/") and str(keys["out_dir"]).endswith(f"/{preset}")
    assert str(keys["fig_dir"]).startswith("figures/")
    for k, v in keys.items():  # a preset value has the default's type (papermill injects it verbatim)
        d = params[k][0]
        if d is not None and v is not None:
            assert isinstance(v, type(d)) or (isinstance(d, float) and isinstance(v, int)), (path.name, k, v, d)


# ------------------------------------------------------------------------------------------------- (b)
@pytest.mark.parametrize("path", NOTEBOOKS, ids=ids)
def test_parameters_cell_conventions(path):
    import papermill

    nb = _read(path)
    cell, params = parameters_cell(nb)  # raises on a line that is not `name = literal  # help`
    assert nb.cells.index(cell) == next(i for i, c in enumerate(nb.cells) if c.cell_type == "code"), \
        "the parameters cell must be the first code cell"
    missing = REQUIRED - set(params)
    assert not missing and ({"seeds", "n_seeds"} & set(params)), f"missing required parameters {sorted(missing)}"
    assert params["preset"][0] == "smoke" and params["out_dir"][0] is None and params["fig_dir"][0] is None
    assert params["divergences"][0] == DEFAULT_DIVERGENCES
    assert isinstance(params["seed"][0], int)
    seen = papermill.inspect_notebook(str(path))
    assert set(seen) == set(params), f"papermill cannot parse {sorted(set(params) - set(seen))} (no '=' in comments)"
    for name, (_, comment) in params.items():
        assert seen[name]["help"] == comment and len(comment) > 10, (name, comment)


# ------------------------------------------------------------------------------------------------- (c), (d)
def library_code(src: str, *, teaching: bool) -> list[str]:
    """What a code cell defines that belongs in fdpg_core: every `def` and `class` of an experiment notebook; in a
    teaching notebook, every `class` and every `def` longer than TEACHING_DEF_LINES lines."""
    bad = []
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, ast.ClassDef):
            bad.append(f"class {node.name}: move it to fdpg_core")
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            n = node.end_lineno - node.lineno + 1
            if not teaching:
                bad.append(f"library code in an experiment notebook (def {node.name}): move it to fdpg_core")
            elif n > TEACHING_DEF_LINES:
                bad.append(f"def {node.name} has {n} lines, over the {TEACHING_DEF_LINES} a teaching notebook may "
                           "define inline: move it to fdpg_core")
    return bad


@pytest.mark.parametrize("path", NOTEBOOKS, ids=ids)
def test_committed_clean_and_only_imports(path):
    nb = _read(path)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    assert nb.cells[0].cell_type == "markdown" and _src(nb.cells[0]).startswith("# ")
    code = [c for c in nb.cells if c.cell_type == "code"]
    checked = [c for c in code if CHECK_MARK in _src(c)]
    # a stored output is compared digit for digit, so only an exact computation may carry one (00's enumerated
    # targets); the stochastic runs' summaries are checked with margins by the smoke tests instead
    assert len(checked) == (path.stem in EXACT_CHECKED), \
        f"NBVAL_CHECK_OUTPUT only on an exact cell, in {sorted(EXACT_CHECKED)}"
    if RENDER_KEY in nb.metadata:  # outputs rendered from the committed cpu results: only a current rendering
        problems = render_problems(nb, path.stem)
        assert not problems, f"stored outputs that are not a current rendering ({'; '.join(problems)}): run " \
                             "`make render`, or commit the notebook with outputs cleared"
    else:
        assert clear_outputs(nb) == nb, "commit with outputs cleared (except the NBVAL_CHECK_OUTPUT cell) or " \
                                        "rendered by `make render`"
    for c in checked:
        assert c.outputs and all(o.output_type == "stream" for o in c.outputs), \
            "the reference output is missing: scripts/run_notebooks.py --preset smoke --only 00 --update-checks"
    for c in code:
        src = _src(c)
        assert "sys.path" not in src
        for line in src.splitlines():
            assert not line.lstrip().startswith(("!", "%pip", "%conda", "%run")), line
        assert not library_code(src, teaching=False), library_code(src, teaching=False)
        for node in ast.walk(ast.parse(src)):
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            bad = [m for m in mods if m.split(".")[0] not in ALLOWED_IMPORTS]
            extra = sorted(ALLOWED_IMPORTS - set(sys.stdlib_module_names))
            assert not bad, f"import of {bad}; allowed: fdpg_core, the standard library, {extra}"


@pytest.mark.parametrize("path", TEACHING, ids=[p.stem for p in TEACHING])
def test_teaching_notebooks_define_only_short_functions(path):
    for c in _read(path).cells:
        if c.cell_type == "code":
            assert not library_code(_src(c), teaching=True), (path.name, library_code(_src(c), teaching=True))


def test_library_code_rule_tells_teaching_from_experiment_notebooks():
    short = "def f(x):\n" + "    x = x + 1\n" * (TEACHING_DEF_LINES - 2) + "    return x\n"  # TEACHING_DEF_LINES
    long = short.replace("    return x", "    x = x + 1\n    return x")  # one line more
    assert library_code(short, teaching=True) == [] and library_code("y = [i for i in range(3)]", teaching=False) == []
    assert library_code(short, teaching=False) == [
        "library code in an experiment notebook (def f): move it to fdpg_core"]
    assert library_code(long, teaching=True) == [
        f"def f has {TEACHING_DEF_LINES + 1} lines, over the {TEACHING_DEF_LINES} a teaching notebook may define "
        "inline: move it to fdpg_core"]
    assert library_code("class A:\n    pass\n", teaching=True) == ["class A: move it to fdpg_core"]
    assert {p.stem for p in TEACHING} >= {"lesson_fdpg_step", "align_your_own_model"}


def test_parameters_cell_rejects_bad_lines_and_clear_outputs_keeps_the_check():
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("seed = 0  # first seed", metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell(f"{CHECK_MARK}\nprint(1)")]
    assert parameters_cell(nb)[1] == {"seed": (0, "first seed")}
    for bad in ["seed = 0", "seed = f(0)  # call", "a = b = 0  # chained", "seed += 1  # aug"]:
        nb.cells[0].source = bad
        with pytest.raises(ValueError, match="parameters line 1"):
            parameters_cell(nb)
    out = nbformat.v4.new_output("stream", name="stdout", text="1\n")
    nb.cells[0].outputs, nb.cells[1].outputs = [out], [out]
    nb.cells[0].execution_count = nb.cells[1].execution_count = 3
    clean = clear_outputs(nb)
    assert clean.cells[0].outputs == [] and clean.cells[1].outputs == [out]
    assert clean.cells[0].execution_count is None and clean.cells[1].execution_count == 1  # nbval needs a count
    fresh = copy_checked_outputs(clean, nb)
    assert fresh.cells[1].outputs == [out] and fresh.cells[0].outputs == []
    assert clear_outputs(fresh) == fresh and fresh.cells[1].execution_count == 1


def test_check_summary_reads_the_printed_table_and_rejects_what_a_broken_run_prints():
    """check_summary passes a well-formed summary and fails on ±inf, a row without numbers, a ragged row, a missing
    divergence, a missing or extra row, a summary cell that raised."""
    def nb(text, error=False):
        out = [nbformat.v4.new_output("stream", name="stdout", text=text)]
        if error:
            out.append(nbformat.v4.new_output("error", ename="ValueError", evalue="x", traceback=[]))
        return nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print(s)", outputs=out)])

    runs = {("s", d, 0): {} for d in ("kl", "rkl")}
    head = "task:\n| setting | divergence | E | KL |\n|---|---|---|---|\n"
    good = head + "| s | kl | 0.25 | 1.00 |\n| s | rkl | -0.10 | – |\n"
    check_summary(nb(good), runs)
    check_summary(nb(good + "| base | a | 0.10 | – |\n"), runs)  # a's row (07, 08)
    assert summary_tables(nb(good)) == [[["setting", "divergence", "E", "KL"], ["s", "kl", "0.25", "1.00"],
                                         ["s", "rkl", "-0.10", "–"]]]
    shown = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("results.show_table(s)", outputs=[
        nbformat.v4.new_output("display_data", data={"text/html": "<table></table>", "text/plain": good})])])
    assert summary_tables(shown) == summary_tables(nb(good))  # show_table's text/plain is read like a print
    check_summary(shown, runs)
    bad = [head + "| s | kl | inf | 1.00 |\n| s | rkl | 0.1 | 0.2 |\n",
           head + "| s | kl | nan | 1.00 |\n| s | rkl | 0.1 | 0.2 |\n",
           head + "| s | kl | – | – |\n| s | rkl | 0.1 | 0.2 |\n",
           head + "| s | kl | 0.1 |\n| s | rkl | 0.1 | 0.2 |\n",
           head + "| s | kl | 0.1 | 0.2 |\n| s | js | 0.1 | 0.2 |\n",
           head + "| s | kl | 0.1 | 0.2 |\n",
           good + "| b | kl | 0.1 | 0.2 |\n| c | kl | 0.1 | 0.2 |\n",
           "no table\n"]
    for text in bad:
        with pytest.raises(AssertionError):
            check_summary(nb(text), runs)
    with pytest.raises(AssertionError, match="raised"):
        check_summary(nb(good, error=True), runs)
