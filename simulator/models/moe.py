"""``type: moe``: a DeepSeek-V3-like mixture-of-experts decoder.

The first ``dense_layers`` layers have an ordinary MLP; every later layer routes each
token to ``top_k`` of ``experts`` routed experts and also through ``shared_experts``
always-on experts. Expert parallelism moves tokens with two all-to-alls, modelled as
communication operators (``stream: comm``) that the simulator times as
``latency + comm_bytes / bandwidth`` on the device's slowest link.

Example (``scenarios/deepseek-moe-h800.yaml``)::

    model:
      type: moe                 # default: a reduced config that a planner can handle
      experts: 16
      top_k: 4

``preset: deepseek-v3`` gives the published DeepSeek-V3 dimensions (61 layers, 3 dense,
256 routed + 1 shared experts of width 2048, top-8, MLA attention, vocabulary 129280;
671e9 parameters, 37e9 activated per token) for counting; its graph has ~15k operators.

Fields: ``layers``, ``dense_layers``, ``hidden``, ``heads``, ``kv_heads`` (default
``heads``), ``ffn`` (dense MLP width), ``experts``, ``shared_experts``, ``top_k``,
``expert_ffn``, ``vocab``, ``mla: {q_lora_rank, kv_lora_rank, qk_nope_dim, qk_rope_dim, v_dim}`` (multi-head latent
attention; ``mla: null`` for ordinary attention; ``q_lora_rank: 0`` = no query
compression), plus the common ``seq_len``, ``micro_batch_size``, ``precision``,
``recompute``, ``attention_kernel``, ``norm``, ``qkv``, ``name``, ``measured`` (see
:mod:`simulator.models.transformer`).

Operators of MoE layer ``i`` (groups in brackets)::

    L<i>.attn [layer<i>] -> L<i>.router [layer<i>] -> L<i>.dispatch [layer<i>.dispatch]
        -> L<i>.expert<j> [layer<i>.experts] (one per routed expert) -> L<i>.combine [layer<i>.combine] -> next
    L<i>.router -> L<i>.shared [layer<i>] -> next        (shared experts + the residual)

Routing is assumed balanced: each routed expert gets ``T k / E`` tokens. Each
all-to-all moves every routed copy of the micro-batch's tokens, ``T k h e`` bytes
(an upper bound: copies for experts on the sending device would stay local); the edges
into and out of the experts carry 0 bytes so that traffic is not charged twice.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from simulator.costs import Cost, attention_core, embedding, linear, norm, pointwise, residual, rotary
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

__all__ = ["MLAConfig", "MoEConfig", "PRESETS", "DEFAULTS", "config_from_section", "moe_graph", "build_moe", "model_facts", "mla_cost"]

_MLA_FIELDS = ("q_lora_rank", "kv_lora_rank", "qk_nope_dim", "qk_rope_dim", "v_dim")
_ARCH_FIELDS = ("layers", "dense_layers", "hidden", "heads", "kv_heads", "ffn", "experts", "shared_experts", "top_k", "expert_ffn", "vocab")

#: Routing metadata sent with each token copy: an int32 expert index and an fp32 weight.
ROUTE_BYTES_PER_COPY = 4 + 4

#: DeepSeek-V3 (DeepSeek-AI 2024, arXiv:2412.19437, section 4.2 and the released
#: ``config.json``).
PRESETS: Mapping[str, Mapping[str, Any]] = {
    "deepseek-v3": {
        "layers": 61,
        "dense_layers": 3,
        "hidden": 7168,
        "heads": 128,
        "ffn": 18432,
        "experts": 256,
        "shared_experts": 1,
        "top_k": 8,
        "expert_ffn": 2048,
        "vocab": 129280,
        "seq_len": 4096,
        "mla": {"q_lora_rank": 1536, "kv_lora_rank": 512, "qk_nope_dim": 128, "qk_rope_dim": 64, "v_dim": 128},
    },
}

#: The default: DeepSeek-V2-Lite's widths (hidden 2048, 16 heads, MLA without query
#: compression, expert width 1408, dense width 10944) cut to 4 layers (1 dense) and 16
#: routed experts, top-4, 1 shared expert, a 32000-token vocabulary: ~67 operators.
DEFAULTS: Mapping[str, Any] = {
    "layers": 4,
    "dense_layers": 1,
    "hidden": 2048,
    "heads": 16,
    "ffn": 10944,
    "experts": 16,
    "shared_experts": 1,
    "top_k": 4,
    "expert_ffn": 1408,
    "vocab": 32000,
    "seq_len": 4096,
    "mla": {"q_lora_rank": 0, "kv_lora_rank": 512, "qk_nope_dim": 128, "qk_rope_dim": 64, "v_dim": 128},
}


@dataclass(frozen=True)
class MLAConfig:
    """Multi-head latent attention (DeepSeek-V2/V3): low-rank compressed queries and keys/values."""

    q_lora_rank: int
    kv_lora_rank: int
    qk_nope_dim: int
    qk_rope_dim: int
    v_dim: int


def mla_cost(settings: Settings, hidden: int, heads: int, mla: MLAConfig) -> Cost:
    """Pre-norm MLA: down-projections, their norms, up-projections, core, output projection.

    Queries: ``h -> q_lora -> heads (nope + rope)`` (or ``h -> heads (nope + rope)`` when
    ``q_lora_rank`` is 0); keys/values: ``h -> kv_lora + rope`` then ``kv_lora -> heads
    (nope + v)``; output ``heads v -> h``.

    >>> m = MLAConfig(q_lora_rank=1536, kv_lora_rank=512, qk_nope_dim=128, qk_rope_dim=64, v_dim=128)
    >>> int(mla_cost(Settings(seq_len=1, micro_batch_size=1), 7168, 128, m).params)  # DeepSeek-V3's attention
    187114496
    """
    t, e, style = settings.tokens, settings.elem, settings.norm
    qk = mla.qk_nope_dim + mla.qk_rope_dim
    cost = norm(t, hidden, e, style=style)
    if mla.q_lora_rank:
        cost = cost + linear(t, hidden, mla.q_lora_rank + mla.kv_lora_rank + mla.qk_rope_dim, e)
        cost = cost + norm(t, mla.q_lora_rank, e, style=style) + linear(t, mla.q_lora_rank, heads * qk, e)
    else:
        cost = cost + linear(t, hidden, heads * qk + mla.kv_lora_rank + mla.qk_rope_dim, e)
    cost = cost + norm(t, mla.kv_lora_rank, e, style=style) + linear(t, mla.kv_lora_rank, heads * (mla.qk_nope_dim + mla.v_dim), e)
    # Rotary on the decoupled rope parts; the core saves q, k (nope and rope joined) and v.
    cost = cost + rotary(t, heads * mla.qk_rope_dim, e) + rotary(t, mla.qk_rope_dim, e)
    cost = cost + Cost(saved=t * heads * (2 * qk + mla.v_dim) * e)
    b, s = settings.micro_batch_size, settings.seq_len
    cost = cost + attention_core(b, heads, s, s, qk, mla.v_dim, e, kernel=settings.attention_kernel)
    return cost + linear(t, heads * mla.v_dim, hidden, e) + residual(t, hidden, e)


def router_cost(tokens: float, hidden: int, experts: int, top_k: int, elem: int, *, norm_style: str = "fused") -> Cost:
    """Post-attention norm + gate ``h -> experts``; keeps fp32 scores and the routing choice.

    The fp32 softmax / sigmoid over the scores and the top-k selection are memory-bound
    (4 passes over ``T experts`` fp32 forward, 3 backward); the residual add is here too.
    """
    fp32_scores = Cost(saved=tokens * experts * 4 + tokens * top_k * ROUTE_BYTES_PER_COPY)
    scoring = pointwise(tokens * experts, 4, 4, 3, kernels=(2, 2))
    gate = norm(tokens, hidden, elem, style=norm_style) + linear(tokens, hidden, experts, elem)
    return gate + fp32_scores + scoring + residual(tokens, hidden, elem)


@dataclass(frozen=True)
class MoEConfig:
    layers: int
    dense_layers: int
    hidden: int
    heads: int
    kv_heads: int
    ffn: int
    experts: int
    shared_experts: int
    top_k: int
    expert_ffn: int
    vocab: int
    settings: Settings
    mla: MLAConfig | None = None
    preset: str = ""

    @property
    def moe_layers(self) -> int:
        return self.layers - self.dense_layers

    def attention(self) -> Cost:
        s = self.settings
        if self.mla is not None:
            return mla_cost(s, self.hidden, self.heads, self.mla)
        return attention_cost(s, self.hidden, self.heads, self.kv_heads)

    def counts(self) -> tuple[float, float]:
        """``(total, activated per token)`` parameters, from the shapes alone.

        >>> c = config_from_section(Section({"preset": "deepseek-v3"}))
        >>> [round(n / 1e9, 1) for n in c.counts()]
        [671.0, 37.6]
        """
        h = self.hidden
        attention = self.attention().params
        dense = attention + mlp_cost(1, h, self.ffn, 2).params
        expert = mlp_cost(1, h, self.expert_ffn, 2, with_norm=False).params
        router = router_cost(1, h, self.experts, self.top_k, 2).params
        shared = self.shared_experts * expert
        outer = 2 * self.vocab * h + h
        total = outer + self.dense_layers * dense + self.moe_layers * (attention + router + shared + self.experts * expert)
        activated = outer + self.dense_layers * dense + self.moe_layers * (attention + router + shared + self.top_k * expert)
        return total, activated


def _mla(section: Section, base: Mapping[str, Any] | None) -> MLAConfig | None:
    if "mla" in section and section.raw("mla") is None:
        return None
    if "mla" not in section and base is None:
        return None
    sub = section.section("mla", {})
    sub.check_keys(set(_MLA_FIELDS))
    minimums = {k: 1 for k in _MLA_FIELDS} | {"q_lora_rank": 0}
    values = read_fields(sub, dict(base or dict.fromkeys(_MLA_FIELDS)), ints=minimums)
    return MLAConfig(**{k: values[k] for k in _MLA_FIELDS})


def config_from_section(section: Section) -> MoEConfig:
    """Validate a ``type: moe`` section into a :class:`MoEConfig`."""
    section.check_keys(SETTING_KEYS | set(_ARCH_FIELDS) | {"preset", "mla"})
    preset = section.str("preset", choices=sorted(PRESETS)) if "preset" in section else ""
    base = dict(PRESETS[preset] if preset else DEFAULTS)
    minimums = {k: 1 for k in _ARCH_FIELDS if k != "kv_heads"} | {"dense_layers": 0, "shared_experts": 0}
    values = read_fields(section, base, ints=minimums)
    values["kv_heads"] = section.integer("kv_heads", minimum=1) if "kv_heads" in section else values["heads"]
    mla = _mla(section, base.get("mla"))
    if mla is None:
        check_heads(section, values["hidden"], values["heads"], values["kv_heads"])
    elif values["heads"] % values["kv_heads"]:
        raise section.error(f"kv_heads ({values['kv_heads']}) must divide heads ({values['heads']})", "kv_heads")
    if values["dense_layers"] >= values["layers"]:
        raise section.error(f"dense_layers ({values['dense_layers']}) leaves no MoE layer out of {values['layers']}", "dense_layers")
    if values["top_k"] > values["experts"]:
        raise section.error(f"top_k ({values['top_k']}) cannot exceed experts ({values['experts']})", "top_k")
    return MoEConfig(**{k: values[k] for k in _ARCH_FIELDS}, settings=read_settings(section, base), mla=mla, preset=preset)


def moe_graph(config: MoEConfig, name: str, section: Section | None = None) -> OperatorGraph:
    """The operator graph of a MoE decoder (``section`` supplies ``measured:``)."""
    s = config.settings
    t, e, h, k, n_exp = s.tokens, s.elem, config.hidden, config.top_k, config.experts
    stream = t * h * e
    keep = stream if s.recompute else None
    routed_tokens = t * k / n_exp
    a2a_bytes = t * k * h * e
    g = GraphBuilder()
    outputs = [g.add(make_operator("embed", embedding(t, config.vocab, h, e), group="embed"))]
    for i in range(config.layers):
        layer = f"layer{i}"
        attn = g.add(make_operator(f"L{i}.attn", config.attention(), group=layer, keep=keep), *((o, stream) for o in outputs))
        if i < config.dense_layers:
            dense = mlp_cost(t, h, config.ffn, e, norm_style=s.norm)
            outputs = [g.add(make_operator(f"L{i}.mlp", dense, group=layer, keep=keep), (attn, stream))]
            continue
        gate = router_cost(t, h, n_exp, k, e, norm_style=s.norm)
        router = g.add(make_operator(f"L{i}.router", gate, group=layer, keep=keep), (attn, stream))
        dispatch = make_operator(f"L{i}.dispatch", Cost(), group=f"{layer}.dispatch", stream="comm", comm_bytes=a2a_bytes)
        g.add(dispatch, (router, stream + t * k * ROUTE_BYTES_PER_COPY))
        expert_cost = mlp_cost(routed_tokens, h, config.expert_ffn, e, with_norm=False)
        expert_keep = routed_tokens * h * e if s.recompute else None
        experts = [
            g.add(make_operator(f"L{i}.expert{j}", expert_cost, group=f"{layer}.experts", keep=expert_keep), (dispatch.name, 0.0))
            for j in range(n_exp)
        ]
        combine = make_operator(f"L{i}.combine", Cost(), group=f"{layer}.combine", stream="comm", comm_bytes=a2a_bytes)
        outputs = [g.add(combine, *((x, 0.0) for x in experts))]
        if config.shared_experts:
            shared_cost = mlp_cost(t, h, config.shared_experts * config.expert_ffn, e, with_norm=False)
            outputs.append(g.add(make_operator(f"L{i}.shared", shared_cost, group=layer, keep=keep), (router, stream)))
        else:
            outputs.append(router)  # the residual stream goes straight on
    g.add(make_operator("head", head_cost(t, h, config.vocab, e, norm_style=s.norm), group="head"), *((o, stream) for o in outputs))
    return g.build(name, section or Section({}))


def build_moe(section: Section, base_dir: Path) -> OperatorGraph:
    config = config_from_section(section)
    return moe_graph(config, str(section.raw("name", config.preset or "moe")), section)


def model_facts(section: Section) -> list[tuple[str, str]]:
    """Rows for ``opplan describe``."""
    c = config_from_section(section)
    s = c.settings
    total, activated = c.counts()
    attention = "MLA" if c.mla is not None else f"{c.heads} heads ({c.kv_heads} KV)"
    return [
        ("preset", c.preset or "(reduced default)"),
        ("shape", f"{c.layers} layers ({c.dense_layers} dense), hidden {c.hidden}, {attention}, vocab {c.vocab}"),
        ("experts", f"{c.experts} routed (top-{c.top_k}) + {c.shared_experts} shared, width {c.expert_ffn}"),
        ("activated parameters", f"{activated / 1e9:.3g}e9 per token of {total / 1e9:.4g}e9"),
        ("tokens per micro-batch", f"{s.tokens} ({s.micro_batch_size} x {s.seq_len})"),
        ("precision / recompute", f"{s.precision} / {'on' if s.recompute else 'off'}"),
        ("kernels (costs)", f"attention {s.attention_kernel}, norm {s.norm}, qkv {s.qkv}"),
    ]
