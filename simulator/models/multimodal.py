"""``type: two_tower``: a CLIP-like vision encoder and a text decoder joined by cross-attention.

A CoCa-style model (Yu et al. 2022): a ViT encodes the image; a text decoder runs
``text.layers`` text-only layers, then ``fusion_layers`` layers that add
cross-attention to the image tokens; an LM head (captioning loss) ends it. The two
towers are independent until the first fusion layer, so the graph has two parallel
branches that a planner can place side by side.

Example (``scenarios/two-tower-h100.yaml``)::

    model:
      type: two_tower
      vision: {preset: vit-l-14}       # or layers, hidden, heads, ffn, image_size, patch_size, channels
      text: {layers: 6, hidden: 768, heads: 12, ffn: 3072, vocab: 49408}
      fusion_layers: 6
      seq_len: 77                      # text tokens per sample
      micro_batch_size: 32             # image-text pairs per micro-batch

Defaults: the vision tower is CLIP's ViT-L/14 (Radford et al. 2021: 24 layers, width
1024, 16 heads, MLP 4096, 224 px images in 14 px patches, 257 tokens with the class
token; ~304e6 parameters); the text side is CLIP's text transformer (width 768, 12
heads, MLP 3072, vocabulary 49408, 77 tokens), split 6 text-only + 6 fusion layers as
CoCa splits its decoder. Both towers use GELU MLPs; biases are not counted (<0.5% of
the parameters). Common fields as in :mod:`simulator.models.transformer`.

Operators (groups in brackets)::

    vision.patch_embed [vision.embed] -> vision.L<i>.attn, vision.L<i>.mlp [vision.layer<i>] -> vision.proj [vision.proj]
    text.embed [text.embed] -> text.L<i>.attn, text.L<i>.mlp [text.layer<i>]
        -> fusion.L<i>.attn, fusion.L<i>.xattn, fusion.L<i>.mlp [fusion.layer<i>] -> head [head]
    vision.proj -> every fusion.L<i>.xattn   (image tokens projected to the text width)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from simulator.costs import Cost, attention_core, embedding, linear, norm, residual
from simulator.graph import OperatorGraph
from simulator.models.transformer import (
    SETTING_KEYS,
    GraphBuilder,
    Settings,
    attention_cost,
    check_heads,
    head_cost,
    make_operator,
    mlp_cost,
    read_fields,
    read_settings,
)
from simulator.yamlio import Section

__all__ = ["VISION_PRESETS", "TEXT_DEFAULTS", "VisionConfig", "TextConfig", "TwoTowerConfig", "config_from_section", "two_tower_graph"]

_VISION_FIELDS = ("layers", "hidden", "heads", "ffn", "image_size", "patch_size", "channels")
_TEXT_FIELDS = ("layers", "hidden", "heads", "ffn", "vocab")

#: CLIP vision towers (Radford et al. 2021, Table 20).
VISION_PRESETS: Mapping[str, Mapping[str, int]] = {
    "vit-b-16": {"layers": 12, "hidden": 768, "heads": 12, "ffn": 3072, "image_size": 224, "patch_size": 16, "channels": 3},
    "vit-l-14": {"layers": 24, "hidden": 1024, "heads": 16, "ffn": 4096, "image_size": 224, "patch_size": 14, "channels": 3},
}
#: CLIP's text transformer width, split into 6 text-only layers (+ 6 fusion layers).
TEXT_DEFAULTS: Mapping[str, int] = {"layers": 6, "hidden": 768, "heads": 12, "ffn": 3072, "vocab": 49408}
_DEFAULTS: Mapping[str, Any] = {"seq_len": 77, "micro_batch_size": 32, "fusion_layers": 6}


@dataclass(frozen=True)
class VisionConfig:
    layers: int
    hidden: int
    heads: int
    ffn: int
    image_size: int
    patch_size: int
    channels: int
    preset: str = ""

    @property
    def patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def tokens(self) -> int:
        """Tokens per image: the patches plus the class token."""
        return self.patches + 1


@dataclass(frozen=True)
class TextConfig:
    layers: int
    hidden: int
    heads: int
    ffn: int
    vocab: int


@dataclass(frozen=True)
class TwoTowerConfig:
    vision: VisionConfig
    text: TextConfig
    fusion_layers: int
    settings: Settings


def _vision(section: Section) -> VisionConfig:
    sub = section.section("vision", {})
    sub.check_keys(set(_VISION_FIELDS) | {"preset"})
    preset = sub.str("preset", choices=sorted(VISION_PRESETS)) if "preset" in sub else "vit-l-14"
    values = read_fields(sub, VISION_PRESETS[preset], ints={k: 1 for k in _VISION_FIELDS})
    check_heads(sub, values["hidden"], values["heads"])
    if values["image_size"] % values["patch_size"]:
        raise sub.error(f"patch_size ({values['patch_size']}) must divide image_size ({values['image_size']})", "patch_size")
    custom = any(k in sub for k in _VISION_FIELDS)
    return VisionConfig(**{k: values[k] for k in _VISION_FIELDS}, preset=preset + (" (modified)" if custom else ""))


def config_from_section(section: Section) -> TwoTowerConfig:
    """Validate a ``type: two_tower`` section into a :class:`TwoTowerConfig`."""
    section.check_keys(SETTING_KEYS | {"vision", "text", "fusion_layers"})
    vision = _vision(section)
    text_section = section.section("text", {})
    text_section.check_keys(set(_TEXT_FIELDS))
    text = read_fields(text_section, TEXT_DEFAULTS, ints={k: 1 for k in _TEXT_FIELDS} | {"layers": 0})
    check_heads(text_section, text["hidden"], text["heads"])
    fusion = read_fields(section, _DEFAULTS, ints={"fusion_layers": 1})["fusion_layers"]
    return TwoTowerConfig(
        vision=vision,
        text=TextConfig(**{k: text[k] for k in _TEXT_FIELDS}),
        fusion_layers=fusion,
        settings=read_settings(section, _DEFAULTS),
    )


def cross_attention_cost(settings: Settings, hidden: int, heads: int, kv_tokens_per_sample: int) -> Cost:
    """Pre-norm cross-attention: queries from the text, keys and values from the image tokens."""
    b, s, e, d = settings.micro_batch_size, settings.seq_len, settings.elem, hidden // heads
    t_q, t_kv = b * s, b * kv_tokens_per_sample
    return (
        norm(t_q, hidden, e, style=settings.norm)
        + linear(t_q, hidden, hidden, e)
        + linear(t_kv, hidden, 2 * hidden, e)
        + Cost(saved=(t_q * hidden + t_kv * 2 * hidden) * e)  # q, and k/v (one view of the kv output)
        + attention_core(b, heads, s, kv_tokens_per_sample, d, d, e, kernel=settings.attention_kernel, causal=False)
        + linear(t_q, hidden, hidden, e)
        + residual(t_q, hidden, e)
    )


def two_tower_graph(config: TwoTowerConfig, name: str, section: Section | None = None) -> OperatorGraph:
    """The operator graph of the two-tower model (``section`` supplies ``measured:``)."""
    s, v, x = config.settings, config.vision, config.text
    e, b = s.elem, s.micro_batch_size
    # The vision tower sees b images of v.tokens tokens: same formulas, another sequence.
    vs = replace(s, seq_len=v.tokens)
    tv, tt = vs.tokens, s.tokens
    v_stream, t_stream, image = tv * v.hidden * e, tt * x.hidden * e, tv * x.hidden * e
    # Under recomputation an operator keeps its inputs: the stream (and the image tokens for cross-attention).
    v_keep, t_keep, x_keep = (v_stream, t_stream, t_stream + image) if s.recompute else (None, None, None)
    # Every layer of a tower costs the same: compute each block once.
    # CLIP-like towers: learned positions (no rotary); the image encoder is bidirectional.
    v_attn = attention_cost(vs, v.hidden, v.heads, v.heads, causal=False, rope=False)
    v_mlp = mlp_cost(tv, v.hidden, v.ffn, e, kind="gelu", norm_style=s.norm)
    t_attn = attention_cost(s, x.hidden, x.heads, x.heads, rope=False)
    t_mlp = mlp_cost(tt, x.hidden, x.ffn, e, kind="gelu", norm_style=s.norm)
    t_xattn = cross_attention_cost(s, x.hidden, x.heads, v.tokens)
    g = GraphBuilder()

    pixels = Cost(params=(v.tokens + 1) * v.hidden) + linear(b * v.patches, v.channels * v.patch_size**2, v.hidden, e)
    prev = g.add(make_operator("vision.patch_embed", pixels + norm(tv, v.hidden, e), group="vision.embed"))
    for i in range(v.layers):
        group = f"vision.layer{i}"
        prev = g.add(make_operator(f"vision.L{i}.attn", v_attn, group=group, keep=v_keep), (prev, v_stream))
        prev = g.add(make_operator(f"vision.L{i}.mlp", v_mlp, group=group, keep=v_keep), (prev, v_stream))
    projection = norm(tv, v.hidden, e) + linear(tv, v.hidden, x.hidden, e)
    proj = g.add(make_operator("vision.proj", projection, group="vision.proj"), (prev, v_stream))

    words = embedding(tt, x.vocab, x.hidden, e) + Cost(params=s.seq_len * x.hidden)  # + learned positions
    prev = g.add(make_operator("text.embed", words, group="text.embed"))
    for i in range(x.layers):
        group = f"text.layer{i}"
        prev = g.add(make_operator(f"text.L{i}.attn", t_attn, group=group, keep=t_keep), (prev, t_stream))
        prev = g.add(make_operator(f"text.L{i}.mlp", t_mlp, group=group, keep=t_keep), (prev, t_stream))
    for i in range(config.fusion_layers):
        group = f"fusion.layer{i}"
        prev = g.add(make_operator(f"fusion.L{i}.attn", t_attn, group=group, keep=t_keep), (prev, t_stream))
        xattn = make_operator(f"fusion.L{i}.xattn", t_xattn, group=group, keep=x_keep)
        prev = g.add(xattn, (prev, t_stream), (proj, image))
        prev = g.add(make_operator(f"fusion.L{i}.mlp", t_mlp, group=group, keep=t_keep), (prev, t_stream))
    g.add(make_operator("head", head_cost(tt, x.hidden, x.vocab, e, norm_style=s.norm), group="head"), (prev, t_stream))
    return g.build(name, section or Section({}))


def build_two_tower(section: Section, base_dir: Path) -> OperatorGraph:
    return two_tower_graph(config_from_section(section), str(section.raw("name", "two-tower")), section)


def model_facts(section: Section) -> list[tuple[str, str]]:
    """Rows for ``opplan describe``."""
    c = config_from_section(section)
    s, v, x = c.settings, c.vision, c.text
    return [
        ("vision tower", f"{v.preset}: {v.layers} layers, width {v.hidden}, {v.heads} heads, {v.tokens} tokens per image"),
        ("text tower", f"{x.layers} text-only + {c.fusion_layers} fusion layers, width {x.hidden}, {x.heads} heads, vocab {x.vocab}"),
        ("tokens per micro-batch", f"{s.tokens} text ({s.micro_batch_size} x {s.seq_len}) + {s.micro_batch_size * v.tokens} image"),
        ("precision / recompute", f"{s.precision} / {'on' if s.recompute else 'off'}"),
        ("kernels (costs)", f"attention {s.attention_kernel}, norm {s.norm}, qkv {s.qkv}"),
    ]
