"""notebooks/lesson_fdpg_step.ipynb, a teaching notebook (not a numbered experiment): Algorithm 1 by hand on the
enumerable toy, checked against `train`; exercises.

Static (fast): committed without outputs; a parameters cell papermill reads with its help text; no `!pip`, `%pip` or
sys.path; every lesson exercise cell holds a `None` placeholder and is followed by a folded <details> answer holding
a python block. Inline `def`s are allowed here: writing the algorithm out is the point of the lesson.
Executed (papermill, marked slow; times measured on 2 shared CPU cores):
  * the lesson as committed (14-19 s): its own asserts check that the update written by hand gives the parameters
    of `fdpg_core.train` after 1 and n_steps steps and that a sign error in f′ does not; every exercise says "not
    attempted yet";
  * the lesson with each exercise cell replaced by its folded answer (16-23 s): every check cell reports
    "correct", so the answers are right and the checks accept them;
"""
import ast
import json
import re

import nbformat
import pytest

from fdpg_core.kit.notebook import NOTEBOOK_DIR, run_notebook
from nbsmoke import _src, check_teaching_notebook


LESSON = NOTEBOOK_DIR / "lesson_fdpg_step.ipynb"
ANSWER = re.compile(r"<details>.*?```python\n(.*?)```.*?</details>", re.S)


def _stdout(nb) -> str:
    return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs
                   if o.output_type == "stream" and o.get("name") == "stdout")


def with_answers(nb):
    """A copy of the lesson with each code cell tagged `exercise` replaced by the python block of the next folded
    answer (<details> … ```python … ``` … </details>). Returns (notebook, number of exercises)."""
    nb = nbformat.from_dict(json.loads(json.dumps(nb)))
    n = 0
    for i, cell in enumerate(nb.cells):
        if "exercise" not in cell.metadata.get("tags", []):
            continue
        answer = next((m for c in nb.cells[i + 1:] if c.cell_type == "markdown" and (m := ANSWER.search(_src(c)))),
                      None)
        assert answer, f"exercise cell {i} has no folded answer with a python block after it"
        cell.source = answer.group(1)
        n += 1
    return nb, n


def test_committed_clean_with_a_parameters_cell():
    check_teaching_notebook(LESSON)


def test_lesson_exercises_have_placeholders_and_folded_answers():
    nb = nbformat.read(LESSON, as_version=4)
    exercises = [c for c in nb.cells if "exercise" in c.metadata.get("tags", [])]
    assert len(exercises) == 3
    for c in exercises:  # one `name = None  # …` line: the check cell after it says "not attempted yet"
        (node,) = ast.parse(_src(c)).body
        assert isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) and node.value.value is None
    filled, n = with_answers(nb)
    assert n == 3 and all("= None" not in _src(c) for c in filled.cells if "exercise" in c.metadata.get("tags", []))


@pytest.mark.slow
def test_lesson_runs_and_matches_train(tmp_path):
    ran = run_notebook(LESSON, tmp_path / LESSON.name)  # raises if an assert in the notebook fails
    out = _stdout(ran)
    assert re.search(r"by hand vs train differ by 0\.00e\+00", out), out  # one step
    assert re.search(r"\d+ steps: by hand vs train differ by \d\.\d\de[-+]\d\d; with the sign of f′ flipped", out)
    assert [f"Exercise {k}: not attempted yet" in out for k in (1, 2, 3)] == [True] * 3, out


@pytest.mark.slow
def test_lesson_answers_pass_their_checks(tmp_path):
    nb, _ = with_answers(nbformat.read(LESSON, as_version=4))
    src = tmp_path / "lesson_with_answers.ipynb"
    nbformat.write(nb, src)
    out = _stdout(run_notebook(src, tmp_path / "ran.ipynb", cwd=NOTEBOOK_DIR))
    assert [f"Exercise {k}: correct" in out for k in (1, 2, 3)] == [True] * 3, out
    assert "not attempted" not in out
