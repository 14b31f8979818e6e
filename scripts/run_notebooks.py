#!/usr/bin/env python
"""Run the kit's notebooks with papermill at a preset.

    python scripts/run_notebooks.py --preset smoke            # every notebook at its defaults, into a temp dir
    python scripts/run_notebooks.py --preset cpu --only 00    # notebooks/params/00_*.cpu.yaml: committed results
    python scripts/run_notebooks.py --preset cpu --only 03 --set lr=1e-4 "divergences=[js, kl]"  # overrides

smoke: the notebook's own defaults (the parameters cell), with out_dir / fig_dir redirected into a temp dir
(or --work-dir), so the committed results and figures are never touched.
cpu / paper, or any other preset with a notebooks/params/<notebook>.<preset>.yaml file (e.g. cpu-long for 03): the
parameters of that file (as `papermill -f`); their out_dir is data/results/<experiment>/<preset> and fig_dir
figures/<experiment>/ (figures/<experiment>/<preset>/ for the presets beyond cpu and paper; relative to the repo root).
A notebook without a file for the preset stops with a message naming the presets it has. A run already
saved there with the same parameters is reused, not retrained (add `--set rerun=true` to train it again).
--set name=value (repeatable) overrides one parameter; the value is read as YAML, like papermill's `-p`.
Parameters are checked before anything runs: an unknown name or a bad value stops with a message.
Executed notebooks (with outputs) go to the work dir, never next to the committed ones.
--update-checks (smoke only): copy the outputs of the `# NBVAL_CHECK_OUTPUT` cells of the executed notebook back
into the committed notebook (every other output stays cleared): the reference `make nbval` compares against.

Run it with the venv's python (the python3 kernel is the calling interpreter).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # script entry point: import the repo's fdpg_core

import nbformat  # noqa: E402
import yaml  # noqa: E402

from fdpg_core.kit.notebook import (NOTEBOOK_DIR, copy_checked_outputs, list_notebooks, preset_file,  # noqa: E402
                                    preset_values, run_each, run_notebook)

PRESETS = ("smoke", "cpu", "paper")  # the standard ones; any preset with a notebooks/params/<nb>.<preset>.yaml file runs


def available_presets() -> list[str]:
    """'smoke' and every preset that has a notebooks/params/<notebook>.<preset>.yaml file."""
    found = {p.name.split(".")[-2] for p in (NOTEBOOK_DIR / "params").glob("*.yaml")}
    return ["smoke"] + sorted(found, key=lambda p: (p not in PRESETS, PRESETS.index(p) if p in PRESETS else 0, p))


def preset_parameters(nb: Path, preset: str, work: Path) -> dict:
    """Parameters papermill injects for `preset` (ValueError when the preset file is missing)."""
    if preset == "smoke":
        return {"preset": "smoke", "out_dir": str(work / nb.stem / "results"),
                "fig_dir": str(work / nb.stem / "figures")}
    return {**preset_file(nb.stem, preset), "preset": preset}


def parse_sets(items) -> dict:
    """['lr=1e-4', 'divergences=[js]'] -> {'lr': 0.0001, 'divergences': ['js']} (values read as YAML)."""
    out = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"--set {item!r}; allowed: name=value, e.g. --set lr=1e-4 or --set 'divergences=[js, kl]'")
        out[name.strip()] = yaml.safe_load(value) if value.strip() else value
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="smoke",
                    help=f"smoke, or any preset with a notebooks/params/<notebook>.<preset>.yaml file: {available_presets()}")
    ap.add_argument("--only", nargs="+", help="notebook prefixes or names, e.g. 00 01_scalar_preference")
    ap.add_argument("--work-dir", type=Path, help="where executed notebooks (and smoke results) go; default: temp dir")
    ap.add_argument("--update-checks", action="store_true",
                    help="smoke only: store the NBVAL_CHECK_OUTPUT cells' outputs in the committed notebooks")
    ap.add_argument("--set", action="extend", nargs="+", metavar="NAME=VALUE",
                    help="override parameters, e.g. --set lr=1e-4 'divergences=[js, kl]' (values read as YAML)")
    ap.add_argument("--log-output", action="store_true", help="stream cell outputs to the terminal")
    args = ap.parse_args(argv)
    if args.preset not in available_presets():
        ap.error(f"--preset {args.preset!r}: no notebooks/params/*.{args.preset}.yaml file; allowed: {available_presets()}")
    if args.update_checks and args.preset != "smoke":
        ap.error("--update-checks needs --preset smoke (nbval runs the notebooks at their defaults)")
    try:
        sets = parse_sets(args.set)
        notebooks = list_notebooks(args.only)
        for nb in notebooks:  # every preset file and override checked before anything runs
            preset_values(nb.stem, args.preset, sets)
    except ValueError as e:
        ap.error(str(e))
    work = args.work_dir or Path(tempfile.mkdtemp(prefix=f"fdpg_notebooks_{args.preset}_"))
    work.mkdir(parents=True, exist_ok=True)

    def one(nb):
        out = work / f"{nb.stem}.{args.preset}.ipynb"
        run_notebook(nb, out, {**preset_parameters(nb, args.preset, work), **sets}, log_output=args.log_output)
        if args.update_checks:
            nbformat.write(copy_checked_outputs(nbformat.read(nb, as_version=4), nbformat.read(out, as_version=4)), nb)
            return f"-> {out} (its NBVAL_CHECK_OUTPUT reference outputs updated in {nb.name})"
        return f"-> {out}"

    failed = run_each(notebooks, one, f"ran at {args.preset}")
    print(f"executed notebooks in {work}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
