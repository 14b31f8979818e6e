"""Enumerable toy problems: tiny autoregressive models whose every sequence can be listed.

With a vocabulary of V tokens (one of them EOS) and at most M new tokens, the support is every
sequence that stops at its first EOS within M tokens, plus every EOS-free sequence of length M:

    N = Σ_{k=1..M} (V−1)^(k−1)  +  (V−1)^M          (V = 4, M = 3: 1 + 3 + 9 + 27 = 40)

`enumerate_support` lays the whole support out as a `Samples` batch, so `sampling.score` gives the
exact log π(x) of every x (differentiable), Σ_x π(x) = 1, and `divergences.exact_divergence`
gives D_f(π‖p) exactly. Used by the exact tests and the teaching notebook.

Token conventions of the toy models: ids 0..V−2 are "words", id V−1 is EOS, also used as BOS
(the prompt) and as padding after EOS (as GPT-2 does with <|endoftext|>).

`make_toy_problem` builds a policy π_θ ← a (a copy of the base a), a Target p ∝ a·factor and the
exact normalised log p over the support:
  kind="scalar":   p ∝ a · exp(r/β), r = number of word-0 tokens                    (full support)
  kind="binary":   p ∝ a · b,        b = 1 iff word 0 appears (log b floor = log_floor)
  kind="conditional": p_c ∝ a(·|c) · exp(r_c/β), r_c = number of tokens equal to word c, for
                   n_contexts prompts (word c, EOS); one Z_c per context
  kind="bimodal":  p ∝ a · b,        b = 1 iff x = (w, 1, w) with w ∈ {0, 2} (two modes "0 1 0", "2 1 2");
                   with n_layer=0 the policy family is a position-dependent bigram model that
                   cannot correlate x_3 with x_1, so the target is outside the family
                   (forward KL covers both modes, reverse KL picks one).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import Tensor

from fdpg_core import sampling
from fdpg_core.divergences import exact_divergence
from fdpg_core.sampling import Samples
from fdpg_core.targets import BinaryFactor, ScalarFactor, Target, _eval_mode

__all__ = ["tiny_gpt2", "enumerate_sequences", "enumerate_support", "exact_log_probs", "ToyProblem",
           "make_toy_problem"]


def tiny_gpt2(vocab_size: int = 4, *, n_embd: int = 16, n_layer: int = 2, n_head: int = 2, n_positions: int = 8,
              init_std: float = 0.5, seed: int = 0):
    """A randomly initialised GPT-2 (eval mode, no dropout) with EOS = BOS = PAD = vocab_size − 1.

    The initialisation is seeded without touching the global RNG (fork_rng). A large `init_std`
    (default 0.5 vs GPT-2's 0.02) gives peaked, far-from-uniform next-token distributions.
    n_layer=0 is allowed: logits then depend only on the current token and its position (a bigram model).
    """
    import transformers as tf

    eos = vocab_size - 1
    cfg = tf.GPT2Config(vocab_size=vocab_size, n_positions=n_positions, n_embd=n_embd, n_layer=n_layer, n_head=n_head,
                        bos_token_id=eos, eos_token_id=eos, pad_token_id=eos, initializer_range=init_std,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = tf.GPT2LMHeadModel(cfg)
    return model.eval()


def enumerate_sequences(vocab_size: int, max_new_tokens: int, eos_token_id: int, pad_token_id: int):
    """Every generated sequence: tokens (N, M) long (pad after EOS) and mask (N, M) bool (True up to EOS)."""
    V, M = vocab_size, max_new_tokens
    if V < 2 or M < 1 or not 0 <= eos_token_id < V:
        raise ValueError(f"enumerate_sequences: need vocab_size >= 2, max_new_tokens >= 1 and eos in [0, V); "
                         f"got V={V}, M={M}, eos={eos_token_id}")
    words = torch.tensor([i for i in range(V) if i != eos_token_id], dtype=torch.long)  # (V−1,)

    def all_words(n):  # every word sequence of length n, (W^n, n)
        if n == 0:
            return torch.empty(1, 0, dtype=torch.long)
        return torch.cartesian_prod(*([words] * n)).reshape(-1, n)

    rows, masks = [], []
    for k in range(1, M + 2):  # enumeration (not a hot path); k = M + 1 means "M words, no EOS"
        if k <= M:
            seqs = torch.cat([all_words(k - 1), torch.full((len(words) ** (k - 1), 1), eos_token_id)], 1)  # (n, k)
        else:
            seqs, k = all_words(M), M
        pad = torch.full((seqs.shape[0], M - k), pad_token_id, dtype=torch.long)
        rows.append(torch.cat([seqs, pad], 1))  # (n, M)
        masks.append(torch.arange(M).expand(seqs.shape[0], M) < k)
    return torch.cat(rows), torch.cat(masks)


def enumerate_support(model, max_new_tokens: int, prompt_ids: Tensor | None = None, prompt_mask: Tensor | None = None,
                      *, eos_token_id: int | None = None, pad_token_id: int | None = None) -> Samples:
    """The whole support for each of C prompts as one Samples batch of C·N rows (context-major).

    prompt_ids/prompt_mask (C, Tp), default one BOS prompt. log_q is filled with the exact
    log-probabilities of `model` (no grad), so the batch is a valid Samples "drawn" from model.
    """
    V = int(model.config.vocab_size)
    eos = int(model.config.eos_token_id if eos_token_id is None else eos_token_id)
    pad = eos if pad_token_id is None else int(pad_token_id)
    if prompt_ids is None:
        prompt_ids, prompt_mask = sampling.bos_prompts(1, eos)
    if prompt_mask is None:
        prompt_mask = torch.ones_like(prompt_ids)
    tokens, mask = enumerate_sequences(V, max_new_tokens, eos, pad)  # (N, M)
    C, N = prompt_ids.shape[0], tokens.shape[0]
    ctx = torch.arange(C).repeat_interleave(N)  # (C·N,)
    device = next(model.parameters()).device
    support = Samples(prompt_ids=prompt_ids[ctx], prompt_mask=prompt_mask[ctx], tokens=tokens.repeat(C, 1),
                      mask=mask.repeat(C, 1), log_q=torch.zeros(C * N), context_ids=ctx,
                      pad_token_id=pad).to(device)
    with torch.no_grad():
        support.log_q = exact_log_probs(model, support).float()
    return support


def exact_log_probs(model, support: Samples) -> Tensor:
    """log π(x) for every row of `support` (C·N,), differentiable; eval mode (no dropout)."""
    with _eval_mode(model):
        return sampling.score(model, support)


@dataclass
class ToyProblem:
    """A policy, a target and the exact normalised target over the enumerated support.

    support rows are context-major: row c·N + j is sequence j under prompt c; `log_p` (C, N) is
    the exact target log p_c(x) = log P − log Z_c, normalised per context.
    """

    policy: torch.nn.Module
    target: Target
    prompts: tuple[Tensor, Tensor]  # prompt_ids (C, Tp), prompt_mask (C, Tp)
    support: Samples  # C·N rows
    log_p: Tensor  # (C, N)
    max_new_tokens: int
    eos_token_id: int
    pad_token_id: int
    info: dict = field(default_factory=dict)

    def log_pi(self, policy=None) -> Tensor:
        """Exact log π(x|c) over the support, (C, N), differentiable."""
        lp = exact_log_probs(self.policy if policy is None else policy, self.support)
        return lp.reshape(self.log_p.shape)

    def divergence(self, name="kl", policy=None) -> float:
        """Exact E_c[D_f(π(·|c)‖p_c)] for the divergence key `name` (D_f convention: `kl` = KL(p‖π))."""
        with torch.no_grad():
            lp = self.log_pi(policy).double()
            lp = lp - torch.logsumexp(lp, -1, keepdim=True)  # renormalise float error away
            return float(exact_divergence(name, lp, self.log_p.double()).mean())

    def entropy(self, policy=None) -> float:
        """Exact sequence entropy H(π) = −Σ_x π(x) log π(x), mean over contexts."""
        with torch.no_grad():
            lp = self.log_pi(policy).double()
            return float(-(lp.exp() * lp).sum(-1).mean())

    def metrics_fn(self, names=("kl", "rkl", "js", "tv")):
        """A `train(..., metrics_fn=...)` callback logging exact/<name> and exact/entropy."""
        def fn(policy, step):
            out = {f"exact/{n}": self.divergence(n, policy) for n in names}
            out["exact/entropy"] = self.entropy(policy)
            return out
        return fn


def _count_word0(samples: Samples) -> Tensor:
    return ((samples.tokens == 0) & samples.mask).sum(-1).float()  # r(x) = #word-0 tokens, (B,)


def _has_word0(samples: Samples) -> Tensor:
    return ((samples.tokens == 0) & samples.mask).any(-1)  # b(x) (B,)


def _count_word_c(samples: Samples) -> Tensor:
    c = samples.context_ids.to(samples.tokens.device)[:, None]  # (B, 1)
    return ((samples.tokens == c) & samples.mask).sum(-1).float()  # r_c(x) = #tokens equal to word c, (B,)


def _bimodal(samples: Samples) -> Tensor:
    """b(x) = 1 iff the first three tokens are (w, 1, w) with w ∈ {0, 2} (no EOS among them)."""
    t, m = samples.tokens, samples.mask
    if t.shape[1] < 3:
        return torch.zeros(t.shape[0], dtype=torch.bool, device=t.device)
    full = m[:, :3].all(-1) & (t[:, :3] != samples.pad_token_id).all(-1)
    return full & (t[:, 0] == t[:, 2]) & (t[:, 1] == 1) & ((t[:, 0] == 0) | (t[:, 0] == 2))


def make_toy_problem(kind: str = "scalar", *, vocab_size: int = 4, max_new_tokens: int = 3, n_layer: int = 2,
                     n_embd: int = 16, init_std: float = 0.5, seed: int = 0, beta: float = 0.5,
                     log_floor: float = float("-inf"), n_contexts: int = 1) -> ToyProblem:
    """Base a = tiny_gpt2(seed), policy = copy of a (π_θ ← a), target p ∝ a·factor (see module docstring).

    kind='bimodal' is meant with n_layer=0, init_std=0.02 (a near uniform, so each mode has p ≈ ½) and a finite
    log_floor (e.g. −10) when reverse KL is trained.
    """
    kinds = {"scalar", "binary", "bimodal", "conditional"}
    if kind not in kinds:
        raise ValueError(f"make_toy_problem: kind={kind!r}; allowed: {sorted(kinds)}")
    if kind == "bimodal" and (vocab_size < 4 or max_new_tokens < 3):
        raise ValueError("kind='bimodal' needs vocab_size >= 4 and max_new_tokens >= 3")
    if not 1 <= n_contexts <= vocab_size - 1:
        raise ValueError(f"make_toy_problem: n_contexts={n_contexts}; allowed: 1..{vocab_size - 1} (one word each)")
    base = tiny_gpt2(vocab_size, n_embd=n_embd, n_layer=n_layer, init_std=init_std, seed=seed,
                     n_positions=max(8, max_new_tokens + 2))
    policy = copy.deepcopy(base)
    if kind == "scalar":
        factor = ScalarFactor("n_word0", _count_word0, beta)
    elif kind == "conditional":
        factor = ScalarFactor("n_word_c", _count_word_c, beta)
    elif kind == "binary":
        factor = BinaryFactor("has_word0", _has_word0, log_floor=log_floor)
    else:
        factor = BinaryFactor("bimodal", _bimodal, log_floor=log_floor)
    target = Target(base) * factor
    eos = vocab_size - 1
    if n_contexts == 1:
        prompts = sampling.bos_prompts(1, eos)  # (1, 1)
    else:  # context c: the prompt (word c, EOS), (C, 2)
        ids = torch.stack([torch.arange(n_contexts), torch.full((n_contexts,), eos)], 1)
        prompts = (ids, torch.ones_like(ids))
    support = enumerate_support(base, max_new_tokens, *prompts)
    log_P = target.score(support, log_a=support.log_q).log_P.double().reshape(n_contexts, -1)  # (C, N)
    log_p = log_P - torch.logsumexp(log_P, -1, keepdim=True)  # log p = log P − log Z (exact)
    return ToyProblem(policy=policy, target=target, prompts=prompts, support=support, log_p=log_p,
                      max_new_tokens=max_new_tokens, eos_token_id=eos, pad_token_id=eos,
                      info={"kind": kind, "log_Z": torch.logsumexp(log_P, -1).tolist()})
