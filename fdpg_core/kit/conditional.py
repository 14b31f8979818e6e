"""Conditional targets p_c(x) ∝ a(x|c)·b(x, c) (docs/METHOD.md): batched evaluation over many contexts × several
samples each, the per-context Ẑ_c that `train` keeps, and the task metrics of the
summarisation and code notebooks (07, 08). The context sets themselves (ContextSet, summary_contexts,
code_contexts) are built by fdpg_core.kit.contexts.

    sample_trimmed             sampling.sample on prompts whose all-pad leading columns are dropped first
    draw(...)                  n samples per context, in chunks of whole contexts, decoded
    evaluate(...)              E_c E_π[b] for every scorer, per-context rates, KL(π‖a), entropy, per-context
                               Distinct-n / Self-BLEU, ROUGE (with references), entity statistics
    PeriodicEval               metrics_fn for `train`: evaluate(...) every eval_every steps (not at 0 / the end)
    z_stats(log_Z)             mean / median / min / max of Ẑ_c over contexts, share with Ẑ_c ≈ 0
    reference_under_p(ev, b)   what the target p itself would score, from samples of a: KL(p‖a) = E_c[−log Z_c],
                               E_p[length], the share of contexts with no sample meeting b
    with_evaluations(...)      a train() history with the evaluations of a (step 0) and of the final π (step n)
    final_by_set(runs, ...)    one row per (context set, divergence, seed) of the result files, a's rows first
    train_and_evaluate(...)    the notebooks' loop: per divergence and seed, train π from a, evaluate, save the run
    rouge(...)                 ROUGE-1/2/L F1 (Google's `rouge-score` package), max over each context's references
    entity_stats(...)          entities per summary and the share of them found in the source

The objective is E_c[D_f(π(·|c)‖p_c)] with one Z_c = E_{a(·|c)}[b(·, c)] per context; `train` estimates each
Ẑ_c as the cumulative importance-sampled mean of P/q over every sample of context c so far.
Every evaluation samples purely (temperature 1, no truncation): the metrics are those of π itself.
"""
from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from fdpg_core import get_divergence, sampling
from fdpg_core.kit import results
from fdpg_core.kit.contexts import ContextSet, trim_left
from fdpg_core.kit.diversity import distinct_n, self_bleu
from fdpg_core.kit.scorers import _normalise_entity
from fdpg_core.train import FDPGConfig, train

__all__ = ["sample_trimmed", "draw", "Evaluation", "evaluate", "PeriodicEval", "rouge", "entity_stats",
           "z_stats", "reference_under_p", "with_evaluations", "final_by_set", "train_and_evaluate"]


# --------------------------------------------------------------------------------------------- sampling
def sample_trimmed(model, prompt_ids, prompt_mask, max_new_tokens, **kwargs) -> sampling.Samples:
    """sampling.sample after dropping all-pad leading prompt columns (same distribution, less compute): the
    `sampler` argument of train() for contexts of very different lengths."""
    ids, mask = trim_left(prompt_ids, prompt_mask)
    return sampling.sample(model, ids, mask, max_new_tokens, **kwargs)


def draw(model, cs: ContextSet, n_per_context: int, max_new_tokens: int, *, tokenizer, eos_token_id: int,
         pad_token_id: int, generator: torch.Generator, chunk_rows: int = 256) -> sampling.Samples:
    """n_per_context pure ancestral samples x ~ model(·|c) for every context c (rows of a context consecutive;
    context_ids index cs), sampled in chunks of whole contexts (≤ chunk_rows rows), decoded into .texts."""
    if not isinstance(n_per_context, int) or n_per_context < 1:
        raise ValueError(f"draw: n_per_context must be an int >= 1, got {n_per_context!r}")
    device = next(model.parameters()).device
    per_chunk = max(1, chunk_rows // n_per_context)  # contexts per chunk
    parts = []
    for lo in range(0, len(cs), per_chunk):
        c = torch.arange(lo, min(len(cs), lo + per_chunk))  # (m,)
        ids, mask = trim_left(cs.ids[c], cs.mask[c])
        ids, mask, rows = sampling.repeat_prompts(ids.to(device), mask.to(device), n_per_context)  # (m·n, Tp)
        parts.append(sampling.sample(model, ids, mask, max_new_tokens, eos_token_id=eos_token_id,
                                     pad_token_id=pad_token_id, context_ids=rows + lo, generator=generator))
    s = sampling.Samples.cat(parts) if len(parts) > 1 else parts[0]
    sampling.decode(s, tokenizer)
    return s


# --------------------------------------------------------------------------------------------- metrics
def rouge(texts: Sequence[str], references: Sequence[Sequence[str]], context_ids: Sequence[int]) -> dict[str, list]:
    """Per-sample ROUGE-1, ROUGE-2, ROUGE-L F1 (Porter stemming) of texts[i] against the references of its
    context, the maximum over references (rouge_score.RougeScorer.score_multi). Samples whose context has no
    reference get NaN."""
    try:
        from rouge_score import rouge_scorer
    except ImportError as e:
        raise ImportError("ROUGE needs Google's rouge-score package: pip install rouge-score==0.1.2") from e
    keys = ("rouge1", "rouge2", "rougeL")
    scorer = rouge_scorer.RougeScorer(list(keys), use_stemmer=True)
    out: dict[str, list] = {k: [] for k in keys}
    for t, c in zip(texts, context_ids):
        refs = list(references[int(c)])
        res = scorer.score_multi(refs, t) if refs else None
        for k in keys:
            out[k].append(res[k].fmeasure if res else math.nan)
    return out


def entity_stats(scorer, texts: Sequence[str], sources: Sequence[str]) -> dict[str, list]:
    """Per summary: number of distinct named entities (the scorer's labels and normalisation) and how many of them
    occur in the source (`scorer` an EntityConsistency; sources[i] the article of texts[i])."""
    import re


    n_ent, n_src = [], []
    for ents, src in zip(scorer.entities(texts), sources):
        norm_src = " " + _normalise_entity(src) + " "
        names = {_normalise_entity(t) for t, _ in ents} - {""}
        n_ent.append(len(names))
        n_src.append(sum(re.search(r"(?<!\w)" + re.escape(n) + r"(?!\w)", norm_src) is not None for n in names))
    return {"n_entities": n_ent, "n_in_source": n_src}


def _per_context(values: Tensor, ctx: Tensor, C: int) -> Tensor:
    """Mean of values (B,) within each context (C,) (NaN for a context without samples)."""
    v = values.double().cpu()
    s = torch.zeros(C, dtype=torch.float64).index_add_(0, ctx.cpu(), v)
    n = torch.bincount(ctx.cpu(), minlength=C).double()
    return s / n


@dataclass(eq=False)
class Evaluation:
    """evaluate()'s result: `metrics` {name: float} (context-averaged), `per_context` {name: list (C,)},
    `per_sample` {name: list (C·n,)}, `texts` (C·n,) and `context_ids` (C·n,)."""

    metrics: dict[str, float]
    per_context: dict[str, list]
    per_sample: dict[str, list]
    texts: list[str]
    context_ids: list[int]
    samples: sampling.Samples | None = field(default=None, repr=False)

    def examples(self, context: int, k: int = 3) -> list[str]:
        """The first k texts of `context`."""
        return [t for t, c in zip(self.texts, self.context_ids) if c == context][:k]


@torch.no_grad()
def evaluate(model, cs: ContextSet, scorers: Mapping[str, Callable], *, n_per_context: int, max_new_tokens: int,
             tokenizer, eos_token_id: int, pad_token_id: int, seed: int, base=None, chunk_rows: int = 256,
             diversity: bool = True, entity_scorer=None, keep_samples: bool = False) -> Evaluation:
    """Sample n_per_context summaries / bodies per context of `cs` from `model` (pure sampling, generator seeded
    `seed`) and measure, with every metric averaged over samples and contexts (E_c E_π[·], n equal per context):

      <scorer name>       E_c E_π[b(x, c)] for each scorer in `scorers` (built with cs.contexts); per context too
      kl_pi_a             KL(π‖a) = E_c E_π[log π − log a] (when base is given and is not model)
      entropy             −E_c E_π[log π(x|c)] (nats per sequence);  length: mean new tokens (EOS counted)
      distinct_{1,2,3}    Distinct-n within each context's samples, averaged over contexts (token ids)
      self_bleu_{3,4}     Self-BLEU-n within each context's samples (n_per_context ≥ 2), averaged over contexts
      rouge1/2/L          F1 against cs.references (when given), max over references
      entity_scorer given (an EntityConsistency built with cs.contexts; one NER pass):
      entities            its b: ≥ min_entities distinct entities, all in the source (equal to entity_scorer(x))
      entities_ge1        the same with ≥ 1 entity;  n_entities: entities per summary
      entity_precision    share of all summary entities that occur in their source
    """
    s = draw(model, cs, n_per_context, max_new_tokens, tokenizer=tokenizer, eos_token_id=eos_token_id,
             pad_token_id=pad_token_id, generator=torch.Generator(device=next(model.parameters()).device)
             .manual_seed(seed), chunk_rows=chunk_rows)
    C, ctx = len(cs), s.context_ids.cpu()
    per_sample: dict[str, Tensor] = {}
    for name, scorer in scorers.items():
        per_sample[name] = torch.as_tensor(scorer(s), dtype=torch.float64).cpu()  # (C·n,)
    log_pi = s.log_q.double().cpu()  # (C·n,) log π(x|c): pure samples of model
    per_sample["log_pi"] = log_pi
    per_sample["length"] = s.lengths.double().cpu()
    if base is not None and base is not model:
        log_a = sampling.score(base, s.to(next(base.parameters()).device)).double().cpu()  # (C·n,)
        per_sample["kl_pi_a"] = log_pi - log_a  # E_π[log π − log a] = KL(π‖a)
    if cs.references is not None:
        per_sample.update({k: torch.tensor(v, dtype=torch.float64)
                           for k, v in rouge(s.texts, cs.references, ctx.tolist()).items()})
    if entity_scorer is not None:  # one NER pass gives b itself and the entity statistics
        st = entity_stats(entity_scorer, s.texts, [cs.contexts[c] for c in ctx.tolist()])
        n_ent = torch.tensor(st["n_entities"], dtype=torch.float64)  # (C·n,)
        n_src = torch.tensor(st["n_in_source"], dtype=torch.float64)  # (C·n,)
        faithful = n_src == n_ent  # every entity of the summary is in the source
        per_sample.update({"n_entities": n_ent, "n_in_source": n_src,
                           "entities": (faithful & (n_ent >= entity_scorer.min_entities)).double(),  # = the scorer's b
                           "entities_ge1": (faithful & (n_ent >= 1)).double()})
    per_context = {k: _per_context(v, ctx, C) for k, v in per_sample.items()}
    metrics = {k: float(v.nanmean()) for k, v in per_context.items() if k not in ("log_pi", "n_in_source")}
    metrics["entropy"] = -float(per_context["log_pi"].mean())
    if entity_scorer is not None:
        tot = float(per_sample["n_entities"].sum())
        metrics["entity_precision"] = float(per_sample["n_in_source"].sum()) / tot if tot else math.nan
    if diversity:
        toks = [row[:n] for row, n in zip(s.tokens.tolist(), s.lengths.tolist())]
        groups = [[t for t, c in zip(toks, ctx.tolist()) if c == i] for i in range(C)]  # per context
        for k in (1, 2, 3):
            metrics[f"distinct_{k}"] = sum(distinct_n(g, k) for g in groups) / C
        if n_per_context >= 2:
            for k in (3, 4):
                metrics[f"self_bleu_{k}"] = sum(self_bleu(g, k, max_samples=None) for g in groups) / C
    return Evaluation(metrics=metrics, per_context={k: v.tolist() for k, v in per_context.items()},
                      per_sample={k: v.tolist() for k, v in per_sample.items()}, texts=list(s.texts),
                      context_ids=ctx.tolist(), samples=s if keep_samples else None)


class PeriodicEval:
    """metrics_fn for train(): every call (train calls it every eval_every steps) evaluates the policy on each
    context set with `evaluate(**kwargs)` (scorers[set name], entity_scorers[set name]) and returns
    {"<set>/<metric>": value} for `metrics` (all when None); steps in `skip` (e.g. 0, where a's evaluation is
    shared by every run, and n_steps, where the final evaluation is made separately) return {}."""

    def __init__(self, sets: Sequence[ContextSet], scorers: Mapping[str, Mapping[str, Callable]], *,
                 skip: Sequence[int] = (0,), metrics: Sequence[str] | None = None,
                 entity_scorers: Mapping[str, Callable] | None = None, **kwargs):
        self.sets, self.scorers, self.skip, self.keep, self.kwargs = list(sets), scorers, set(skip), metrics, kwargs
        self.entity_scorers = entity_scorers or {}

    def __call__(self, policy, step: int) -> dict[str, float]:
        if step in self.skip:
            return {}
        out = {}
        for cs in self.sets:
            ev = evaluate(policy, cs, self.scorers.get(cs.name, {}), diversity=False,
                          entity_scorer=self.entity_scorers.get(cs.name), **self.kwargs)
            out.update({f"{cs.name}/{k}": v for k, v in ev.metrics.items() if self.keep is None or k in self.keep})
        return out


# --------------------------------------------------------------------------------------------- Ẑ_c
def z_stats(log_Z: Sequence[float], z_eps: float = 1e-3) -> dict[str, float]:
    """Summary of per-context Ẑ_c over the sampled contexts: mean, median, min, max, and `z_zero`, the share of
    contexts with Ẑ_c < z_eps (no sample of the context has met the constraint yet; with a log_b floor f, such a
    context still has Ẑ_c ≈ e^f, far below z_eps for f ≤ −8)."""
    lz = torch.tensor([x for x in log_Z if x is not None and not math.isnan(x)], dtype=torch.float64)
    if lz.numel() == 0:
        return {"z_mean": math.nan, "z_median": math.nan, "z_min": math.nan, "z_max": math.nan, "z_zero": math.nan}
    z = lz.exp()
    return {"z_mean": float(z.mean()), "z_median": float(z.median()), "z_min": float(z.min()),
            "z_max": float(z.max()), "z_zero": float((z < z_eps).double().mean())}


def reference_under_p(ev: Evaluation, constraint: str) -> dict[str, float]:
    """What the target p_c ∝ a·b itself would score, estimated from an evaluation of a (samples x ~ a(·|c)):

      z_zero     share of contexts where no sample met b (their Ẑ_c = 0; excluded below)
      kl_p_a     E_c[KL(p_c‖a_c)] = E_c[−log Z_c] (exact for a binary b: p_c = a·b/Z_c), Z_c ≈ the context's rate
      length_p   E_c E_{p_c}[length] ≈ mean_c Σ_{i∈c} b_i len_i / Σ_{i∈c} b_i (self-normalised, p_c/a_c ∝ b)
      rate_p     1 (b holds everywhere on p's support), for plots
    """
    b = torch.tensor(ev.per_sample[constraint], dtype=torch.float64)  # (N,)
    L = torch.tensor(ev.per_sample["length"], dtype=torch.float64)  # (N,)
    ctx = torch.tensor(ev.context_ids)
    C = int(ctx.max()) + 1
    Z = _per_context(b, ctx, C)  # (C,) Monte-Carlo Z_c
    bl = torch.zeros(C, dtype=torch.float64).index_add_(0, ctx, b * L)  # Σ b·len per context
    nb = torch.zeros(C, dtype=torch.float64).index_add_(0, ctx, b)  # Σ b per context
    ok = Z > 0
    return {"z_zero": float((~ok).double().mean()),
            "kl_p_a": float(-Z[ok].log().mean()) if ok.any() else math.nan,
            "length_p": float((bl[ok] / nb[ok]).mean()) if ok.any() else math.nan, "rate_p": 1.0}


def with_evaluations(history: list[dict], n_steps: int, before: Mapping[str, Evaluation],
                     after: Mapping[str, Evaluation], metrics: Sequence[str]) -> list[dict]:
    """A copy of train()'s history where the step-0 record also holds `before` (the evaluation of a = π_0) and a
    record of step n_steps holds `after` (the final π), as "<set>/<metric>" keys: every curve then starts at a and
    ends at the final π, at samples_seen = step · batch_size."""
    hist = [dict(r) for r in history]
    for step, evs in ((0, before), (n_steps, after)):
        vals = {f"{k}/{m}": ev.metrics[m] for k, ev in evs.items() for m in metrics if m in ev.metrics}
        rec = next((r for r in hist if r["step"] == step), None)
        if rec is None:
            hist.append({"step": step, **vals})
        else:
            rec.update(vals)
    return sorted(hist, key=lambda r: r["step"])


def final_by_set(runs: list[dict], sets: Sequence[str], metrics: Sequence[str]):
    """Long frame: one row per (set, divergence, seed) with columns `metrics`, read from each run's final
    "<set>/<metric>" keys; a's evaluation ("base/<set>/<metric>", identical in every run) once, as divergence
    "base" with the first run's seed."""
    import pandas as pd

    rows = []
    for k in sets:
        r0 = runs[0]
        rows.append({"set": k, "divergence": "base", "seed": r0["seed"],
                     **{m: r0["final"].get(f"base/{k}/{m}", math.nan) for m in metrics}})
        for r in runs:
            rows.append({"set": k, "divergence": r["divergence"], "seed": r["seed"],
                         **{m: r["final"].get(f"{k}/{m}", math.nan) for m in metrics}})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------- one notebook run
def train_and_evaluate(base, target, sets: Mapping[str, ContextSet], *, tokenizer, divergences: Sequence[str],
                       seeds: Sequence[int], train_kw: Mapping, eval_kw: Mapping, constraint: str,
                       base_eval: Mapping[str, Evaluation], ref: Mapping[str, dict], eval_samples: int,
                       eval_curve_samples: int, curve_metrics: Sequence[str], heldout: Sequence[str],
                       scorers: Mapping[str, Mapping[str, Callable]] | None = None,
                       entity_scorers: Mapping[str, Callable] | None = None, n_examples: int = 3,
                       with_references: bool = False, report: Sequence[str] = (), out_path, experiment: str,
                       fingerprint: str, params: dict, preset: str, setting: str, config: Mapping,
                       rerun: bool = False) -> list[dict]:
    """The train → evaluate → save loop of the conditional notebooks (07, 08); returns the result files' runs.

    For every divergence and seed (unless a run with the same fingerprint is saved in out_path and not `rerun`):
    π ← copy of `base`; train(π, target, sets["train"], FDPGConfig(divergence, seed, **train_kw)) with
    sample_trimmed and, when train_kw's eval_every is set, a held-out curve (PeriodicEval on the `heldout` sets,
    eval_curve_samples per context, `curve_metrics`); the final π evaluated on every set like a was (`base_eval`,
    eval_samples per context, scorers[set] and entity_scorers[set], evaluate(**eval_kw)); saved with
    results.save_run: final = π's metrics "<set>/<m>", a's "base/<set>/<m>", the target's `ref` "ref/<set>/<m>",
    z_stats of the final Ẑ_c "z/<m>", seconds; arrays = log Ẑ_c, sample counts, a's and π's per-context rates of
    `constraint`, and n_examples held-out examples (contexts, with their first reference when with_references);
    config = the run's FDPGConfig (out_dir None) followed by `config`. Prints one line per run: the constraint's
    rate a → π on every set, the held-out metrics in `report` a → π, and KL(π‖a) held-out.
    """
    scorers, entity_scorers = scorers or {}, entity_scorers or {}
    planned = []  # (setting, divergence, seed) of every run shown
    for name in divergences:
        for s in seeds:
            planned.append((setting, name, s))
            if not rerun and results.find_run(out_path, experiment=experiment, fingerprint=fingerprint,
                                              setting=setting, divergence=name, seed=s):
                continue  # saved before with the same parameters: reused, not retrained
            policy = copy.deepcopy(base)
            cfg = FDPGConfig(divergence=get_divergence(name), seed=s, **{"progress": False, **train_kw})
            curve = PeriodicEval([sets[k] for k in heldout], scorers, entity_scorers=entity_scorers,
                                 skip=(0, cfg.n_steps), metrics=curve_metrics, n_per_context=eval_curve_samples,
                                 **eval_kw)
            t0 = time.perf_counter()
            history = train(policy, target, sets["train"].pair, cfg, tokenizer=tokenizer, sampler=sample_trimmed,
                            metrics_fn=curve if cfg.eval_every else None)
            seconds = time.perf_counter() - t0
            log_Z_c, n_c = history.log_Z.tolist(), history.count.tolist()  # (C,) running log Ẑ_c, samples per context
            after = {k: evaluate(policy, cs, scorers.get(k, {}), n_per_context=eval_samples,
                                 entity_scorer=entity_scorers.get(k), **eval_kw) for k, cs in sets.items()}
            final = {f"{k}/{m}": v for k, ev in after.items() for m, v in ev.metrics.items()}
            final.update({f"base/{k}/{m}": v for k, ev in base_eval.items() for m, v in ev.metrics.items()})
            final.update({f"ref/{k}/{m}": v for k, r in ref.items() for m, v in r.items()})
            final.update({f"z/{m}": v for m, v in z_stats(log_Z_c).items()})
            final["seconds"] = seconds
            arrays = {"log_Z_c": log_Z_c, "n_c": n_c, "base_rate_c": base_eval["train"].per_context[constraint]}
            arrays.update({f"{k}/rate_c": ev.per_context[constraint] for k, ev in after.items()})
            h, ex = heldout[0], sets[heldout[0]]
            arrays["examples"] = [
                {"context": ex.contexts[c],
                 **({"reference": (ex.references or [[""]])[c][:1]} if with_references else {}),
                 "before": base_eval[h].examples(c, 2), "after": after[h].examples(c, 2)}
                for c in range(min(n_examples, len(ex)))]
            results.save_run(out_path, experiment=experiment, preset=preset, fingerprint=fingerprint, params=params,
                             setting=setting, divergence=name, seed=s,
                             config={**cfg.to_dict(), "out_dir": None, **config},
                             history=with_evaluations(history, cfg.n_steps, base_eval, after, curve_metrics),
                             final=final, arrays=arrays)
            print(f"{name:>4} seed {s}: {constraint} rate " + ", ".join(
                f"{k} {base_eval[k].metrics[constraint]:.2f} → {after[k].metrics[constraint]:.2f}" for k in sets)
                + "".join(f"; {m} {h} {base_eval[h].metrics[m]:.2f} → {after[h].metrics[m]:.2f}" for m in report)
                + f"; KL(π‖a) {h} {after[h].metrics['kl_pi_a']:.2f}  ({seconds:.0f} s)")
    return results.load_runs(out_path, experiment=experiment, fingerprint=fingerprint, keys=planned)
