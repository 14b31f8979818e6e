"""The `paper` preset: the hub models and datasets of the paper, and random
models of the paper's architectures.

PAPER_MODELS and PAPER_DATASETS are the table of the paper's components
(docs/METHOD.md) with their Hugging Face hub ids; the tag says how sure
we are that f-DPG used exactly that component ("lineage": the setup of the
predecessor papers GDC and CDPG; "unsure": a likely choice, exposed as a parameter).

``load_paper_model`` / ``load_paper_tokenizer`` / ``load_paper_dataset`` load
them through transformers / datasets and fail fast when the hub can't be
reached: with HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) set, or when the hub's
host does not accept a connection within a few seconds, they load from the
local cache only and otherwise raise HubUnavailableError at once (without
this, transformers retries for about 50 s before failing).

``random_paper_model(arch, vocab_size)`` builds GPT2LMHeadModel,
T5ForConditionalGeneration or GPTNeoForCausalLM from a tiny config of the
paper's architecture (or from its full-size config, ``size="paper"``), so that
the paper preset's code path runs in tests with nothing downloaded.
"""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from urllib.parse import urlparse

import torch

__all__ = [
    "ARCHS", "PAPER_DATASETS", "PAPER_MODELS", "HubUnavailableError",
    "PaperDataset", "PaperModel", "hub_offline", "hub_reachable",
    "load_paper_dataset", "load_paper_model", "load_paper_tokenizer",
    "paper_config", "random_paper_model", "resolve_model",
]


@dataclass(frozen=True)
class PaperModel:
    hub_id: str          # Hugging Face hub id (current canonical name)
    kind: str            # "causal" | "seq2seq" | "classifier"
    role: str            # what the paper uses it for
    tag: str             # "lineage" | "unsure"
    aliases: tuple[str, ...] = ()  # older hub names that redirect to hub_id


@dataclass(frozen=True)
class PaperDataset:
    hub_id: str
    config: str | None   # dataset configuration name
    role: str
    tag: str


PAPER_MODELS: dict[str, PaperModel] = {
    "gpt2": PaperModel(
        "openai-community/gpt2", "causal",
        "a for the pointwise tasks (117M); smallest of the size ladder",
        "lineage", ("gpt2",)),
    "gpt2-medium": PaperModel(
        "openai-community/gpt2-medium", "causal", "size ladder (345M)",
        "lineage", ("gpt2-medium",)),
    "gpt2-large": PaperModel(
        "openai-community/gpt2-large", "causal", "size ladder (774M)",
        "lineage", ("gpt2-large",)),
    "gpt2-xl": PaperModel(
        "openai-community/gpt2-xl", "causal", "size ladder (1.5B)",
        "lineage", ("gpt2-xl",)),
    "gpt2-imdb": PaperModel(
        "lvwerra/gpt2-imdb", "causal",
        "a for the scalar preference (GPT-2 fine-tuned on IMDB)", "unsure"),
    # Name used for the WikiBio fine-tune in NAVER's follow-up experiment code
    # (female / science tasks); not confirmed from the f-DPG paper's text.
    "gpt2-biographies": PaperModel(
        "mkhalifa/gpt2-biographies", "causal",
        "a for the distributional tasks (GPT-2 fine-tuned on WikiBio)",
        "lineage"),
    "t5-small": PaperModel(
        "google-t5/t5-small", "seq2seq",
        "a for summarisation (\"summarize: \" prefix)", "lineage",
        ("t5-small",)),
    "gpt-neo-125m": PaperModel(
        "EleutherAI/gpt-neo-125m", "causal",
        "a for code generation from Python150 signatures", "lineage",
        ("EleutherAI/gpt-neo-125M",)),
    "distilbert-imdb": PaperModel(
        "lvwerra/distilbert-imdb", "classifier",
        "sentiment reward r(x) for the scalar preference (label POSITIVE)",
        "unsure"),
    "distilbert-sst2": PaperModel(
        "distilbert/distilbert-base-uncased-finetuned-sst-2-english",
        "classifier", "alternative sentiment classifier (label POSITIVE)",
        "unsure", ("distilbert-base-uncased-finetuned-sst-2-english",)),
}

PAPER_DATASETS: dict[str, PaperDataset] = {
    "cnn_dailymail": PaperDataset(
        "abisee/cnn_dailymail", "3.0.0",
        "summarisation contexts (article) and references (highlights)",
        "lineage"),
    "wiki_bio": PaperDataset(
        "michaelauli/wiki_bio", None,
        "biographies behind gpt2-biographies (used only to fine-tune a)",
        "unsure"),
    "imdb": PaperDataset(
        "stanfordnlp/imdb", None,
        "movie reviews behind gpt2-imdb; review prefixes as prompts",
        "unsure"),
    # ETH Py150 Open lists file paths and licences of the Python150 files,
    # not their code (that must be fetched from GitHub); how the predecessor
    # papers cut function signatures out of it is not known.
    "python150": PaperDataset(
        "google-research-datasets/eth_py150_open", None,
        "source of the function signatures for the code tasks", "unsure"),
}

_KINDS = ("causal", "seq2seq", "classifier")
_TRUE = {"1", "on", "yes", "true"}


class HubUnavailableError(OSError):
    """The Hugging Face hub can't be reached and the item is not cached."""


# ---------------------------------------------------------------- hub access
def hub_offline() -> bool:
    """True when offline mode is requested (HF_HUB_OFFLINE,
    TRANSFORMERS_OFFLINE, read now, or huggingface_hub's import-time flag)."""
    if any(os.environ.get(v, "").strip().lower() in _TRUE
           for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")):
        return True
    try:
        from huggingface_hub import is_offline_mode
    except ImportError:
        return False
    return bool(is_offline_mode())


def hub_reachable(timeout: float = 3.0) -> bool:
    """True when the hub's host accepts a TCP connection within ``timeout``.

    Behind an HTTPS proxy a direct connection proves nothing, so we assume
    reachable and let transformers try.
    """
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy",
                                       "ALL_PROXY", "all_proxy")):
        return True
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    url = urlparse(endpoint)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def _unavailable(what: str, name: str, hub_id: str,
                 cause: str) -> HubUnavailableError:
    return HubUnavailableError(
        f"{what} {name!r} (hub id {hub_id!r}) is not in the local Hugging "
        f"Face cache and {cause}. The `paper` preset needs the Hugging Face "
        "hub: run once with network access (HF_HUB_OFFLINE unset) to cache "
        "it, or use the `smoke` / `cpu` presets, which run offline.")


def _hub_problem() -> str | None:
    """Why the hub can't be used now, or None when it can."""
    if hub_offline():
        return "offline mode is on (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE)"
    if not hub_reachable():
        host = urlparse(os.environ.get("HF_ENDPOINT",
                                       "https://huggingface.co")).hostname
        return f"the hub host {host} can't be reached"
    return None


def resolve_model(name: str) -> tuple[str, PaperModel]:
    """(key, entry) of PAPER_MODELS for a key, hub id or alias."""
    if name in PAPER_MODELS:
        return name, PAPER_MODELS[name]
    for key, m in PAPER_MODELS.items():
        if name == m.hub_id or name in m.aliases:
            return key, m
    raise ValueError(f"unknown paper model {name!r}: use one of "
                     f"{sorted(PAPER_MODELS)} (or their hub ids); load other "
                     "models with transformers directly")


def _from_pretrained(loader, what: str, name: str, hub_id: str, **kwargs):
    problem = _hub_problem()
    if problem is None:
        return loader(hub_id, **kwargs)
    try:  # offline: the local cache only, which fails in well under a second
        return loader(hub_id, local_files_only=True, **kwargs)
    except OSError as e:
        raise _unavailable(what, name, hub_id, problem) from e


def load_paper_model(name: str, *, dtype: torch.dtype | None = None,
                     device: str | torch.device | None = None, **kwargs):
    """The paper's model ``name`` (a key of PAPER_MODELS or its hub id), in
    eval mode; raises HubUnavailableError at once when offline and uncached.
    """
    key, m = resolve_model(name)
    import transformers
    cls = {"causal": transformers.AutoModelForCausalLM,
           "seq2seq": transformers.AutoModelForSeq2SeqLM,
           "classifier": transformers.AutoModelForSequenceClassification,
           }[m.kind]
    if dtype is not None:
        kwargs["dtype"] = dtype
    model = _from_pretrained(cls.from_pretrained, "model", key, m.hub_id,
                             **kwargs)
    if device is not None:
        model = model.to(device)
    return model.eval()


def load_paper_tokenizer(name: str, **kwargs):
    """The tokenizer of paper model ``name``. For causal LMs a missing pad
    token is set to EOS and padding is on the left (prompts are left-padded).
    """
    key, m = resolve_model(name)
    from transformers import AutoTokenizer
    tok = _from_pretrained(AutoTokenizer.from_pretrained, "tokenizer", key,
                           m.hub_id, **kwargs)
    if m.kind == "causal":
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        tok.padding_side = "left"
    return tok


def load_paper_dataset(name: str, split: str | None = None, **kwargs):
    """The paper's dataset ``name`` (a key of PAPER_DATASETS) through the
    `datasets` package (not a kit requirement: pip install datasets).

    Offline, a cached copy is used only when HF_HUB_OFFLINE was set before
    `datasets` was imported (its own offline flag is read at import).
    """
    if name not in PAPER_DATASETS:
        raise ValueError(f"unknown paper dataset {name!r}: use one of "
                         f"{sorted(PAPER_DATASETS)}")
    d = PAPER_DATASETS[name]
    problem = _hub_problem()
    try:
        import datasets
    except ImportError as e:
        if problem is not None:
            raise _unavailable("dataset", name, d.hub_id, problem) from e
        raise ImportError("load_paper_dataset needs the `datasets` package: "
                          "pip install datasets") from e
    if problem is not None and not datasets.config.HF_HUB_OFFLINE:
        raise _unavailable("dataset", name, d.hub_id, problem)
    try:
        return datasets.load_dataset(d.hub_id, d.config, split=split,
                                     **kwargs)
    except Exception as e:  # datasets raises several types when offline
        if problem is None:
            raise
        raise _unavailable("dataset", name, d.hub_id, problem) from e


# ------------------------------------------------------------ architectures
# Full-size configs of the paper's base models, as in their hub config.json.
_GPT2_SIZES = {  # name: (n_layer, n_embd, n_head)
    "gpt2": (12, 768, 12), "gpt2-medium": (24, 1024, 16),
    "gpt2-large": (36, 1280, 20), "gpt2-xl": (48, 1600, 25)}
ARCHS: tuple[str, ...] = (*_GPT2_SIZES, "t5-small", "gpt-neo-125m")
_ARCH_ALIASES = {"t5": "t5-small", "gpt-neo": "gpt-neo-125m"}
_SIZES = ("tiny", "paper")


def paper_config(arch: str, vocab_size: int | None = None, *,
                 size: str = "tiny", **overrides):
    """transformers config of ``arch`` in ARCHS ("t5", "gpt-neo" accepted).

    size="paper" gives the published configuration (GPT-2 small 124.4M
    parameters, T5-small 60.5M, GPT-Neo-125M 125.2M); size="tiny" keeps the
    architecture's distinctive parts (GPT-2 learned positions; T5 relative
    position buckets and tied encoder-decoder; GPT-Neo alternating global /
    local attention) at 2 layers and width 64. ``vocab_size`` defaults to the
    paper's vocabulary; special-token ids are put inside the vocabulary.
    ``overrides`` are passed to the config constructor.
    """
    arch = _ARCH_ALIASES.get(arch, arch)
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}: use one of {list(ARCHS)} "
                         f"or {sorted(_ARCH_ALIASES)}")
    if size not in _SIZES:
        raise ValueError(f"size={size!r}: use one of {list(_SIZES)}")
    tiny = size == "tiny"
    import transformers as tf
    if arch in _GPT2_SIZES:
        V = vocab_size or 50257
        n_layer, n_embd, n_head = (2, 64, 2) if tiny else _GPT2_SIZES[arch]
        kw = dict(vocab_size=V, n_positions=128 if tiny else 1024,
                  n_embd=n_embd, n_layer=n_layer, n_head=n_head,
                  bos_token_id=V - 1, eos_token_id=V - 1,
                  pad_token_id=V - 1)  # GPT-2: <|endoftext|> is the last id
        return tf.GPT2Config(**{**kw, **overrides})
    if arch == "t5-small":
        V = vocab_size or 32128
        kw = dict(vocab_size=V, d_model=64 if tiny else 512,
                  d_kv=16 if tiny else 64, d_ff=128 if tiny else 2048,
                  num_layers=2 if tiny else 6, num_heads=4 if tiny else 8,
                  relative_attention_num_buckets=32,
                  relative_attention_max_distance=128,
                  feed_forward_proj="relu", tie_word_embeddings=True,
                  pad_token_id=0, eos_token_id=1,
                  decoder_start_token_id=0)  # T5: pad 0, eos 1, start = pad
        return tf.T5Config(**{**kw, **overrides})
    V = vocab_size or 50257
    n_layer = 2 if tiny else 12
    kw = dict(vocab_size=V, hidden_size=64 if tiny else 768,
              num_layers=n_layer, num_heads=2 if tiny else 12,
              max_position_embeddings=128 if tiny else 2048,
              window_size=8 if tiny else 256,  # local attention span
              attention_types=[[["global", "local"], n_layer // 2]],
              bos_token_id=V - 1, eos_token_id=V - 1, pad_token_id=V - 1)
    return tf.GPTNeoConfig(**{**kw, **overrides})


def random_paper_model(arch: str, vocab_size: int | None = None, *,
                       size: str = "tiny", seed: int = 0, **overrides):
    """Randomly initialised model of the paper's architecture ``arch``
    (see paper_config), in eval mode like a from_pretrained model. The global
    torch RNG is left untouched (``seed`` seeds a forked RNG).
    """
    config = paper_config(arch, vocab_size, size=size, **overrides)
    import transformers as tf
    cls = {"gpt2": tf.GPT2LMHeadModel, "t5": tf.T5ForConditionalGeneration,
           "gpt_neo": tf.GPTNeoForCausalLM}[config.model_type]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = cls(config)
    return model.eval()
