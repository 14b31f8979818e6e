"""Data-parallel f-DPG on torch.distributed: the collectives `train()` uses (docs/DISTRIBUTED.md).

`train()` is unchanged under `torchrun --nproc_per_node W`: it calls `init_distributed` (a no-op in a plain process).
B = config.batch_size is the GLOBAL batch; rank r samples the rows [r·B/W, (r+1)·B/W) with its own generator, seeded
rank_seed(seed, r) = seed + 1000·r. Per step:

    gather_rows        log q, log P, log a and the features of every rank's rows (one all_gather of an (B/W, K)
                       float64 matrix, exact for fp32/bool/int): Ẑ_c is updated with the one-process arithmetic
    all_reduce_grads   each rank's backward carries 1/n of the GLOBAL batch; the SUM is the one-process gradient
    gather_rows        log π_θ of every row: baseline, metrics and the offline decision are the one-process code

DDP is not used on purpose: `sampling.score` runs the LM head itself (DDP only hooks `forward`), and a rank whose
rows all have Ẑ_c = 0 skips its backward (DDP needs the same backward calls on every rank). Rank 0 alone writes
files; the checkpoint holds every rank's RNG states. The command line of one rank is fdpg_core.kit.torchrun.
"""
from __future__ import annotations

import functools
import itertools
import os
import re
import time
from datetime import timedelta
from typing import Sequence

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["DEFAULT_TIMEOUT_S", "HUNG_PROBE_S", "RANK_SEED_STRIDE", "HungRankError", "rank_seed", "world_size",
           "rank", "is_main", "launched", "local_device", "init_distributed", "check_backend", "gather_rows",
           "all_reduce_grads", "broadcast_module", "broadcast_object", "gather_objects", "all_gather_objects"]

DEFAULT_TIMEOUT_S = 600
"""collective timeout (s) set on init_process_group (env FDPG_DIST_TIMEOUT_S overrides; torch's own default is
30 min). A rank stuck longer than this in a collective raises instead of hanging the job."""
HUNG_PROBE_S = 10.0
"""the longest wait (s) of the hung-rank probe that follows a timed-out collective (gloo; see _names_hung_ranks)."""
RANK_SEED_STRIDE = 1000
"""rank r samples with a generator seeded seed + RANK_SEED_STRIDE · r (CPU generators use the low 32 bits of a
seed, so a 2³² stride would collide)."""


class HungRankError(TimeoutError):
    """A collective timed out because other ranks never reached it. `hung`: their ranks; [] when every rank answered
    the probe (no rank is hung: the collective was slow); None when rank 0 collected the answers (see its error)."""

    def __init__(self, msg: str, hung: list[int] | None):
        super().__init__(msg)
        self.hung = hung


_PROBE: tuple | None = None  # (the default group, the gloo group of the hung-rank probe)


def _probe_group():
    """The gloo group of the hung-rank probe, created once per default gloo group (None with NCCL). Collective: every
    rank calls it at the same point (init_distributed, which train() calls on every rank)."""
    global _PROBE
    if world_size() == 1 or dist.get_backend() != "gloo":  # NCCL: its watchdog ends the process at a timeout
        return None
    world = dist.group.WORLD
    if _PROBE is None or _PROBE[0] is not world:
        dist.barrier()  # the ranks meet first (default timeout), so the short probe timeout never fails the creation
        _PROBE = (world, dist.new_group(backend="gloo", timeout=timedelta(seconds=HUNG_PROBE_S)))
    return _PROBE[1]


def shutdown_distributed() -> None:
    """Leave the process group after a finished run: the ranks meet, then the probe group goes before the default
    group (tearing both down while a peer still uses its sockets could crash a rank at exit). No-op without one."""
    global _PROBE
    if not (dist.is_available() and dist.is_initialized()):
        return
    if world_size() > 1:
        dist.barrier()
    if _PROBE is not None and _PROBE[0] is dist.group.WORLD:
        dist.destroy_process_group(_PROBE[1])
    _PROBE = None
    dist.destroy_process_group()


def _names_hung_ranks(fn):
    """Wrap a collective: a timeout becomes a HungRankError naming the ranks that never reached it. The probe: every
    rank still alive meets at a monitored barrier of a separate gloo group for at most HUNG_PROBE_S seconds; rank 0
    names the ranks that never arrived, the others name rank 0 when it never answers."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            timeout = "timed out" in str(e).lower() and not _peer_failure(e)
            if world_size() == 1 or not timeout or _PROBE is None or _PROBE[0] is not dist.group.WORLD:
                raise
            raise _hung_rank_error(fn.__name__, e) from e
    return wrapper


def _hung_rank_error(what: str, e: BaseException) -> HungRankError:
    r, W = rank(), world_size()
    head = f"rank {r} of {W}: {what} timed out ({str(e).splitlines()[0][:160]})"
    hint = ("(blocked in a scorer, in I/O or in a deadlock), not this rank. Look at its stack (e.g. py-spy dump --pid), "
            "or raise the timeout (--timeout / FDPG_DIST_TIMEOUT_S) if it is only slow")
    t0 = time.monotonic()
    try:
        dist.monitored_barrier(group=_PROBE[1], timeout=timedelta(seconds=HUNG_PROBE_S), wait_all_ranks=True)
    except RuntimeError as probe:
        found = re.search(r"Ranks? ([\d, ]+) failed to pass monitoredBarrier", str(probe))
        if r == 0 and found:
            hung = [int(x) for x in found.group(1).replace(" ", "").split(",") if x]
            return HungRankError(f"{head}: rank(s) {hung} never reached it, nor a probe barrier in the "
                                 f"{HUNG_PROBE_S:g} s after: hung {hint}", hung)
        if r != 0 and time.monotonic() - t0 >= 0.9 * HUNG_PROBE_S:
            return HungRankError(f"{head}: rank 0 never reached it, nor answered a probe barrier in the "
                                 f"{HUNG_PROBE_S:g} s after: hung {hint}", [0])
        return HungRankError(f"{head}; rank 0 ran the probe for hung ranks and names them in its error", None)
    return HungRankError(f"{head}; every rank answered a probe barrier right after, so no rank is hung: the "
                         "collective was slow (raise --timeout / FDPG_DIST_TIMEOUT_S) or the network failed", [])


def rank_seed(seed: int, rank: int) -> int:
    """Seed of rank `rank`'s sampling generator: seed + 1000·rank (rank 0 keeps the single-process seed)."""
    return int(seed) + RANK_SEED_STRIDE * int(rank)


def world_size() -> int:
    """Number of processes in the default group (1 when torch.distributed is not initialised)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's rank in the default group (0 when torch.distributed is not initialised)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    """True on the process that writes files (rank 0) and in a plain single process."""
    return rank() == 0


def launched() -> bool:
    """True inside a multi-process launch (torchrun sets WORLD_SIZE > 1) or an initialised group of > 1."""
    return world_size() > 1 or int(os.environ.get("WORLD_SIZE", "1")) > 1


def local_device(device, *, keep_index: bool = False) -> torch.device:
    """The device of this process: under a launcher a CUDA device becomes cuda:LOCAL_RANK (one GPU per process),
    unless keep_index (an index the user wrote explicitly). Anything else is returned unchanged."""
    device = torch.device(device)
    if device.type == "cuda" and launched() and not keep_index:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def init_distributed(device=None, *, backend: str | None = None, timeout_s: float | None = None) -> tuple[int, int]:
    """Join the process group torchrun describes (env://: RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT); returns
    (rank, world_size). A no-op returning (0, 1) in a plain process, and (rank, W) if a group already exists.

    backend: 'gloo' (CPU) or 'nccl' (CUDA); None chooses by `device` ('nccl' for a CUDA device, else 'gloo').
    timeout_s: collective timeout; None = env FDPG_DIST_TIMEOUT_S, else DEFAULT_TIMEOUT_S.
    """
    if dist.is_available() and dist.is_initialized():
        _probe_group()
        return dist.get_rank(), dist.get_world_size()
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1
    if not dist.is_available():
        raise RuntimeError("init_distributed: WORLD_SIZE > 1 but this torch build has no torch.distributed")
    device = torch.device("cpu" if device is None else device)
    backend = backend or ("nccl" if device.type == "cuda" else "gloo")
    if backend not in ("gloo", "nccl"):
        raise ValueError(f"init_distributed: backend={backend!r}; allowed: 'gloo' (CPU), 'nccl' (CUDA), None")
    if backend == "nccl" and device.type != "cuda":
        raise ValueError(f"init_distributed: backend 'nccl' needs a CUDA device, got device={device}; use 'gloo'")
    if device.type == "cuda":
        torch.cuda.set_device(local_device(device))  # object collectives and NCCL use the current device
    if timeout_s is None:
        timeout_s = float(os.environ.get("FDPG_DIST_TIMEOUT_S", DEFAULT_TIMEOUT_S))
    if not timeout_s > 0:
        raise ValueError(f"init_distributed: timeout_s={timeout_s!r}; allowed: a number of seconds > 0")
    dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    _probe_group()
    return dist.get_rank(), dist.get_world_size()


def check_backend(device: torch.device) -> None:
    """ValueError when the initialised group cannot move tensors of `device` (NCCL with CPU tensors)."""
    if world_size() > 1 and dist.get_backend() == "nccl" and torch.device(device).type != "cuda":
        raise ValueError(f"train: the process group uses NCCL but the device is {device}; NCCL needs CUDA "
                         "tensors (allowed: device='cuda' with nccl, or a gloo group on CPU)")


# ------------------------------------------------------------------------------------------ collectives
@_names_hung_ranks
def gather_rows(*tensors: Tensor) -> list[Tensor]:
    """Each tensor's rows concatenated over ranks in rank order: (n, ...) per rank → (W·n, ...) on every rank.

    All tensors share n and the device. One all_gather: the columns are packed into an (n, K) float64 matrix,
    which holds fp32/fp16/bf16 values, bools and integers below 2⁵³ exactly; the dtypes are restored.
    """
    W = world_size()
    if W == 1 or not tensors:
        return list(tensors)
    n = tensors[0].shape[0]
    if any(t.shape[0] != n for t in tensors):
        raise ValueError(f"gather_rows: tensors must share their first dim; got {[tuple(t.shape) for t in tensors]}")
    cols = [t.detach().reshape(n, -1).to(torch.float64) for t in tensors]  # each (n, k_i)
    widths = [c.shape[1] for c in cols]
    packed = torch.cat(cols, 1).contiguous()  # (n, K)
    parts = [torch.empty_like(packed) for _ in range(W)]
    dist.all_gather(parts, packed)
    full = torch.cat(parts, 0)  # (W·n, K), rank 0's rows first
    return [c.reshape(W * n, *t.shape[1:]).to(t.dtype) for c, t in zip(full.split(widths, 1), tensors)]


@_names_hung_ranks
def all_reduce_grads(params: Sequence[Tensor], n_bad: int = 0, *, bucket_bytes: int = 1 << 26) -> int:
    """SUM p.grad over ranks, in place; returns the number of ranks that reported a failure (n_bad summed).

    The caller's per-rank loss already carries the 1/n of the GLOBAL batch, so the sum is the global-batch
    mean gradient (DDP's all-reduce would divide by W). A grad that is None on a rank counts as zero; it stays
    None only where it is None on every rank (as in one process, Adam then skips that parameter).
    When any rank reports a failure the gradients are left unreduced (the caller raises).
    """
    if world_size() == 1:
        return int(n_bad)
    params = list(params)
    dev = params[0].device
    flags = torch.tensor([float(p.grad is not None) for p in params] + [float(n_bad)], dtype=torch.float64,
                         device=dev)  # (P + 1,)
    dist.all_reduce(flags)
    n_bad_all = int(flags[-1].item())
    if n_bad_all:
        return n_bad_all
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    bucket: list[Tensor] = []

    def flush():
        if not bucket:
            return
        flat = torch.cat([g.reshape(-1) for g in bucket])  # (Σ numel,) one dtype
        dist.all_reduce(flat)
        for g, v in zip(bucket, flat.split([g.numel() for g in bucket])):
            g.copy_(v.view_as(g))
        bucket.clear()

    size = 0
    for g in grads:
        nbytes = g.numel() * g.element_size()
        if bucket and (g.dtype != bucket[0].dtype or g.device != bucket[0].device or size + nbytes > bucket_bytes):
            flush()
            size = 0
        bucket.append(g)
        size += nbytes
    flush()
    for p, g, has in zip(params, grads, flags[:-1].tolist()):
        p.grad = g if has > 0 else None
    return 0


@_names_hung_ranks
def broadcast_module(module: torch.nn.Module, src: int = 0) -> None:
    """Copy rank `src`'s parameters and buffers into every rank's module (as DDP does at construction)."""
    if world_size() == 1:
        return
    with torch.no_grad():
        for t in itertools.chain(module.parameters(), module.buffers()):
            dist.broadcast(t.data, src)


@_names_hung_ranks
def broadcast_object(obj, src: int = 0):
    """Rank `src`'s picklable object on every rank."""
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


@_names_hung_ranks
def gather_objects(obj, dst: int = 0) -> list | None:
    """[obj of rank 0, …, obj of rank W−1] on rank `dst`, None elsewhere."""
    if world_size() == 1:
        return [obj]
    out = [None] * world_size() if rank() == dst else None
    dist.gather_object(obj, out, dst=dst)
    return out


@_names_hung_ranks
def all_gather_objects(obj) -> list:
    """[obj of rank 0, …, obj of rank W−1] on every rank."""
    if world_size() == 1:
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def _peer_failure(e: BaseException) -> bool:
    """A collective that failed because another rank is gone (gloo: connection reset/closed; NCCL: DistError)."""
    return isinstance(e, dist.DistError) or any(s in str(e) for s in ("Connection reset by peer",
                                                                       "Connection closed by peer", "Broken pipe"))
