"""The command line of one f-DPG training process under torchrun (one rank), or alone.

    torchrun --standalone --nproc_per_node 2 -m fdpg_core.kit.torchrun \\
        --problem fdpg_core.kit.toy:make_toy_problem --problem-kwargs '{"kind": "binary"}' \\
        --set divergence=js --set n_steps=50 --set batch_size=64 --set out_dir=runs/toy_binary

scripts/launch_torchrun.py builds the torchrun command. The collectives live in fdpg_core.distributed.
"""
from __future__ import annotations

import argparse
import ast
import importlib
import importlib.util
import json
import os
import sys
import time
from typing import Sequence

import torch

from fdpg_core.distributed import (DEFAULT_TIMEOUT_S, HungRankError, _peer_failure, init_distributed, is_main,
                                   local_device, shutdown_distributed, world_size)
from fdpg_core.train import FDPGConfig, train

__all__ = ["PEER_FAILURE_GRACE_S", "main"]

PEER_FAILURE_GRACE_S = 5.0
"""a rank of the command-line worker whose collective fails because a peer died waits this long before exiting, so
that torchrun (which polls every 0.1 s) reports the rank that failed first, with its error, as the root cause."""


def _load_callable(spec: str):
    """'package.module:function' or 'path/to/file.py:function' → the function."""
    mod_name, sep, fn_name = spec.rpartition(":")
    if not sep or not mod_name or not fn_name:
        raise ValueError(f"--problem {spec!r}; allowed: 'package.module:function' or 'path/to/file.py:function'")
    if mod_name.endswith(".py"):
        path = os.path.abspath(mod_name)
        name = "_fdpg_problem_" + os.path.splitext(os.path.basename(path))[0]
        spec_ = importlib.util.spec_from_file_location(name, path)
        if spec_ is None or not os.path.isfile(path):
            raise ValueError(f"--problem: no Python file at {path!r}")
        module = importlib.util.module_from_spec(spec_)
        sys.modules[name] = module
        spec_.loader.exec_module(module)
    else:
        module = importlib.import_module(mod_name)
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        raise ValueError(f"--problem {spec!r}: {fn_name!r} is not a callable of {mod_name!r}")
    return fn


def _parse_value(text: str):
    """'1e-3' → 0.001, 'true'/'True' → True, 'null'/'None' → None, '[0.9, 0.99]' → list; else the string."""
    for parse in (json.loads, ast.literal_eval):
        try:
            return parse(text)
        except (ValueError, SyntaxError):
            pass
    return text


def _parse_sets(items: Sequence[str]) -> dict:
    out = {}
    for item in items:
        key, sep, val = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set {item!r}; allowed: key=value with a FDPGConfig key, e.g. --set n_steps=100")
        out[key.strip()] = _parse_value(val.strip())
    return out


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m fdpg_core.kit.torchrun",
        description="One f-DPG training process; start W of them with torchrun (scripts/launch_torchrun.py). "
                    "Rank 0 writes history.jsonl and checkpoint.pt into the config's out_dir.")
    p.add_argument("--problem", default="fdpg_core.kit.toy:make_toy_problem",
                   help="factory 'module:function' or 'file.py:function' returning an object or dict with policy, "
                        "target, prompts (optional: tokenizer, metrics_fn, proposal); it must build the same models "
                        "on every rank (rank 0's policy is broadcast, the target is not)")
    p.add_argument("--problem-kwargs", default="{}", help="JSON object of keyword arguments for the factory")
    p.add_argument("--config", default=None, help="YAML or JSON file of FDPGConfig keys")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="one FDPGConfig key (repeatable; overrides --config), e.g. --set n_steps=100")
    p.add_argument("--resume", action="store_true", help="continue from out_dir/checkpoint.pt (same world size)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads per process (default: unchanged)")
    p.add_argument("--timeout", type=float, default=None,
                   help=f"collective timeout in s (default: env FDPG_DIST_TIMEOUT_S or {DEFAULT_TIMEOUT_S})")
    return p


def main(argv: Sequence[str] | None = None) -> list[dict]:
    """Build the problem, run `train` in this process (one rank of a torchrun job, or alone); returns the history.
    Rank 0 prints the last record as one JSON line prefixed 'fdpg-final '."""
    import yaml

    args = _parser().parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    cfg_dict = {}
    if args.config:
        with open(args.config) as fh:
            cfg_dict = yaml.safe_load(fh) or {}  # JSON is YAML
    cfg_dict.update(_parse_sets(args.set))
    cfg_dict.setdefault("progress", False)
    kwargs = json.loads(args.problem_kwargs)
    if not isinstance(kwargs, dict):
        raise ValueError(f"--problem-kwargs {args.problem_kwargs!r}; allowed: a JSON object")
    built = _load_callable(args.problem)(**kwargs)
    for key in ("max_new_tokens", "eos_token_id", "pad_token_id"):  # the problem's own lengths and ids, unless set
        value = built.get(key) if isinstance(built, dict) else getattr(built, key, None)
        if value is not None:
            cfg_dict.setdefault(key, value)
    cfg = FDPGConfig.from_dict(cfg_dict)
    parts = built if isinstance(built, dict) else {k: getattr(built, k) for k in ("policy", "target", "prompts",
                                                                                 "tokenizer") if hasattr(built, k)}
    missing = [k for k in ("policy", "target", "prompts") if k not in parts]
    if missing:
        raise ValueError(f"--problem {args.problem!r} returned no {missing}; allowed: an object or dict with policy, "
                         "target, prompts (optional tokenizer, metrics_fn, proposal)")
    device = cfg.device if cfg.device is not None else next(parts["policy"].parameters()).device
    device = local_device(device, keep_index=cfg.device is not None and torch.device(cfg.device).index is not None)
    init_distributed(device, timeout_s=args.timeout)
    base = getattr(parts["target"], "base", None)
    if isinstance(base, torch.nn.Module):
        base.to(device)  # the target's a scores on this rank's device
    extra = {k: parts[k] for k in ("tokenizer", "metrics_fn", "proposal") if parts.get(k) is not None}
    try:
        history = train(parts["policy"], parts["target"], parts["prompts"], cfg, resume=args.resume, **extra)
    except Exception as e:  # no destroy_process_group here: it can wait for the peers; exiting closes the sockets
        if world_size() > 1 and (_peer_failure(e) or (isinstance(e, HungRankError) and e.hung is None)):
            # not the root cause: let torchrun report the failing rank (or rank 0, which names the hung ones) first
            time.sleep(PEER_FAILURE_GRACE_S)
        raise
    if is_main() and history:
        print("fdpg-final " + json.dumps(history[-1]), flush=True)
    shutdown_distributed()
    return history


if __name__ == "__main__":
    from torch.distributed.elastic.multiprocessing.errors import record

    record(main)()  # under torchrun: the failing rank's traceback is reported as the job's root cause
