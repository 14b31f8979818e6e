"""The two teaching notebooks, which are not numbered experiments (tests/test_notebooks.py checks notebooks/NN_*):

    notebooks/lesson_fdpg_step.ipynb       Algorithm 1 by hand on the enumerable toy, checked against `train`; exercises
    notebooks/align_your_own_model.ipynb   any HF causal LM + a reward written as a Python function; save/reload

Static (fast): committed without outputs; a parameters cell papermill reads with its help text; no `!pip`, `%pip` or
sys.path; every lesson exercise cell holds a `None` placeholder and is followed by a folded <details> answer holding
a python block. Inline `def`s are allowed here: writing the algorithm out is the point of the lesson.
Executed (papermill, marked slow; times measured on 2 shared CPU cores):
  * the lesson as committed (14-19 s): its own asserts check that the update written by hand gives the parameters
    of `fdpg_core.train` after 1 and n_steps steps and that a sign error in f′ does not; every exercise says "not
    attempted yet";
  * the lesson with each exercise cell replaced by its folded answer (16-23 s): every check cell reports
    "correct", so the answers are right and the checks accept them;
  * the align notebook at a small size (30-40 s, mostly the kernel's start and imports): the saved folder loads
    with plain `from_pretrained`, its weights differ from the base model's, and sampling it with the notebook's
    seed gives the texts the notebook reported.
"""
import ast
import json
import re

import nbformat
import pytest
import torch

from fdpg_core.notebook import NOTEBOOK_DIR, REPO_ROOT, clear_outputs, parameters_cell, run_notebook

LESSON = NOTEBOOK_DIR / "lesson_fdpg_step.ipynb"
ALIGN = NOTEBOOK_DIR / "align_your_own_model.ipynb"
ANSWER = re.compile(r"<details>.*?```python\n(.*?)```.*?</details>", re.S)


def _src(cell):
    return cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])


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


@pytest.mark.parametrize("path", [LESSON, ALIGN], ids=lambda p: p.stem)
def test_committed_clean_with_a_parameters_cell(path):
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


@pytest.mark.slow
def test_align_your_own_model_small(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from fdpg_core import sampling

    out = tmp_path / "aligned"
    # log_floor: b = 0 gets a finite log b, so no update is skipped even when a small batch has no text with b = 1
    params = dict(n_steps=3, batch_size=8, max_new_tokens=12, n_eval=8, n_show=2, lr=1e-3, log_floor=-10.0,
                  out_dir=str(out))
    run_notebook(ALIGN, tmp_path / ALIGN.name, params)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["skipped_updates"] == 0 and summary["n_steps"] == 3 and len(summary["texts"]) == 8
    # the saved policy is a plain HF model folder with its tokenizer
    folder = out / "policy"
    tok = AutoTokenizer.from_pretrained(str(folder))
    aligned = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    base = AutoModelForCausalLM.from_pretrained(str(REPO_ROOT / "data/models/reviews"), dtype=torch.float32).eval()
    moved = max(float((u - v).detach().abs().max()) for u, v in zip(aligned.parameters(), base.parameters()))
    assert moved > 1e-4, "training did not change the saved weights"
    assert tok.encode("a good film") == AutoTokenizer.from_pretrained(str(REPO_ROOT / "data/models/reviews")).encode(
        "a good film")
    # sampling the reloaded folder with the notebook's seed gives the texts the notebook reported
    ids, mask, ctx = sampling.repeat_prompts(*sampling.bos_prompts(1, tok.bos_token_id), summary["n_eval"])
    x = sampling.sample(aligned, ids, mask, summary["max_new_tokens"], eos_token_id=tok.eos_token_id,
                        pad_token_id=tok.pad_token_id, context_ids=ctx,
                        generator=torch.Generator().manual_seed(summary["eval_seed"]))
    assert sampling.decode(x, tok) == summary["texts"]
