"""Shared pytest fixtures: tiny, seeded, randomly initialised HF models built from configs (no downloads).

Token ids used by every tiny causal model: BOS = 0, EOS = 1, PAD = 2. Tiny T5: PAD = decoder start = 0, EOS = 1.
`make_tiny_lm(kind, ...)` returns a model in eval mode; `eos_bias` adds a bias on the EOS logit (a real
nn.Linear bias on the LM head, so generate() sees it too) to make some rows stop early.
"""

import functools
import importlib.util
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if os.environ.get("PYTEST_XDIST_WORKER"):  # `make test` runs two workers on 2 cores: one torch thread each (and in
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # the commands they start), so no OpenMP thread spins on a busy core

import torch  # noqa: E402  (after OMP_NUM_THREADS: OpenMP reads it when torch loads)

BOS, EOS, PAD = 0, 1, 2


def _config(kind: str, vocab_size: int, init: float):
    import transformers as tf

    ids = dict(bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD)
    if kind == "gpt2":
        return tf.GPT2Config(
            vocab_size=vocab_size, n_positions=64, n_embd=16, n_layer=2, n_head=2, initializer_range=init, **ids
        )
    if kind == "gpt_neo":
        return tf.GPTNeoConfig(
            vocab_size=vocab_size, max_position_embeddings=64, hidden_size=16, num_layers=2, num_heads=2,
            attention_types=[[["global", "local"], 1]], window_size=4, initializer_range=init, **ids,
        )
    if kind == "llama":
        return tf.LlamaConfig(
            vocab_size=vocab_size, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
            num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64, initializer_range=init,
            **ids,
        )
    if kind == "t5":
        return tf.T5Config(
            vocab_size=vocab_size, d_model=16, d_ff=32, d_kv=8, num_layers=2, num_decoder_layers=2, num_heads=2,
            relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=EOS, decoder_start_token_id=0,
            initializer_factor=init / 0.02,
        )
    raise ValueError(f"unknown tiny model kind {kind!r}; allowed: gpt2, gpt_neo, llama, t5")


def build_tiny_lm(kind="gpt2", vocab_size=32, seed=0, eos_bias=0.0, init=0.02):
    import transformers as tf

    torch.manual_seed(seed)
    cfg = _config(kind, vocab_size, init)
    cls = {
        "gpt2": tf.GPT2LMHeadModel,
        "gpt_neo": tf.GPTNeoForCausalLM,
        "llama": tf.LlamaForCausalLM,
        "t5": tf.T5ForConditionalGeneration,
    }[kind]
    model = cls(cfg)
    if eos_bias:
        old = model.get_output_embeddings()
        head = torch.nn.Linear(old.in_features, old.out_features, bias=True)
        head.weight = old.weight  # keep tying
        with torch.no_grad():
            head.bias.zero_()
            head.bias[EOS] = eos_bias
        model.set_output_embeddings(head)
    return model.eval()


@pytest.fixture
def make_tiny_lm():
    """Factory fixture: make_tiny_lm(kind="gpt2"|"gpt_neo"|"llama"|"t5", vocab_size=32, seed=0, eos_bias=0.0,
    init=0.02) -> tiny model in eval mode."""
    return build_tiny_lm


@pytest.fixture
def tiny_gpt2():
    return build_tiny_lm("gpt2", vocab_size=32, seed=0)


@pytest.fixture
def tiny_t5():
    return build_tiny_lm("t5", vocab_size=32, seed=0)


@functools.cache
def load_script(name: str):
    """scripts/<name>.py imported as a module (the scripts are not a package), once per test session."""
    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def one_thread():
    """torch on one thread for a test module (2 shared cores: no oversubscription), restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(params=[1, 2], ids=["threads1", "threads2"])
def torch_threads(request, monkeypatch):
    """A notebook's `torch_threads` parameter, 1 and 2: two threads change torch's reduction order, so the second
    run takes another floating-point path on any CPU, and the smoke checks must hold on both.
    With 2 threads the kernel gets OMP_WAIT_POLICY=PASSIVE: an idle OpenMP thread sleeps instead of spinning. On 2
    cores busy with other work a spinning thread starves its partner (00_toy_exact at 2 threads, AMD EPYC 2 cores,
    load ≈ 5: 192 s spinning, 44 s passive, identical result files); the policy changes no arithmetic."""
    if request.param > 1:
        monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")  # the kernel inherits os.environ (run_notebook)
    return request.param
