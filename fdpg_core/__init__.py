"""fdpg_core: f-DPG (Go et al., ICML 2023) — divergences, loss, sampler, targets, training, metrics.

The public names a notebook needs are re-exported here; each lives in one small module:

    divergences  the table of f-divergences (f, f′ as functions of log t) and exact D_f on a support
    losses       the f-DPG surrogate loss and the pseudo-reward −f′
    estimators   importance-sampled Ẑ, ESS, D_f(π‖p) with Ẑ, KL(π‖a), entropy
    samples      Samples (a batch of prompts + continuations) and the prompt helpers
    sampling     KV-cached ancestral sampler (inverse-CDF draw) and teacher-forced scoring
    targets      composable targets p ∝ a·Π factors, λ fitting by moment matching
    config       FDPGConfig: the documented, validated settings of train
    train        the training loop (Algorithm 1)
    checkpoint   history.jsonl, checkpoint.pt and resume; History, the records train returns with the final Ẑ_c

The experiment kit (zoo, scorers, toy problems, results, notebooks, the torchrun command line) lives in
`fdpg_core.kit`; the accelerated paths of the same mathematics (fast decoders, score kernels, bf16
proposals) in `fdpg_core.fast`.
"""
from fdpg_core.divergences import DIVERGENCES, Divergence, alpha_divergence, exact_divergence, get_divergence
from fdpg_core.losses import fdpg_loss, pseudo_reward
from fdpg_core.estimators import ess, is_divergence, kl_pi_a, log_Z_hat, sequence_entropy
from fdpg_core.sampling import Samples, bos_prompts, decode, left_pad, repeat_prompts, sample, score
from fdpg_core.targets import BinaryFactor, ExponentialFactor, ScalarFactor, Scored, Target, fit_lam
from fdpg_core.train import FDPGConfig, History, train
