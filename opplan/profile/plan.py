"""Which modules to time for a scenario's model, and what ``measured:`` patterns they stand for.

Every layer of a builder's model costs the same, so each kind of operator is timed once
and written as a pattern (``L*.attn``), restricted to the layers it applies to (a MoE's
dense layers keep ``L<i>.mlp``). Operators with no module here (MLA attention, the
vision patch embedding and projection, the all-to-all operators) are left to the cost
model, and listed as such.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from opplan.profile import blocks
from simulator.errors import InputError
from simulator.yamlio import Section

__all__ = ["Item", "profile_items"]

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Item:
    """One module to time: the pattern it is written under, how to build it and its inputs."""

    pattern: str
    build: Callable[[], torch.nn.Module]
    tokens: tuple[int, int]  # (micro-batch, sequence) of its input
    width: int  # hidden size of its input; 0 = token ids
    vocab: int = 0  # > 0: the module is a head, its targets drawn from this vocabulary


def _split(section: Section, tp: int, **sizes: int) -> None:
    for name, value in sizes.items():
        if value % tp:
            raise InputError(f"--tp {tp} does not divide {name} ({value})", file=section.file, field=f"{section.where(name)}")


def _decoder_items(c, s, tp: int, *, prefix: str = "", rope: bool = True, kind: str = "swiglu") -> list[Item]:
    b, seq, h = s.micro_batch_size, s.seq_len, c.hidden
    choices = {"kernel": s.attention_kernel, "norm": s.norm, "qkv": s.qkv}
    kv = getattr(c, "kv_heads", c.heads)
    return [
        Item(f"{prefix}L*.attn", lambda: blocks.Attention(h, c.heads, kv, rope=rope, seq_len=seq, tp=tp, **choices), (b, seq), h),
        Item(f"{prefix}L*.mlp", lambda: blocks.MLP(h, c.ffn, kind=kind, norm=s.norm, tp=tp), (b, seq), h),
    ]


def _transformer(section: Section, tp: int) -> list[Item]:
    from simulator.models.transformer import config_from_section

    c = config_from_section(section)
    s = c.settings
    _split(section, tp, heads=c.heads, kv_heads=c.kv_heads, ffn=c.ffn, vocab=c.vocab)
    b, seq, h = s.micro_batch_size, s.seq_len, c.hidden
    return [
        Item("embed", lambda: blocks.Embedding(c.vocab, h, tp=tp), (b, seq), 0, c.vocab),
        *_decoder_items(c, s, tp),
        Item("head", lambda: blocks.Head(h, c.vocab, norm=s.norm, tp=tp), (b, seq), h, c.vocab // tp),
    ]


def _moe(section: Section, tp: int) -> list[Item]:
    from simulator.models.moe import config_from_section

    c = config_from_section(section)
    s = c.settings
    _split(section, tp, heads=c.heads, ffn=c.ffn, expert_ffn=c.expert_ffn, vocab=c.vocab)
    b, seq, h = s.micro_batch_size, s.seq_len, c.hidden
    routed = max(1, round(b * seq * c.top_k / c.experts))
    items = [Item("embed", lambda: blocks.Embedding(c.vocab, h, tp=tp), (b, seq), 0, c.vocab)]
    if c.mla is None:
        items.append(_decoder_items(c, s, tp)[0])
    if c.dense_layers:
        items.append(Item("L*.mlp", lambda: blocks.MLP(h, c.ffn, norm=s.norm, tp=tp), (b, seq), h))
    items += [
        Item("L*.router", lambda: blocks.Router(h, c.experts, c.top_k, norm=s.norm), (b, seq), h),
        Item("L*.expert*", lambda: blocks.MLP(h, c.expert_ffn, with_norm=False, tp=tp), (1, routed), h),
        Item("head", lambda: blocks.Head(h, c.vocab, norm=s.norm, tp=tp), (b, seq), h, c.vocab // tp),
    ]
    if c.shared_experts:
        width = c.shared_experts * c.expert_ffn
        items.append(Item("L*.shared", lambda: blocks.MLP(h, width, with_norm=False, tp=tp), (b, seq), h))
    return items


def _two_tower(section: Section, tp: int) -> list[Item]:
    from simulator.models.multimodal import config_from_section

    c = config_from_section(section)
    s, v, x = c.settings, c.vision, c.text
    _split(section, tp, heads=x.heads, ffn=x.ffn, vocab=x.vocab)
    b, seq = s.micro_batch_size, s.seq_len
    vision = [
        Item("vision.L*.attn", lambda: blocks.Attention(v.hidden, v.heads, v.heads, kernel=s.attention_kernel, norm=s.norm,
                                                        qkv=s.qkv, causal=False, rope=False, tp=tp), (b, v.tokens), v.hidden),
        Item("vision.L*.mlp", lambda: blocks.MLP(v.hidden, v.ffn, kind="gelu", norm=s.norm, tp=tp), (b, v.tokens), v.hidden),
    ]
    items = [*vision, *_decoder_items(x, s, tp, prefix="text.", rope=False, kind="gelu")]
    if c.fusion_layers:
        items += [Item(i.pattern.replace("text.", "fusion."), i.build, i.tokens, i.width) for i in items[-2:]]
    items += [
        Item("text.embed", lambda: blocks.Embedding(x.vocab, x.hidden, tp=tp), (b, seq), 0, x.vocab),
        Item("head", lambda: blocks.Head(x.hidden, x.vocab, norm=s.norm, tp=tp), (b, seq), x.hidden, x.vocab // tp),
    ]
    return items


_BUILDERS = {"transformer": _transformer, "moe": _moe, "two_tower": _two_tower}


def profile_items(model: Section, tp: int = 1) -> list[Item]:
    """The modules to time for ``model`` (a builder's section), one rank's share under ``tp``."""
    kind = model.str("type")
    if kind not in _BUILDERS:
        raise model.error(f"opplan profile measures the {', '.join(_BUILDERS)} builders, not {kind!r}", "type")
    return _BUILDERS[kind](model, tp)
