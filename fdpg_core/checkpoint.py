"""The files of a training run and the record list `train` returns.

    out_dir/history.jsonl  one JSON record per logged step, append-only (`_HistoryFile`)
    out_dir/checkpoint.pt  policy, Adam, schedule, proposal, the Ẑ sums, baseline, counters and every rank's RNG
                           states; written atomically every config.checkpoint_every steps and at the end
                           (`RunFiles.checkpoint_due`), only after the update left every parameter finite
    History                train()'s records (a list) with the final running log Ẑ_c and sample count per context

A fresh run refuses an out_dir that already holds a run (resume=True continues it, overwrite=True replaces it); a
resume checks the checkpoint (readable, same config up to _RESUMABLE, same world size). Rank 0 alone writes.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import random
import warnings
from typing import Callable, Sequence

import torch
from torch import Tensor

from fdpg_core import distributed as dist_
from fdpg_core.config import FDPGConfig
from fdpg_core.losses import NonFiniteLossError

__all__ = ["History", "RunFiles", "CHECKPOINT_NAME", "HISTORY_NAME"]

CHECKPOINT_NAME = "checkpoint.pt"
HISTORY_NAME = "history.jsonl"
# config fields that may change between a run and its resume
_RESUMABLE = {"n_steps", "log_every", "eval_every", "checkpoint_every", "out_dir", "device", "progress", "overwrite",
              "max_consecutive_skips", "precision"}


class History(list):
    """train()'s records (one dict per logged step, as in history.jsonl), plus the state at the end of the run:

    log_Z  (C,) float64, CPU: the running log Ẑ_c = log S_c − log n_c of each context (NaN: c never sampled; −inf: no
           sample of c had P > 0 yet)
    count  (C,) float64, CPU: n_c, the samples drawn for each context since step 0
    step   the number of steps done (config.n_steps once the run is complete)
    """

    def __init__(self, records=(), *, log_Z: Tensor | None = None, count: Tensor | None = None, step: int = 0):
        super().__init__(records)
        self.log_Z, self.count, self.step = log_Z, count, step


def _rng_state(gen: torch.Generator) -> dict:
    st = {"torch": torch.get_rng_state(), "python": random.getstate(), "sampler": gen.get_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def _set_rng_state(st: dict, gen: torch.Generator) -> None:
    torch.set_rng_state(st["torch"])
    random.setstate(st["python"])
    gen.set_state(st["sampler"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def _save(path: str, obj: dict) -> None:
    tmp = path + ".tmp"
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)  # atomic: a crash never leaves a half-written checkpoint
    except Exception as e:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise OSError(f"could not write the checkpoint {path!r} ({type(e).__name__}: {e}); the previous checkpoint, "
                      "if any, is unchanged. Free disk space or choose another out_dir, then resume") from e


def _existing_run(out_dir: str) -> str | None:
    """What of a run out_dir holds (checkpoint.pt, history.jsonl with records), or None."""
    found = []
    if os.path.exists(os.path.join(out_dir, CHECKPOINT_NAME)):
        found.append(CHECKPOINT_NAME)
    hist = os.path.join(out_dir, HISTORY_NAME)
    if os.path.exists(hist) and os.path.getsize(hist) > 0:
        with open(hist, "rb") as fh:
            found.append(f"{HISTORY_NAME} with {sum(1 for line in fh if line.strip())} record(s)")
    return " and ".join(found) or None


def _refuse_existing_run(out_dir: str, rank0: bool) -> None:
    """A fresh run never replaces a run silently (rank 0 looks; every rank raises)."""
    found = dist_.broadcast_object(_existing_run(out_dir) if rank0 else None)
    if found:
        raise FileExistsError(f"train: out_dir={out_dir!r} already holds a run ({found}); a fresh run (resume=False) "
                              "would replace it. Allowed: train(..., resume=True) to continue it, "
                              "FDPGConfig(overwrite=True) to replace it, or another out_dir")


class _HistoryFile:
    """Rank 0's history.jsonl, append-only. Nothing on disk changes before `start()` (called by the first record or
    checkpoint), so a run that fails before its first step writes nothing. start() removes `stale` files (the
    checkpoint of a run being overwritten) and replaces the file atomically with the `kept` rows (a resume's rows
    before its checkpoint; none for a fresh run); each record is then appended and flushed."""

    def __init__(self, path: str, kept: list[dict], stale: Sequence[str] = ()):
        # a copy of `kept`: train's `history` list grows with every record
        self.path, self.kept, self.stale, self.started = path, list(kept), list(stale), False

    def start(self) -> None:
        if self.started:
            return
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        for p in self.stale:
            if os.path.exists(p):
                os.remove(p)
        tmp = self.path + ".tmp"
        with open(tmp, "w") as fh:
            fh.writelines(json.dumps(r) + "\n" for r in self.kept)
        os.replace(tmp, self.path)  # atomic: the old file or the new one, never half of it
        self.started = True

    def append(self, rec: dict) -> None:
        self.start()
        line = json.dumps(rec, allow_nan=False) + "\n"
        try:
            with open(self.path, "a") as fh:
                fh.write(line)
                fh.flush()
        except OSError as e:
            raise OSError(f"could not append the record of step {rec.get('step')} to {self.path!r} ({e}); the "
                          "records before it are kept. Free disk space, then resume") from e


def _read_history(path: str, step: int) -> list[dict]:
    """The records of history.jsonl before `step` (the checkpoint's). Records at or past it, and an unparsable
    (torn) tail left by a killed run, are dropped with a warning; an unparsable line followed by a record before
    `step` raises ValueError naming the file and the line."""
    if not os.path.exists(path):
        return []
    with open(path, "rb") as fh:  # bytes: a torn UTF-8 character is a parse error, not a crash
        lines = fh.read().split(b"\n")
    kept, past, torn = [], 0, []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            ok = isinstance(rec, dict) and isinstance(rec.get("step"), int)
        except ValueError:
            ok = False
        if not ok:
            torn.append(i)
        elif rec["step"] >= step:
            past += 1
        elif torn:
            raise ValueError(f"train(resume=True): {path!r} line {torn[0]} is not a history record (not valid JSON "
                             f"with an int 'step'), but records before the checkpoint's step {step} follow it "
                             f"(line {i}). Allowed: repair or delete line {torn[0]} and resume again")
        else:
            kept.append(rec)
    if past or torn:
        warnings.warn(f"train(resume=True): {path!r}: dropped {past} record(s) at or past the checkpoint's step {step} "
                      f"(this run recomputes them)" + (f" and {len(torn)} unparsable line(s) at the end ({torn[:5]}; a "
                                                       "record torn by a killed run)" if torn else ""), stacklevel=3)
    return kept


def _load_checkpoint(path: str) -> dict:
    """torch.load of our own checkpoint (python RNG tuples: weights_only=False) on the CPU; errors name the file."""
    try:
        ck = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # truncated zip, garbage bytes, unreadable file, ...
        raise ValueError(f"train(resume=True): cannot read the checkpoint {path!r} ({type(e).__name__}: "
                         f"{str(e)[:200]}); it is truncated or corrupt. Allowed: restore an intact copy, or start "
                         "again with resume=False and FDPGConfig(overwrite=True)") from e
    need = ("config", "policy", "optimizer", "scheduler", "state", "rng")
    missing = [k for k in need if k not in ck] if isinstance(ck, dict) else list(need)
    if missing:
        raise ValueError(f"train(resume=True): {path!r} is not an f-DPG checkpoint (missing {missing}); allowed: the "
                         "checkpoint.pt that train() wrote into this out_dir")
    return ck


def _check_params_finite(policy: torch.nn.Module, step: int, ckpt_path: str) -> None:
    """Before a checkpoint: the update of `step` must have left every parameter finite (else the checkpoint on disk
    is kept as it is)."""
    named = list(policy.named_parameters())
    ok = torch.stack([torch.isfinite(p.detach()).all().to(named[0][1].device) for _, p in named]).tolist()  # 1 sync
    bad = [n for (n, _), good in zip(named, ok) if not good]
    if bad:
        raise NonFiniteLossError(f"f-DPG stopped after the update of step {step}: {len(bad)} parameter tensor(s) "
                                 f"became non-finite (e.g. {bad[0]!r}); lower lr or set max_grad_norm. "
                                 f"{ckpt_path!r} was not overwritten")


class RunFiles:
    """One run's records and files: the `history` list every rank keeps, rank 0's history.jsonl and callbacks, and
    checkpoint.pt (`out_dir=None`: no files). Built once train()'s state exists; refuses an out_dir holding a run."""

    def __init__(self, cfg: FDPGConfig, resume: bool, rank: int, W: int, callbacks: Sequence[Callable], *, policy,
                 optimizer, scheduler, proposal, gen: torch.Generator):
        out_dir = None if cfg.out_dir is None else str(cfg.out_dir)
        self.cfg, self.rank, self.W, self.rank0, self.callbacks = cfg, rank, W, rank == 0, callbacks
        self.policy, self.optimizer, self.scheduler = policy, optimizer, scheduler
        self.proposal, self.gen = proposal, gen
        self.ckpt_path = None if out_dir is None else os.path.join(out_dir, CHECKPOINT_NAME)
        self.hist_path = None if out_dir is None else os.path.join(out_dir, HISTORY_NAME)
        self.history: list[dict] = []
        if not (out_dir is None or resume or cfg.overwrite):
            _refuse_existing_run(out_dir, self.rank0)
        self.file = None if self.hist_path is None or not self.rank0 else \
            _HistoryFile(self.hist_path, [], stale=[] if resume else [self.ckpt_path])

    def restore(self, device) -> dict:
        """resume=True: load out_dir/checkpoint.pt into the policy, optimiser, schedule, proposal and RNG states after
        checking it (config, world size); the kept history rows become `history`. Returns the training state."""
        cfg, W, path = self.cfg, self.W, self.ckpt_path
        if path is None or not os.path.exists(path):
            raise FileNotFoundError(f"train(resume=True): no checkpoint at {path!r} (config.out_dir={cfg.out_dir!r})")
        # our own file (python RNG tuples): weights_only=False. Load on CPU: RNG states must stay CPU ByteTensors;
        # load_state_dict copies tensors onto the modules' / optimizer's device.
        ck = _load_checkpoint(path)
        kept = _read_history(self.hist_path, ck["state"]["step"]) if self.file is not None else []  # before any change
        saved, now = ck["config"], cfg.to_dict()
        diff = {key: (saved.get(key), now[key]) for key in now if key not in _RESUMABLE and saved.get(key) != now[key]}
        if diff:
            raise ValueError(f"train(resume=True): config differs from the checkpoint's in {diff} "
                             f"(only {sorted(_RESUMABLE)} may change)")
        if ck.get("world_size", 1) != W:
            raise ValueError(f"train(resume=True): the checkpoint was written by world_size={ck.get('world_size', 1)} "
                             f"process(es), this run has world_size={W}; allowed: resume with the same number of "
                             f"processes (torchrun --nproc_per_node {ck.get('world_size', 1)})")
        self.policy.load_state_dict(ck["policy"])
        self.optimizer.load_state_dict(ck["optimizer"])
        self.scheduler.load_state_dict(ck["scheduler"])
        if self.proposal is not None:
            self.proposal.load_state_dict(ck["proposal"])
        st = {key: v.to(device) if isinstance(v, Tensor) else v for key, v in ck["state"].items()}
        _set_rng_state(ck["rng_per_rank"][self.rank] if W > 1 else ck["rng"], self.gen)
        if self.file is not None:  # rewritten (atomically) when this run writes its first record
            self.history, self.file = kept, _HistoryFile(self.hist_path, kept)
        self.history = dist_.broadcast_object(self.history)
        return st

    def emit(self, rec: dict) -> None:
        """Append a record to the history (every rank); rank 0 also writes it and calls the callbacks."""
        rec = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in rec.items()}  # JSON
        self.history.append(rec)
        if not self.rank0:
            return
        if self.file is not None:
            self.file.append(rec)
        for cb in self.callbacks:
            cb(rec, self.policy)

    def checkpoint_due(self, step: int) -> bool:
        """Whether checkpoint.pt is written after step `step`: every config.checkpoint_every steps and at the end."""
        cfg = self.cfg
        return bool(self.ckpt_path) and bool((cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0)
                                             or step + 1 == cfg.n_steps)

    def after_step(self, step: int, st: dict) -> None:
        """Write the checkpoint of step `step` when it is due. Collective: every rank calls it (RNG states gathered
        to rank 0); the parameters must be finite, else the checkpoint on disk is kept."""
        if not self.checkpoint_due(step):
            return
        _check_params_finite(self.policy, step, self.ckpt_path)  # the same parameters on every rank
        rngs = dist_.gather_objects(_rng_state(self.gen))  # [rank 0's, …] on rank 0
        if not self.rank0:
            return
        self.file.start()  # the history is rewritten before a checkpoint of this run replaces the old one
        p = self.proposal
        _save(self.ckpt_path, {"config": self.cfg.to_dict(), "policy": self.policy.state_dict(),
                               "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                               "proposal": None if p is None else p.state_dict(), "state": {**st, "step": step + 1},
                               "rng": rngs[0], "world_size": self.W, **({"rng_per_rank": rngs} if self.W > 1 else {})})

    def result(self, st: dict, step: int) -> History:
        """The returned History: the records, the final running log Ẑ_c and n_c, and `step`, the steps done."""
        log_Z = (st["log_S"] - torch.log(st["count"])).double().cpu()  # (C,) NaN for unseen contexts
        return History(self.history, log_Z=log_Z, count=st["count"].double().cpu(), step=step)
