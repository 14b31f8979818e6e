"""The f-DPG training loop (Algorithm 1 of the paper; docs/METHOD.md). Its settings: `FDPGConfig` (config.py); its
files and the returned `History`: checkpoint.py.

    π_θ ← a;  Ẑ_c ← running mean;  B ← moving average of f′
    for each step:
      1. x_i ~ q(·|c_i)  (q = π_θ online, or a frozen proposal offline), pure ancestral sampling
      2. log P(x_i) from the target;  Ẑ_c ← cumulative mean of P/q over every sample of context c so far
      3. f′_i = f′(π_θ(x_i) Ẑ_c / P(x_i))  (the pseudo-reward is R_i = −f′_i)
      4. θ ← θ − α Adam[(1/N) Σ_i (π_θ/q)(x_i) (f′_i − B) ∇_θ log π_θ(x_i)]   (one step per batch)
      5. B ← moving average of the batch mean of f′;  offline: q ← π_θ if KL̂(p‖π_θ) < KL̂(p‖q)

Decisions (docs/METHOD.md gives the reasons; the field docs of `FDPGConfig` the settings):
  * Ẑ: per context c, log S_c = logsumexp of log P − log q over every sample of c since step 0 and a count n_c;
    log Ẑ_c = log S_c − log n_c, updated with the current batch BEFORE the loss. Rows whose context still has
    Ẑ_c = 0 take no part in the update; a batch with no other row is skipped (`train/skipped_steps`).
  * The baseline B, in units of f′, is built from PREVIOUS steps only ('ema', 'window', 'none'), from the
    self-normalised batch mean Σ w f′ / Σ w (w = π/q; 1 online).
  * grad_accum: the whole batch is sampled at once; micro-batch j contributes fdpg_loss(micro_j) · n_j / n, so the
    summed gradient is the full-batch one.
  * The policy runs in eval mode (no dropout): the gradient theorem needs log π_θ of the distribution sampled from.
  * Offline: q = a frozen copy of π_θ; with each step's samples and Ẑ, q ← π_θ (θ before the update) when the
    importance-sampled KL(p‖π_θ) is below KL(p‖q). precision='bf16' (fast/precision.py) samples from a copy q
    with bf16 products under autocast and weights every sample by π_θ/q in the same way; train/ess is their ESS.
  * A non-finite log q, log P, log a, log π, pseudo-reward, loss or gradient raises `NonFiniteLossError` naming
    the step and the value (a target's factor by its name) before any state of that step (Ẑ, baseline, parameters,
    optimiser) is updated or saved; the last checkpoint on disk is left untouched. `max_consecutive_skips` steps
    in a row with no target mass raise `ZeroTargetMassError` with the measured base rate.
  * Several processes (torchrun; distributed.py, docs/DISTRIBUTED.md): every rank computes the one-process step on
    the global batch from all-gathered per-sample scalars and summed gradients; rank 0 alone writes files.
"""
from __future__ import annotations

import contextlib
import copy
import math
import os
import time
from typing import Callable, Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from fdpg_core import distributed as dist_
from fdpg_core.checkpoint import CHECKPOINT_NAME, HISTORY_NAME, History, RunFiles
from fdpg_core.config import FDPGConfig
from fdpg_core.divergences import Divergence, get_divergence
from fdpg_core.estimators import ess, is_divergence, kl_pi_a, sequence_entropy
from fdpg_core.losses import NonFiniteLossError, fdpg_loss, pseudo_reward
from fdpg_core.fast.precision import MixedPrecision, check_policy_dtype
from fdpg_core.sampling import Samples, _vocab_size, decode, sample, score
from fdpg_core.targets import Scored, Target, _eval_mode

__all__ = ["FDPGConfig", "History", "NonFiniteLossError", "ZeroTargetMassError", "train", "CHECKPOINT_NAME",
           "HISTORY_NAME"]


class ZeroTargetMassError(RuntimeError):
    """Training stopped after `FDPGConfig.max_consecutive_skips` steps in a row were skipped because no sample of
    their contexts had P(x) > 0 (the history and the checkpoint up to that step are kept)."""


# ------------------------------------------------------------------------------------------ helpers
def _layout(cfg: FDPGConfig, C: int, rank: int, W: int) -> tuple[int, int, int, int]:
    """The batch's rows: (rows per context n_per, contexts per batch m, rows of this rank B_loc, its first global
    row lo); this rank samples the global rows [lo, lo + B_loc)."""
    B, k = cfg.batch_size, cfg.grad_accum
    if B % (W * k):
        raise ValueError(f"train: batch_size={B} is the global batch and must be divisible by world_size · grad_accum "
                         f"= {W} · {k} = {W * k} (each of the {W} processes samples batch_size / {W} rows in {k} "
                         f"micro-batch(es)); allowed: a multiple of {W * k}")
    n_per = cfg.samples_per_context or (B // C if B % C == 0 else 1)  # rows per context
    return n_per, B // n_per, B // W, rank * (B // W)


def _adam(cfg: FDPGConfig, params: list[Tensor]):
    """Adam and its schedule: lr · min(1, (u + 1) / warmup_steps) at update u (constant lr when warmup_steps = 0).
    The fused kernel on CPU and CUDA: the default Adam's update rounded differently, 0.14 s vs 0.57 s on 124M params."""
    fused = all(p.device.type in ("cpu", "cuda") for p in params) or None
    optimizer = torch.optim.Adam(params, lr=cfg.lr, betas=cfg.adam_betas, eps=cfg.adam_eps, fused=fused)
    warm = cfg.warmup_steps
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda u: min(1.0, (u + 1) / warm) if warm else 1.0)


def _initial_state(cfg: FDPGConfig, C: int, device) -> dict:
    """The state a checkpoint saves: step, per-context log S_c and n_c (C,), the baseline, the counters."""
    return {"step": 0, "log_S": torch.full((C,), -math.inf, dtype=torch.float64, device=device),
            "count": torch.zeros(C, dtype=torch.float64, device=device),
            "b_ema": torch.zeros((), dtype=torch.float64, device=device), "b_n": 0,
            "b_buf": torch.zeros(cfg.baseline_window, dtype=torch.float64, device=device),
            "samples_seen": 0, "skipped": 0, "replaced": 0}


def _update_log_S(log_S: Tensor, count: Tensor, rows: Tensor, log_r: Tensor) -> tuple[Tensor, Tensor]:
    """Per-context cumulative log Σ P/q and counts: log S_c ← logaddexp(log S_c, logsumexp_{i: c_i=c} log r_i)."""
    C = log_S.numel()
    log_r = log_r.to(log_S)  # (B,) log P − log q, float64
    m = torch.full((C,), -math.inf, dtype=log_S.dtype, device=log_S.device)
    m = m.scatter_reduce(0, rows, log_r, "amax")  # (C,) per-context max
    m_safe = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    s = torch.zeros_like(m).index_add(0, rows, torch.exp(log_r - m_safe[rows]))  # (C,) Σ exp(log r − max)
    batch_lse = m_safe + torch.log(s)  # (C,), −inf where no mass
    return torch.logaddexp(log_S, batch_lse), count + torch.bincount(rows, minlength=C).to(count)


def _baseline_value(cfg: FDPGConfig, st: dict) -> Tensor:
    """B from previous steps' batch means of f′ (0-d float64)."""
    if cfg.baseline == "ema":
        return st["b_ema"]
    if cfg.baseline == "window":
        n = int(min(st["b_n"], cfg.baseline_window))
        return st["b_buf"][:n].mean() if n else torch.zeros_like(st["b_ema"])
    return torch.zeros_like(st["b_ema"])


def _baseline_update(cfg: FDPGConfig, st: dict, fp_mean: Tensor) -> None:
    fp_mean = fp_mean.detach().to(st["b_ema"])
    if cfg.baseline == "ema":  # first observation initialises the EMA
        d = cfg.baseline_ema if st["b_n"] > 0 else 0.0
        st["b_ema"] = d * st["b_ema"] + (1 - d) * fp_mean
    elif cfg.baseline == "window":
        st["b_buf"][st["b_n"] % cfg.baseline_window] = fp_mean  # ring buffer
    st["b_n"] += 1


def _score_target(target: Target, samples: Samples, k: int, device) -> Scored:
    """target.score in k row chunks (memory), concatenated on `device`."""
    B = len(samples)
    parts = [target.score(samples.index(slice(j * B // k, (j + 1) * B // k))) for j in range(k)]
    feats = {n: torch.cat([p.features[n].to(device) for p in parts]) for n in parts[0].features}
    return Scored(log_a=torch.cat([p.log_a.to(device) for p in parts]),
                  log_P=torch.cat([p.log_P.to(device) for p in parts]), features=feats)


def _gather_scored(log_q: Tensor, scored: Scored) -> tuple[Tensor, Scored]:
    """log q and the target's per-sample values of every rank, in global row order (identity in one process)."""
    names = list(scored.features)
    log_q, log_a, log_P, *feats = dist_.gather_rows(log_q, scored.log_a, scored.log_P,
                                                     *(scored.features[n] for n in names))
    return log_q, Scored(log_a=log_a, log_P=log_P, features=dict(zip(names, feats)))


def _snis_mean(x: Tensor, log_w: Tensor | None) -> Tensor:
    """E_π[x] ≈ Σ w x / Σ w with w = π/q (plain mean on-policy)."""
    x = x.to(torch.float64)
    if log_w is None:
        return x.mean()
    return (torch.softmax(log_w.to(torch.float64), 0) * x).sum()  # weights (B,), Σ = 1


def _resolve_ids(cfg: FDPGConfig, policy, tokenizer) -> tuple[int | None, int]:
    eos, eos_from = cfg.eos_token_id, "config.eos_token_id"
    if eos is None and tokenizer is not None:
        eos, eos_from = getattr(tokenizer, "eos_token_id", None), "tokenizer.eos_token_id"
    if eos is None:
        eos, eos_from = getattr(getattr(policy, "config", None), "eos_token_id", None), "policy.config.eos_token_id"
        eos = eos[0] if isinstance(eos, (list, tuple)) else eos
    pad, pad_from = cfg.pad_token_id, "config.pad_token_id"
    if pad is None and tokenizer is not None:
        pad, pad_from = getattr(tokenizer, "pad_token_id", None), "tokenizer.pad_token_id"
    if pad is None:
        pad, pad_from = eos, f"the EOS id, {eos_from}"
    if pad is None:
        raise ValueError("train: no pad token id (config.pad_token_id, tokenizer.pad_token_id and the EOS id are "
                         "all None); set FDPGConfig.pad_token_id")
    try:
        V = _vocab_size(policy)
    except (AttributeError, TypeError):  # not an HF model: sample() checks the ids
        return eos, pad
    for name, value, src in (("eos_token_id", eos, eos_from), ("pad_token_id", pad, pad_from)):
        if value is not None and not (isinstance(value, int) and not isinstance(value, bool) and 0 <= value < V):
            raise ValueError(f"train: {name}={value!r} (from {src}) is outside the policy's vocabulary; allowed: an "
                             f"int in [0, {V}). Set FDPGConfig({name}=...) to an id of the policy's tokenizer")
    return eos, pad


def _resolve_device(cfg: FDPGConfig, policy) -> torch.device:
    """config.device (checked to exist on this machine), else the policy's device."""
    if cfg.device is None:
        p = next(policy.parameters(), None)
        return torch.device("cpu") if p is None else p.device
    device = torch.device(cfg.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"train: device={cfg.device!r} but CUDA is not available here (torch {torch.__version__}: "
                         "torch.cuda.is_available() is False); allowed: 'cpu', or None for the policy's device")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"train: device={cfg.device!r} but this machine has {torch.cuda.device_count()} CUDA "
                         f"device(s); allowed: 'cuda', or 'cuda:i' with i in [0, {torch.cuda.device_count()})")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"train: device={cfg.device!r} but MPS is not available here; allowed: 'cpu', or None")
    return device


def _prompts(prompts, device) -> tuple[Tensor, Tensor]:
    """train()'s `prompts` checked and moved to `device`: prompt_ids (C, Tp), prompt_mask (C, Tp)."""
    if not (isinstance(prompts, (tuple, list)) and len(prompts) == 2):
        raise ValueError("train: prompts must be a pair (prompt_ids (C, Tp), prompt_mask (C, Tp))")
    prompt_ids, prompt_mask = (torch.as_tensor(p).to(device) for p in prompts)
    if prompt_ids.dim() != 2 or prompt_ids.shape != prompt_mask.shape:
        raise ValueError(f"train: prompt_ids and prompt_mask must both be (C, Tp); got {tuple(prompt_ids.shape)} "
                         f"and {tuple(prompt_mask.shape)}")
    if prompt_ids.shape[0] == 0 or prompt_ids.shape[1] == 0:
        raise ValueError(f"train: prompt_ids has shape {tuple(prompt_ids.shape)}; allowed: (C, Tp) with C >= 1 "
                         "contexts of Tp >= 1 tokens (bos_prompts(1, bos_id) for an unconditional target)")
    return prompt_ids, prompt_mask


def _trainable(policy: torch.nn.Module) -> list[Tensor]:
    """The parameters Adam updates; a policy with none (frozen) raises."""
    params = [p for p in policy.parameters() if p.requires_grad]
    if not params:
        n = sum(1 for _ in policy.parameters())
        raise ValueError(f"train: the policy has no trainable parameter ({n} parameter tensor(s), none with "
                         "requires_grad=True); call policy.requires_grad_(True) (or unfreeze the layers to train)")
    return params


def _non_finite_inputs(log_q: Tensor, scored: Scored, cfg: FDPGConfig, online: bool, W: int) -> str | None:
    """Why this batch cannot update Ẑ, or None: log q must be finite (a drawn sample has q(x) > 0), log P and log a
    must not be NaN or +inf (−inf = zero mass). One host sync. With W processes, names the rank whose rows hold
    the first bad value (rank r holds rows [r·B/W, (r+1)·B/W) of the gathered columns)."""
    bad_q = ~torch.isfinite(log_q)  # (B,)
    bad_P = torch.isnan(scored.log_P) | (scored.log_P == math.inf)
    bad_a = torch.isnan(scored.log_a) | (scored.log_a == math.inf)
    n_q, n_P, n_a = torch.stack([bad_q.sum(), bad_P.sum(), bad_a.sum()]).tolist()
    if not (n_q or n_P or n_a):
        return None
    B = log_q.numel()
    bad = bad_q if n_q else (bad_P if n_P else bad_a)
    where = f" (first on rank {int(bad.nonzero()[0, 0]) // (B // W)} of {W})" if W > 1 else ""
    if n_q:
        who = (f"the policy (q = π_θ online): its parameters may have diverged (lr={cfg.lr:g}); lower lr or set "
               "max_grad_norm") if online else "the proposal q: check the proposal model"
        return (f"log q of the samples is not finite on {int(n_q)} of {B} samples{where} (e.g. "
                f"{log_q[bad_q][0].item()}); a drawn sample has a finite log q. Check the sampler (a custom sampler "
                f"must return each sample's log q) and {who}")
    if n_P:
        return (f"the target returned log P = NaN or +inf on {int(n_P)} of {B} samples{where}; allowed: finite or "
                "-inf (zero mass). Check the target's scorers")
    return (f"the target returned log a = NaN or +inf on {int(n_a)} of {B} samples{where} (KL(π‖a) would be "
            "meaningless); allowed: finite or -inf. Check the target's base model a")


def _bad_reward_message(div: Divergence, log_pi: Tensor, log_P: Tensor) -> str:
    """Why −f′ is not finite on a micro-batch: a non-finite log π (a diverged policy), or log P = −inf for a
    divergence whose f′ is infinite there."""
    bad_pi = ~torch.isfinite(log_pi)
    if bad_pi.any():
        return (f"log π_θ of the samples is not finite on {int(bad_pi.sum())} of {log_pi.numel()} samples (e.g. "
                f"{log_pi[bad_pi][0].item()}): the policy's outputs are NaN or infinite, its parameters may have "
                "diverged; lower lr or set max_grad_norm")
    return (f"non-finite pseudo-reward −f′ for divergence {div.name!r} (log P = −inf "
            f"on {int((log_P == -math.inf).sum())} samples; reverse KL needs a finite log_b "
            "floor, e.g. BinaryFactor(..., log_floor=-10), or use kl/js/tv)")


def _bad_loss_message(loss: Tensor, log_pi: Tensor, log_q: Tensor, online: bool) -> str:
    msg = f"non-finite loss {loss.item()}"
    if not online:
        m = (log_pi.detach() - log_q.to(log_pi.dtype)).max().item()
        msg += (f" (the largest log importance weight log π_θ/q is {m:.4g}: π_θ has moved far from the proposal q; "
                "lower lr or set max_grad_norm)")
    return msg


def _skip(cfg: FDPGConfig, st: dict, step: int, rec: dict, files: RunFiles) -> None:
    """A step whose batch has no row with Ẑ_c > 0 (zero target mass so far): no update; its record and the checkpoint
    when due, then ZeroTargetMassError after config.max_consecutive_skips such steps in a row."""
    st["skipped"] += 1
    rec.update({"train/skipped_steps": st["skipped"], "train/samples_seen": st["samples_seen"], "train/skipped": 1})
    files.emit(rec)
    files.after_step(step, st)  # the checkpoint, when due
    st["skips_in_a_row"] = st.get("skips_in_a_row", 0) + 1
    K, n, B = cfg.max_consecutive_skips, st["skips_in_a_row"], cfg.batch_size
    if K is not None and n >= K:
        raise ZeroTargetMassError(
            f"f-DPG stopped at step {step}: {n} steps in a row were skipped because no sample of their contexts has "
            f"P(x) > 0 yet (measured base rate of P(x) > 0: 0 of the last {n * B} samples, below {1 / (n * B):.2g}). "
            "Allowed fixes: a finite floor on the constraint (BinaryFactor(..., log_floor=-10)), a proposal that "
            "reaches the target (proposal='offline' with train(..., proposal=q)), more samples per step "
            "(batch_size), or FDPGConfig(max_consecutive_skips=None) to go on. The history and checkpoints up to "
            "this step are kept")


# ----------------------------------------------------------------------------------- the steps of train()
def _micro_batch_loss(policy, samples: Samples, prec: MixedPrecision, div: Divergence, batch: dict, k: int, lo: int,
                      b_used: Tensor, q_is_pi: bool, online: bool) -> tuple[str | None, Tensor, Tensor]:
    """Step 4 on this rank's rows: backward of Σ_j fdpg_loss(micro_j)·n_j/n over the k micro-batches (n = global valid
    rows; summed over ranks = the full-batch mean). Returns (the first failure message or None, detached log π_θ
    (B_loc,), the summed loss (0-d float64))."""
    B_loc = len(samples)
    log_q, log_P, log_Z_rows, valid = batch["log_q"], batch["log_P"], batch["log_Z_rows"], batch["valid"]
    log_pi = torch.zeros(B_loc, dtype=log_q.dtype, device=log_q.device)  # (B_loc,) detached log π_θ
    loss_sum = torch.zeros((), dtype=torch.float64, device=log_q.device)
    mb = B_loc // k
    for j in range(k):
        if batch["n_valid_micro"][j] == 0:
            continue
        sl = slice(j * mb, (j + 1) * mb)  # local rows
        sg = slice(lo + j * mb, lo + (j + 1) * mb)  # the same rows in the global batch
        with prec.autocast():
            lp = score(policy, samples.index(sl))  # (mb,) log π_θ, differentiable
        lP, lZ, lq = log_P[sg], log_Z_rows[sg], log_q[sg]
        if batch["n_valid_micro"][j] < mb:  # drop rows of contexts with Ẑ_c = 0
            v = valid[sg]
            lp_v, lP, lZ, lq = lp[v], lP[v], lZ[v], lq[v]
        else:
            lp_v = lp
        fp = -pseudo_reward(lp_v.detach(), lP, lZ, div)  # f′(t) (n_j,)
        if not torch.isfinite(fp).all():
            return _bad_reward_message(div, lp_v.detach(), lP), log_pi, loss_sum
        loss = fdpg_loss(lp_v, lP, lZ, div, log_q=None if q_is_pi else lq, baseline=b_used)
        loss = loss * (batch["n_valid_micro"][j] / batch["n_valid"])  # micro-batch weight n_j / n
        if not torch.isfinite(loss):
            return _bad_loss_message(loss, lp_v, lq, online), log_pi, loss_sum
        loss.backward()
        loss_sum += loss.detach()
        log_pi[sl] = lp.detach()
    return None, log_pi, loss_sum


def _valid_rows(batch: dict, log_pi: Tensor, scored: Scored, div: Divergence, q_is_pi: bool) -> dict:
    """Step 5: the per-row values of the valid rows (θ before the update), log π/q, log p = log P − log Ẑ_c, f′ and
    its self-normalised batch mean."""
    valid, log_P, log_Z_rows, log_q = batch["valid"], batch["log_P"], batch["log_Z_rows"], batch["log_q"]  # (B,)
    if batch["n_valid"] < valid.numel():
        lp_v, lP_v, lZ_v, lq_v = log_pi[valid], log_P[valid], log_Z_rows[valid], log_q[valid]
        la_v, feats = scored.log_a[valid], {n: f[valid] for n, f in scored.features.items()}
    else:
        lp_v, lP_v, lZ_v, lq_v, la_v, feats = log_pi, log_P, log_Z_rows, log_q, scored.log_a, scored.features
    log_w = None if q_is_pi else lp_v - lq_v  # log π/q (n,)
    lp_norm = (lP_v.double() - lZ_v).to(lp_v.dtype)  # log p = log P − log Ẑ_c (per row)
    fp_all = -pseudo_reward(lp_v, lP_v, lZ_v, div)  # (n,) f′
    return dict(lp=lp_v, lP=lP_v, lq=lq_v, la=la_v, feats=feats, log_w=log_w, lp_norm=lp_norm,
                fp_mean=_snis_mean(fp_all, log_w))


def _offline_swap(v: dict, policy, proposal, st: dict) -> tuple[bool, Tensor]:
    """Step 6: q ← π_θ (θ before this update) when KL̂(p‖π_θ) < KL̂(p‖q) on the same proposal samples. Returns
    (replaced, KL̂(p‖q))."""
    kl_p_pi = is_divergence("kl", v["lp"], v["lp_norm"], v["lq"], 0.0)
    kl_p_q = is_divergence("kl", v["lq"], v["lp_norm"], v["lq"], 0.0)
    if bool(kl_p_pi < kl_p_q):
        proposal.load_state_dict(policy.state_dict())  # θ before this update
        st["replaced"] += 1
        return True, kl_p_q
    return False, kl_p_q


def _metrics(v: dict, s: dict, st: dict, q_is_pi: bool, online: bool, device) -> dict:
    """Step 8: the record of a logged step: the batch metrics as floats (one host transfer), then the step's
    scalars `s` (loss, baseline, grad_norm, log_Z_ctx, lr, kl_p_q, replaced, t0) and the counters of `st`."""
    lp, lq, lp_norm, log_w = v["lp"], v["lq"], v["lp_norm"], v["log_w"]
    vals = {"train/loss": s["loss"], "train/baseline": s["baseline"], "train/grad_norm": s["grad_norm"],
            "train/pseudo_reward": -v["fp_mean"],
            "target/log_Z": s["log_Z_ctx"][torch.isfinite(s["log_Z_ctx"])].mean(),
            "z/ess": ess(v["lP"].double() - lq.double(), fraction=True),
            "div/kl_p_pi": is_divergence("kl", lp, lp_norm, lq, 0.0),
            "div/tv_p_pi": is_divergence("tv", lp, lp_norm, lq, 0.0),
            "div/js_p_pi": is_divergence("js", lp, lp_norm, lq, 0.0),
            "div/kl_pi_a": kl_pi_a(lp, v["la"], None if q_is_pi else lq),
            "entropy/seq": sequence_entropy(lp) if q_is_pi else _snis_mean(-lp, log_w),
            "train/ess": torch.ones((), dtype=torch.float64, device=device) if q_is_pi else ess(log_w, fraction=True)}
    vals.update({f"align/{n}": _snis_mean(f, log_w) for n, f in v["feats"].items()})
    if not online:
        vals.update({"proposal/ess": ess(log_w, fraction=True), "proposal/kl_p_q": s["kl_p_q"]})
    floats = torch.stack([x.to(device=device, dtype=torch.float64) for x in vals.values()]).tolist()
    rec = dict(zip(vals.keys(), floats))
    rec.update({"train/lr": s["lr"], "train/samples_seen": st["samples_seen"], "train/skipped_steps": st["skipped"],
                "time/step_s": time.perf_counter() - s["t0"]})
    if not online:
        rec.update({"proposal/replaced": st["replaced"], "proposal/replaced_now": int(s["replaced"])})
    return rec


def _stop(step: int, what: str, optimizer, files: RunFiles) -> NonFiniteLossError:
    """The error that stops a step before any update, saying what is left on disk."""
    optimizer.zero_grad(set_to_none=True)
    path = files.ckpt_path
    where = (f"the last checkpoint {path!r} is kept" if path and os.path.exists(path)
             else "no checkpoint was written" + ("" if path else " (out_dir=None)"))
    return NonFiniteLossError(f"f-DPG stopped at step {step}: {what}. No update was applied at this step "
                              f"(the policy holds the parameters before step {step}); {where}.")


# --------------------------------------------------------------------------------------------- train
def train(policy: torch.nn.Module, target: Target, prompts: tuple[Tensor, Tensor], config: FDPGConfig | dict, *,
          tokenizer=None, metrics_fn: Callable | None = None, callbacks: Sequence[Callable] = (),
          proposal: torch.nn.Module | None = None, resume: bool = False,
          sampler: Callable | None = None) -> History:
    """Train `policy` towards `target` by f-DPG (Algorithm 1); returns the History: the list of metric records, with
    the final running log Ẑ_c (`.log_Z`, (C,)), samples per context (`.count`) and steps done (`.step`).

    prompts: (prompt_ids (C, Tp), prompt_mask (C, Tp)), left padded: one row per context
        (C = 1 with a BOS prompt for unconditional targets, see sampling.bos_prompts).
    tokenizer: if given, samples.texts is filled (sampling.decode) before the target scores them.
    metrics_fn(policy, step) -> dict of floats, merged into the record of `step` (evaluated on the
        parameters before that step's update) every config.eval_every steps, and at the end (step = n_steps).
    callbacks: each called as cb(record, policy) after a record is appended.
    proposal: offline mode only: the initial proposal q (e.g. the base model a when π_θ starts elsewhere);
        default a frozen copy of `policy`. It is copied, never modified.
    resume: continue from out_dir/checkpoint.pt exactly (policy, optimizer, scheduler, Ẑ, baseline, proposal, RNG
        states; several processes: the same world size); the records of history.jsonl at or past the checkpoint's
        step (and a torn last line) are dropped with a warning. Without resume, an out_dir that already holds a
        run raises FileExistsError unless config.overwrite.
    sampler: draws the batch, called like sampling.sample(model, prompt_ids, prompt_mask, max_new_tokens, *,
        eos_token_id, pad_token_id, context_ids, generator) -> Samples (default sampling.sample); it must return
        pure ancestral samples of `model` with their log q. A hook for tests (inject known samples) and for
        sampler options (functools.partial(sample, impl="hf")).
    Several processes (torchrun --nproc_per_node W, or an initialised torch.distributed group): batch_size is
        global (each rank samples batch_size / W rows); metrics_fn runs on every rank (it may use collectives)
        and rank 0's values are recorded; callbacks, files and the progress bar are rank 0's only; the returned
        history is the same on every rank (except time/step_s, rank-local).
    Record keys: step, train/{loss, baseline, lr, grad_norm, pseudo_reward, ess, samples_seen, skipped_steps},
    target/log_Z, z/ess, div/{kl_p_pi, tv_p_pi, js_p_pi, kl_pi_a}, align/<feature>, entropy/seq,
    (offline) proposal/{ess, kl_p_q, replaced}; plus metrics_fn's keys.
    """
    cfg = config if isinstance(config, FDPGConfig) else FDPGConfig.from_dict(config)
    cfg.validate()  # fields may have been changed after construction
    div = get_divergence(cfg.divergence)
    device = _resolve_device(cfg, policy)
    device = dist_.local_device(device, keep_index=cfg.device is not None and device.index is not None)
    rank, W = dist_.init_distributed(device)  # (0, 1) in a plain process; joins torchrun's group otherwise
    dist_.check_backend(device)
    rank0 = rank == 0  # rank 0 alone writes files, runs callbacks and shows the progress bar
    policy.to(device)
    prompt_ids, prompt_mask = _prompts(prompts, device)  # (C, Tp) each
    eos, pad = _resolve_ids(cfg, policy, tokenizer)
    C, B, k = prompt_ids.shape[0], cfg.batch_size, cfg.grad_accum
    n_per, m_ctx, B_loc, lo = _layout(cfg, C, rank, W)  # rows per context, contexts per batch, this rank's rows
    sampler = sample if sampler is None else sampler
    online = cfg.proposal == "online"
    prec = MixedPrecision(cfg.precision, device)  # bf16: samples from a copy q with bf16 products, all under autocast
    q_is_pi = prec.q_is_pi(online)  # importance weights π_θ/q exactly 1 (online fp32)

    # 1. state: optimiser, schedule, Ẑ, baseline, proposal, sampling RNG
    params = _trainable(policy)
    check_policy_dtype(policy)  # float32 / float64 trainable parameters
    optimizer, scheduler = _adam(cfg, params)  # Adam with the linear warm-up
    if proposal is not None and online:
        raise ValueError("train: a proposal model needs config.proposal='offline' (got 'online')")
    dist_.broadcast_module(policy)  # every rank starts from rank 0's θ (as DDP does)
    if not online:  # q = frozen copy of π_θ (or of the given proposal)
        proposal = copy.deepcopy(policy if proposal is None else proposal).to(device).eval().requires_grad_(False)
        dist_.broadcast_module(proposal)
    gen = torch.Generator(device=device)
    gen.manual_seed(dist_.rank_seed(cfg.seed, rank))  # seed + 1000·rank
    st = _initial_state(cfg, C, device)  # step, Ẑ sums and counts, baseline, counters
    files = RunFiles(cfg, resume, rank, W, callbacks, policy=policy, optimizer=optimizer, scheduler=scheduler,
                     proposal=proposal, gen=gen)  # history.jsonl, checkpoint.pt; refuses an out_dir holding a run
    if resume:
        st = files.restore(device)

    start = st["step"]
    pbar = tqdm(range(start, cfg.n_steps), initial=start, total=cfg.n_steps, disable=not (cfg.progress and rank0),
                desc=f"f-DPG[{div.name}]")
    with _eval_mode(policy), contextlib.closing(pbar):  # no dropout: log π_θ must be the sampled distribution's
        for step in pbar:
            t0 = time.perf_counter()
            rec: dict = {"step": step}
            if metrics_fn is not None and ((cfg.eval_every and step % cfg.eval_every == 0) or step == 0):
                rec.update(dist_.broadcast_object(metrics_fn(policy, step)))  # on θ before the update; rank 0's
            log_now = step % cfg.log_every == 0 or step == cfg.n_steps - 1

            # 2. contexts of this batch (n_per rows each, round-robin over the C contexts) and samples x ~ q
            #    of this rank's rows [lo, lo + B_loc) of the global batch
            ctx = (step * m_ctx + torch.arange(m_ctx, device=device)) % C  # (m,)
            rows = ctx.repeat_interleave(n_per)  # (B,) global
            rows_loc = rows[lo:lo + B_loc]  # (B_loc,)
            sampler_model = prec.sampler_model(policy if online else proposal)  # fp32: the model; bf16: its copy
            with prec.autocast():  # bf16: the copy computes under autocast what π_θ computes under it below
                samples = sampler(sampler_model, prompt_ids[rows_loc], prompt_mask[rows_loc], cfg.max_new_tokens,
                                  eos_token_id=eos, pad_token_id=pad, context_ids=rows_loc, generator=gen)
            if tokenizer is not None:
                decode(samples, tokenizer)

            # 3. target: log a, log P, features (local), gathered over ranks; then Ẑ_c (cumulative, BEFORE the loss)
            try:
                scored = _score_target(target, samples, k, device)
            except NonFiniteLossError as e:  # Target.score names the factor
                raise _stop(step, str(e), optimizer, files) from None
            log_q, scored = _gather_scored(samples.log_q, scored)  # (B,) log q(x), no grad; global row order
            msg = _non_finite_inputs(log_q, scored, cfg, online, W)  # checked before Ẑ is updated
            if msg:
                raise _stop(step, msg, optimizer, files)
            st["log_S"], st["count"] = _update_log_S(st["log_S"], st["count"], rows, scored.log_P - log_q)
            log_Z_c = st["log_S"] - torch.log(st["count"])  # (C,) log Ẑ_c (NaN for unseen contexts)
            batch = {"log_q": log_q, "log_P": scored.log_P, "log_Z_rows": log_Z_c[rows]}  # (B,) each
            batch["valid"] = valid = torch.isfinite(batch["log_Z_rows"])  # (B,) rows whose context has Ẑ_c > 0
            n_micro = valid[lo:lo + B_loc].view(k, B_loc // k).sum(1)  # (k,) valid rows of this rank's micro-batches
            batch["n_valid"], *batch["n_valid_micro"] = torch.cat([valid.sum().view(1), n_micro]).tolist()  # 1 sync
            st["samples_seen"] += B
            if batch["n_valid"] == 0:  # zero target mass so far: skip, no update (raises after max_consecutive_skips)
                _skip(cfg, st, step, rec, files)
                continue
            st["skips_in_a_row"] = 0

            # 4. loss over this rank's micro-batches, backward each, then one all-reduce (SUM) of the gradients
            b_used = _baseline_value(cfg, st)  # B from previous steps, in units of f′
            bad, log_pi, loss_sum = _micro_batch_loss(policy, samples, prec, div, batch, k, lo, b_used, q_is_pi, online)
            if dist_.all_reduce_grads(params, bad is not None):  # a failure on any rank stops every rank
                msgs = dist_.all_gather_objects(bad)
                r_bad = next(r for r, m in enumerate(msgs) if m)
                raise _stop(step, msgs[r_bad] + (f" (on rank {r_bad} of {W})" if W > 1 else ""), optimizer, files)
            (log_pi,) = dist_.gather_rows(log_pi)  # (B,) global row order
            loss_sum = dist_.gather_rows(loss_sum.view(1))[0].sum()  # Σ of the ranks' parts (W,)
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm or math.inf)
            if not torch.isfinite(grad_norm):
                raise _stop(step, f"non-finite gradient norm {grad_norm.item()}", optimizer, files)

            # 5. statistics of the valid rows (θ before the update)
            v = _valid_rows(batch, log_pi, scored, div, q_is_pi)

            # 6. offline: q ← π_θ when KL̂(p‖π_θ) < KL̂(p‖q) on the same proposal samples
            replaced, kl_p_q = (False, None) if online else _offline_swap(v, policy, proposal, st)

            # 7. Adam step with warm-up, then the baseline update (uses this batch: valid from the next step on)
            lr_used = optimizer.param_groups[0]["lr"]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            _baseline_update(cfg, st, v["fp_mean"])

            # 8. metrics (one host transfer), history, checkpoint
            if log_now:
                s = dict(loss=loss_sum, baseline=b_used, grad_norm=grad_norm, log_Z_ctx=log_Z_c[ctx], lr=lr_used,
                         kl_p_q=kl_p_q, replaced=replaced, t0=t0)  # this step's scalars
                rec.update(_metrics(v, s, st, q_is_pi, online, device))
                pbar.set_postfix(loss=f"{rec['train/loss']:.3g}", kl_p_pi=f"{rec['div/kl_p_pi']:.3g}", refresh=False)
            if log_now or len(rec) > 1:
                files.emit(rec)
            files.after_step(step, st)  # the checkpoint, when due
    if metrics_fn is not None and start < cfg.n_steps:
        files.emit({"step": cfg.n_steps, **dist_.broadcast_object(metrics_fn(policy, cfg.n_steps))})
    return files.result(st, max(start, cfg.n_steps))
