"""Context sets: the prompts of a task together with the texts its scorer compares a sample with.

    ContextSet               C prompts ids/mask (C, Tp) left padded, the context texts, optional reference texts
    trim_left(ids, mask)     drop the leading columns that are padding in every row
    bos_contexts(n)          n prompts of just <|bos|> (unconditional tasks)
    instruction_contexts(..) one prompt per instruction, through the tokenizer's chat template (an instruct LM)
    summary_contexts(...)    "{article}\\nTL;DR:" prompts of the zoo's news-summary model (Lee articles with SmolLM2
                             references, or generated reports) or "summarize: {article}" prompts of T5 (CNN/DailyMail)
    code_contexts(...)       signature (+ docstring) prompts: stdlib held-out functions, HumanEval
    zoo_prompts(kind, ...)   the zoo's prompts by kind: bos, news-summary, code, humaneval
    task_prompts(task, ...)  the prompts of zoo.ZOO_TASKS[task]

Prompts are tokenised exactly like the training rows of scripts/pretrain_zoo.py: a summary row is
[bos] + enc(article) + enc("\\nTL;DR:") + enc(" " + summary) + [eos] (each piece encoded on its own). A code prompt
is [bos] + enc(signature + docstring), ending at the docstring's closing quotes: the byte-level pre-tokeniser splits
there, so the prompt's tokens are exactly the first tokens of the training row, and the model writes the "\\n    "
indentation token itself (a prompt ending in "\\n" would not be: training text has "\\n" merged with the
indentation that follows).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from fdpg_core.kit import zoo
from fdpg_core.kit.scorers import _pick
from fdpg_core.sampling import bos_prompts, left_pad

__all__ = ["ContextSet", "trim_left", "bos_contexts", "instruction_contexts", "summary_contexts", "code_contexts",
           "zoo_prompts", "task_prompts"]


def trim_left(ids: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Drop the leading columns that are padding in every row (left-padded prompts of a sub-batch)."""
    real = mask.bool().any(0)  # (Tp,)
    first = int(real.nonzero()[0]) if real.any() else 0
    return ids[:, first:], mask[:, first:]


@dataclass(frozen=True, eq=False)
class ContextSet:
    """C contexts: prompts ids/mask (C, Tp) left padded; `contexts[c]` is what a conditional scorer compares
    row c with (the article; the prompt text the body is appended to; "" for a BOS prompt); `references[c]` the
    reference texts (summaries) or None."""

    name: str
    ids: Tensor
    mask: Tensor
    contexts: list[str]
    references: list[list[str]] | None = None

    def __post_init__(self):
        C = len(self.contexts)
        if self.ids.shape[0] != C or self.ids.shape != self.mask.shape:
            raise ValueError(f"ContextSet {self.name!r}: ids {tuple(self.ids.shape)}, mask {tuple(self.mask.shape)} "
                             f"and {C} contexts must agree (C, Tp)")
        if self.references is not None and len(self.references) != C:
            raise ValueError(f"ContextSet {self.name!r}: {len(self.references)} reference lists for {C} contexts")

    @property
    def pair(self) -> tuple[Tensor, Tensor]:
        """(ids, mask): the `prompts` argument of fdpg_core.train.train."""
        return self.ids, self.mask

    def __len__(self) -> int:
        return len(self.contexts)

    def prompt_lengths(self) -> Tensor:
        return self.mask.sum(1)  # (C,)

    def subset(self, idx: Sequence[int]) -> "ContextSet":
        """Contexts idx (in that order), left padding trimmed."""
        idx = torch.as_tensor(list(idx), dtype=torch.long)
        ids, mask = trim_left(self.ids[idx], self.mask[idx])
        refs = None if self.references is None else [self.references[i] for i in idx.tolist()]
        return ContextSet(self.name, ids, mask, [self.contexts[i] for i in idx.tolist()], refs)

    def sorted_by_length(self) -> "ContextSet":
        """Contexts ordered by prompt length: `train` takes contexts round-robin, so neighbours share a batch and
        little padding (conditional.sample_trimmed drops the rest)."""
        return self.subset(torch.argsort(self.prompt_lengths(), stable=True).tolist())


def _limit(recs: list, n: int | None, skip: int = 0) -> list:
    if n is not None and (not isinstance(n, int) or n < 1):
        raise ValueError(f"n must be None or an int >= 1, got {n!r}")
    return recs[skip:] if n is None else recs[skip:skip + n]


def bos_contexts(n: int = 1, name: str = "bos") -> ContextSet:
    """n prompts of just <|bos|> (unconditional tasks; train() takes one row, C = 1); contexts are ""."""
    ids, mask = bos_prompts(n, zoo.BOS_ID)
    return ContextSet(name, ids, mask, [""] * n)


def instruction_contexts(instructions: Sequence[str], tokenizer, name: str = "instruction") -> ContextSet:
    """One prompt per instruction, so that the continuation is the model's answer: the tokenizer's chat template
    (its default system message, the instruction as the user's message, then the assistant's header) when it has
    one, as SmolLM2-135M-Instruct's; without a chat template, BOS (if any) followed by the instruction's tokens.
    Left padded with the tokenizer's pad id (its EOS id when it has none); contexts are the instructions."""
    if isinstance(instructions, str) or not instructions or not all(isinstance(t, str) and t.strip()
                                                                    for t in instructions):
        raise ValueError(f"instruction_contexts: instructions={instructions!r}; allowed: a non-empty list of "
                         "non-empty strings")
    rows = []
    for text in instructions:
        if getattr(tokenizer, "chat_template", None):
            ids = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True)
            ids = ids["input_ids"] if hasattr(ids, "keys") else ids  # transformers 5 returns a BatchEncoding
        else:
            bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
            ids = bos + tokenizer.encode(text, add_special_tokens=False)
        rows.append([int(i) for i in ids])
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids, mask = left_pad(rows, pad)
    return ContextSet(name, ids, mask, list(instructions))


def summary_contexts(name: str, split: str, n: int | None = None, *, tokenizer, source: str = "lee",
                     max_article_chars: int = 900, prompt_format: str = "tldr", max_prompt_tokens: int = 512,
                     skip: int = 0) -> ContextSet:
    """Summarisation contexts: articles of `split` (records skip .. skip + n), each truncated at a sentence end to
    max_article_chars (zoo.truncate_article, the cut the zoo's summaries were generated and trained on); the
    scorer's context is exactly that truncated article.

    source "lee": real ABC articles (news_lee; test = the 49 lee.cor articles, never trained on); "smollm": the
    generated reports of news_smollm; references of both = the SmolLM2 summaries of the same article
    (summaries_smollm). "cnn_dailymail" (paper preset): articles and highlights through
    fdpg_core.kit.paper.load_paper_dataset (needs the hub or its cache).
    prompt_format "tldr": [bos] article "\\nTL;DR:" (the zoo news-summary model, scripts/pretrain_zoo.py), an
    article too long for max_prompt_tokens cut at its end (no zoo article reaches 400 tokens at 900 characters);
    "t5": "summarize: " + article, T5's tokenizer (with its </s>), cut to max_prompt_tokens.
    """
    _pick("summary source", source, {"lee", "smollm", "cnn_dailymail"})
    _pick("prompt_format", prompt_format, {"tldr", "t5"})

    if source in ("lee", "smollm"):
        recs = _limit(zoo.load_corpus("news_lee" if source == "lee" else "news_smollm", split), n, skip)
        refs_by_id: dict[str, list[str]] = {}
        for r in zoo.load_corpus("summaries_smollm"):
            refs_by_id.setdefault(r["article_id"], []).append(r["summary"])
        arts = [zoo.truncate_article(r["text"], max_article_chars) for r in recs]
        refs = [refs_by_id.get(r["id"], []) for r in recs]
    else:
        from fdpg_core.kit.paper import load_paper_dataset

        ds = load_paper_dataset("cnn_dailymail", split=split)
        rows = ds.select(range(skip, min(len(ds), skip + (n or len(ds)))))
        arts = [zoo.truncate_article(a, max_article_chars) for a in rows["article"]]
        refs = [[h] for h in rows["highlights"]]
    if not arts:
        raise ValueError(f"summary_contexts: no article in split {split!r} of {source!r} (skip={skip}, n={n})")
    if prompt_format == "tldr":
        tl = tokenizer(zoo.TLDR, add_special_tokens=False)["input_ids"]
        body = tokenizer(arts, add_special_tokens=False)["input_ids"]
        keep = max_prompt_tokens - 1 - len(tl)
        rows = [[zoo.BOS_ID] + b[:keep] + tl for b in body]  # a too long article is cut at its end
        pad = zoo.PAD_ID
    else:
        rows = tokenizer(["summarize: " + a for a in arts], truncation=True, max_length=max_prompt_tokens)["input_ids"]
        pad = tokenizer.pad_token_id
    ids, mask = left_pad(rows, pad)
    return ContextSet(name, ids, mask, arts, refs if any(refs) else None)


def code_contexts(name: str, split: str, n: int | None = None, *, tokenizer, source: str = "stdlib",
                  docstring: bool = True, max_prompt_tokens: int = 256, bos_token_id: int | None = 0) -> ContextSet:
    """Code contexts: function prompts whose generated body is appended to the context text by the Compiles / PEP8
    scorers. source "stdlib": functions of code_stdlib (splits train / val / test; the zoo's code model trained on
    train); "humaneval": HumanEval's 164 prompts (split "heldout"; imports + signature + docstring).
    docstring=True: signature + docstring (what the zoo model was trained to continue); False: the signature
    line(s) only (the paper's Python150 setting: the model then writes the docstring too).
    Prompts longer than max_prompt_tokens (first token included) are skipped, never cut: the body must follow the
    whole prompt. With 256 and 128 new tokens a row fits the zoo's 512 positions.
    bos_token_id: first token of every prompt (the zoo's <|bos|> = 0; GPT-Neo: its <|endoftext|>; None: none)."""
    _pick("code source", source, {"stdlib", "humaneval"})

    recs = zoo.load_corpus("code_humaneval" if source == "humaneval" else "code_stdlib", split)
    if source == "humaneval":
        texts = [r["prompt"].rstrip() if docstring else
                 r["prompt"][: r["prompt"].index(r["signature"]) + len(r["signature"])] for r in recs]
    else:
        texts = [r["prompt"] if docstring else r["signature"] for r in recs]
    head = [] if bos_token_id is None else [int(bos_token_id)]
    enc = tokenizer(texts, add_special_tokens=False)["input_ids"]
    rows = _limit([(t, head + e) for t, e in zip(texts, enc) if len(head) + len(e) <= max_prompt_tokens], n)
    if not rows:
        raise ValueError(f"code_contexts: no {source} prompt of split {split!r} fits max_prompt_tokens="
                         f"{max_prompt_tokens}")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else zoo.PAD_ID
    ids, mask = left_pad([r for _, r in rows], pad)
    return ContextSet(name, ids, mask, [t for t, _ in rows])


PROMPT_KINDS = ("bos", "news-summary", "code", "humaneval")


def zoo_prompts(kind: str, n: int | None = None, *, split: str = "test", tokenizer=None) -> ContextSet:
    """The zoo's prompts by kind (a ContextSet named `kind`): "bos" (n BOS rows, default 1), "news-summary"
    (Lee articles of `split`, <= 900 characters, "\\nTL;DR:", <= 400 prompt tokens), "code" (stdlib signatures +
    docstrings of `split`, <= 256 tokens), "humaneval" (HumanEval prompts; split "test" means its "heldout")."""
    _pick("prompt kind", kind, PROMPT_KINDS)
    if kind == "bos":
        return bos_contexts(n or 1, kind)
    tok = tokenizer or zoo.load_zoo_tokenizer()
    if kind == "news-summary":
        return summary_contexts(kind, split, n, tokenizer=tok, max_prompt_tokens=400)
    if kind == "humaneval" and split == "test":
        split = "heldout"
    return code_contexts(kind, split, n, tokenizer=tok, source="stdlib" if kind == "code" else "humaneval",
                         bos_token_id=zoo.BOS_ID)


def task_prompts(task: str, n: int | None = None, *, split: str = "test", tokenizer=None) -> ContextSet:
    """The prompts of zoo.ZOO_TASKS[task] (one BOS row for unconditional tasks unless n is given)."""
    _pick("zoo task", task, zoo.ZOO_TASKS)
    return zoo_prompts(zoo.ZOO_TASKS[task].prompts, n, split=split, tokenizer=tokenizer)
