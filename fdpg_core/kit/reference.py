"""Evaluating a policy π against a target p from samples (docs/METHOD.md, "Metrics"), for the experiment notebooks.

Two sources of samples, two kinds of metric:

    ReferenceSample   x_i ~ q fixed once (q = the base a, or p itself when p is a normalised LM), scored under the
                      target: Ẑ = mean_i P/q, the SNIS moments E_p[φ], the ESS, and for any π
                      D_f(π‖p) ≈ (1/N) Σ_i (P/q)(x_i)/Ẑ · f(π Ẑ/P)(x_i)     (is_divergence with q = a).
                      With q = a and p ∝ a·b this is rejection sampling: the rows with b = 1 are exact samples of
                      p, so KL(p‖π) = mean over them of log p − log π. Unlike the on-policy estimate logged by
                      `train` (samples of π only see the part of p that π covers), it sees all of p that a covers.
    policy_metrics    x_i ~ π (fresh, pure ancestral): E_π[feature], KL(π‖a) = E_π[log π − log a], H(π) =
                      −E_π[log π], KL(π‖p) = E_π[log π − log P] + log Z (when Z is given; +inf where P = 0),
                      and the diversity of the texts (`diversity_metrics`).

`ReferenceSample.summary()` keeps what a notebook shows of a sample without its tensors (log Ẑ, ESS, moments, the
features, the first texts) as a `ReferenceSummary`, and `cached_reference` saves it as an evaluation record
(results.save_record) and hands it back on the next run instead of drawing the sample again, unless a run still
has to be trained (training needs the sample itself).

`metrics_fn(...)` combines both into the callable `train(..., metrics_fn=...)` evaluates every `eval_every` steps.
Everything runs under no_grad in eval mode; seeded generators make every number reproducible on a CPU.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor

from fdpg_core import sampling
from fdpg_core.divergences import get_divergence
from fdpg_core.kit.diversity import distinct_n, self_bleu
from fdpg_core.estimators import ess, is_divergence, log_Z_hat
from fdpg_core.targets import Target, _eval_mode

__all__ = ["ReferenceSample", "ReferenceSummary", "cached_reference", "sample_policy", "score_policy",
           "policy_metrics", "diversity_metrics", "two_sample_js_tv", "metrics_fn"]

DISTINCT_N = (1, 2, 3)
SELF_BLEU_N = (3, 4, 5)


# ----------------------------------------------------------------------------------------------- sampling helpers
def sample_policy(model, prompts: tuple[Tensor, Tensor], n: int, max_new_tokens: int, *, tokenizer, seed: int,
                  chunk: int = 256, eos_token_id: int | None = None, pad_token_id: int | None = None) -> sampling.Samples:
    """n pure ancestral samples per prompt row of `model` (log_q = log model(x)), drawn in chunks, decoded when a
    tokenizer is given (EOS / pad ids from it unless passed explicitly)."""
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"sample_policy: n={n!r}; allowed: an int >= 1")
    eos = tokenizer.eos_token_id if eos_token_id is None and tokenizer is not None else eos_token_id
    pad = tokenizer.pad_token_id if pad_token_id is None and tokenizer is not None else pad_token_id
    if pad is None:
        raise ValueError("sample_policy: no pad id; allowed: a tokenizer, or eos_token_id and pad_token_id")
    ids, mask, ctx = sampling.repeat_prompts(*prompts, n)  # (C·n, Tp)
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(int(seed))
    parts = []
    for i in range(0, ids.shape[0], chunk):
        s = sampling.sample(model, ids[i:i + chunk], mask[i:i + chunk], max_new_tokens, eos_token_id=eos,
                            pad_token_id=pad, context_ids=ctx[i:i + chunk].to(device), generator=gen)
        parts.append(s)
    s = sampling.Samples.cat(parts) if len(parts) > 1 else parts[0]
    if tokenizer is not None:
        sampling.decode(s, tokenizer)
    return s


@torch.no_grad()
def score_policy(model, samples: sampling.Samples, rows: Tensor | None = None, chunk: int = 256) -> Tensor:
    """log π(x_i) (N,) under `model` (eval mode, no grad); with `rows` (bool (N,)) only those rows are scored and
    the others are −inf."""
    N = len(samples)
    idx = torch.arange(N) if rows is None else rows.cpu().nonzero().squeeze(1)  # (M,)
    out = torch.full((N,), -math.inf, dtype=torch.float32)
    with _eval_mode(model):
        for i in range(0, idx.numel(), chunk):
            j = idx[i:i + chunk]
            out[j] = sampling.score(model, samples.index(j)).float().cpu()
    return out


# ----------------------------------------------------------------------------------------------- reference sample
@dataclass(frozen=True, eq=False)
class ReferenceSample:
    """A fixed sample x_1..x_N ~ q scored under one target (all tensors (N,), on the CPU).

    log_Z: log Ẑ = logmeanexp(log P − log q) from this sample, or the known value when given to `draw` /
    `rescore` (e.g. 0 when p is itself a normalised LM and q = p)."""

    samples: sampling.Samples
    log_q: Tensor
    log_a: Tensor
    log_P: Tensor
    features: dict
    log_Z: float
    exact_Z: bool = False

    @classmethod
    def draw(cls, q_model, target: Target, prompts: tuple[Tensor, Tensor], n: int, max_new_tokens: int, *,
             tokenizer, seed: int, log_Z: float | None = None, chunk: int = 256, **ids) -> "ReferenceSample":
        """Draw n samples of q_model per prompt row and score them under `target`. When q_model is the target's
        base a, log a = log q is reused (no second forward pass). `ids`: eos_token_id / pad_token_id when
        tokenizer is None (see `sample_policy`)."""
        s = sample_policy(q_model, prompts, n, max_new_tokens, tokenizer=tokenizer, seed=seed, chunk=chunk, **ids)
        log_q = s.log_q.detach().float().cpu()
        log_a = log_q if q_model is target.base else None
        return cls._scored(s, log_q, target, log_a, log_Z)

    @classmethod
    def _scored(cls, s, log_q, target: Target, log_a, log_Z) -> "ReferenceSample":
        sc = target.score(s, log_a=log_a)
        log_P = sc.log_P.detach().float().cpu()
        feats = {k: v.detach().float().cpu() for k, v in sc.features.items()}
        exact = log_Z is not None
        if log_Z is None:
            log_Z = float(log_Z_hat(log_P.double(), log_q.double()))
        return cls(s, log_q, sc.log_a.detach().float().cpu(), log_P, feats, float(log_Z), exact)

    def rescore(self, target: Target, log_Z: float | None = None) -> "ReferenceSample":
        """The same samples under another target with the same base (log a reused)."""
        return self._scored(self.samples, self.log_q, target, self.log_a, log_Z)

    def __len__(self) -> int:
        return len(self.log_q)

    @property
    def log_w(self) -> Tensor:
        """log (P/q)(x_i) (N,): unnormalised importance weights of p."""
        return self.log_P - self.log_q

    def ess(self, fraction: bool = False) -> float:
        """Effective sample size of the weights P/q (fraction of N when fraction=True)."""
        return float(ess(self.log_w.double(), fraction=fraction))

    def moments(self) -> dict[str, float]:
        """SNIS E_p[feature] = Σ_i ŵ_i φ_i, ŵ = softmax(log P − log q)."""
        w = torch.softmax(self.log_w.double(), 0)  # (N,)
        return {k: float(w @ v.double()) for k, v in self.features.items()}

    def base_means(self) -> dict[str, float]:
        """E_q[feature] (plain means over the sample; E_a[φ] when q = a)."""
        return {k: float(v.double().mean()) for k, v in self.features.items()}

    def divergences(self, model, names: Sequence[str] = ("kl",), prefix: str = "ref/",
                    log_pi: Tensor | None = None) -> dict[str, float]:
        """D_f(π‖p) for π = model, estimated from this sample (is_divergence with q, log Ẑ): key `kl` gives
        KL(p‖π). π is scored only on rows with P > 0 when every f has f_inf = 0 (forward KL), unless `log_pi`
        (N,) is given."""
        divs = [get_divergence(n) for n in names]
        if log_pi is None:
            rows = None if any(d.f_inf != 0 for d in divs) else self.log_P > -math.inf
            log_pi = score_policy(model, self.samples, rows)  # (N,)
        return {f"{prefix}{d.name}": float(is_divergence(d, log_pi.double(), self.log_P.double(),
                                                         self.log_q.double(), self.log_Z)) for d in divs}

    def texts(self, k: int, where: Tensor | None = None) -> list[str]:
        """The first k texts (of the rows where `where` is True)."""
        idx = torch.arange(len(self)) if where is None else where.nonzero().squeeze(1)
        return [self.samples.texts[i] for i in idx[:k].tolist()]

    def summary(self, n_texts: int = 0, where: Tensor | None = None, log_w: bool = False) -> "ReferenceSummary":
        """What the notebooks show of this sample, without its tensors: log Ẑ, ESS, moments, base means, every
        feature value, and the texts of the first n_texts rows and of the first n_texts rows where `where` (bool
        (N,)) is True (no texts when the samples were not decoded); with log_w, also the weights log P/q (N,)."""
        rows = list(range(min(n_texts, len(self))))
        if where is not None:
            rows += where.nonzero().squeeze(1)[:n_texts].tolist()
        texts = {i: self.samples.texts[i] for i in sorted(set(rows))} if self.samples.texts else {}
        return ReferenceSummary(n=len(self), log_Z=self.log_Z, exact_Z=self.exact_Z, ess_n=self.ess(),
                                ess_frac=self.ess(fraction=True), moment=self.moments(), base_mean=self.base_means(),
                                features={k: v.clone() for k, v in self.features.items()}, stored_texts=texts,
                                log_w=self.log_w.clone() if log_w else None)


@dataclass(frozen=True, eq=False)
class ReferenceSummary:
    """The summaries of a ReferenceSample (`ReferenceSample.summary`), read back from an evaluation record: the
    same log_Z, ess, moments, base_means, features, texts and len, but no samples, so no `divergences` or
    `rescore` (those need `ReferenceSample.draw`)."""

    n: int
    log_Z: float
    exact_Z: bool
    ess_n: float
    ess_frac: float
    moment: dict
    base_mean: dict
    features: dict  # name -> (N,) float tensor
    stored_texts: dict  # row -> text, for the rows the summary kept
    log_w: Tensor | None = None  # (N,) log P/q, when kept

    def __len__(self) -> int:
        return self.n

    def ess(self, fraction: bool = False) -> float:
        return self.ess_frac if fraction else self.ess_n

    def moments(self) -> dict[str, float]:
        return dict(self.moment)

    def base_means(self) -> dict[str, float]:
        return dict(self.base_mean)

    def texts(self, k: int, where: Tensor | None = None) -> list[str]:
        """The first k texts (of the rows where `where` is True), when the summary kept them."""
        idx = torch.arange(self.n) if where is None else where.nonzero().squeeze(1)
        idx = idx[:k].tolist()
        missing = [i for i in idx if i not in self.stored_texts]
        if missing:
            raise ValueError(f"ReferenceSummary.texts: rows {missing} asked for, but the summary kept the texts of "
                             f"{len(self.stored_texts)} rows; allowed: the rows it kept (save the record again with a "
                             "larger n_texts or another texts_where: rerun=True)")
        return [self.stored_texts[i] for i in idx]

    def divergences(self, *args, **kwargs):
        raise ValueError("ReferenceSummary.divergences: a summary has no samples to score a policy on; allowed: a "
                         "ReferenceSample (cached_reference(..., need_samples=True) draws it)")

    def rescore(self, *args, **kwargs):
        raise ValueError("ReferenceSummary.rescore: a summary has no samples; allowed: a ReferenceSample")

    def to_record(self, with_rows: bool = True) -> dict:
        """A JSON-able dict; with_rows=False leaves out the per-row features and texts (a rescored sample's are
        its reference's, see `from_record`'s `rows_of`)."""
        d = {"n": self.n, "log_Z": self.log_Z, "exact_Z": self.exact_Z, "ess": self.ess_n, "ess_frac": self.ess_frac,
             "moments": self.moment, "base_means": self.base_mean}
        if with_rows:
            d.update(features={k: v.tolist() for k, v in self.features.items()},
                     texts={str(i): t for i, t in self.stored_texts.items()})
            if self.log_w is not None:  # −inf (P = 0) is stored as None, like every non-finite value
                d["log_w"] = self.log_w.tolist()
        return d

    @classmethod
    def from_record(cls, d: dict, rows_of: "ReferenceSummary | None" = None) -> "ReferenceSummary":
        """Read back `to_record`; the features and texts from `rows_of` when given (the same sample, rescored)."""
        nan = _num
        feats = rows_of.features if rows_of is not None else \
            {k: torch.tensor([nan(x) for x in v], dtype=torch.float32) for k, v in d["features"].items()}
        return cls(n=int(d["n"]), log_Z=nan(d["log_Z"]), exact_Z=bool(d["exact_Z"]), ess_n=nan(d["ess"]),
                   ess_frac=nan(d["ess_frac"]), moment={k: nan(v) for k, v in d["moments"].items()},
                   base_mean={k: nan(v) for k, v in d["base_means"].items()}, features=feats,
                   stored_texts=rows_of.stored_texts if rows_of is not None else
                   {int(i): t for i, t in d["texts"].items()},
                   log_w=None if "log_w" not in d else
                   torch.tensor([-math.inf if x is None else float(x) for x in d["log_w"]], dtype=torch.float32))


def _num(x) -> float:
    """A stored number: None (how a record stores a non-finite value) → NaN."""
    return math.nan if x is None else float(x)


def cached_reference(out_dir, name: str, params: dict, draw: Callable[[], ReferenceSample], *,
                     rescore: dict | None = None, need_samples: bool, rerun: bool = False, n_texts: int = 0,
                     texts_where: str | None = None, keep_log_w: bool = False):
    """(ref, {key: ref.rescore(target)} for each key, target of `rescore`), the reference sample a notebook draws
    with `draw()` (no argument), cached as the evaluation record <out_dir>/reference/<name>-<fingerprint>.json
    (results.save_record; `params`: every parameter that changes the sample or its scores, e.g. the base model,
    n_ref, max_new_tokens, problem_seed and the targets' parameters).

    need_samples (some run is still to be trained, whose metrics need the sample): always drawn, and the record
    written when missing (or rerun). Otherwise the saved summaries (`ReferenceSummary`) are returned when the
    record exists and rerun is False; else the sample is drawn and its summaries saved and returned. The summaries
    keep the texts of the first n_texts rows, and of the first n_texts rows whose feature `texts_where` is > 0, and
    with keep_log_w the weights log P/q of every row (`log_w`, e.g. to fit λ again)."""
    from fdpg_core.kit import results

    rescore = dict(rescore or {})
    key = {**params, "rescore": sorted(rescore), "n_texts": int(n_texts), "texts_where": texts_where}
    key.update({"keep_log_w": True} if keep_log_w else {})
    saved = None if rerun else results.load_record(out_dir, "reference", name, params=key)
    if saved is not None and not need_samples and set(saved) == {"ref", "rescored"}:
        try:
            return _summaries(saved, rescore)
        except (AttributeError, KeyError, TypeError, ValueError) as e:
            import warnings
            warnings.warn(f"cached_reference: record {name!r} is malformed ({e}); drawing the sample again",
                          stacklevel=2)
            saved = None
    ref = draw()
    other = {k: ref.rescore(t) for k, t in rescore.items()}
    if saved is None:
        where = None if texts_where is None else ref.features[texts_where] > 0  # (N,)
        results.save_record(out_dir, "reference", name, params=key, data={
            "ref": ref.summary(n_texts, where, log_w=keep_log_w).to_record(),
            "rescored": {k: r.summary().to_record(with_rows=False) for k, r in other.items()}})
    if need_samples:
        return ref, other
    return _summaries(results.load_record(out_dir, "reference", name, params=key), rescore)  # as the next run will


def _summaries(saved: dict, rescore: dict):
    ref = ReferenceSummary.from_record(saved["ref"])
    return ref, {k: ReferenceSummary.from_record(saved["rescored"][k], rows_of=ref) for k in rescore}


# ----------------------------------------------------------------------------------------------- on-policy metrics
def diversity_metrics(texts: Sequence[str], *, max_samples: int = 200, prefix: str = "") -> dict[str, float]:
    """Distinct-1/2/3 and Self-BLEU-3/4/5 on whitespace words of the texts (Self-BLEU on at most max_samples)."""
    words = [t.split() for t in texts]
    out = {f"{prefix}distinct/{n}": distinct_n(words, n) for n in DISTINCT_N}
    out.update({f"{prefix}self_bleu/{n}": self_bleu(words, n, max_samples=max_samples) for n in SELF_BLEU_N})
    return out


@torch.no_grad()
def policy_metrics(samples: sampling.Samples, target: Target, *, log_Z: float | None = None, diversity: bool = True,
                   prefix: str = "eval/", max_bleu_samples: int = 200, scored=None) -> dict[str, float]:
    """Metrics of π from its own samples (samples.log_q = log π, texts decoded):

        align/<feature> = E_π[φ],  kl_pi_a = E_π[log π − log a],  entropy = −E_π[log π],
        kl_pi_p = E_π[log π − log P] + log Z (needs log_Z; None when some sample has P = 0),
        length = mean generated tokens, and the diversity metrics of the texts.
    `scored`: target.score(samples) when already computed.
    """
    sc = target.score(samples) if scored is None else scored
    log_pi = samples.log_q.double().cpu()
    log_a, log_P = sc.log_a.double().cpu(), sc.log_P.double().cpu()
    out = {f"{prefix}align/{k}": float(v.double().mean()) for k, v in sc.features.items()}
    out[f"{prefix}kl_pi_a"] = float((log_pi - log_a).mean())  # KL(π‖a) = E_π[log π − log a]
    out[f"{prefix}entropy"] = float(-log_pi.mean())  # H(π) = −E_π[log π] (nats per sequence)
    if log_Z is not None:
        v = float((log_pi - log_P).mean() + log_Z)  # KL(π‖p) = E_π[log π − log P] + log Z
        out[f"{prefix}kl_pi_p"] = v if math.isfinite(v) else None
    out[f"{prefix}length"] = float(samples.mask.sum(1).double().mean())
    if diversity:
        out.update(diversity_metrics(samples.texts, max_samples=max_bleu_samples, prefix=prefix))
    return out


def two_sample_js_tv(log_pi_on_p: Tensor, log_p_on_p: Tensor, log_pi_on_pi: Tensor, log_p_on_pi: Tensor,
                     prefix: str = "exact/") -> dict[str, float]:
    """JS(π, p) and TV(π, p) from samples of p AND of π with exact normalised log densities at both (N,), (M,):

        JS = ½ E_π[log 2π/(π+p)] + ½ E_p[log 2p/(π+p)]   (each log ≤ log 2: bounded above, finite variance)
        TV = E_p[(1 − π/p)_+]                              (in [0, 1])

    Unlike E_p[f(π/p)] from samples of p alone, neither estimate blows up where π ≫ p.
    """
    lp_p, lq_p = log_pi_on_p.double(), log_p_on_p.double()  # log π, log p at x ~ p
    lp_q, lq_q = log_pi_on_pi.double(), log_p_on_pi.double()  # log π, log p at x ~ π
    log2 = math.log(2.0)
    kl_pi_m = (log2 + lp_q - torch.logaddexp(lp_q, lq_q)).mean()  # KL(π‖m), m = (π + p)/2
    kl_p_m = (log2 + lq_p - torch.logaddexp(lp_p, lq_p)).mean()  # KL(p‖m)
    tv = (1 - torch.exp(lp_p - lq_p)).clamp(min=0).mean()  # E_p[(1 − π/p)_+]
    return {f"{prefix}js": float(0.5 * (kl_pi_m + kl_p_m)), f"{prefix}tv": float(tv)}


def metrics_fn(*, ref: ReferenceSample | None = None, ref_divergences: Sequence[str] = ("kl",), target: Target = None,
               prompts=None, n_samples: int = 0, max_new_tokens: int = 40, tokenizer=None, seed: int = 0,
               diversity: bool = True, prefix: str = "eval/"):
    """A `train(..., metrics_fn=...)` callable (policy, step) -> dict: the reference divergences of π (keys
    `ref/<name>`) and, when n_samples > 0, `policy_metrics` of n_samples fresh samples of π per prompt row (seeded
    seed + step, so independent of the training draws and reproducible). When the reference sample comes from p
    itself with a known Z (`ReferenceSample.draw(..., log_Z=...)`, q = p) and n_samples > 0, also the two-sample
    JS and TV (`two_sample_js_tv`, keys `exact/js`, `exact/tv`)."""
    if n_samples and (target is None or prompts is None or tokenizer is None):
        raise ValueError("metrics_fn: n_samples > 0 needs target, prompts and tokenizer")
    two_sample = ref is not None and ref.exact_Z and bool(n_samples)

    def fn(policy, step: int) -> dict:
        out, log_pi_ref = {}, None
        if ref is not None:
            if two_sample:  # π on every row of the sample of p
                log_pi_ref = score_policy(policy, ref.samples)
            out.update(ref.divergences(policy, ref_divergences, log_pi=log_pi_ref))
        if n_samples:
            s = sample_policy(policy, prompts, n_samples, max_new_tokens, tokenizer=tokenizer, seed=seed + step)
            sc = target.score(s)
            out.update(policy_metrics(s, target, log_Z=None if ref is None else ref.log_Z, diversity=diversity,
                                      prefix=prefix, scored=sc))
            if two_sample:
                out.update(two_sample_js_tv(log_pi_ref, ref.log_P - ref.log_Z, s.log_q.cpu(),
                                            sc.log_P.cpu() - ref.log_Z))
        return out
    return fn
