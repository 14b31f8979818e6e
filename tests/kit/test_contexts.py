"""Context sets (fdpg_core.kit.contexts): prompts match the zoo's training format, subsets keep prompts and
references together, bad names list the allowed ones."""
import pytest
import torch

from conftest import load_script
from fdpg_core.kit import contexts, zoo
from fdpg_core.kit.contexts import ContextSet


@pytest.fixture(scope="module")
def tok():
    return zoo.load_zoo_tokenizer()


def test_trim_left_and_subset_keep_prompts():
    ids = torch.tensor([[2, 2, 2, 5, 6], [2, 2, 7, 8, 9], [2, 2, 2, 2, 4]])
    mask = (ids != 2).long()
    cs = ContextSet("x", ids, mask, ["a", "b", "c"], [["ra"], ["rb"], ["rc"]])
    s = cs.sorted_by_length()
    assert s.contexts == ["c", "a", "b"] and s.references == [["rc"], ["ra"], ["rb"]]
    sub = cs.subset([2, 0])
    assert sub.ids.tolist() == [[2, 4], [5, 6]] and sub.mask.tolist() == [[0, 1], [1, 1]]
    assert contexts.trim_left(ids, mask)[0].tolist() == [[2, 5, 6], [7, 8, 9], [2, 2, 4]]
    with pytest.raises(ValueError, match="must agree"):
        ContextSet("bad", ids, mask, ["a"])


def test_prompts_are_the_first_tokens_of_training_rows(tok):
    """Prompt tokens == the first tokens of a training row of scripts/pretrain_zoo.py (summary and code)."""
    pz = load_script("pretrain_zoo")
    rec = next(r for r in zoo.load_corpus("summaries_smollm", "test") if r["article_source"] == "lee")
    (row,), (start,) = pz._summary_rows(tok, [rec], 512)
    p = contexts.zoo_prompts("news-summary", tokenizer=tok)
    c = p.contexts.index(rec["article"])
    assert p.ids[c][p.mask[c].bool()].tolist() == row[:start]
    assert rec["summary"] in p.references[c]  # the article's SmolLM2 summaries are its references
    p = contexts.zoo_prompts("code", 5, tokenizer=tok)
    for c in range(5):
        fn = next(r for r in zoo.load_corpus("code_stdlib", "test") if r["prompt"] == p.contexts[c])
        (row,), _ = pz._rows(tok, [fn["code"]], 512)
        got = p.ids[c][p.mask[c].bool()].tolist()
        assert got == row[:len(got)] and tok.decode(row[len(got)]).startswith("\n")  # the model writes "\n    "
    he = contexts.code_contexts("he", "heldout", 3, source="humaneval", docstring=False, tokenizer=tok)
    assert all(c.rstrip().endswith(":") and "def " in c for c in he.contexts)
    b = contexts.bos_contexts(3)
    assert b.ids.tolist() == [[0]] * 3 and b.contexts == [""] * 3 and len(contexts.task_prompts("female")) == 1


def test_summary_prompts_cut_articles_and_fit_the_prompt_budget(tok):
    """Articles are cut at a sentence end to max_article_chars; a prompt longer than max_prompt_tokens keeps the
    article's start and always ends with "\\nTL;DR:"."""
    tl = tok(zoo.TLDR, add_special_tokens=False)["input_ids"]
    cs = contexts.summary_contexts("s", "test", 4, tokenizer=tok, max_article_chars=300)
    assert all(len(a) <= 300 and a.rstrip()[-1] in ".?!" for a in cs.contexts)
    full = contexts.summary_contexts("f", "test", 4, tokenizer=tok)
    short = contexts.summary_contexts("t", "test", 4, tokenizer=tok, max_prompt_tokens=20)
    for c in range(4):
        row, row_full = short.ids[c][short.mask[c].bool()].tolist(), full.ids[c][full.mask[c].bool()].tolist()
        assert len(row) == 20 and row[-len(tl):] == tl and row[:-len(tl)] == row_full[:20 - len(tl)]
    assert contexts.summary_contexts("g", "test", 2, source="smollm", tokenizer=tok).references is not None


def test_unknown_names_list_the_allowed_ones(tok):
    with pytest.raises(ValueError, match=r"'summaries'.*news-summary"):
        contexts.zoo_prompts("summaries")
    with pytest.raises(ValueError, match=r"'cnn'.*cnn_dailymail"):
        contexts.summary_contexts("x", "test", tokenizer=tok, source="cnn")
    with pytest.raises(ValueError, match=r"'python150'.*humaneval"):
        contexts.code_contexts("x", "test", tokenizer=tok, source="python150")
    with pytest.raises(ValueError, match=r"'toxicity'.*amazing"):
        contexts.task_prompts("toxicity")
    with pytest.raises(ValueError, match=r"fits max_prompt_tokens=2"):
        contexts.code_contexts("x", "test", tokenizer=tok, max_prompt_tokens=2)


def test_instruction_contexts_without_a_chat_template_are_bos_and_the_text(tok):
    cs = contexts.instruction_contexts(["a review", "write a much longer review of a film"], tok)
    for row, m, text in zip(cs.ids, cs.mask, cs.contexts):
        real = row[m.bool()].tolist()
        assert real == [zoo.BOS_ID] + tok.encode(text, add_special_tokens=False)
    assert cs.mask[0, 0] == 0 and cs.mask[1].all()  # left padded to the longer one
    for bad in ("one string", [], [""]):
        with pytest.raises(ValueError, match="instructions="):
            contexts.instruction_contexts(bad, tok)
