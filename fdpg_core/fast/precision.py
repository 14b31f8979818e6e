"""Mixed precision for f-DPG: which precision a run uses, and the bf16 machinery of `train`.

    precision="fp32"  everything in float32; x ~ π_θ, so q = π_θ and every importance weight is 1.
    precision="bf16"  per step:
      1. q = the autocast copy of the sampling model (π_θ online, the frozen proposal offline): the weights of its
         matrix products (nn.Linear, GPT-2's Conv1D, the output head) held in bf16, everything else (embeddings,
         norms, so the residual stream) in float32, refreshed in place from the float32 weights (so decoders
         cached per model see them). Run under bf16 autocast it computes what the float32 model computes under
         bf16 autocast, without casting every weight again at every call; on a CPU its nn.Linear weights are
         held pre-packed for oneDNN (PackedLinear: the same products bit for bit, 1.5-2x faster at 16 rows);
      2. x ~ q under bf16 autocast, with q's exact log q(x) (the sampler's contract: the log-probability under
         the distribution the tokens were drawn from);
      3. log π_θ(x) from the float32 policy under bf16 autocast (float32 master weights; Adam's state stays
         float32): the same arithmetic as q's, except that q decodes one token at a time with a KV cache, whose
         products round differently from those of one pass over the whole sequence;
      4. each sample weighted by π_θ/q in the loss and the metrics (the offline-proposal path of `fdpg_loss`), so
         the gradient estimate is unbiased for ∇_θ D_f(π_θ‖p): the bf16 sampler costs variance, measured by the
         weights' effective sample size `train/ess`, and no bias. Why the copy keeps a float32 residual stream:
         on SmolLM2-135M-Instruct (64 samples of 16 tokens) the log q of a copy held entirely in bf16 differs from
         log π_θ under autocast by 0.26 nats per sequence (std; ESS 0.94), that of this copy by 0.06 (ESS
         0.997), all of it from the cached decode (a full pass of the copy equals π_θ's bit for bit);
      5. the base a is scored as the Target holds it, never under autocast: with a float32 base the target
         p ∝ a·b is exactly the one of a float32 run. (Scoring a in bf16 would shift every log a(x) by bf16
         rounding, ~0.02-0.3 nats per sequence on 124M-135M models, i.e. train towards a different target; a user
         who accepts that passes a bf16 base: Target(base.to(torch.bfloat16)).)
    precision="auto"  "bf16" where the hardware has bf16 matrix units (a CPU with AMX or AVX512-BF16, a CUDA GPU
         with native bf16), "fp32" elsewhere (on a CPU without them bf16 products are emulated and slower).

`has_bf16_units(device)` is the detector ("auto" looks it up at call time, so tests can monkeypatch it or
`cpu_bf16_flags`). No global state is changed at import or by `MixedPrecision`.
"""
from __future__ import annotations

import contextlib
import copy
import platform

import torch

from fdpg_core.fast.decoders import unsupported_reason

__all__ = ["PRECISIONS", "cpu_model", "cpu_bf16_flags", "has_bf16_units", "resolve_precision", "MixedPrecision",
           "bf16_copy", "autocast_copy", "PackedLinear", "can_pack", "pack_linears", "check_policy_dtype"]

PRECISIONS = ("fp32", "bf16", "auto")
# CPU flags (Linux /proc/cpuinfo names) of bf16 matrix units: AMX tiles, or AVX512 bf16 dot products
_BF16_UNIT_FLAGS = ("amx_bf16", "avx512_bf16")


def _cpuinfo() -> dict:
    """First processor's fields of /proc/cpuinfo ({} where there is none, e.g. macOS, Windows)."""
    try:
        with open("/proc/cpuinfo") as fh:
            text = fh.read().split("\n\n", 1)[0]
    except OSError:
        return {}
    return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in text.splitlines()) if k.strip()}


def cpu_model() -> str:
    """The CPU's model name ('AMD EPYC', 'Intel(R) Xeon(R) ...'), or platform.processor() where unknown, with its
    family and model numbers where /proc/cpuinfo has them: a name such as 'AMD EPYC' covers several generations
    (family 25 is Zen 3/4, family 26 Zen 5)."""
    info = _cpuinfo()
    name = info.get("model name") or platform.processor() or platform.machine()
    if "cpu family" not in info or "model" not in info:
        return name
    return f"{name} (family {info['cpu family']}, model {info['model']})"


def cpu_bf16_flags() -> list[str]:
    """The CPU's bf16-related flags among amx_bf16, amx_tile, avx512_bf16 (sorted; [] where unknown)."""
    flags = set(_cpuinfo().get("flags", "").split())
    return sorted(flags & {"amx_bf16", "amx_tile", "avx512_bf16"})


def has_bf16_units(device) -> bool:
    """True where bf16 matrix products run natively: a CPU with AMX or AVX512-BF16, a CUDA GPU with native bf16."""
    device = torch.device(device)
    if device.type == "cpu":
        return any(f in cpu_bf16_flags() for f in _BF16_UNIT_FLAGS)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    return False


def resolve_precision(precision: str, device) -> str:
    """'fp32' or 'bf16' for `precision` in PRECISIONS on `device` ('auto': bf16 iff has_bf16_units(device))."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r}; allowed: {list(PRECISIONS)}")
    if precision == "auto":
        return "bf16" if has_bf16_units(device) else "fp32"
    return precision


def _frozen_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A deep copy of `model` in eval mode without gradients (ties between weights kept; .grad not copied)."""
    grads = [p.grad for p in model.parameters()]
    for p in model.parameters():  # not copied: the copy never trains
        p.grad = None
    try:
        out = copy.deepcopy(model)
    finally:
        for p, g in zip(model.parameters(), grads):
            p.grad = g
    return out.eval().requires_grad_(False)


def bf16_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of `model` entirely in bf16 (e.g. a base model a scored in bf16): eval mode, no gradients."""
    return _frozen_copy(model).to(torch.bfloat16)


def _product_modules(model: torch.nn.Module) -> list:
    """The modules whose weight enters a matrix product: nn.Linear, transformers' Conv1D (GPT-2), the output head."""
    from transformers.pytorch_utils import Conv1D

    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return [m for m in model.modules() if isinstance(m, (torch.nn.Linear, Conv1D)) or m is head]


def autocast_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of `model` to run under bf16 autocast: the parameters of its product modules (_product_modules) in
    bf16, the rest (embeddings, norms) in float32. Under autocast every product casts its inputs to bf16, so this
    copy computes bit for bit what `model` computes under autocast, without casting the weights at every call.
    An output head tied to the input embedding is untied first (the head in bf16, the embedding in float32). A
    float64 model's copy is float32 outside the products (autocast leaves float64 products alone: q ≠ π_θ more)."""
    q = _frozen_copy(model).float()
    head = q.get_output_embeddings() if hasattr(q, "get_output_embeddings") else None
    emb = q.get_input_embeddings() if hasattr(q, "get_input_embeddings") else None
    if head is not None and emb is not None and head.weight is emb.weight:
        head.weight = torch.nn.Parameter(head.weight.detach().clone(), requires_grad=False)
    for m in _product_modules(q):
        m.to(torch.bfloat16)
    return q


@torch.no_grad()
def _pack(weight: torch.Tensor) -> torch.Tensor:
    """A (out_features, in_features) weight rounded to bf16, in oneDNN's layout for batches of about 16 rows."""
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach().to(torch.bfloat16).contiguous(), 16)


class PackedLinear(torch.nn.Module):
    """A bf16 nn.Linear of a sampling copy with its weight held in oneDNN's blocked layout (CPU): the products of
    F.linear in bf16 (its input cast to bf16, as autocast does), bit for bit, without laying the weight out again
    at every call. A decode step multiplies a few rows by every weight, and that re-layout is a large share of
    each product. The weight is not a parameter: `packed` holds it (_pack: the source's, rounded to bf16), and
    refreshing the copy packs a new one; the bias stays a bf16 parameter."""

    def __init__(self, linear: torch.nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.bias = linear.bias
        self.train(linear.training)  # the copy's eval mode (score() takes its fast path only in eval mode)
        self.packed = _pack(linear.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(torch.bfloat16)  # autocast does not see this oneDNN op: cast as it would for F.linear
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")


def can_pack(device) -> bool:
    """True where PackedLinear runs: a CPU whose torch has oneDNN bf16 products (tried once on a small product)."""
    if torch.device(device).type != "cpu" or not torch.backends.mkldnn.is_available():
        return False
    if not hasattr(can_pack, "_ok"):
        try:
            lin = torch.nn.Linear(32, 16).to(torch.bfloat16)
            x = torch.randn(4, 32).to(torch.bfloat16)
            can_pack._ok = torch.equal(PackedLinear(lin)(x), torch.nn.functional.linear(x, lin.weight, lin.bias))
        except (RuntimeError, AttributeError):  # a torch without these oneDNN ops
            can_pack._ok = False
    return can_pack._ok


def pack_linears(q: torch.nn.Module) -> torch.nn.Module:
    """Replace every bf16 nn.Linear of the sampling copy `q` except its output head by a PackedLinear, in place;
    the head stays an nn.Linear (HF's forward and the fast decoder read its weight) and gets a packed copy of its
    weight as `head.packed`, which the fast decoder's logits use. Returns q."""
    head = q.get_output_embeddings() if hasattr(q, "get_output_embeddings") else None
    for name, m in list(q.named_modules()):
        for child_name, child in list(m.named_children()):
            if type(child) is torch.nn.Linear and child is not head and child.weight.dtype == torch.bfloat16:
                setattr(m, child_name, PackedLinear(child))
    if type(head) is torch.nn.Linear and head.weight.dtype == torch.bfloat16:
        head.packed = _pack(head.weight)
    return q


def _sync_plan(q: torch.nn.Module, src: torch.nn.Module) -> tuple[list, list]:
    """What refreshing q from src copies: (q's tensor, src's tensor) for every parameter and floating buffer, and
    (q's module holding a packed weight, src's weight), matched by name."""
    params = dict(src.named_parameters(remove_duplicate=False))
    buffers = dict(src.named_buffers(remove_duplicate=False))
    tensors = [(d, params[n]) for n, d in q.named_parameters()]
    tensors += [(d, buffers[n]) for n, d in q.named_buffers() if d.is_floating_point()]
    packed = [(m, params[f"{n}.weight"]) for n, m in q.named_modules() if hasattr(m, "packed")]
    return tensors, packed


@torch.no_grad()
def _refresh(plan: tuple[list, list]) -> None:
    """q's parameters, floating buffers and packed weights ← the source's, each rounded to q's dtype for it."""
    tensors, packed = plan
    for d, s in tensors:
        d.copy_(s)
    for m, w in packed:
        m.packed = _pack(w)


class MixedPrecision:
    """The precision of one `train` run: which model draws the samples, the context log π_θ is computed in, and
    whether q = π_θ exactly (importance weights 1) or not."""

    def __init__(self, precision: str, device):
        self.device = torch.device(device)
        self.name = resolve_precision(precision, self.device)  # 'fp32' or 'bf16'
        self._copies: dict[int, tuple] = {}  # id(model) -> (its sampling copy, what refreshing it copies)

    @property
    def bf16(self) -> bool:
        return self.name == "bf16"

    def q_is_pi(self, online: bool) -> bool:
        """Samples come from π_θ itself (weights exactly 1): online sampling in fp32."""
        return online and not self.bf16

    def sampler_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """The model to sample from (under self.autocast()): `model` in fp32; in bf16 its autocast copy, refreshed
        from `model` now."""
        if not self.bf16:
            return model
        if id(model) not in self._copies:
            q = autocast_copy(model)  # created from the current weights
            if can_pack(self.device) and unsupported_reason(q) is None:  # the lean decoder reads no layer's .weight
                pack_linears(q)
            self._copies[id(model)] = q, _sync_plan(q, model)
            return q
        q, plan = self._copies[id(model)]
        _refresh(plan)
        return q

    def autocast(self):
        """Context for sampling from sampler_model and for log π_θ: bf16 autocast (bf16 products) in bf16, nothing
        in fp32."""
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)


def check_policy_dtype(policy: torch.nn.Module) -> None:
    """Refuse trainable parameters in bfloat16 / float16. An Adam step changes a weight by about lr, far below the
    spacing of those formats (bfloat16 keeps 8 significant bits: a weight of 0.05 moves in steps of 2.4e-4), so
    most updates would be rounded away and the policy would silently barely train."""
    low = [(n, p.dtype) for n, p in policy.named_parameters()
           if p.requires_grad and p.dtype not in (torch.float32, torch.float64)]
    if low:
        raise ValueError(f"train: {len(low)} trainable parameter tensor(s) of the policy are {low[0][1]} (e.g. "
                         f"{low[0][0]!r}); Adam updates of size lr are mostly rounded away in that format. Call "
                         "policy.float() before train() (allowed: float32 or float64 parameters; the target's base "
                         "model may stay in low precision)")
