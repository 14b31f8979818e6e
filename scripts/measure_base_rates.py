"""Measure every zoo task's base rate under its base model a (fdpg_core.kit.zoo.ZOO_TASKS).

For each task: ancestral samples from a (pure sampling: temperature 1, no top-k/top-p; seeded), decoded and scored
with the task's scorer. Binary constraints give Ẑ = E_a[b] (with its binomial standard error), distributional
tasks E_a[phi_k], the scalar task E_a[r]. Tasks sharing (model, prompts, max_new_tokens) share one sample.
Unconditional tasks sample from <|bos|>; conditional ones use `--contexts` held-out contexts (test split) with
`--per-context` samples each.

Usage:
  python scripts/measure_base_rates.py                      # print a markdown table and the JSON
  python scripts/measure_base_rates.py --write              # also store it as "base_rates" in data/models/zoo.json
  python scripts/measure_base_rates.py --tasks compile,pep8 --per-context 4 --write --merge   # update some tasks
  python scripts/measure_base_rates.py --n 256 --contexts 16 --per-context 4 --tasks amazing,female   # quick look
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from fdpg_core import sampling  # noqa: E402
from fdpg_core.kit import contexts, zoo  # noqa: E402


def draw(model, prompts: contexts.ContextSet, n_per: int, max_new_tokens: int, seed: int, batch_size: int):
    """n_per samples per prompt row (rows of a prompt are consecutive), sampled in chunks; decoded."""
    ids, mask, ctx = sampling.repeat_prompts(prompts.ids, prompts.mask, n_per)  # (C·n, Tp), (C·n,)
    gen = torch.Generator().manual_seed(seed)
    parts = []
    for i in range(0, ids.shape[0], batch_size):
        s = sampling.sample(model, ids[i:i + batch_size], mask[i:i + batch_size], max_new_tokens,
                            eos_token_id=zoo.EOS_ID, pad_token_id=zoo.PAD_ID, context_ids=ctx[i:i + batch_size],
                            generator=gen)
        parts.append(s)
    s = sampling.Samples.cat(parts) if len(parts) > 1 else parts[0]
    return s


def summarise(task: str, values: torch.Tensor, s) -> dict:
    t = zoo.ZOO_TASKS[task]
    n = values.shape[0]
    out = dict(model=t.model, n=n, max_new_tokens=t.max_new_tokens, prompts=t.prompts, kind=t.kind)
    if values.dim() == 2:  # distributional features (B, K)
        mu = values.mean(0)
        out["mean"] = [round(float(v), 4) for v in mu]
        out["se"] = [round(float((v * (1 - v) / n) ** 0.5), 4) for v in mu]
        if task == "professions":
            from fdpg_core.kit.scorers import PROFESSIONS
            out["features"] = list(PROFESSIONS)
    elif t.kind == "scalar":
        out["mean"] = round(float(values.mean()), 4)
        out["se"] = round(float(values.std() / math.sqrt(n)), 4)
    else:
        p = float(values.mean())
        out["mean"] = round(p, 4)
        out["se"] = round(math.sqrt(p * (1 - p) / n), 4)
        out["hits"] = int(values.sum())
    if t.kind == "conditional":
        out["contexts"] = int(s.context_ids.max()) + 1
        per_ctx = torch.zeros(out["contexts"]).index_add_(0, s.context_ids.cpu(), values.float())
        out["contexts_with_any"] = int((per_ctx > 0).sum())
    out["mean_new_tokens"] = round(float(s.mask.sum(1).float().mean()), 1)
    out["eos_share"] = round(float((s.mask.sum(1) < s.mask.shape[1]).float().mean()), 3)
    return out


def measure(tasks, n: int, n_contexts: int | None, per_context: int, seed: int, batch_size: int, log=print) -> dict:
    tok = zoo.load_zoo_tokenizer()
    groups: dict[tuple, list[str]] = {}
    for name in tasks:
        t = zoo.ZOO_TASKS[name]
        groups.setdefault((t.model, t.prompts, t.max_new_tokens), []).append(name)
    results = {}
    for (model_name, kind, T), names in groups.items():
        t0 = time.time()
        model = zoo.load_zoo_model(model_name)
        if kind == "bos":
            prompts, n_per = contexts.bos_contexts(1), n
        else:
            prompts = contexts.zoo_prompts(kind, n_contexts, tokenizer=tok)
            n_per = per_context or {"news-summary": 8, "code": 4}[kind]
        s = draw(model, prompts, n_per, T, seed, batch_size)
        sampling.decode(s, tok)
        t_sample = time.time() - t0
        for name in names:
            scorer = zoo.task_scorer(name, prompts.contexts if kind != "bos" else None)
            results[name] = summarise(name, scorer(s), s)
        log(f"[{model_name}/{kind}/{T}] {len(s)} samples in {t_sample:.1f}s, scored in "
            f"{time.time() - t0 - t_sample:.1f}s: " + ", ".join(f"{k}={results[k]['mean']}" for k in names))
    return results


def table(results: dict) -> str:
    rows = ["| task | base model | paper task | measured under a | n |", "|---|---|---|---|---|"]
    for name, r in results.items():
        t = zoo.ZOO_TASKS[name]
        if isinstance(r["mean"], list):
            val = ", ".join(f"{f} {m:.3f}" for f, m in zip(r.get("features", range(len(r["mean"]))), r["mean"]))
        else:
            val = f"{r['mean']:.4f} ± {r['se']:.4f}"
        rows.append(f"| `{name}` | {t.model} | {t.paper} | {val} | {r['n']} |")
    return "\n".join(rows)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", default=",".join(zoo.ZOO_TASKS))
    ap.add_argument("--n", type=int, default=1024, help="samples per unconditional task (one BOS prompt)")
    ap.add_argument("--contexts", type=int, default=None, help="test contexts of conditional tasks (default: all)")
    ap.add_argument("--per-context", type=int, default=None,
                    help="samples per context; default 8 for news-summary (50 articles), 4 for code (196 functions)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--write", action="store_true", help="store the results in data/models/zoo.json base_rates")
    ap.add_argument("--merge", action="store_true", help="with --write: replace only the measured tasks")
    ap.add_argument("--json-out", default=None, help="also save {meta, tasks} to this file")
    ap.add_argument("--from-json", default=None, nargs="+",
                    help="measure nothing: take {meta, tasks} from files saved by --json-out (with --write)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    tasks = args.tasks.split(",")
    bad = [t for t in tasks if t not in zoo.ZOO_TASKS]
    if bad:
        raise ValueError(f"unknown task(s) {bad}; allowed: {list(zoo.ZOO_TASKS)}")
    if args.from_json:
        saved = [json.loads(Path(f).read_text()) for f in args.from_json]
        write({k: v for d in saved for k, v in d["tasks"].items()}, saved[-1]["meta"], args.merge)
        return
    t0 = time.time()
    results = measure(tasks, args.n, args.contexts, args.per_context, args.seed, args.batch_size)
    # each number with the command that reproduces it. --tasks is left out: every (model, prompts) group seeds
    # its own generator, so a task's number does not depend on which other tasks were measured with it.
    argv, keep, drop = sys.argv[1:], [], ("--write", "--merge", "--tasks", "--json-out")
    for i, a in enumerate(argv):
        if a not in drop and not (i and argv[i - 1] in ("--tasks", "--json-out")):
            keep.append(a)
    cmd = " ".join(["python scripts/measure_base_rates.py", *keep])
    for r in results.values():
        r["command"] = cmd
    meta = dict(seed=args.seed, sampling="pure ancestral (temperature 1, no top-k/top-p), fdpg_core.sampling.sample",
                conditional_contexts="test split: Lee lee.cor articles (news-summary), held-out stdlib functions "
                                     "with prompts <= 256 tokens (code)",
                torch=torch.__version__, created=_dt.date.today().isoformat())
    print(table(results))
    print(json.dumps(dict(meta=meta, tasks=results), indent=1))
    print(f"[measure_base_rates] {time.time() - t0:.0f}s")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(dict(meta=meta, tasks=results), indent=1) + "\n")
    if args.write:
        write(results, meta, args.merge)


def write(results: dict, meta: dict, merge: bool) -> None:
    """Store results as data/models/zoo.json["base_rates"] (merge: keep the other tasks' stored results)."""
    path = zoo.MODELS_DIR / "zoo.json"
    z = json.loads(path.read_text())
    old = z.get("base_rates", {}).get("tasks", {}) if merge else {}
    both = {**old, **results}
    z["base_rates"] = dict(meta=meta, tasks={k: both[k] for k in zoo.ZOO_TASKS if k in both})
    path.write_text(json.dumps(z, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote base_rates ({len(z['base_rates']['tasks'])} tasks) to {path}")


if __name__ == "__main__":
    main()
