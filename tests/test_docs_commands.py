"""Every command shown in README.md, notebooks/README.md and docs/*.md runs as written.

The code blocks are extracted from the documents; every bash command and every Python block is run in a copy of
the repository (so the committed results and figures are never touched), with the venv linked in, and must exit 0.
Two kinds of exceptions, each stated here:
  - NOT_RUN: `make test` is the command that runs this suite (CI runs it through .ci/run); `make lab` starts a
    server that runs until stopped; `make render` renders all nine notebooks (its script runs on one, as documented); the nbval command is run by the notebook tests (the test below checks they run
    the same arguments);
  - REDUCED: a long command runs at a reduced size: the same command with the stated arguments appended (only
    sweep parameters that pick fewer runs, so the committed runs are still reused), or, for a Python block, the
    stated text substitutions (fewer steps).
A command that is in a document but in neither table is run as written; one in a table but in no document fails
the inventory test, so the tables cannot go stale.
"""
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "notebooks" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

NOT_RUN = {"make test": "this suite itself: CI runs it (.ci/run)",
           "make lab": "starts a JupyterLab server that runs until it is stopped (tests/test_browser.py runs one)",
           "make render": "renders all nine notebooks (minutes); the same script on one notebook, "
                          "`scripts/render_notebooks.py --only 00`, is documented and run",
           ".venv/bin/python -m pytest --nbval-lax -p no:cacheprovider notebooks/00_toy_exact.ipynb":
               "run by tests/notebooks/test_00_toy_exact.py::test_nbval_lax_on_00_toy_exact (checked below)"}
ONE_RUN = ["--set", "n_seeds=1", "divergences=[kl]"]  # one reused run: seed 0, forward KL
REDUCED = {  # command: appended arguments
    ".venv/bin/python scripts/run_notebooks.py --preset cpu --only 03": ONE_RUN + ["tasks=[science]"],
    ".venv/bin/python scripts/run_notebooks.py --preset cpu --only 04": ONE_RUN + ["tasks=[female]"],
    ".venv/bin/python scripts/run_notebooks.py --preset cpu --only 05": ONE_RUN + ["forms=[scalar]"],
    ".venv/bin/python scripts/run_notebooks.py --preset cpu --only 06": ONE_RUN,
    ".venv/bin/python scripts/run_notebooks.py --preset cpu --only 07": ONE_RUN,
    ".venv/bin/python scripts/run_notebooks.py --preset cpu --only 08": ONE_RUN,
    ".venv/bin/python scripts/run_notebooks.py --preset cpu-long --only 03": ONE_RUN,
    ".venv/bin/python scripts/run_notebooks.py --preset cpu-smollm --only 01": ONE_RUN,
    ".venv/bin/python scripts/run_notebooks.py --preset cpu-smollm-b64 --only 01": ONE_RUN,
}
PY_REDUCED = {"n_steps=200, batch_size=64": "n_steps=2, batch_size=8"}  # README's example: 2 steps of 8 samples


def code_blocks(path):
    """(language, text) of every fenced code block of a Markdown file."""
    return [(m.group(1), m.group(2)) for m in re.finditer(r"^```(\w*)\n(.*?)^```", path.read_text(), re.S | re.M)]


def bash_commands(text):
    """The commands of a bash block: continuation lines joined, comments dropped, normalised by shlex."""
    out = []
    for line in text.replace("\\\n", " ").splitlines():
        tokens = shlex.split(line, comments=True)
        if tokens:
            out.append(shlex.join(tokens))
    return out


def documented():
    """{'bash': {command: [documents]}, 'python': {block: [documents]}}."""
    found = {"bash": {}, "python": {}}
    for doc in DOCS:
        for lang, text in code_blocks(doc):
            if lang == "bash":
                for cmd in bash_commands(text):
                    found["bash"].setdefault(cmd, []).append(doc.name)
            elif lang == "python":
                found["python"].setdefault(text, []).append(doc.name)
    return found


DOCUMENTED = documented()
BASH = sorted(DOCUMENTED["bash"])
PYTHON = sorted(DOCUMENTED["python"])


def test_inventory_tables_name_documented_commands_only():
    assert BASH and PYTHON, "no code blocks found"
    stale = sorted((set(NOT_RUN) | set(REDUCED)) - set(BASH))
    assert not stale, f"commands listed here but in no document: {stale}"
    for old in PY_REDUCED:
        assert any(old in block for block in PYTHON), f"reduction {old!r} matches no documented Python block"


def test_the_nbval_command_is_the_one_the_notebook_tests_run():
    src = (ROOT / "tests" / "notebooks" / "test_00_toy_exact.py").read_text()
    for arg in shlex.split(next(c for c in NOT_RUN if "nbval" in c))[1:]:
        assert f'"{arg}"' in src, arg


@pytest.fixture(scope="module")
def repo_copy(tmp_path_factory):
    """The repository's files (tracked and new, as `git ls-files` lists them) in a temp dir, .venv linked."""
    stamp = ROOT / ".venv" / ".installed"
    reqs = [ROOT / f for f in ("requirements.txt", "requirements-nodeps.txt", "pyproject.toml")]
    if not stamp.exists() or any(r.stat().st_mtime > stamp.stat().st_mtime for r in reqs):
        pytest.skip("the venv is missing or older than the requirements: run `make venv` first")
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split("\0")
    dst = tmp_path_factory.mktemp("repo")
    for f in filter(None, files):
        if (ROOT / f).is_file():
            (dst / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, dst / f)  # keeps mtimes: make sees the venv as up to date
    (dst / ".venv").symlink_to(ROOT / ".venv")
    return dst


def _env(copy):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "COV_"))}
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONPATH=str(copy))
    return env


def _check(proc, what):
    assert proc.returncode == 0, f"{what} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"


@pytest.mark.slow
@pytest.mark.parametrize("cmd", BASH)
def test_documented_command_runs(cmd, repo_copy):
    if cmd in NOT_RUN:
        pytest.skip(f"{cmd}: {NOT_RUN[cmd]}")
    run = cmd + ("" if cmd not in REDUCED else " " + shlex.join(REDUCED[cmd]))
    proc = subprocess.run(run, shell=True, cwd=repo_copy, env=_env(repo_copy), capture_output=True, text=True,
                          timeout=900)
    _check(proc, f"`{run}` (documented in {DOCUMENTED['bash'][cmd]})")


@pytest.mark.slow
@pytest.mark.parametrize("block", PYTHON, ids=[f"python{i}" for i in range(len(PYTHON))])
def test_documented_python_runs(block, repo_copy):
    for old, new in PY_REDUCED.items():
        block = block.replace(old, new)
    proc = subprocess.run([str(ROOT / ".venv" / "bin" / "python"), "-c", block], cwd=repo_copy,
                          env=_env(repo_copy), capture_output=True, text=True, timeout=900)
    _check(proc, f"Python block of {DOCUMENTED['python'].get(block, '?')}")
