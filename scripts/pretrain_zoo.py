"""Pretrain the kit's model zoo: small GPT-2-architecture LMs on the offline corpora (data/corpora).

Each model is a GPT2LMHeadModel (tied embeddings, learned positions, n_positions = 512) with the kit's 4,096-entry
BPE (<|bos|> = 0, <|eos|> = 1, <|pad|> = 2). One document per row: [bos] text [eos], right-padded, loss on real
tokens only (no attention mask is needed: causal attention never looks right, so right padding is inert).

  name          init   data                                   paper analogue
  base          random reviews + bios + news (generated+Lee)  gpt2 (also the ladder's third rung)
  reviews       base   reviews_smollm                         gpt2-imdb
  bios          base   bios_smollm                            gpt2 fine-tuned on WikiBio
  news-summary  ladder-l "{article}\\nTL;DR: {summary}", loss on the summary only,  t5-small on CNN/DM
                       grounded references only (see `grounded`)
  code          random code_stdlib (functions)                GPT-Neo-125M on Python150
  ladder-xs/s/l random same data as base                      gpt2 / -medium / -large / -xl

The summariser is a decoder with a "TL;DR:" prefix rather than a T5: one architecture and one sampler/scorer code
path (sampling.sample / sampling.score on a causal LM) for every task, the article as the conditioning context
exactly like the code task's signature, and a fine-tune of an LM that already reads news: the largest rung,
ladder-l (5.9M params), because a fine-tune of the 2.7M base (15 s on a GPU; later 45 min on 2 CPU cores) still
wrote word salad after "TL;DR:" ("≥ 1 named entity, all in the article" held on 5 of 400 of its summaries).
T5 stays covered by the `paper` preset's randomly initialised architecture tests.

Training: AdamW (betas 0.9/0.95, weight decay 0.1 on matrices), linear warm-up then cosine decay to 10 %, bf16 autocast
on CUDA, a fixed wall-clock budget per model (the step count is set after timing the first steps), validation loss
every ~10 % of the run, the best-validation weights kept (the corpora are small, so runs are many epochs). Batches are
drawn uniformly on CUDA; on a CPU they are length-sorted within chunks ("sortish"), and every batch drops its
all-pad columns, so little padding is computed.
Saved as bf16 safetensors + config + tokenizer + README.md (model card) + metrics.json.

Usage: python scripts/pretrain_zoo.py --models base,reviews --budgets 50,20 --out runs/zoo [--device cuda]
"""
from __future__ import annotations

import argparse
import copy
import datetime as _dt
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(REPO))  # fdpg_core without an install (the GPU build runs from a bare checkout)
from make_corpora import read_corpus  # noqa: E402

TEXT = ["reviews_smollm", "bios_smollm", "news_smollm", "news_lee"]
ZOO = {  # name: architecture, data, init, learning rate
    "base": dict(n_layer=4, n_embd=192, n_head=4, data="text", init=None, lr=2e-3),
    "reviews": dict(data="reviews", init="base", lr=3e-4),
    "bios": dict(data="bios", init="base", lr=3e-4),
    "news-summary": dict(data="news-summary", init="ladder-l", lr=6e-4),
    "code": dict(n_layer=4, n_embd=192, n_head=4, data="code", init=None, lr=2e-3),
    "ladder-xs": dict(n_layer=2, n_embd=32, n_head=2, data="text", init=None, lr=4e-3),
    "ladder-s": dict(n_layer=3, n_embd=96, n_head=3, data="text", init=None, lr=3e-3),
    "ladder-l": dict(n_layer=6, n_embd=256, n_head=4, data="text", init=None, lr=1.5e-3),
}
LADDER = ["ladder-xs", "ladder-s", "base", "ladder-l"]
TLDR = "\nTL;DR:"


# ----------------------------------------------------------------------------------------------- data


def _rows(tok, texts, T):
    """[bos] ids [eos] per text, truncated to T tokens; loss on every position after bos."""
    if not texts:
        return [], []
    enc = tok(texts, add_special_tokens=False)["input_ids"]
    bos, eos = tok.bos_token_id, tok.eos_token_id
    return [([bos] + ids + [eos])[:T] for ids in enc], [1] * len(enc)


def _summary_rows(tok, recs, T):
    """[bos] article \\nTL;DR: summary [eos]; loss starts at the summary (article tokens only condition)."""
    if not recs:
        return [], []
    arts = tok([r["article"] for r in recs], add_special_tokens=False)["input_ids"]
    sums = tok([" " + r["summary"] for r in recs], add_special_tokens=False)["input_ids"]
    tl = tok(TLDR, add_special_tokens=False)["input_ids"]
    rows, starts = [], []
    for a, s in zip(arts, sums):
        s = s[: T // 3] + [tok.eos_token_id]
        a = a[: T - 1 - len(tl) - len(s)]
        rows.append([tok.bos_token_id] + a + tl + s)
        starts.append(1 + len(a) + len(tl))
    return rows, starts


def grounded(recs):
    """The records whose reference summary names no entity missing from its article (fdpg_core's
    EntityConsistency with min_entities=0, the check of the 'summary-grounded' task): a faithfulness filter that drops
    the SmolLM2 summaries with invented names (35 % of the training pairs), so the summariser learns to copy names
    rather than invent them. It asks for no entity, so the task's '>= 1 entity, all in the source' stays a real
    restriction."""
    if not recs:
        return recs
    from fdpg_core.kit.scorers import EntityConsistency

    arts = [r["article"] for r in recs]
    keep = EntityConsistency(arts, min_entities=0).score_pairs([r["summary"] for r in recs], arts)
    return [r for r, k in zip(recs, keep.tolist()) if k]


def load_split(corpora: Path, data: str, split: str, tok, T: int):
    """(rows, loss_starts, source names) of one dataset split."""
    def recs(name):
        p = corpora / f"{name}.jsonl.gz"
        return [r for r in read_corpus(p)[1] if r.get("split") == split] if p.is_file() else []

    if data == "text":
        texts = [r["text"] for n in TEXT for r in recs(n)]
        return (*_rows(tok, texts, T), TEXT)
    if data in ("reviews", "bios"):
        name = f"{data}_smollm"
        return (*_rows(tok, [r["text"] for r in recs(name)], T), [name])
    if data == "code":
        return (*_rows(tok, [r["code"] for r in recs("code_stdlib")], T), ["code_stdlib"])
    if data == "news-summary":
        return (*_summary_rows(tok, grounded(recs("summaries_smollm")), T), ["summaries_smollm (grounded)"])
    raise ValueError(f"unknown data {data!r}; allowed: text, reviews, bios, code, news-summary")


def to_tensors(rows, starts, pad_id, T):
    """input ids (N, T) padded with pad_id, labels (N, T) with -100 where no loss is taken."""
    N = len(rows)
    x = torch.full((N, T), pad_id, dtype=torch.long)
    y = torch.full((N, T), -100, dtype=torch.long)
    for i, (r, s) in enumerate(zip(rows, starts)):
        x[i, : len(r)] = torch.tensor(r)
        y[i, s: len(r)] = x[i, s: len(r)]
    return x, y


# ----------------------------------------------------------------------------------------------- training


def _batches(lens, B, sortish, seed):
    """Endless row-index batches (B,): uniform with replacement, or (sortish, for CPUs) epochs of a shuffled order
    cut into chunks of 50 batches, each chunk sorted by length and split into batches, batches shuffled: rows of a
    batch have similar lengths, so little padding is computed."""
    g = torch.Generator().manual_seed(seed)
    N = len(lens)
    while True:
        if not sortish:
            yield torch.randint(N, (B,), generator=g)
            continue
        perm = torch.randperm(N, generator=g)
        chunks = [c[torch.argsort(lens[c], stable=True)] for c in perm.split(50 * B)]
        batches = [b for c in chunks for b in c.split(B)]  # a chunk's last batch may be short (and N < B works)
        for i in torch.randperm(len(batches), generator=g).tolist():
            yield batches[i]


def lm_loss(model, x, y):
    """Mean next-token cross-entropy over labelled positions; x, y (B, T)."""
    logits = model(input_ids=x[:, :-1]).logits  # (B, T-1, V)
    return F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y[:, 1:].reshape(-1), ignore_index=-100,
                           reduction="sum"), (y[:, 1:] != -100).sum()


@torch.no_grad()
def evaluate(model, x, y, device, bs, amp):
    model.eval()
    tot, n = torch.zeros((), device=device), torch.zeros((), device=device)
    for i in range(0, len(x), bs):
        xb, yb = x[i:i + bs].to(device), y[i:i + bs].to(device)
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=amp):
            s, c = lm_loss(model, xb, yb)
        tot, n = tot + s, n + c
    model.train()
    return (tot / n.clamp(min=1)).item()


def make_model(spec, tok, out_root: Path):
    from transformers import GPT2Config, GPT2LMHeadModel

    if spec["init"]:
        init_dir = out_root / spec["init"]
        if not (init_dir / "config.json").is_file():
            raise FileNotFoundError(f"fine-tune needs its base first: {init_dir} (train '{spec['init']}' before)")
        return GPT2LMHeadModel.from_pretrained(str(init_dir)).float()
    cfg = GPT2Config(vocab_size=len(tok), n_positions=512, n_embd=spec["n_embd"], n_layer=spec["n_layer"],
                     n_head=spec["n_head"], bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                     pad_token_id=tok.pad_token_id, resid_pdrop=0.1, embd_pdrop=0.1, attn_pdrop=0.1,
                     tie_word_embeddings=True)
    torch.manual_seed(0)
    return GPT2LMHeadModel(cfg)


def train_one(name, tok, corpora, out_root, budget_s, device, batch_size, T, max_steps=None, eval_rows=1024):
    spec = ZOO[name]
    t_start = time.time()
    amp = device.startswith("cuda")
    rows, starts, sources = load_split(corpora, spec["data"], "train", tok, T)
    vrows, vstarts, _ = load_split(corpora, spec["data"], "val", tok, T)
    if not rows:
        raise ValueError(f"{name}: no training rows for data {spec['data']!r} in {corpora}")
    val_is_train_slice = not vrows
    if not vrows:  # tiny smoke corpora may have no val split: fall back to a slice of train (flagged in the card)
        vrows, vstarts = rows[: max(1, len(rows) // 10)], starts[: max(1, len(rows) // 10)]
    x, y = to_tensors(rows, starts, tok.pad_token_id, T)
    vx, vy = to_tensors(vrows[:eval_rows], vstarts[:eval_rows], tok.pad_token_id, T)
    lens = (x != tok.pad_token_id).sum(1)  # (N,) real tokens per row (right padding); stays on the CPU
    L = int(lens.max())  # drop all-pad columns
    x, y, vx, vy = x[:, :L], y[:, :L], vx[:, :L], vy[:, :L]
    x, y = x.to(device), y.to(device)
    model = make_model(spec, tok, out_root).to(device).train()
    n_params = sum(p.numel() for p in model.parameters())
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=spec["lr"], betas=(0.9, 0.95), **({"fused": True} if amp else {}))
    warm = 100
    batches = _batches(lens, batch_size, sortish=not amp, seed=0)
    total = max_steps or 10 ** 9  # re-estimated after timing
    tokens = torch.zeros((), dtype=torch.long, device=device)
    best = (float("inf"), None, 0)
    history, step, t_loop = [], 0, time.time()
    eval_every = None
    while True:
        if step in (20, warm + 20) and max_steps is None:  # time steps 20..warm+20 (no start-up cost), then
            if amp:                                           # fix the cosine schedule to the remaining budget
                torch.cuda.synchronize()
            if step == 20:
                t_loop = time.time()
            else:
                per = (time.time() - t_loop) / warm
                total = max(step + 1, int((budget_s - (time.time() - t_start) - 8) / per) + step)
        if eval_every is None and step >= min(total, warm + 20):
            eval_every = max(1, (total - step) // 10)
        lr = spec["lr"] * (step + 1) / warm if step < warm else \
            spec["lr"] * (0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm)))))
        for grp in opt.param_groups:
            grp["lr"] = lr
        idx = next(batches)  # (B,) on the CPU
        Lb = int(lens[idx].max())  # drop the batch's all-pad columns (exact: padding is on the right); no GPU sync
        idx = idx.to(device)
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=amp):
            s, c = lm_loss(model, x[idx, :Lb], y[idx, :Lb])
        loss = s / c.clamp(min=1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        tokens += c
        step += 1
        out_of_time = time.time() - t_start > budget_s - 6
        if (eval_every and step % eval_every == 0) or step >= total or out_of_time:
            v = evaluate(model, vx, vy, device, 256, amp)
            history.append(dict(step=step, train_loss=round(loss.item(), 4), val_loss=round(v, 4),
                                seconds=round(time.time() - t_start, 1)))
            print(f"[{name}] step {step}/{total} train {loss.item():.3f} val {v:.3f} "
                  f"({time.time() - t_start:.0f}/{budget_s:.0f}s)", flush=True)
            if v < best[0]:
                best = (v, {k: t.detach().clone() for k, t in model.state_dict().items()}, step)
        if step >= total or out_of_time:
            break
    model.load_state_dict(best[1])
    model.eval()
    metrics = dict(name=name, params=n_params, steps=step, best_step=best[2], val_loss=round(best[0], 4),
                   val_ppl=round(math.exp(best[0]), 2), tokens_seen=int(tokens.item()), batch_size=batch_size,
                   max_len=L, lr=spec["lr"], train_rows=len(x), val_rows=len(vx), data=spec["data"],
                   sources=sources, init=spec["init"], budget_s=budget_s,
                   seconds=round(time.time() - t_start, 1), device=torch.cuda.get_device_name() if amp else device,
                   arch=dict(n_layer=model.config.n_layer, n_embd=model.config.n_embd, n_head=model.config.n_head,
                             vocab_size=model.config.vocab_size, n_positions=model.config.n_positions),
                   history=history, created=_dt.date.today().isoformat(),
                   val_is_train_slice=val_is_train_slice)
    return model, metrics


# ----------------------------------------------------------------------------------------------- card


@torch.no_grad()
def samples_for(name, model, tok, corpora, device, n=5, max_new=120, seed=0):
    """n ancestral samples (temperature 1, no top-k/top-p): from <|bos|>, or from held-out contexts."""
    data = ZOO[name]["data"]
    prompts = [""] * n
    if data == "news-summary":
        recs = [r for r in read_corpus(corpora / "summaries_smollm.jsonl.gz")[1] if r["split"] == "test"]
        seen, prompts = set(), []
        for r in recs:
            if r["article_id"] not in seen and len(prompts) < n:
                seen.add(r["article_id"])
                prompts.append(r["article"] + TLDR)
    elif data == "code":
        recs = [r for r in read_corpus(corpora / "code_stdlib.jsonl.gz")[1] if r["split"] == "test"][:n]
        prompts = [r["prompt"] + "\n" for r in recs]
    out = []
    torch.manual_seed(seed)
    for p in prompts:
        ids = [tok.bos_token_id] + tok(p, add_special_tokens=False)["input_ids"][-(400 - max_new):]
        inp = torch.tensor([ids], device=device)
        gen = model.generate(input_ids=inp, attention_mask=torch.ones_like(inp), do_sample=True, temperature=1.0,
                             top_k=0, top_p=1.0, max_new_tokens=max_new, eos_token_id=tok.eos_token_id,
                             pad_token_id=tok.pad_token_id)
        out.append((p, tok.decode(gen[0, len(ids):], skip_special_tokens=True)))
    return out


ANALOGUE = {"base": "gpt2 (general English base)", "reviews": "gpt2-imdb (movie-review fine-tune)",
            "bios": "gpt2 fine-tuned on WikiBio (biographies)", "news-summary": "t5-small on CNN/DailyMail (summariser)",
            "code": "GPT-Neo-125M on Python150 (code from signatures)"}


def write_card(path: Path, m: dict, samples):
    ana = ANALOGUE.get(m["name"], "size-ladder rung (gpt2 / -medium / -large / -xl scaling)")
    hist = "\n".join(f"| {h['step']} | {h['train_loss']} | {h['val_loss']} | {h['seconds']} |" for h in m["history"])
    smp = []
    for p, s in samples:
        ctx = f"**context** (held out):\n\n```\n{p[-600:]}\n```\n\n" if p else ""
        smp.append(f"{ctx}```\n{s.strip()}\n```")
    fmt = ("[bos] article \\nTL;DR: summary [eos], loss on the summary" if m["data"] == "news-summary"
           else "[bos] document [eos], one per row")
    vnote = ", a train slice" if m["val_is_train_slice"] else ""
    prec = "fp32" if m["device"] == "cpu" else "bf16 autocast"
    text = f"""# fdpg-zoo/{m['name']}

GPT-2-architecture LM of the f-DPG reproduction kit; offline analogue of **{ana}**. Licence Apache-2.0.

| | |
|---|---|
| architecture | GPT2LMHeadModel, {m['arch']['n_layer']} layers, d={m['arch']['n_embd']}, {m['arch']['n_head']} heads, vocab {m['arch']['vocab_size']}, n_positions {m['arch']['n_positions']}, tied embeddings |
| parameters | {m['params']:,} |
| initialised from | {m['init'] or 'random'} |
| data | {', '.join(m['sources'])} (data/corpora; train split, {m['train_rows']:,} rows, max {m['max_len']} tokens) |
| format | {fmt} |
| training | {m['steps']:,} steps, batch {m['batch_size']}, {m['tokens_seen']:,} loss tokens, peak lr {m['lr']}, AdamW, cosine, {prec}, {m['seconds']} s on {m['device']} (budget {m['budget_s']} s) |
| validation loss | **{m['val_loss']}** nats/token (ppl {m['val_ppl']}) at step {m['best_step']} (best of the evaluations; {m['val_rows']} val rows{vnote}) |
| storage | bf16 safetensors; tokenizer: the kit's 4,096-entry byte-level BPE (<\\|bos\\|>=0, <\\|eos\\|>=1, <\\|pad\\|>=2) |
| built by | scripts/pretrain_zoo.py ({m['created']}) |

## Validation curve
| step | train loss | val loss | s |
|---|---|---|---|
{hist}

## Samples (ancestral sampling, temperature 1, no top-k/top-p, up to 120 tokens)

""" + "\n\n".join(f"{i + 1}. " + s for i, s in enumerate(smp)) + "\n"
    path.write_text(text)


def save(model, tok, metrics, samples, out: Path):
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    model.to(torch.bfloat16).save_pretrained(str(out))  # bf16 halves the size; loads back as bf16
    tok.save_pretrained(str(out))
    metrics["samples"] = [dict(context=p, text=s) for p, s in samples]
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    write_card(out / "README.md", metrics, samples)


def summarise(out_root: Path):
    """zoo.json: every trained model's headline numbers and the size ladder."""
    models = {}
    for d in sorted(out_root.iterdir()):
        if (d / "metrics.json").is_file():
            m = json.loads((d / "metrics.json").read_text())
            models[d.name] = {k: m[k] for k in ("params", "val_loss", "val_ppl", "steps", "tokens_seen", "seconds",
                                                "data", "init", "device")}
            models[d.name]["bytes"] = sum(f.stat().st_size for f in d.iterdir())
    zoo = dict(models=models, ladder=[n for n in LADDER if n in models], created=_dt.date.today().isoformat())
    (out_root / "zoo.json").write_text(json.dumps(zoo, indent=1) + "\n")
    return zoo


def main(argv=None):
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="base,reviews,bios,news-summary,code,ladder-xs,ladder-s,ladder-l")
    ap.add_argument("--budgets", default=None, help="seconds per model (comma list, or one value for all)")
    ap.add_argument("--corpora", default=str(REPO / "data" / "corpora"))
    ap.add_argument("--tokenizer", default=str(REPO / "data" / "tokenizer"))
    ap.add_argument("--out", default=str(REPO / "runs" / "zoo"))
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batch-size", type=int, default=None, help="default 128 on CUDA, 4 on CPU")
    ap.add_argument("--max-len", type=int, default=None, help="tokens per row; default 384 (512 news-summary)")
    ap.add_argument("--max-steps", type=int, default=None, help="fixed step count (smoke runs) instead of budget")
    ap.add_argument("--sample-tokens", type=int, default=120)
    ap.add_argument("--eval-rows", type=int, default=None, help="validation rows; default 1024 on CUDA, 256 on CPU")
    ap.add_argument("--summarise", action="store_true", help="only write zoo.json from the trained models")
    args = ap.parse_args(argv)
    from transformers import AutoTokenizer

    out_root = Path(args.out)
    if args.summarise:
        print(json.dumps(summarise(out_root), indent=1))
        return
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    names = args.models.split(",")
    bad = [n for n in names if n not in ZOO]
    if bad:
        raise ValueError(f"unknown model(s) {bad}; allowed: {list(ZOO)}")
    budgets = [float(b) for b in (args.budgets or "60").split(",")]
    budgets = budgets * len(names) if len(budgets) == 1 else budgets
    if len(budgets) != len(names):
        raise ValueError(f"--budgets has {len(budgets)} values for {len(names)} models")
    tok = AutoTokenizer.from_pretrained(args.tokenizer)
    bs = args.batch_size or (128 if device.startswith("cuda") else 4)
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
    failed = []
    for name, b in zip(names, budgets):
        T = args.max_len or (512 if ZOO[name]["data"] == "news-summary" else 384)
        try:
            model, metrics = train_one(name, tok, Path(args.corpora), out_root, b, device, bs, T, args.max_steps,
                                       eval_rows=args.eval_rows or (1024 if device.startswith("cuda") else 256))
            samples = samples_for(name, model, tok, Path(args.corpora), device, max_new=args.sample_tokens)
            save(model, tok, metrics, samples, out_root / name)
        except Exception as e:  # one model's failure must not cost the others (one-shot GPU builds)
            import traceback

            traceback.print_exc()
            print(f"[{name}] FAILED: {e!r}", flush=True)
            failed.append(name)
            continue
        print(f"[{name}] saved: {metrics['params']:,} params, val {metrics['val_loss']}, {metrics['steps']} steps, "
              f"{metrics['seconds']}s", flush=True)
    if failed:
        sys.exit(f"failed: {failed}")


if __name__ == "__main__":
    main()
