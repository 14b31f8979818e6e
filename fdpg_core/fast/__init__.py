"""Accelerated paths of the same mathematics, called through `fdpg_core.sampling` and `fdpg_core.train`.

    steppers    the Hugging Face KV-cache steppers, the choice of decode implementation, the eager decode loop
    draw        the inverse-CDF draw of one token and the evaluation-only truncation (shared with sampling)
    decoders    lean static-KV-cache decoder, LeanStepper, StaticSampler / CUDA graphs / torch.compile (sample_static)
    logprobs    score() kernels: chunked log-softmax at the sampled tokens with a hand-written backward, fused LM head
    precision   FDPGConfig(precision=...): fp32, or bf16 samples made exact by importance weights

Nothing here imports `fdpg_core.sampling` or the experiment kit.
"""
