"""Running and checking the kit's notebooks (papermill + nbval), used by scripts/run_notebooks.py and the tests.

    run_notebook(path, output_path, parameters)  papermill with the kit's kernel environment
    parameters_cell(nb)                            the cell tagged `parameters` and its {name: (value, comment)}
    clear_outputs(nb)                              outputs cleared, except cells marked `# NBVAL_CHECK_OUTPUT`
    copy_checked_outputs(nb, executed)             take those marked cells' outputs from an executed copy

The kernel is the venv's `python3` kernelspec: jupyter_client launches it with the *calling* process's
sys.executable, so run these from the venv's python. The kernel inherits HF_HUB_OFFLINE=1,
TOKENIZERS_PARALLELISM=false and PYTHONPATH=<repo root> (so `import fdpg_core` works from any cwd).

Committed notebooks keep outputs only in the cells marked `# NBVAL_CHECK_OUTPUT` (the rounded final
summary): those outputs are what `pytest --nbval-lax` compares a fresh run against.
"""
from __future__ import annotations

import ast
import copy
import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = REPO_ROOT / "notebooks"
CHECK_MARK = "# NBVAL_CHECK_OUTPUT"

__all__ = ["REPO_ROOT", "NOTEBOOK_DIR", "CHECK_MARK", "kernel_env", "list_notebooks", "run_notebook",
           "parameters_cell", "clear_outputs", "copy_checked_outputs"]


def kernel_env(base: dict | None = None) -> dict:
    """Environment for kernels: offline HF, no tokenizer threads, the repo root on PYTHONPATH."""
    env = dict(os.environ if base is None else base)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("PYTHONHASHSEED", "0")
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if str(REPO_ROOT) not in paths:
        env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT)] + paths)
    return env


def list_notebooks(only=None) -> list[Path]:
    """notebooks/NN_*.ipynb in order; `only` = prefixes or names to keep (e.g. ['00', '01_scalar'])."""
    nbs = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))
    if only:
        nbs = [p for p in nbs if any(p.stem.startswith(o) or p.stem == o for o in only)]
        if not nbs:
            raise ValueError(f"no notebook matches {list(only)}; allowed: "
                             f"{[p.stem for p in sorted(NOTEBOOK_DIR.glob('[0-9][0-9]_*.ipynb'))]}")
    return nbs


def run_notebook(path, output_path, parameters: dict | None = None, *, cwd=None, log_output: bool = False,
                 timeout: int | None = None):
    """Execute `path` with papermill (kernel python3) into `output_path`; returns the executed notebook.

    The kernel's cwd is the notebook's folder (as in JupyterLab and nbval) unless `cwd` is given.
    Raises papermill.PapermillExecutionError if a cell fails (the partial output is still written).
    """
    import papermill as pm

    path = Path(path)
    old = dict(os.environ)
    os.environ.update(kernel_env())  # the kernel inherits the papermill process's environment
    try:
        return pm.execute_notebook(str(path), str(output_path), parameters=parameters or {}, kernel_name="python3",
                                   cwd=str(cwd or path.parent), progress_bar=False, log_output=log_output,
                                   execution_timeout=timeout)
    finally:
        os.environ.clear()
        os.environ.update(old)


def _source(cell) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def parameters_cell(nb) -> tuple[dict, dict]:
    """(cell, {name: (value, comment)}) of the code cell tagged `parameters`.

    Each line must be `name = <python literal>  # comment` (blank lines and whole-line comments allowed);
    anything else raises ValueError naming the line.
    """
    cells = [c for c in nb["cells"]
             if c["cell_type"] == "code" and "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(cells) != 1:
        raise ValueError(f"expected exactly one code cell tagged 'parameters', found {len(cells)}")
    params = {}
    for i, line in enumerate(_source(cells[0]).splitlines(), 1):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        code, sep, comment = line.partition("  #")
        try:
            node = ast.parse(code.strip()).body
            ok = sep and comment.strip() and len(node) == 1 and isinstance(node[0], ast.Assign) \
                and len(node[0].targets) == 1 and isinstance(node[0].targets[0], ast.Name)
            value = ast.literal_eval(node[0].value) if ok else None
        except (SyntaxError, ValueError):
            ok = False
        if not ok:
            raise ValueError(f"parameters line {i} {line!r}: expected `name = <literal>  # meaning (legal values)`")
        params[node[0].targets[0].id] = (value, comment.strip())
    return cells[0], params


def clear_outputs(nb, *, keep_checked: bool = True):
    """A copy of `nb` with every output and execution count cleared, except the outputs of cells whose
    source contains `# NBVAL_CHECK_OUTPUT` (when keep_checked; their execution_count is set to 1, which nbval
    needs to compare them); papermill metadata dropped."""
    nb = copy.deepcopy(nb)
    for c in nb["cells"]:
        c.get("metadata", {}).pop("papermill", None)
        c.get("metadata", {}).pop("execution", None)
        if c["cell_type"] != "code":
            continue
        if not (keep_checked and CHECK_MARK in _source(c)):
            c["outputs"] = []
        # nbval skips comparing a cell whose execution_count is None ("unrun reference cell"): a kept
        # reference output needs one; a fixed 1 keeps diffs quiet
        c["execution_count"] = 1 if c["outputs"] else None
        for o in c["outputs"]:
            if "execution_count" in o:  # execute_result outputs carry one
                o["execution_count"] = None
    nb["metadata"].pop("papermill", None)
    return nb


def copy_checked_outputs(nb, executed):
    """`clear_outputs(nb)` with the marked cells' outputs taken from `executed` (matched by cell id)."""
    out = clear_outputs(nb, keep_checked=False)
    ran = {c.get("id"): c for c in executed["cells"]}
    for c in out["cells"]:
        if c["cell_type"] == "code" and CHECK_MARK in _source(c):
            if c.get("id") not in ran:
                raise ValueError(f"copy_checked_outputs: cell {c.get('id')!r} is missing from the executed notebook")
            c["outputs"] = copy.deepcopy(ran[c["id"]]["outputs"])
    return clear_outputs(out)  # normalise: execution counts, papermill metadata
