"""The :class:`~simulator.shapes.ModelShape` of each model type opplan builds.

Each function reads a ``model:`` section with the model builder's own validation and
costs one sample (``micro_batch_size`` = 1) with the same cost pieces the operator graph
uses, so per-rank memory and the graph agree. ``pipeline`` and ``graph`` models have no
layers to split: :func:`model_shape` returns None for them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from simulator.costs import Cost, embedding, linear, norm
from simulator.models import moe, multimodal, transformer
from simulator.models.transformer import Settings, attention_cost, head_cost, mlp_cost
from simulator.shapes import LayerMemory, ModelShape, Tower, block
from simulator.yamlio import Section

__all__ = ["SHAPES", "model_shape"]


def _one_sample(settings: Settings, seq_len: int | None = None) -> Settings:
    return replace(settings, micro_batch_size=1, seq_len=seq_len or settings.seq_len)


def _scores(settings: Settings, heads: int, kv_tokens: int) -> float:
    """Softmax probabilities kept without flash attention (``a s_q s_kv`` elements per sample)."""
    return 0.0 if settings.flash_attention else heads * settings.seq_len * kv_tokens * settings.elem


def dense_layer(name: str, s: Settings, hidden: int, heads: int, kv_heads: int, ffn: int, kind: str = "swiglu",
                *, causal: bool = True, rope: bool = True) -> LayerMemory:
    """Pre-norm attention + MLP on one sample of ``s.seq_len`` tokens (as the graph's builder costs them)."""
    t, e = s.seq_len, s.elem
    cost = attention_cost(s, hidden, heads, kv_heads, causal=causal, rope=rope) + mlp_cost(t, hidden, ffn, e, kind=kind, norm_style=s.norm)
    return block(name, cost, outside=4 * t * hidden * e, input_bytes=t * hidden * e, replicated=2 * hidden,
                 score=_scores(s, heads, t))


def _pre_post(s: Settings, hidden: int, vocab: int) -> tuple[LayerMemory, LayerMemory]:
    """Embedding (vocabulary-parallel, keeps token ids) and final norm + head + loss (fp32 logits inside TP)."""
    t, e = s.seq_len, s.elem
    ids = embedding(t, vocab, hidden)
    pre = block("embed", ids, outside=ids.saved, input_bytes=ids.saved, replicated=0)
    head = head_cost(t, hidden, vocab, e, norm_style=s.norm)
    post = block("head", head, outside=2 * t * hidden * e, input_bytes=t * hidden * e, replicated=hidden)
    return pre, post


def transformer_shape(section: Section) -> ModelShape:
    c = transformer.config_from_section(section)
    s = _one_sample(c.settings)
    layer = dense_layer("layer", s, c.hidden, c.heads, c.kv_heads, c.ffn)
    pre, post = _pre_post(s, c.hidden, c.vocab)
    return ModelShape(
        layers=tuple(replace(layer, name=f"L{i}") for i in range(c.layers)),
        pre=pre,
        post=post,
        towers=(Tower("model", c.hidden, c.heads, c.kv_heads, c.ffn),),
        seq_len=c.settings.seq_len,
        micro_batch_size=c.settings.micro_batch_size,
        recompute=c.settings.recompute,
    )


def _moe_attention(c: moe.MoEConfig, s: Settings) -> tuple[Cost, float]:
    """Attention cost and its replicated parameters: the norm, and for MLA also the
    down-projections and their norms (Megatron keeps those unsplit across TP)."""
    h = c.hidden
    if c.mla is None:
        return attention_cost(s, h, c.heads, c.kv_heads), h
    m = c.mla
    down = h * (m.q_lora_rank + m.kv_lora_rank + m.qk_rope_dim) if m.q_lora_rank else h * (m.kv_lora_rank + m.qk_rope_dim)
    return moe.mla_cost(s, h, c.heads, m), h + m.q_lora_rank + m.kv_lora_rank + down


def moe_layer(name: str, c: moe.MoEConfig, s: Settings) -> LayerMemory:
    """Attention + router + shared experts (TP-split) + routed experts (EP-split), one sample.

    Routing is balanced as in the graph: each token's ``top_k`` copies land on the EP
    ranks evenly, so a rank's experts process ``top_k`` copies per token of its own batch.
    """
    t, e, h = s.seq_len, s.elem, c.hidden
    attention, replicated = _moe_attention(c, s)
    router = moe.router_cost(t, h, c.experts, c.top_k, e, norm_style=s.norm)
    shared = mlp_cost(t, h, c.shared_experts * c.expert_ffn, e, with_norm=False) if c.shared_experts else Cost()
    one = mlp_cost(t * c.top_k, h, c.expert_ffn, e, with_norm=False)
    experts = replace(one, params=c.experts * one.params)
    outside = 2 * t * h * e + router.saved + (t * h * e if c.shared_experts else 0.0)
    return block(name, attention + router + shared, outside=outside, input_bytes=t * h * e, replicated=replicated + router.params,
                 score=_scores(s, c.heads, t), expert=experts, expert_outside=t * c.top_k * h * e)


def moe_shape(section: Section) -> ModelShape:
    c = moe.config_from_section(section)
    s = _one_sample(c.settings)
    layers = []
    for i in range(c.layers):
        if i < c.dense_layers:
            attention, replicated = _moe_attention(c, s)
            mlp = mlp_cost(s.seq_len, c.hidden, c.ffn, s.elem, norm_style=s.norm)
            t_h_e = s.seq_len * c.hidden * s.elem
            layers.append(block(f"L{i}", attention + mlp, outside=4 * t_h_e, input_bytes=t_h_e, replicated=replicated + c.hidden,
                                score=_scores(s, c.heads, s.seq_len)))
        else:
            layers.append(moe_layer(f"L{i}", c, s))
    pre, post = _pre_post(s, c.hidden, c.vocab)
    return ModelShape(
        layers=tuple(layers),
        pre=pre,
        post=post,
        towers=(Tower("model", c.hidden, c.heads, c.kv_heads, c.ffn),),
        seq_len=c.settings.seq_len,
        micro_batch_size=c.settings.micro_batch_size,
        recompute=c.settings.recompute,
        experts=c.experts,
        expert_ffn=c.expert_ffn,
    )


def _fusion_layer(name: str, s: Settings, x: multimodal.TextConfig, image_tokens: int) -> LayerMemory:
    """Self-attention + cross-attention to the image tokens + MLP (GELU)."""
    t, e, h = s.seq_len, s.elem, x.hidden
    cost = attention_cost(s, h, x.heads, x.heads, rope=False) + multimodal.cross_attention_cost(s, h, x.heads, image_tokens)
    cost = cost + mlp_cost(t, h, x.ffn, e, kind="gelu", norm_style=s.norm)
    outside = 6 * t * h * e + image_tokens * h * e  # three norm inputs, three first-linear inputs, the image keys/values' input
    return block(name, cost, outside=outside, input_bytes=t * h * e + image_tokens * h * e, replicated=3 * h,
                 score=_scores(s, x.heads, t) + _scores(s, x.heads, image_tokens))


def _two_tower_pre(c: multimodal.TwoTowerConfig, s: Settings) -> LayerMemory:
    """Patch embedding, vision projection (small, kept whole) and the text embedding (vocabulary-parallel)."""
    v, x, e = c.vision, c.text, s.elem
    vision = Cost(params=(v.tokens + 1) * v.hidden) + linear(v.patches, v.channels * v.patch_size**2, v.hidden, e)
    vision = vision + norm(v.tokens, v.hidden, e) + norm(v.tokens, v.hidden, e) + linear(v.tokens, v.hidden, x.hidden, e)
    words = embedding(s.seq_len, x.vocab, x.hidden) + Cost(params=s.seq_len * x.hidden)
    both = vision + words
    return block("embed", both, outside=both.saved, input_bytes=both.saved, replicated=vision.params + s.seq_len * x.hidden)


def two_tower_shape(section: Section) -> ModelShape:
    c = multimodal.config_from_section(section)
    s = _one_sample(c.settings)
    v, x = c.vision, c.text
    vs = _one_sample(c.settings, v.tokens)
    vision = dense_layer("vision", vs, v.hidden, v.heads, v.heads, v.ffn, kind="gelu", causal=False, rope=False)
    text = dense_layer("text", s, x.hidden, x.heads, x.heads, x.ffn, kind="gelu", rope=False)
    fusion = _fusion_layer("fusion", s, x, v.tokens)
    layers = [replace(vision, name=f"vision.L{i}") for i in range(v.layers)]
    layers += [replace(text, name=f"text.L{i}") for i in range(x.layers)]
    layers += [replace(fusion, name=f"fusion.L{i}") for i in range(c.fusion_layers)]
    _, post = _pre_post(s, x.hidden, x.vocab)
    return ModelShape(
        layers=tuple(layers),
        pre=_two_tower_pre(c, s),
        post=post,
        towers=(Tower("vision", v.hidden, v.heads, v.heads, v.ffn), Tower("text", x.hidden, x.heads, x.heads, x.ffn)),
        seq_len=s.seq_len,
        micro_batch_size=c.settings.micro_batch_size,
        recompute=c.settings.recompute,
    )


#: ``model.type`` -> its shape reader.
SHAPES: dict[str, Callable[[Section], ModelShape]] = {
    "transformer": transformer_shape,
    "moe": moe_shape,
    "two_tower": two_tower_shape,
}


def model_shape(model_type: str, section: Section) -> ModelShape | None:
    """The shape of a ``transformer``, ``moe`` or ``two_tower`` model section; None for other types.

    >>> shape = model_shape("transformer", Section({"type": "transformer", "preset": "llama-7b"}))
    >>> round(shape.params / 1e9, 2), len(shape.layers)
    (6.74, 32)
    """
    reader = SHAPES.get(model_type)
    return reader(section) if reader is not None else None
