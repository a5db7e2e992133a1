"""KV-cache bytes per token, grouped-query and latent attention aware.

- Multi-head / grouped-query attention caches a key and a value vector per KV head
  per layer: ``2 x layers x kv_heads x head_dim x bytes`` per token (LLaMA-2-70B:
  2 x 80 x 8 x 128 x 2 = 327,680 bytes, 320 KiB). Tensor parallelism splits the KV
  heads over the TP ranks (Megatron / vLLM shard attention by head).
- Multi-head latent attention (DeepSeek-V2, Liu et al. 2024, section 2.1.2) caches the
  compressed latent ``c_KV`` (``kv_lora_rank``) and the shared decoupled RoPE key
  (``qk_rope_dim``): ``(kv_lora_rank + qk_rope_dim) x bytes`` per token per layer,
  with no factor 2 and no head count. The latent is not split by head, so every TP
  rank holds all of it (vLLM's MLA backend replicates it across TP).
"""

from __future__ import annotations

from dataclasses import dataclass

from simulator.errors import InputError
from simulator.models import moe, transformer
from simulator.yamlio import Section

__all__ = ["KVShape", "kv_shape"]


@dataclass(frozen=True)
class KVShape:
    """Per layer and token: cached elements (all heads), and whether TP splits them."""

    layers: int
    elements_per_layer: int
    split_by_tp: bool
    kind: str

    def bytes_per_token(self, elem_bytes: float, *, layers: int | None = None, tp: int = 1) -> float:
        """Bytes one token's cache takes on one rank holding ``layers`` layers (default all) at TP ``tp``.

        >>> KVShape(80, 2 * 8 * 128, True, "gqa").bytes_per_token(2)
        327680.0
        """
        count = self.layers if layers is None else layers
        return float(count * self.elements_per_layer * elem_bytes / (tp if self.split_by_tp else 1))


def kv_shape(model: Section) -> KVShape:
    """The KV shape of a ``transformer`` or ``moe`` model section."""
    kind = str(model.raw("type", ""))
    if kind == "transformer":
        c = transformer.config_from_section(model)
        return KVShape(c.layers, 2 * c.kv_heads * (c.hidden // c.heads), True, "gqa" if c.kv_heads < c.heads else "mha")
    if kind == "moe":
        c = moe.config_from_section(model)
        if c.mla is not None:
            return KVShape(c.layers, c.mla.kv_lora_rank + c.mla.qk_rope_dim, False, "mla")
        return KVShape(c.layers, 2 * c.kv_heads * (c.hidden // c.heads), True, "gqa" if c.kv_heads < c.heads else "mha")
    raise InputError(f"serving needs a decoder model (type transformer or moe), got type {kind!r}", field="model.type")
