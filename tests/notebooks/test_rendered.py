"""The committed numbered notebooks carry current renderings of their cpu preset (fast: nothing is executed).

For every notebooks/NN_*.ipynb: outputs rendered by scripts/render_notebooks.py (`make render`) whose stored hash
(metadata.fdpg_render.hash) still matches the notebook's cells, its cpu preset file and the files of that preset's
out_dir; no error output; no volatile metadata (papermill's, the kernel's timings) and no injected-parameters cell;
every code cell that draws a figure (`plt.show()`) has an image output; the parameters cell keeps its smoke
defaults. A failure says to run `make render`.
"""
import nbformat
import pytest

from fdpg_core.kit.notebook import NOTE_ID, RENDER_KEY, list_notebooks, render_problems, rendered
from nbsmoke import _read, _src

NOTEBOOKS = list_notebooks()
FIX = "run `make render` (or scripts/render_notebooks.py --only {}) and commit the notebook and data/results"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_committed_notebook_is_a_current_rendering(path):
    nb = _read(path)
    problems = render_problems(nb, path.stem)
    assert not problems, f"{path.name}: " + "; ".join(problems) + f": {FIX.format(path.stem[:2])}"
    for c in nb.cells:
        if c.cell_type == "code" and "plt.show()" in _src(c):
            assert any("image/png" in o.get("data", {}) for o in c.outputs), \
                f"{path.name}: cell {c.get('id')!r} draws a figure but has no image output: {FIX.format(path.stem[:2])}"
    params = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    assert "preset: str = \"smoke\"" in _src(params) and not params.outputs


def _toy_notebook():
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                           "language": "python"}})
    nb.cells = [nbformat.v4.new_markdown_cell("# 00 · toy", id="title"),
                nbformat.v4.new_code_cell("preset = \"smoke\"  # preset", id="parameters",
                                          metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell("print(preset)", id="show")]
    return nb


def _executed(nb):
    ex = nbformat.from_dict(nbformat.v4.new_notebook(metadata={**nb.metadata, "papermill": {"duration": 1.5}}))
    ex.cells = [nb.cells[0], nbformat.v4.new_code_cell("preset = \"cpu\"", id="injected",
                                                       metadata={"tags": ["injected-parameters"]}, execution_count=2),
                nbformat.from_dict({**nb.cells[1], "execution_count": 1}),
                nbformat.from_dict({**nb.cells[2], "execution_count": 3,
                                    "metadata": {"execution": {"iopub.execute_input": "2026-01-01T00:00:00Z"},
                                                 "papermill": {"duration": 0.1}},
                                    "outputs": [nbformat.v4.new_output("stream", name="stdout",
                                                                       text="cpu /tmp/x/figs\n")]})]
    return ex


def test_rendered_drops_volatile_parts_and_render_problems_sees_staleness(monkeypatch):
    """`rendered` keeps the committed sources (smoke defaults), drops the injected cell, timings and papermill
    metadata, renumbers counts, replaces temp paths and adds the note; `render_problems` flags a changed cell,
    changed inputs, an error output and leftover volatile metadata."""
    from fdpg_core.kit import notebook

    inputs = [b"preset file"]
    monkeypatch.setattr(notebook, "_render_inputs", lambda name: (type("F", (), {
        "read_bytes": lambda self: inputs[0]})(), []))
    nb = _toy_notebook()
    out = rendered(nb, _executed(nb), "00_toy", {"/tmp/x/figs": "figures/toy"})
    nbformat.validate(out)
    assert [c.get("id") for c in out.cells] == ["title", NOTE_ID, "parameters", "show"]
    assert out.cells[2].source == nb.cells[1].source and out.cells[2].outputs == []
    assert [c.execution_count for c in out.cells if c.cell_type == "code"] == [1, 2]
    assert out.cells[3].outputs[0].text == "cpu figures/toy\n" and out.cells[3].metadata == {}
    assert "papermill" not in out.metadata and out.metadata[RENDER_KEY]["preset"] == "cpu"
    assert render_problems(out, "00_toy") == []
    assert rendered(out, _executed(nb), "00_toy", {"/tmp/x/figs": "figures/toy"}) == out  # rendering again: same
    assert render_problems(nb, "00_toy") == ["no rendered outputs (metadata.fdpg_render is missing)"]
    inputs[0] = b"another preset file"
    assert any("stale" in p for p in render_problems(out, "00_toy"))
    inputs[0] = b"preset file"
    changed = nbformat.from_dict(out)
    changed.cells[3].source = "print(preset, 1)"
    assert any("stale" in p for p in render_problems(changed, "00_toy"))
    bad = nbformat.from_dict(out)
    bad.cells[3].outputs = [nbformat.v4.new_output("error", ename="E", evalue="x", traceback=[])]
    bad.cells[3].metadata["execution"] = {"iopub.status.busy": "2026"}
    bad.metadata["papermill"] = {}
    problems = " ".join(render_problems(bad, "00_toy"))
    assert "error output" in problems and "'execution'" in problems and "'papermill'" in problems
