"""Scorers on hand-made texts with known answers (fdpg_core.kit.scorers)."""
import threading
import types

import pytest
import torch

from fdpg_core.kit import scorers as S


def batch(texts, context_ids=None):
    """A Samples-like object (only the fields scorers read)."""
    if context_ids is not None:
        context_ids = torch.tensor(context_ids)
    return types.SimpleNamespace(texts=texts, context_ids=context_ids)


def values(t):
    return t.tolist()


# ---------------------------------------------------------------- inputs
def test_texts_none_says_to_decode():
    with pytest.raises(ValueError, match="fdpg_core.sampling.decode"):
        S.WordPresence("amazing")(batch(None))


def test_texts_must_be_a_list_of_str():
    with pytest.raises(ValueError, match="single str"):
        S.WordPresence("amazing")(batch("amazing"))
    with pytest.raises(ValueError, match="int"):
        S.WordPresence("amazing")(batch(["a", 3]))


@pytest.mark.parametrize("bad", ["", "   ", None])
def test_bad_word(bad):
    with pytest.raises(ValueError, match="non-empty"):
        S.WordPresence(bad)


def test_context_ids_checked():
    sc = S.Compiles(["def f():\n", "def g():\n"])
    with pytest.raises(ValueError, match=r"context id 2 out of range: "
                                         r"allowed ids are 0\.\.1"):
        sc(batch(["    pass\n"], [2]))
    with pytest.raises(ValueError, match="context_ids is None"):
        S.EntityConsistency(["src"])(batch(["x"]))
    with pytest.raises(ValueError, match="has 1 entries but samples.texts "
                                         "has 2"):
        sc(batch(["    pass\n", "    pass\n"], [0]))
    with pytest.raises(ValueError, match="needs contexts"):
        S.EntityConsistency(None)


def test_bad_options_name_allowed_values():
    with pytest.raises(ValueError, match=r"'neutral'.*negative.*positive"):
        S.VaderPolarity("neutral")
    with pytest.raises(ValueError, match=r"'exec'.*codeop.*compile"):
        S.Compiles(method="exec")
    with pytest.raises(ValueError, match=r"'cooking'.*art.*business"):
        S.Professions(("science", "cooking"))
    with pytest.raises(ValueError, match=r"'sport'.*politics.*science"):
        S.WordListPresence("sport")
    with pytest.raises(ValueError, match=r"'score'.*binary.*log_prob"):
        S.HFClassifier(output="score")


# ---------------------------------------------------------------- words
def test_word_presence_whole_word_case_insensitive():
    texts = ["An amazing film.", "AMAZING!", "amazingly good", "amaz ing",
             "(Amazing)", "it's amazing's end", "", "amazing-looking",
             "unamazing", "amazing_x", "so\namazing\n"]
    out = S.WordPresence("amazing")(batch(texts))
    assert out.dtype == torch.float32 and out.shape == (len(texts),)
    assert values(out) == [1, 1, 0, 0, 1, 1, 0, 1, 0, 0, 1]


def test_word_presence_mixed_case_word_and_empty_batch():
    sc = S.WordPresence("WikiLeaks")
    assert values(sc(batch(["wikileaks said", "WIKILEAKS.", "Wiki Leaks",
                            "WikiLeaksFiles"]))) == [1, 1, 0, 0]
    assert sc(batch([])).shape == (0,)


def test_word_list_presence_phrases_and_named_lists():
    sc = S.WordListPresence(["prime minister", "senate"])
    assert values(sc(batch(["The Prime   Minister spoke.", "the minister",
                            "Senate vote", "senates", "primeminister"]))) \
        == [1, 0, 1, 0, 0]
    sci = S.WordListPresence("science")
    pol = S.WordListPresence("politics")
    texts = ["The physicist ran an experiment.", "The senator won the "
             "election.", "A dog slept in the sun."]
    assert values(sci(batch(texts))) == [1, 0, 0]
    assert values(pol(batch(texts))) == [0, 1, 0]


def test_word_lists_are_lower_case_and_distinct():
    lists = {**S.TOPIC_WORDS, **{f"p_{k}": v for k, v in
                                 S.PROFESSION_WORDS.items()}}
    for name, words in lists.items():
        assert len(words) == len(set(words)) >= 20, name
        assert all(w == w.lower().strip() and w for w in words), name
    assert set(S.PROFESSION_WORDS) == set(S.PROFESSIONS)


def test_professions_one_feature_per_profession():
    texts = ["She is a physicist at the laboratory.",
             "He was a painter and sculptor.",
             "A footballer who played in the league.",
             "An entrepreneur who founded a company.",
             "A physicist who became an entrepreneur.",
             "He was born in 1950."]
    phi = S.Professions()(batch(texts))
    assert phi.shape == (6, 4) and phi.dtype == torch.float32
    assert values(phi) == [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0],
                           [0, 0, 0, 1], [1, 0, 0, 1], [0, 0, 0, 0]]
    two = S.Professions(("sports", "science"))
    assert two.names == ("sports", "science")
    assert values(two(batch(texts[:3]))) == [[0, 1], [0, 0], [1, 0]]
    assert two(batch([])).shape == (0, 2)
    own = S.Professions(("chef",), word_lists={"chef": ["chef", "cook"]})
    assert values(own(batch(["The Chef.", "chefs"]))) == [[1], [0]]


def test_female_pronouns_counts_and_ties():
    sc = S.FemalePronouns()
    texts = ["She said her book was hers.",
             "He and she met.",                     # tie 1-1 -> 0
             "She thanked him and his team.",       # 1 < 2 -> 0
             "Hermione and Theodore went there.",   # no pronouns -> 0
             "SHE'S here; he isn't, but she is.",   # 2 > 1 -> 1
             "The theme of the show."]              # "he" inside words
    assert values(sc.counts(texts)) == [[3, 0], [1, 1], [1, 2], [0, 0],
                                        [2, 1], [0, 0]]
    phi = sc(batch(texts))
    assert phi.shape == (6,) and values(phi) == [1, 0, 0, 0, 1, 0]
    assert sc(batch([])).shape == (0,)


# ---------------------------------------------------------------- sentiment
def test_vader_compound_matches_vader_and_is_bounded():
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
    texts = ["This movie is wonderful, I loved every minute!",
             "Terrible, boring and awful. I hated it.",
             "The film is 120 minutes long.", ""]
    r = S.VaderCompound()(batch(texts))
    ref = [SentimentIntensityAnalyzer().polarity_scores(t)["compound"]
           for t in texts]
    assert r.shape == (4,) and torch.allclose(r, torch.tensor(ref))
    assert r[0] > 0.5 and r[1] < -0.5 and r[2] == 0 and r[3] == 0
    assert bool(((r >= -1) & (r <= 1)).all())


def test_vader_polarity_threshold_is_inclusive():
    texts = ["This movie is wonderful!", "This movie is awful!",
             "The film is long."]
    assert values(S.VaderPolarity("positive")(batch(texts))) == [1, 0, 0]
    assert values(S.VaderPolarity("negative")(batch(texts))) == [0, 1, 0]
    c = float(S.VaderCompound()(batch(texts[:1]))[0])
    assert S.VaderPolarity("positive", c)(batch(texts[:1])).item() == 1
    assert S.VaderPolarity("positive", c + 1e-3)(batch(texts[:1])).item() \
        == 0
    with pytest.raises(ValueError, match="threshold"):
        S.VaderPolarity("positive", 1.5)


def _tiny_classifier():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (DistilBertConfig,
                              DistilBertForSequenceClassification,
                              PreTrainedTokenizerFast)
    words = "the movie was great awful fine boring a plot".split()
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", *words])}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="[PAD]",
                                  unk_token="[UNK]")
    cfg = DistilBertConfig(vocab_size=len(vocab), dim=32, n_layers=1,
                           n_heads=2, hidden_dim=64,
                           max_position_embeddings=32, pad_token_id=0,
                           id2label={0: "NEGATIVE", 1: "POSITIVE"},
                           label2id={"NEGATIVE": 0, "POSITIVE": 1})
    torch.manual_seed(0)
    return DistilBertForSequenceClassification(cfg).eval(), tok


def test_hf_classifier_outputs_match_the_model():
    model, tok = _tiny_classifier()
    texts = ["the movie was great", "awful", "a boring plot was fine",
             "the plot"]
    enc = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        ref = torch.log_softmax(model(**enc).logits, -1)  # (B, 2)
        logits = model(**enc).logits
    mk = dict(model=model, tokenizer=tok)
    lp = S.HFClassifier(output="log_prob", **mk)(batch(texts))
    assert lp.shape == (4,) and torch.allclose(lp, ref[:, 1], atol=1e-5)
    neg = S.HFClassifier(label="NEGATIVE", output="prob", **mk)(batch(texts))
    assert torch.allclose(neg, ref[:, 0].exp(), atol=1e-5)
    assert torch.allclose(S.HFClassifier(label=1, output="logit", **mk)(
        batch(texts)), logits[:, 1], atol=1e-5)
    # Chunking (with its different padding) does not change the scores.
    small = S.HFClassifier(batch_size=1, **mk)(batch(texts))
    assert torch.allclose(small, lp, atol=1e-5)
    t = float(lp[0].exp())
    b = S.HFClassifier(output="binary", threshold=t, **mk)(batch(texts))
    assert values(b) == [float(p >= t) for p in ref[:, 1].exp().tolist()]
    assert b[0] == 1
    assert S.HFClassifier(**mk)(batch([])).shape == (0,)
    with pytest.raises(ValueError, match=r"'positive'.*NEGATIVE.*POSITIVE"):
        S.HFClassifier(label="positive", **mk)(batch(texts))
    with pytest.raises(ValueError, match="both model and tokenizer"):
        S.HFClassifier(model=model)


def test_hf_classifier_by_name_is_lazy_and_fails_fast_offline(monkeypatch):
    from fdpg_core.kit.paper import HubUnavailableError
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    sc = S.HFClassifier("distilbert-imdb")  # nothing loaded yet
    with pytest.raises(HubUnavailableError, match="distilbert-imdb"):
        sc(batch(["great movie"]))


# ---------------------------------------------------------------- entities
SOURCE = ("On Monday, President Barack Obama flew to Berlin, where he met "
          "Chancellor Angela Merkel. Both leaders discussed NATO, the "
          "European Union and the role of Google in the United States "
          "economy, the BBC reported.")
OTHER = "Angela Merkel met Emmanuel Macron in Paris to discuss NATO."


def test_entity_consistency_known_answers():
    sc = S.EntityConsistency([SOURCE, OTHER])
    texts = [
        "Barack Obama met Angela Merkel in Berlin to discuss NATO.",    # 1
        "Barack Obama met Angela Merkel in Paris to discuss NATO.",     # Paris
        "Barack Obama met Angela Merkel in Berlin.",                    # 3
        "Obama and Merkel spoke on Monday in Berlin about the European "
        "Union and Google.",                         # 5 ents (DATE ignored)
        "Barack Obama, Barack Obama, Barack Obama and Barack Obama.",   # 1
        "The United States and Germany signed the deal, Barack Obama "
        "told the BBC.",                                           # Germany
        "It was a quiet day and nothing happened.",                     # none
    ]
    out = sc(batch(texts, [0] * len(texts)))
    assert out.shape == (7,) and values(out) == [1, 0, 0, 1, 0, 0, 0]
    three = S.EntityConsistency([SOURCE], min_entities=3)
    assert values(three(batch(texts[:3], [0, 0, 0]))) == [1, 0, 1]
    zero = S.EntityConsistency([SOURCE], min_entities=0)
    assert values(zero(batch(texts[-1:], [0]))) == [1]
    # The same summary against another context: Barack Obama, Berlin absent.
    assert values(sc(batch(texts[:1] * 2, [0, 1]))) == [1, 0]
    ents = sc.entities(texts[3:4])[0]
    assert ("Monday", "DATE") not in ents and ("Google", "ORG") in ents


def test_entity_matching_rule_without_spacy():
    sc = S.EntityConsistency(["x"], min_entities=2)
    fake = [[("Ed", "PERSON"), ("London", "GPE")],
            [("the  BBC", "ORG"), ("London\u2019s", "GPE")],
            [("Ed", "PERSON"), ("london", "GPE")]]
    sc.entities = lambda texts: fake[:len(texts)]
    src = ["Edward moved to London.", "BBC reporters in london",
           "ED lives in LONDON"]
    # "Ed" is not a whole word of "Edward"; case, "the ", "'s" are ignored.
    assert values(sc.score_pairs(["a", "b", "c"], src)) == [0, 1, 1]


def test_entity_consistency_bad_min_entities():
    with pytest.raises(ValueError, match="min_entities"):
        S.EntityConsistency(["x"], min_entities=-1)


# ---------------------------------------------------------------- code
SIGS = ["def add(a, b):\n", "class Box:\n    def get(self):\n"]


@pytest.mark.parametrize("method", ["codeop", "compile"])
def test_compiles_known_answers(method):
    sc = S.Compiles(SIGS, method=method)
    texts = ["    return a + b\n", "    return a +\n", "    return (a + b\n",
             "return a\n", "    x = '''open string\n", "        return 1\n",
             "    return a + b", "    pass\n    print('x')\n"]
    out = sc(batch(texts, [0, 0, 0, 0, 0, 1, 0, 0]))
    assert out.shape == (8,) and values(out) == [1, 0, 0, 0, 0, 1, 1, 1]
    alone = S.Compiles(method=method)  # no signatures: the text alone
    assert values(alone(batch(["x = 1\n", "def f(:\n", "\0"]))) == [1, 0, 0]


def test_compiled_code_is_never_run(tmp_path):
    victim = tmp_path / "keep.txt"
    victim.write_text("still here")
    bodies = [f"    import os; os.remove({str(victim)!r})\n",
              "    while True: pass\n",
              "    raise SystemExit(3)\n",
              "    import sys; sys.exit(4)\n"]
    result = {}

    def work():
        result["c"] = S.Compiles(["def f():\n"])(batch(bodies, [0] * 4))
        result["p"] = S.PEP8(["def f():\n"])(batch(bodies, [0] * 4))

    th = threading.Thread(target=work, daemon=True)
    th.start()
    th.join(timeout=20)
    assert not th.is_alive(), "scoring hung: the code was run, not compiled"
    assert values(result["c"]) == [1, 1, 1, 1]
    assert victim.read_text() == "still here"
    # E702 (two statements on one line) and E701 (while ...: pass)
    assert values(result["p"]) == [0, 0, 1, 0]


def test_pep8_known_answers():
    sc = S.PEP8(SIGS[:1])
    texts = ["    return a + b\n",            # clean
             "    return a + b",              # no final newline: added
             "    return a + b  \n",          # W291 trailing whitespace
             "  return a + b\n",              # E111 indentation of 2
             "    return a  +  b\n",          # E221/E222 extra spaces
             "    return " + "a + " * 20 + "b\n",  # E501 line too long
             "    return a +\n",              # clean style, does not compile
             "    return (a+b)\n"]            # E226 is in the default ignore
    out = sc(batch(texts, [0] * len(texts)))
    assert out.shape == (8,) and values(out) == [1, 1, 0, 0, 0, 0, 0, 1]
    assert sc.violations(SIGS[0] + texts[2]) == 1
    assert values(S.PEP8(SIGS[:1], ignore=["W291"])(batch(texts[2:3], [0]))) \
        == [1]
    assert values(S.PEP8(SIGS[:1], max_line_length=200)(
        batch(texts[5:6], [0]))) == [1]
    assert values(S.PEP8(SIGS[:1], require_compile=False)(
        batch(texts[6:7], [0]))) == [1]


# ---------------------------------------------------------------- speed
def test_text_scorers_are_fast():
    import time
    texts = ["She was an amazing physicist and he was a footballer who "
             "loved the league; the senator said the film was wonderful."
             ] * 256
    for sc in (S.WordPresence("amazing"), S.WordListPresence("science"),
               S.FemalePronouns(), S.Professions(), S.VaderCompound()):
        sc(batch(texts[:2]))  # lazy loads
        t = time.perf_counter()
        sc(batch(texts))
        assert time.perf_counter() - t < 2.0, type(sc).__name__
