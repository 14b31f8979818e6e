"""Start a multi-process f-DPG run with torchrun (papermill drives one process; this drives N).

    .venv/bin/python scripts/launch_torchrun.py --nproc 2 -- \\
        --problem fdpg_core.kit.toy:make_toy_problem --problem-kwargs '{"kind": "binary"}' \\
        --set divergence=js --set n_steps=50 --set batch_size=64 --set out_dir=runs/toy_binary

runs, with the kit's environment (HF_HUB_OFFLINE=1, TOKENIZERS_PARALLELISM=false, the repo root on PYTHONPATH,
OMP_NUM_THREADS=1 unless set):

    python -m torch.distributed.run --standalone --nproc_per_node 2 -m fdpg_core.kit.torchrun <arguments after -->

Everything after `--` goes to the worker (`python -m fdpg_core.kit.torchrun --help`). batch_size is the global
batch (each process samples batch_size / nproc rows). GPUs: add `--set device=cuda` (one GPU per process, NCCL);
on CPU the processes use gloo. This process becomes torchrun (exec): signals reach it directly, and the exit status
is torchrun's (non-zero when any rank fails; the failing rank's traceback is printed).
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def worker_env(base: dict | None = None) -> dict:
    """fdpg_core.kit.notebook.kernel_env's settings (not imported: importing fdpg_core costs every launch a torch
    import), plus OMP_NUM_THREADS=1 unless set (torchrun's default for nproc > 1, without its warning)."""
    env = dict(os.environ if base is None else base)
    for key, val in (("HF_HUB_OFFLINE", "1"), ("TOKENIZERS_PARALLELISM", "false"), ("PYTHONHASHSEED", "0"),
                     ("OMP_NUM_THREADS", "1")):
        env.setdefault(key, val)
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if str(REPO_ROOT) not in paths:
        env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT)] + paths)
    return env


def build_command(nproc: int, worker_args: list[str]) -> list[str]:
    """The torchrun command line (a single node, a local rendezvous on a free port)."""
    if not (isinstance(nproc, int) and nproc >= 1):
        raise ValueError(f"--nproc {nproc!r}; allowed: an int >= 1")
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", "fdpg_core.kit.torchrun", *worker_args]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ours, worker = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                usage="launch_torchrun.py [--nproc N] [--dry-run] -- <fdpg_core.kit.torchrun args>")
    p.add_argument("--nproc", type=int, default=2, help="processes on this node (one per GPU on a GPU machine)")
    p.add_argument("--dry-run", action="store_true", help="print the command and exit")
    args = p.parse_args(ours)
    cmd = build_command(args.nproc, worker)
    print("+ " + shlex.join(cmd), flush=True)
    if args.dry_run:
        return 0
    os.execve(cmd[0], cmd, worker_env())  # become torchrun: signals reach it directly, its exit status is ours


if __name__ == "__main__":
    sys.exit(main())
