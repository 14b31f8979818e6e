#!/usr/bin/env python
"""Render the numbered notebooks: their cpu preset's outputs, made from the committed results, stored in place.

    python scripts/render_notebooks.py              # every notebooks/NN_*.ipynb (make render)
    python scripts/render_notebooks.py --only 00 05
    python scripts/render_notebooks.py --check      # only say which renderings are stale (nothing runs)

Each notebook runs with papermill at the cpu preset (notebooks/params/<notebook>.cpu.yaml) in a temp dir, with
FDPG_NO_TRAIN=1: a run that is not saved in the preset's out_dir stops the rendering instead of being trained
(results.find_run), and rerun=True is refused. Evaluation records the notebook has not saved yet (reference samples,
base-model evaluations) are computed once and written to the out_dir, where the next rendering reuses them: commit
them with the rendering. Figures and tables go to the temp dir (the committed figures/ are left alone) and the
printed paths are shown as the preset's (repo-relative) ones.

The executed notebook is written back over notebooks/<notebook>.ipynb by fdpg_core.kit.notebook.rendered: the
parameters cell keeps the notebook's own (smoke) defaults (papermill's injected cell is dropped), papermill's and
the kernel's timings are dropped, execution counts are renumbered, a note after the title says how the outputs were
made, and metadata.fdpg_render.hash records what they were made from (tests/notebooks/test_rendered.py checks it).

Run it with the venv's python (the python3 kernel is the calling interpreter).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # script entry point: import the repo's fdpg_core

import nbformat  # noqa: E402

from fdpg_core.kit.notebook import (REPO_ROOT, RENDER_PRESET, list_notebooks, preset_file,  # noqa: E402
                                    render_problems, rendered, run_each, run_notebook)
from fdpg_core.kit.results import NO_TRAIN_ENV  # noqa: E402


def render(nb_path: Path, work: Path) -> None:
    """Execute notebook `nb_path` at the cpu preset into `work` (no training) and write its rendering in place."""
    name = nb_path.stem
    params = {**preset_file(name, RENDER_PRESET), "preset": RENDER_PRESET}
    fig_dir = str(params["fig_dir"])
    params["fig_dir"] = str(work / name / "figures")
    out = work / f"{name}.{RENDER_PRESET}.ipynb"
    old = os.environ.get(NO_TRAIN_ENV)
    os.environ[NO_TRAIN_ENV] = "1"  # the kernel inherits it: find_run raises where the notebook would train
    try:
        executed = run_notebook(nb_path, out, params)
    finally:
        os.environ.pop(NO_TRAIN_ENV) if old is None else os.environ.update({NO_TRAIN_ENV: old})
    replace = {params["fig_dir"]: fig_dir, str(REPO_ROOT) + os.sep: "", str(REPO_ROOT): "."}
    nb = rendered(nbformat.read(nb_path, as_version=4), executed, name, replace)
    nbformat.validate(nb)
    nbformat.write(nb, nb_path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", nargs="+", help="notebook prefixes or names, e.g. 00 05_sentiment")
    ap.add_argument("--check", action="store_true", help="only report the notebooks whose rendering is not current")
    args = ap.parse_args(argv)
    try:
        notebooks = list_notebooks(args.only)
    except ValueError as e:
        ap.error(str(e))
    if args.check:
        stale = {nb.name: render_problems(nbformat.read(nb, as_version=4), nb.stem) for nb in notebooks}
        for name, why in stale.items():
            print(f"{'ok   ' if not why else 'STALE'}  {name}" + "".join(f"\n       {w}" for w in why))
        return 1 if any(stale.values()) else 0
    work = Path(tempfile.mkdtemp(prefix="fdpg_render_"))
    failed = run_each(notebooks, lambda nb: render(nb, work), "rendered")
    print(f"executed copies in {work}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
