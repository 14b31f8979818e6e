"""f-DPG training loop on enumerable toy models: exact divergences go down, mode covering vs mode seeking,
invariances (grad accumulation, offline = online at step 0, bitwise resume) and bad input."""
import json
import math
import os

import pytest
import torch

from fdpg_core.targets import BinaryFactor, Target
from fdpg_core.kit.toy import make_toy_problem
from fdpg_core.train import FDPGConfig, NonFiniteLossError, train


pytestmark = pytest.mark.usefixtures("one_thread")  # 2 shared cores: avoid oversubscription


def _cfg(**kw):
    base = dict(batch_size=64, max_new_tokens=3, lr=2e-3, warmup_steps=0, progress=False, log_every=1)
    base.update(kw)
    return FDPGConfig(**base)


def _params(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


# ------------------------------------------------------------------------- exact divergences decrease
@pytest.mark.parametrize("div", ["kl", "rkl", "js", "tv"])
def test_training_lowers_exact_divergence_by_90_percent(div):
    """p ∝ a·exp(r/β) (r = #word-0 tokens, β = 0.5) on 40 enumerable sequences; π_θ ← a."""
    pb = make_toy_problem("scalar", beta=0.5)
    d0 = pb.divergence(div)
    assert d0 > 0.3  # a real gap to close
    hist = train(pb.policy, pb.target, pb.prompts, _cfg(divergence=div, n_steps=80, log_every=40))
    d1 = pb.divergence(div)
    assert d1 < 0.1 * d0, (div, d0, d1)
    assert math.isfinite(hist[-1]["train/loss"]) and hist[-1]["train/skipped_steps"] == 0
    # the running Ẑ converges to the exact Z
    assert hist[-1]["target/log_Z"] == pytest.approx(pb.info["log_Z"][0], abs=0.1)


def test_forward_kl_covers_modes_reverse_kl_seeks_one():
    """Target: two modes "0 1 0" and "2 1 2" (p ≈ ½ each). Policy family: a 0-layer GPT-2 (position-dependent
    bigram), which cannot make x_3 depend on x_1. Forward KL must spread mass over both modes (and the two mixed
    sequences): entropy ≈ log 4; reverse KL must pick one mode: entropy ≈ 0."""
    sols = {}
    for div in ("kl", "rkl"):
        pb = make_toy_problem("bimodal", n_layer=0, init_std=0.02, log_floor=-10.0)
        train(pb.policy, pb.target, pb.prompts, _cfg(divergence=div, n_steps=100, lr=1e-2, log_every=100))
        with torch.no_grad():
            pi = pb.log_pi().exp()[0]  # (N,)
        modes = pb.log_p[0].exp() > 0.1
        assert modes.sum() == 2
        sols[div] = dict(H=pb.entropy(), mass=pi[modes], kl=pb.divergence("kl"), rkl=pb.divergence("rkl"))
    kl, rkl = sols["kl"], sols["rkl"]
    assert kl["H"] > 1.2 and rkl["H"] < 0.3, (kl["H"], rkl["H"])
    assert kl["mass"].min() > 0.15  # both modes covered
    assert rkl["mass"].max() > 0.9  # one mode chosen
    assert kl["kl"] < rkl["kl"] and rkl["rkl"] < kl["rkl"]  # each is better on its own objective
    assert kl["kl"] == pytest.approx(math.log(2), abs=0.1)  # best factorised fit of a 2-mode XOR-like target


def test_offline_training_with_replace_when_better():
    pb = make_toy_problem("scalar", beta=0.5)
    d0 = pb.divergence("kl")
    hist = train(pb.policy, pb.target, pb.prompts,
                 _cfg(divergence="kl", n_steps=60, proposal="offline", log_every=10))
    assert pb.divergence("kl") < 0.1 * d0
    assert hist[-1]["proposal/replaced"] > 0
    assert 0 < hist[-1]["proposal/ess"] <= 1


# ------------------------------------------------------------------------------------------ exact gradient
@pytest.mark.parametrize("proposal", ["online", "offline"])
@pytest.mark.parametrize("div", ["kl", "rkl", "js"])
def test_first_update_follows_exact_gradient(div, proposal):
    """Adam with ε ≫ |g| is SGD with step lr/ε: Δθ ≈ −(lr/ε) ĝ. With 4096 samples on a 40-sequence support
    the f-DPG estimate ĝ (running Ẑ, pseudo-rewards, importance weights for a proposal q ≠ π) must match the exact
    ∇_θ D_f(π_θ‖p) computed by enumeration. (tv is left out: its f′ = ½ sign(t − 1) jumps at t = 1, so the
    estimate is sensitive to the Ẑ error wherever π ≈ p.)"""
    from fdpg_core.divergences import exact_divergence
    from fdpg_core.kit.toy import tiny_gpt2

    pb = make_toy_problem("scalar", beta=0.5)
    params = list(pb.policy.parameters())
    D = exact_divergence(div, pb.log_pi()[0].double(), pb.log_p[0])
    g = torch.cat([(x if x is not None else torch.zeros_like(p)).reshape(-1)
                   for x, p in zip(torch.autograd.grad(D, params, allow_unused=True), params)])
    th0 = _params(pb.policy)
    q = tiny_gpt2(4, seed=11, init_std=0.1) if proposal == "offline" else None  # near-uniform q ≠ π
    train(pb.policy, pb.target, pb.prompts, _cfg(divergence=div, n_steps=1, batch_size=4096, lr=1.0, adam_eps=1e3,
                                                 proposal=proposal, baseline="none"), proposal=q)
    step = (_params(pb.policy) - th0).double()
    cos = torch.nn.functional.cosine_similarity(step, -g.double(), 0).item()
    assert cos > 0.99, cos
    assert step.norm().item() == pytest.approx(1e-3 * g.norm().item(), rel=0.1)


def test_baseline_is_moving_average_of_previous_steps_f_prime():
    for kind, ref in (("ema", None), ("window", 2), ("none", None)):
        pb = make_toy_problem("scalar", beta=0.5)
        hist = train(pb.policy, pb.target, pb.prompts, _cfg(divergence="js", n_steps=5, batch_size=16, baseline=kind,
                                                            baseline_ema=0.8, baseline_window=2))
        fp = [-r["train/pseudo_reward"] for r in hist]  # batch means of f′
        want, b = [], None
        for s in range(5):
            if kind == "ema":
                want.append(0.0 if b is None else b)
                b = fp[s] if b is None else 0.8 * b + 0.2 * fp[s]
            elif kind == "window":
                prev = fp[max(0, s - ref):s]
                want.append(sum(prev) / len(prev) if prev else 0.0)
            else:
                want.append(0.0)
        assert [r["train/baseline"] for r in hist] == pytest.approx(want, abs=1e-6), kind
        assert len(set(round(v, 6) for v in fp)) > 1  # the batch means do change
    # closed forms of E_π[f′]: kl: E_π[−p/π] = −1; rkl: E_π[log(π/p) + 1] = KL(π‖p) + 1
    for div in ("kl", "rkl"):
        pb = make_toy_problem("scalar", beta=0.5)
        want = -1.0 if div == "kl" else 1.0 + pb.divergence("rkl")
        hist = train(pb.policy, pb.target, pb.prompts, _cfg(divergence=div, n_steps=2, batch_size=2048))
        assert hist[1]["train/baseline"] == pytest.approx(want, abs=0.1), div


# ------------------------------------------------------------------------------------------ invariances
def test_grad_accumulation_equals_full_batch():
    """1 × 32 and 4 × 8 micro-batches: same samples, same loss, gradient norm and parameters. Adam is
    scale-invariant at step 1, so the logged loss / gradient norm catch a wrong micro-batch weight."""
    runs = []
    for k in (1, 4):
        pb = make_toy_problem("scalar", beta=0.5)
        hist = train(pb.policy, pb.target, pb.prompts,
                     _cfg(divergence="js", n_steps=2, batch_size=32, grad_accum=k, adam_eps=1e-2))
        runs.append((hist, _params(pb.policy)))
    (h1, p1), (h4, p4) = runs
    for key in ("train/loss", "train/grad_norm", "train/baseline", "div/kl_p_pi"):
        assert [r[key] for r in h1] == pytest.approx([r[key] for r in h4], rel=1e-5, abs=1e-7), key
    assert torch.allclose(p1, p4, atol=1e-6)


def test_offline_at_step_zero_equals_online():
    runs = []
    for prop in ("online", "offline"):
        pb = make_toy_problem("scalar", beta=0.5)
        p0 = _params(pb.policy)
        hist = train(pb.policy, pb.target, pb.prompts, _cfg(divergence="kl", n_steps=1, batch_size=32,
                                                            proposal=prop, adam_eps=1e-2))
        runs.append((hist[0], _params(pb.policy)))
    (h_on, p_on), (h_off, p_off) = runs
    assert not torch.allclose(p_on, p0)  # a step happened
    assert torch.allclose(p_on, p_off, atol=1e-6)
    assert h_on["train/grad_norm"] == pytest.approx(h_off["train/grad_norm"], rel=1e-5)
    assert h_off["proposal/ess"] == pytest.approx(1.0, abs=1e-5)  # q = π: weights 1


@pytest.mark.parametrize("proposal,baseline", [("online", "ema"), ("offline", "window")])
def test_resume_reproduces_uninterrupted_run_bitwise(tmp_path, proposal, baseline):
    common = dict(divergence="js", batch_size=16, proposal=proposal, baseline=baseline, baseline_window=2,
                  warmup_steps=3, checkpoint_every=2, seed=7)
    pa = make_toy_problem("scalar", beta=0.5)
    ha = train(pa.policy, pa.target, pa.prompts, _cfg(n_steps=6, out_dir=str(tmp_path / "a"), **common))
    pb = make_toy_problem("scalar", beta=0.5)
    train(pb.policy, pb.target, pb.prompts, _cfg(n_steps=3, out_dir=str(tmp_path / "b"), **common))
    pc = make_toy_problem("scalar", beta=0.5)  # fresh process-like start: initial weights, state from disk
    hc = train(pc.policy, pc.target, pc.prompts, _cfg(n_steps=6, out_dir=str(tmp_path / "b"), **common),
               resume=True)
    assert torch.equal(_params(pa.policy), _params(pc.policy))
    drop = {"time/step_s"}
    assert [{k: v for k, v in r.items() if k not in drop} for r in ha] == \
        [{k: v for k, v in r.items() if k not in drop} for r in hc]
    with open(tmp_path / "b" / "history.jsonl") as fh:
        assert [json.loads(line)["step"] for line in fh] == list(range(6))
    with pytest.raises(ValueError, match="divergence"):
        train(pc.policy, pc.target, pc.prompts,
              _cfg(n_steps=7, out_dir=str(tmp_path / "b"), **{**common, "divergence": "kl"}), resume=True)


# ------------------------------------------------------------------------------------------ bad input
def test_config_rejects_unknown_keys_and_bad_values():
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['learning_rate'\].*allowed keys.*'lr'"):
        FDPGConfig.from_dict({"lr": 1e-3, "learning_rate": 1e-3})
    with pytest.raises(ValueError, match="allowed keys"):
        FDPGConfig(batchsize=3)
    with pytest.raises(ValueError, match=r"unknown divergence 'kld'.*'js'"):
        FDPGConfig(divergence="kld")
    for bad, msg in [(dict(lr=0.0), "lr=0.0"), (dict(lr=float("nan")), "lr=nan"),
                     (dict(batch_size=10, grad_accum=3), "grad_accum=3"), (dict(baseline="mean"), "baseline='mean'"),
                     (dict(proposal="replay"), "'online', 'offline'"), (dict(baseline_ema=1.0), "baseline_ema"),
                     (dict(adam_betas=(0.9, 1.0)), "adam_betas"), (dict(n_steps=-1), "n_steps")]:
        with pytest.raises(ValueError, match=msg.replace("(", r"\(").replace(")", r"\)")):
            FDPGConfig(**bad)
    cfg = FDPGConfig.from_dict({**FDPGConfig(divergence="tv").to_dict()})  # round trip through a plain dict
    assert cfg.divergence == "tv" and cfg.adam_betas == (0.9, 0.999)


def test_history_carries_the_running_log_Z_of_the_checkpoint(tmp_path):
    """train() returns a History (a list of the records) whose log_Z is the checkpoint's log Ẑ_c = log S_c − log n_c:
    finite for a context with mass, −inf for a sampled context whose samples all have P = 0, NaN for a context never
    sampled; count is n_c."""
    pb = make_toy_problem("conditional", beta=0.5, n_contexts=3)
    target = pb.target * BinaryFactor("not_c1", lambda s: s.context_ids != 1)  # context 1 has no mass
    out = tmp_path / "run"
    hist = train(pb.policy, target, pb.prompts, _cfg(n_steps=1, batch_size=2, samples_per_context=1,
                                                     out_dir=str(out)))  # one batch: contexts 0 and 1
    assert isinstance(hist, list) and [r["step"] for r in hist] == [0] and hist.step == 1
    st = torch.load(out / "checkpoint.pt", weights_only=False)["state"]
    assert hist.log_Z.dtype == torch.float64 and hist.log_Z.device.type == "cpu" and hist.log_Z.shape == (3,)
    assert torch.equal(hist.count, st["count"]) and hist.count.tolist() == [1.0, 1.0, 0.0]
    expected = st["log_S"] - torch.log(st["count"])
    assert torch.equal(hist.log_Z[:2], expected[:2]) and math.isfinite(hist.log_Z[0])
    assert hist.log_Z[1] == -math.inf and math.isnan(hist.log_Z[2])


def test_zero_target_mass_batches_are_skipped():
    pb = make_toy_problem("scalar", beta=0.5)
    p0 = _params(pb.policy)
    never = Target(pb.target.base) * BinaryFactor("never", lambda s: torch.zeros(len(s), dtype=torch.bool))
    hist = train(pb.policy, never, pb.prompts, _cfg(divergence="js", n_steps=3, batch_size=16))
    assert torch.equal(_params(pb.policy), p0)  # no update, no NaN
    assert [r["train/skipped_steps"] for r in hist] == [1, 2, 3]
    # mass appears at step 1: step 0 is skipped, later steps train with finite parameters
    calls = []

    def late(s):
        calls.append(1)
        return torch.full((len(s),), len(calls) > 1)
    hist = train(pb.policy, Target(pb.target.base) * BinaryFactor("late", late), pb.prompts,
                 _cfg(divergence="kl", n_steps=3, batch_size=16))
    assert hist[-1]["train/skipped_steps"] == 1 and hist[-1]["train/samples_seen"] == 48
    p1 = _params(pb.policy)
    assert torch.isfinite(p1).all() and not torch.equal(p1, p0)


def test_rkl_without_floor_stops_with_message_and_keeps_last_checkpoint(tmp_path):
    # b = 1 everywhere for the first two steps, then one sample per batch has b = 0 (log P = −inf)
    pb = make_toy_problem("scalar", beta=0.5)
    calls = []

    def b(s):
        calls.append(1)
        out = torch.ones(len(s), dtype=torch.bool)
        out[0] = len(calls) <= 2
        return out
    target = Target(pb.target.base) * BinaryFactor("b", b)  # log_floor = −inf
    out = tmp_path / "run"
    with pytest.raises(NonFiniteLossError, match=r"step 2.*rkl.*log_floor") as e:
        train(pb.policy, target, pb.prompts, _cfg(divergence="rkl", n_steps=5, batch_size=16, checkpoint_every=1,
                                                  out_dir=str(out)))
    assert "checkpoint" in str(e.value)
    ck = torch.load(out / "checkpoint.pt", weights_only=False)
    assert ck["state"]["step"] == 2
    now = pb.policy.state_dict()
    assert all(torch.equal(now[k], v) for k, v in ck["policy"].items())  # no update at the failing step
    assert all(torch.isfinite(v).all() for v in ck["policy"].values() if v.is_floating_point())
    with open(out / "history.jsonl") as fh:
        assert [json.loads(line)["step"] for line in fh] == [0, 1]
    # the natural case: a binary target with no floor hits −∞ pseudo-rewards at the first step
    pbin = make_toy_problem("binary")
    with pytest.raises(NonFiniteLossError, match="step 0"):
        train(pbin.policy, pbin.target, pbin.prompts, _cfg(divergence="rkl", n_steps=2, batch_size=16))
    assert os.listdir(tmp_path) == ["run"]


@pytest.mark.parametrize("samples_per_context", [None, 16])
def test_conditional_targets_one_Z_per_context(samples_per_context):
    """p_c ∝ a(·|c)·exp(r_c/β) with r_c depending on the context: every context's Ẑ_c converges to its own Z_c
    and E_c[JS(π(·|c), p_c)] drops by 90%. samples_per_context=16 with batch 16: contexts alternate (round-robin)."""
    pb = make_toy_problem("conditional", n_contexts=2, beta=0.5)
    log_Z = pb.info["log_Z"]
    assert abs(log_Z[0] - log_Z[1]) > 0.3  # the contexts really differ
    d0 = pb.divergence("js")
    steps = 80 if samples_per_context is None else 120
    hist = train(pb.policy, pb.target, pb.prompts, _cfg(divergence="js", n_steps=steps, log_every=1,
                                                        batch_size=64 if samples_per_context is None else 16,
                                                        samples_per_context=samples_per_context, lr=3e-3))
    assert pb.divergence("js") < 0.1 * d0
    if samples_per_context is None:  # both contexts in every batch: logged log Ẑ is the mean over contexts
        assert hist[-1]["target/log_Z"] == pytest.approx(sum(log_Z) / 2, abs=0.1)
    else:  # one context per batch, alternating
        assert hist[-2]["target/log_Z"] == pytest.approx(log_Z[(steps - 2) % 2], abs=0.1)
        assert hist[-1]["target/log_Z"] == pytest.approx(log_Z[(steps - 1) % 2], abs=0.1)


def test_tokenizer_fills_texts_for_text_scorers():
    class CharTokenizer:  # ids 0, 1, 2 -> "a", "b", "c"; 3 = EOS
        eos_token_id, pad_token_id = 3, None

        def batch_decode(self, seqs, skip_special_tokens=True):
            return ["".join("abc"[i] for i in s if i != 3) for s in seqs]

    seen = []

    def has_a(s):
        seen.extend(s.texts)
        return torch.tensor(["a" in t for t in s.texts])

    pb = make_toy_problem("scalar")
    target = Target(pb.target.base) * BinaryFactor("has_a", has_a)
    hist = train(pb.policy, target, pb.prompts, _cfg(divergence="js", n_steps=2, batch_size=16),
                 tokenizer=CharTokenizer())
    assert len(seen) == 32 and all(set(t) <= set("abc") for t in seen)
    assert 0 <= hist[-1]["align/has_a"] <= 1


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_resume_on_cuda(tmp_path):
    """Checkpoints hold CPU RNG states and are loaded on CPU first (a CUDA map_location breaks set_rng_state)."""
    def problem():
        pb = make_toy_problem("scalar")
        pb.policy.cuda()
        pb.target.base.cuda()
        return pb
    common = dict(divergence="js", batch_size=32, proposal="offline", checkpoint_every=2, device="cuda")
    pa = problem()
    train(pa.policy, pa.target, pa.prompts, _cfg(n_steps=4, out_dir=str(tmp_path / "a"), **common))
    pb = problem()
    train(pb.policy, pb.target, pb.prompts, _cfg(n_steps=2, out_dir=str(tmp_path / "b"), **common))
    pc = problem()
    train(pc.policy, pc.target, pc.prompts, _cfg(n_steps=4, out_dir=str(tmp_path / "b"), **common), resume=True)
    assert torch.allclose(_params(pa.policy), _params(pc.policy), atol=1e-6)
