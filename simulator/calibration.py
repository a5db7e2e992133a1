"""Per-operator estimates of one LLaMA-style layer, for comparing the cost model with measurements.

The measured reference (one LLaMA-2-7B layer on an H100 SXM5, ``shared/reference/
h100-llama7b-measured.md``) times four operators — attention block, MLP block, head,
embedding — and a chain of four layers. :func:`layer_estimates` gives the model's numbers
for the same operators under the same implementation choices, from the cost model and a
hardware profile alone (no measured times), so that ``benchmarks/calibration.py`` and the
tests can put them side by side.
"""

from __future__ import annotations

from dataclasses import dataclass

from simulator.cluster import Device
from simulator.costs import Cost, embedding
from simulator.models.transformer import Settings, attention_cost, head_cost, mlp_cost
from simulator.profiles import HardwareProfile

__all__ = ["Estimate", "IMPLEMENTATIONS", "profile_device", "layer_estimates", "chain_estimate"]

#: The measured implementations: A = FlashAttention-2 + HF RMSNorm, C = cuDNN + fused norm
#: (both with a fused QKV linear, rotate-half rotary and ``silu(gate) * up``).
IMPLEMENTATIONS = {
    "A": {"attention_kernel": "flash-attention-2", "norm": "hf", "qkv": "fused"},
    "C": {"attention_kernel": "cudnn", "norm": "fused", "qkv": "fused"},
}


@dataclass(frozen=True)
class Estimate:
    """Milliseconds of F, B, W and MiB saved for the backward (and kept from B to W)."""

    forward_ms: float
    backward_ms: float
    weight_ms: float
    saved_mib: float
    retained_mib: float


def profile_device(profile: HardwareProfile) -> Device:
    """One device of ``profile`` with its roofline rates."""
    return Device(
        "gpu0", profile.device_type, profile.memory_bytes, profile.peak_flops, profile.efficiency, rates=profile.rates
    )


def _estimate(cost: Cost, device: Device) -> Estimate:
    ms = [device.work_time(cost.work.get(kind, {})) * 1e3 for kind in "FBW"]
    return Estimate(*ms, cost.saved / 2**20, cost.retained / 2**20)


def layer_estimates(
    profile: HardwareProfile,
    *,
    seq_len: int = 4096,
    micro_batch_size: int = 1,
    hidden: int = 4096,
    heads: int = 32,
    ffn: int = 11008,
    vocab: int = 32000,
    **choices: str,
) -> dict[str, Estimate]:
    """The model's estimate of each measured operator (LLaMA-2-7B shapes by default)."""
    s = Settings(seq_len=seq_len, micro_batch_size=micro_batch_size, **choices)
    t, e = s.tokens, s.elem
    costs = {
        "attention": attention_cost(s, hidden, heads, heads),
        "mlp": mlp_cost(t, hidden, ffn, e, norm_style=s.norm),
        "head": head_cost(t, hidden, vocab, e, norm_style=s.norm),
        "embedding": embedding(t, vocab, hidden, e),
    }
    device = profile_device(profile)
    return {name: _estimate(cost, device) for name, cost in costs.items()}


def chain_estimate(estimates: dict[str, Estimate], layers: int = 4) -> tuple[float, float]:
    """``layers`` x (attention + MLP): F, then one full backward (B + W), in milliseconds."""
    blocks = (estimates["attention"], estimates["mlp"])
    forward = layers * sum(b.forward_ms for b in blocks)
    backward = layers * sum(b.backward_ms + b.weight_ms for b in blocks)
    return forward, backward
