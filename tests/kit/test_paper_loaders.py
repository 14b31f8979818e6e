"""The `paper` preset: hub table, fail-fast offline loaders, and random
models of the paper's architectures (fdpg_core.kit.paper)."""
import socket
import time

import pytest
import torch

from fdpg_core.kit import paper as P


# ---------------------------------------------------------------- table
def test_tables_are_well_formed():
    for key, m in P.PAPER_MODELS.items():
        assert m.kind in ("causal", "seq2seq", "classifier"), key
        assert m.tag in ("lineage", "unsure") and "/" in m.hub_id, key
        assert P.resolve_model(m.hub_id) == (key, m)
        for alias in m.aliases:
            assert P.resolve_model(alias) == (key, m)
    for key, d in P.PAPER_DATASETS.items():
        assert d.tag in ("lineage", "unsure") and "/" in d.hub_id, key
    assert P.PAPER_DATASETS["cnn_dailymail"].config == "3.0.0"
    assert P.resolve_model("EleutherAI/gpt-neo-125M")[0] == "gpt-neo-125m"
    assert P.resolve_model("lvwerra/gpt2-imdb")[0] == "gpt2-imdb"


def test_unknown_names_list_the_allowed_ones():
    with pytest.raises(ValueError, match=r"'gpt3'.*gpt2-biographies"):
        P.load_paper_model("gpt3")
    with pytest.raises(ValueError, match=r"'wikitext'.*cnn_dailymail"):
        P.load_paper_dataset("wikitext")


# ---------------------------------------------------------------- offline
@pytest.mark.parametrize("loader", [P.load_paper_model,
                                    P.load_paper_tokenizer])
@pytest.mark.parametrize("name", ["gpt2", "t5-small", "gpt2-biographies"])
def test_offline_fails_fast_with_a_clear_message(monkeypatch, loader, name):
    import transformers  # import time (lazy modules) is not the loader's
    transformers.AutoModelForCausalLM, transformers.AutoTokenizer
    transformers.AutoModelForSeq2SeqLM
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub_id = P.PAPER_MODELS[name].hub_id
    t = time.perf_counter()
    with pytest.raises(P.HubUnavailableError) as err:
        loader(name)
    assert time.perf_counter() - t < 5.0
    msg = str(err.value)
    for part in (repr(name), repr(hub_id), "offline mode is on",
                 "`paper` preset needs the Hugging Face hub"):
        assert part in msg


def test_unreachable_hub_fails_fast_without_offline_flag(monkeypatch):
    monkeypatch.setattr(P, "hub_offline", lambda: False)
    monkeypatch.setattr(P, "hub_reachable", lambda timeout=3.0: False)
    t = time.perf_counter()
    with pytest.raises(P.HubUnavailableError, match="can't be reached"):
        P.load_paper_model("gpt-neo-125m")
    assert time.perf_counter() - t < 5.0


def test_offline_dataset_fails_fast(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t = time.perf_counter()
    with pytest.raises(P.HubUnavailableError, match="'cnn_dailymail'"):
        P.load_paper_dataset("cnn_dailymail", split="test")
    assert time.perf_counter() - t < 5.0


def test_hub_offline_reads_the_environment_now(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert P.hub_offline()
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "yes")
    assert P.hub_offline()


def test_hub_reachable_probe(monkeypatch):
    for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(v, raising=False)
    with socket.socket() as s:  # a local port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    t = time.perf_counter()
    assert not P.hub_reachable(timeout=1.0)
    assert time.perf_counter() - t < 2.0
    with socket.socket() as srv:  # and one that accepts connections
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        monkeypatch.setenv("HF_ENDPOINT",
                           f"http://127.0.0.1:{srv.getsockname()[1]}")
        assert P.hub_reachable(timeout=1.0)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    assert P.hub_reachable()  # behind a proxy: let transformers decide


# ------------------------------------------------------------ architectures
@pytest.mark.parametrize("arch, n_params", [
    ("gpt2", 124_439_808), ("gpt2-medium", 354_823_168),
    ("gpt2-large", 774_030_080), ("gpt2-xl", 1_557_611_200),
    ("t5-small", 60_506_624), ("gpt-neo-125m", 125_198_592)])
def test_paper_configs_have_the_published_sizes(arch, n_params):
    import transformers as tf
    cfg = P.paper_config(arch, size="paper")
    cls = {"gpt2": tf.GPT2LMHeadModel, "t5": tf.T5ForConditionalGeneration,
           "gpt_neo": tf.GPTNeoForCausalLM}[cfg.model_type]
    with torch.device("meta"):  # shapes only, no memory
        model = cls(cfg)
    assert sum(p.numel() for p in model.parameters()) == n_params


def test_bad_arch_and_size():
    with pytest.raises(ValueError, match=r"'llama'.*gpt-neo-125m"):
        P.paper_config("llama")
    with pytest.raises(ValueError, match=r"'huge'.*paper"):
        P.paper_config("gpt2", size="huge")


@pytest.mark.parametrize("arch", ["gpt2", "gpt-neo"])
def test_random_causal_models_forward_and_are_causal(arch):
    V = 97
    model = P.random_paper_model(arch, V)
    cfg = model.config
    assert max(cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id) < V
    assert not model.training
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, V, (2, 20), generator=g)
    with torch.no_grad():
        logits = model(input_ids=ids).logits  # (B, T, V)
        assert logits.shape == (2, 20, V) and torch.isfinite(logits).all()
        ids2 = ids.clone()
        ids2[:, 15:] = (ids2[:, 15:] + 1) % V  # change the future only
        logits2 = model(input_ids=ids2).logits
    assert torch.allclose(logits[:, :15], logits2[:, :15], atol=1e-5)
    assert not torch.allclose(logits[:, 15:], logits2[:, 15:], atol=1e-3)


def test_gpt_neo_keeps_local_attention():
    cfg = P.random_paper_model("gpt-neo", 97).config
    assert cfg.attention_layers == ["global", "local"] and cfg.window_size == 8


def test_random_t5_forward_and_encoder_padding_invariance():
    V = 97
    model = P.random_paper_model("t5", V)
    assert model.config.decoder_start_token_id == model.config.pad_token_id
    g = torch.Generator().manual_seed(2)
    src = torch.randint(2, V, (1, 12), generator=g)
    dec = torch.randint(2, V, (1, 6), generator=g)
    padded = torch.cat([src, torch.zeros(1, 4, dtype=torch.long)], 1)
    mask = torch.cat([torch.ones(1, 12), torch.zeros(1, 4)], 1).long()
    with torch.no_grad():
        a = model(input_ids=src, decoder_input_ids=dec).logits  # (1, 6, V)
        b = model(input_ids=padded, attention_mask=mask,
                  decoder_input_ids=dec).logits
    assert a.shape == (1, 6, V) and torch.allclose(a, b, atol=1e-5)


def test_random_model_seeding_leaves_global_rng_alone():
    state = torch.random.get_rng_state()
    m1 = P.random_paper_model("gpt2", 50, seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)
    m2 = P.random_paper_model("gpt2", 50, seed=3)
    m3 = P.random_paper_model("gpt2", 50, seed=4)
    w = "transformer.h.0.attn.c_attn.weight"
    sd1, sd2, sd3 = m1.state_dict(), m2.state_dict(), m3.state_dict()
    assert torch.equal(sd1[w], sd2[w]) and not torch.equal(sd1[w], sd3[w])
