"""FDPGConfig: the documented settings of `train` (Algorithm 1, docs/METHOD.md), validated on construction and again
by `train`; unknown keys raise ValueError listing the allowed ones."""
from __future__ import annotations

import functools
import math
import os
from dataclasses import asdict, dataclass, fields

import torch

from fdpg_core.divergences import Divergence, get_divergence
from fdpg_core.fast.precision import PRECISIONS

__all__ = ["FDPGConfig"]

_BASELINES = ("ema", "window", "none")
_PROPOSALS = ("online", "offline")
_DEVICE_TYPES = ("cpu", "cuda", "mps", "xpu")
_FLOAT32_MAX = float(torch.finfo(torch.float32).max)


@dataclass
class FDPGConfig:
    """Settings of `train`. Unknown keys raise ValueError listing the allowed ones."""

    divergence: str | Divergence = "js"
    """f-divergence to minimise: a key of divergences.DIVERGENCES (kl, rkl, js, tv, chi2, rchi2, hellinger) or a
    Divergence (e.g. alpha_divergence(0.5)). js is the paper's recommended default."""
    n_steps: int = 1000
    """number of parameter updates (steps), one per batch; resume continues up to this number."""
    batch_size: int = 256
    """samples per update N (PAPER §6: 256 for GPT-2 tasks). With W processes (torchrun) this is the global batch:
    each rank samples batch_size / W rows, so W · grad_accum must divide it."""
    grad_accum: int = 1
    """micro-batches per update and per process (must divide batch_size / W); the update equals the full-batch one."""
    samples_per_context: int | None = None
    """rows per context in a batch (must divide batch_size). None: batch_size // C when C divides batch_size
    (every context in every batch), else 1 (contexts assigned round-robin to rows)."""
    max_new_tokens: int = 40
    """generated tokens per sample (after the prompt)."""
    lr: float = 1.41e-5
    """Adam learning rate after warm-up (> 0)."""
    warmup_steps: int = 100
    """linear warm-up: lr · min(1, (u + 1) / warmup_steps) at update u; 0 = constant lr."""
    adam_betas: tuple[float, float] = (0.9, 0.999)
    """Adam (β1, β2), each in [0, 1)."""
    adam_eps: float = 1e-8
    """Adam ε (> 0)."""
    max_grad_norm: float | None = None
    """clip the gradient's global L2 norm to this value (> 0); None = no clipping (the norm is still logged)."""
    baseline: str = "ema"
    """baseline subtracted from f′: 'ema' (exponential moving average of previous batch means of f′), 'window'
    (mean of the last baseline_window batch means), 'none' (0)."""
    baseline_ema: float = 0.9
    """EMA decay d in [0, 1) for baseline='ema' (B ← d·B + (1−d)·mean f′). 0.9 follows E_π[f′] within ~10 steps
    (a slow 0.99 lagged behind it on the toy and made js collapse: docs/METHOD.md, "The baseline")."""
    baseline_window: int = 100
    """number of previous steps averaged for baseline='window' (≥ 1)."""
    proposal: str = "online"
    """'online': sample from π_θ (q = π_θ, w = 1); 'offline': sample from a frozen copy q of π_θ, importance
    weights π_θ/q, q ← π_θ when the IS estimate of KL(p‖π_θ) falls below that of KL(p‖q)."""
    seed: int = 0
    """seed of the sampling generator (torch.Generator on the device); global RNGs are not seeded. With W processes
    rank r's generator is seeded seed + 1000·r (distributed.rank_seed)."""
    log_every: int = 1
    """compute and append batch metrics to the history every this many steps (≥ 1); the last step is always logged."""
    eval_every: int | None = None
    """call metrics_fn(policy, step) every this many steps (≥ 1); None: at step 0 and at the end only."""
    checkpoint_every: int | None = None
    """write out_dir/checkpoint.pt every this many steps (≥ 1); it is always written at the end. None: end only."""
    out_dir: str | None = None
    """folder for history.jsonl and checkpoint.pt; None = write no files (resume impossible)."""
    device: str | None = None
    """device to train on ('cpu', 'cuda', ...); None = the policy's device. The policy is moved there. Under torchrun
    a CUDA device without an index becomes cuda:LOCAL_RANK (one GPU per process)."""
    eos_token_id: int | None = None
    """EOS id ending a sample; None = tokenizer.eos_token_id, then policy.config.eos_token_id."""
    pad_token_id: int | None = None
    """filler after EOS; None = tokenizer.pad_token_id, then the EOS id."""
    progress: bool = True
    """show a tqdm progress bar."""
    overwrite: bool = False
    """a fresh run (resume=False) into an out_dir that already holds a run (checkpoint.pt, or history.jsonl with
    records) raises unless True; True deletes that run's files when the new run writes its first record."""
    max_consecutive_skips: int | None = 10
    """stop with ZeroTargetMassError after this many steps in a row were skipped (no sample of the batch's contexts
    has P(x) > 0 so far: e.g. a constraint far rarer than 1 / batch_size); None = never stop."""
    precision: str = "fp32"
    """'fp32' (all float32); 'bf16' (x ~ a copy q of π_θ with bf16 products and its exact log q, and log π_θ, both
    under bf16 autocast; each sample weighted by π_θ/q: the same gradient in expectation, ESS logged as train/ess;
    target unchanged); 'auto' (bf16 where the hardware has bf16 matrix units, else fp32). See fast/precision.py."""

    def __post_init__(self):
        bad = []

        def need(ok, name, allowed):
            if not ok:
                bad.append(f"{name}={getattr(self, name)!r} (allowed: {allowed})")

        get_divergence(self.divergence)  # raises ValueError listing the keys

        def is_int(x, lo):
            return isinstance(x, int) and not isinstance(x, bool) and x >= lo

        def is_num(x):
            return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)

        need(is_int(self.n_steps, 0), "n_steps", "int >= 0")
        need(is_int(self.batch_size, 1), "batch_size", "int >= 1")
        need(is_int(self.grad_accum, 1) and is_int(self.batch_size, 1) and self.batch_size % self.grad_accum == 0,
             "grad_accum", "int >= 1 dividing batch_size")
        need(self.samples_per_context is None or (is_int(self.samples_per_context, 1) and is_int(self.batch_size, 1)
                                                  and self.batch_size % self.samples_per_context == 0),
             "samples_per_context", "None or an int >= 1 dividing batch_size")
        need(is_int(self.max_new_tokens, 1), "max_new_tokens", "int >= 1")
        beta1 = self.adam_betas[0] if isinstance(self.adam_betas, (tuple, list)) and self.adam_betas and \
            is_num(self.adam_betas[0]) and 0 <= self.adam_betas[0] < 1 else 0.9
        need(is_num(self.lr) and 0 < self.lr < _FLOAT32_MAX * (1 - beta1), "lr",
             "finite float > 0 whose first Adam step lr / (1 - adam_betas[0]) stays below the float32 maximum 3.4e38")
        need(is_int(self.warmup_steps, 0), "warmup_steps", "int >= 0")
        if isinstance(self.adam_betas, list):
            self.adam_betas = tuple(self.adam_betas)
        need(isinstance(self.adam_betas, tuple) and len(self.adam_betas) == 2
             and all(is_num(b) and 0 <= b < 1 for b in self.adam_betas), "adam_betas", "two floats in [0, 1)")
        need(is_num(self.adam_eps) and self.adam_eps > 0, "adam_eps", "finite float > 0")
        need(self.max_grad_norm is None or (is_num(self.max_grad_norm) and self.max_grad_norm > 0),
             "max_grad_norm", "None or float > 0")
        need(self.baseline in _BASELINES, "baseline", list(_BASELINES))
        need(is_num(self.baseline_ema) and 0 <= self.baseline_ema < 1, "baseline_ema", "float in [0, 1)")
        need(is_int(self.baseline_window, 1), "baseline_window", "int >= 1")
        need(self.proposal in _PROPOSALS, "proposal", list(_PROPOSALS))
        need(is_int(self.seed, 0) and self.seed < 2 ** 63, "seed", "int in [0, 2**63)")
        need(is_int(self.log_every, 1), "log_every", "int >= 1")
        need(self.eval_every is None or is_int(self.eval_every, 1), "eval_every", "None or int >= 1")
        need(self.checkpoint_every is None or is_int(self.checkpoint_every, 1), "checkpoint_every",
             "None or int >= 1")
        need(self.out_dir is None or isinstance(self.out_dir, (str, os.PathLike)), "out_dir", "None or a path")
        need(self.eos_token_id is None or is_int(self.eos_token_id, 0), "eos_token_id", "None or int >= 0")
        need(self.pad_token_id is None or is_int(self.pad_token_id, 0), "pad_token_id", "None or int >= 0")
        need(isinstance(self.progress, bool), "progress", "True or False")
        need(self.device is None or _is_device(self.device), "device",
             f"None (the policy's device) or a torch device of type {list(_DEVICE_TYPES)}, e.g. 'cpu', 'cuda', "
             "'cuda:1'")
        need(isinstance(self.overwrite, bool), "overwrite", "True or False")
        need(self.max_consecutive_skips is None or is_int(self.max_consecutive_skips, 1), "max_consecutive_skips",
             "None or int >= 1")
        need(self.precision in PRECISIONS, "precision", list(PRECISIONS))
        if bad:
            raise ValueError("FDPGConfig: invalid value(s): " + "; ".join(bad))

    def validate(self) -> None:
        """Check every field again (train() calls it, so a field changed after construction is checked too)."""
        self.__post_init__()

    @classmethod
    def from_dict(cls, d: dict) -> "FDPGConfig":
        """Build from a dict (e.g. a notebook's parameters); unknown keys raise ValueError."""
        return cls(**d)

    def to_dict(self) -> dict:
        """Plain, JSON-serialisable dict (the divergence by its name)."""
        d = asdict(self)
        d["divergence"] = get_divergence(self.divergence).name
        d["adam_betas"] = list(self.adam_betas)
        d["out_dir"] = None if self.out_dir is None else str(self.out_dir)
        return d


def _reject_unknown_keys(init):
    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        allowed = [f.name for f in fields(type(self))]
        unknown = sorted(set(kwargs) - set(allowed))
        if unknown:
            raise ValueError(f"FDPGConfig: unknown key(s) {unknown}; allowed keys: {allowed}")
        init(self, *args, **kwargs)
    return __init__


FDPGConfig.__init__ = _reject_unknown_keys(FDPGConfig.__init__)


def _is_device(x) -> bool:
    if not isinstance(x, (str, torch.device)):
        return False
    try:
        return torch.device(x).type in _DEVICE_TYPES
    except RuntimeError:  # e.g. 'gpu'
        return False
