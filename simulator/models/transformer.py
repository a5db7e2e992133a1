"""``type: transformer``: a dense decoder-only transformer (the LLaMA family).

Example (``scenarios/llama7b-8xh100.yaml``)::

    model:
      type: transformer
      preset: llama-7b          # llama-7b | llama-13b | llama-70b; any field below overrides it
      seq_len: 4096
      micro_batch_size: 1
      recompute: false          # true: keep only each operator's input, re-run F inside B
      measured:                 # optional: measured milliseconds win over FLOPs / (peak * eff)
        L0.attn: {H100-SXM5: {F: 1.9, B: 3.1, W: 1.2}}

Fields: ``layers``, ``hidden``, ``heads``, ``kv_heads`` (grouped-query attention;
defaults to ``heads``), ``ffn`` (SwiGLU width), ``vocab``, ``seq_len``,
``micro_batch_size``, ``precision`` (bf16 | fp16), ``recompute``, ``attention_kernel``
(cudnn | flash-attention-3 | flash-attention-2 | math; default cudnn, PyTorch's choice on
Hopper), ``norm`` (fused | hf: HF transformers' fp32-upcast RMSNorm), ``qkv`` (fused |
separate), ``name``, ``measured`` (see :mod:`simulator.measured`). ``flash_attention: false``
(older spelling) means ``attention_kernel: math``.

The graph is a chain at planner granularity: ``embed -> L0.attn -> L0.mlp -> ... ->
head`` (``head`` = final norm + LM head + loss). Operators carry F / B / W FLOPs,
parameters, static bytes, activation and W-retained bytes from :mod:`simulator.costs`;
each edge carries the residual stream ``b s h e`` bytes. Groups: ``embed``,
``layer<i>``, ``head``.

This module also holds what the MoE and two-tower builders share: the common fields,
the attention / MLP / head blocks and the ``measured:`` override.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from simulator.costs import (
    ATTENTION_KERNELS,
    ELEMENT_BYTES,
    NORM_STYLES,
    Cost,
    attention_core,
    cross_entropy,
    embedding,
    gelu,
    linear,
    norm,
    pointwise,
    residual,
    rotary,
    swiglu,
)
from simulator.graph import Edge, Operator, OperatorGraph
from simulator.measured import apply_measured
from simulator.yamlio import Section

__all__ = [
    "PRESETS",
    "Settings",
    "TransformerConfig",
    "config_from_section",
    "transformer_graph",
    "build_transformer",
    "model_facts",
    "attention_cost",
    "mlp_cost",
    "head_cost",
    "make_operator",
    "read_fields",
    "read_settings",
    "apply_measured",
    "GraphBuilder",
    "SETTING_KEYS",
    "check_heads",
]

#: Published shapes. LLaMA 2 (Touvron et al. 2023, Table 1 and the released
#: ``config.json``): 7B and 13B use multi-head attention, 70B grouped-query attention
#: with 8 KV heads; all use SwiGLU, RMSNorm, untied embeddings, a 32000-token vocabulary
#: and a 4096-token context. (LLaMA 1 7B / 13B have the same shapes with 2048 tokens.)
#: ``kv_heads`` left out means ``kv_heads = heads``, also after ``heads`` is overridden.
PRESETS: Mapping[str, Mapping[str, int]] = {
    "llama-7b": {"layers": 32, "hidden": 4096, "heads": 32, "ffn": 11008, "vocab": 32000, "seq_len": 4096},
    "llama-13b": {"layers": 40, "hidden": 5120, "heads": 40, "ffn": 13824, "vocab": 32000, "seq_len": 4096},
    "llama-70b": {"layers": 80, "hidden": 8192, "heads": 64, "kv_heads": 8, "ffn": 28672, "vocab": 32000, "seq_len": 4096},
}

_SETTING_DEFAULTS: Mapping[str, Any] = {
    "seq_len": 2048,
    "micro_batch_size": 1,
    "precision": "bf16",
    "recompute": False,
    "attention_kernel": "cudnn",
    "norm": "fused",
    "qkv": "fused",
}
#: ``qkv: fused`` is one ``h -> (h + 2 kv d)`` linear whose output q, k and v are views of
#: (autograd then keeps the whole output alive through v); ``separate`` is three linears.
QKV_STYLES = ("fused", "separate")
_ARCH_FIELDS = ("layers", "hidden", "heads", "kv_heads", "ffn", "vocab")


# -- shared YAML plumbing ------------------------------------------------------------------
def read_fields(
    section: Section,
    defaults: Mapping[str, Any],
    *,
    ints: Mapping[str, int] | None = None,
    bools: Iterable[str] = (),
    choices: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, Any]:
    """``defaults`` overridden by whatever ``section`` sets, each value type-checked.

    ``ints`` maps an integer field to its minimum, ``choices`` a string field to its options.

    An integer field still ``None`` afterwards was neither set nor given by a preset:
    it is reported as missing, naming the field.
    """
    values = dict(defaults)
    for key, minimum in (ints or {}).items():
        if key in section:
            values[key] = section.integer(key, minimum=minimum)
        elif values.get(key) is None:
            raise section.error("required field is missing (set it, or choose a preset)", key)
    for key in bools:
        if key in section:
            values[key] = section.bool(key)
    for key, options in (choices or {}).items():
        if key in section:
            values[key] = section.str(key, choices=options)
    return values


@dataclass(frozen=True)
class Settings:
    """Fields every builder shares: sequence, micro-batch, precision, recomputation, kernels.

    ``attention_kernel`` (:data:`simulator.costs.ATTENTION_KERNELS`), ``norm``
    (:data:`simulator.costs.NORM_STYLES`) and ``qkv`` (:data:`QKV_STYLES`) are the
    implementation choices that the measured costs depend on; the defaults are PyTorch's
    on an H100 with a fused RMSNorm (implementation C of the shared measurement).
    """

    seq_len: int
    micro_batch_size: int
    precision: str = "bf16"
    recompute: bool = False
    attention_kernel: str = "cudnn"
    norm: str = "fused"
    qkv: str = "fused"

    @property
    def tokens(self) -> int:
        """Tokens per micro-batch, ``b * s``."""
        return self.seq_len * self.micro_batch_size

    @property
    def elem(self) -> int:
        """Bytes per activation element."""
        return ELEMENT_BYTES[self.precision]

    @property
    def flash_attention(self) -> bool:
        """A fused attention kernel (no ``s^2`` probabilities kept), i.e. not the math path."""
        return ATTENTION_KERNELS[self.attention_kernel].fused


SETTING_KEYS = frozenset(_SETTING_DEFAULTS) | {"measured", "name", "type", "flash_attention"}


def read_settings(section: Section, defaults: Mapping[str, Any] | None = None) -> Settings:
    """The common fields, over ``defaults`` (a preset's ``seq_len``, say)."""
    base = {**_SETTING_DEFAULTS, **{k: v for k, v in (defaults or {}).items() if k in _SETTING_DEFAULTS}}
    values = read_fields(
        section,
        base,
        ints={"seq_len": 1, "micro_batch_size": 1},
        bools=("recompute",),
        choices={"precision": sorted(ELEMENT_BYTES), "attention_kernel": sorted(ATTENTION_KERNELS),
                 "norm": NORM_STYLES, "qkv": QKV_STYLES},
    )
    if "flash_attention" in section:  # the older switch: false = the unfused math path
        if "attention_kernel" in section:
            raise section.error("give attention_kernel or flash_attention, not both", "flash_attention")
        if not section.bool("flash_attention"):
            values["attention_kernel"] = "math"
    return Settings(**{k: values[k] for k in _SETTING_DEFAULTS})


# -- building blocks -----------------------------------------------------------------------
def attention_cost(settings: Settings, hidden: int, heads: int, kv_heads: int, *, causal: bool = True, rope: bool = True) -> Cost:
    """Pre-norm self-attention: norm, QKV projection, rotary, attention core, output projection, residual.

    ``causal: False`` for an encoder (every token sees every token), ``rope: False`` for
    learned positions. Parameters ``2 h^2 + 2 h (kv d) + h`` with ``d = h / heads``. Saved for the backward,
    as autograd keeps them: the norm's input, the QKV input, the rotated q and k and v
    (with a fused QKV, v is a view that keeps the whole QKV output alive), the core's
    output (the output projection's input) and the core's log-sum-exp.

    >>> s = Settings(seq_len=8, micro_batch_size=1)
    >>> int(attention_cost(s, hidden=16, heads=4, kv_heads=2).params)
    784
    """
    t, e, d, b, sq = settings.tokens, settings.elem, hidden // heads, settings.micro_batch_size, settings.seq_len
    kv = kv_heads * d
    if settings.qkv == "fused":
        # dq, dk, dv are copied into one dqkv for the fused projection's backward (read + write).
        width = hidden + 2 * kv
        projection = linear(t, hidden, width, e) + Cost(saved=t * width * e) + pointwise(t * width, e, 0, 2, kernels=(0, 1))
    else:
        projection = (
            linear(t, hidden, hidden, e) + linear(t, hidden, kv, e, saves_input=False) + linear(t, hidden, kv, e, saves_input=False)
            + Cost(saved=t * kv * e) + pointwise(t * hidden, e, 0, 6, kernels=(0, 2))  # v saved; dX of the three summed
        )
    return (
        norm(t, hidden, e, style=settings.norm)
        + projection
        + (rotary(t, hidden, e) + rotary(t, kv, e) + Cost(saved=t * (hidden + kv) * e) if rope else Cost())
        + attention_core(b, heads, sq, sq, d, d, e, kernel=settings.attention_kernel, causal=causal)
        + linear(t, hidden, hidden, e)
        + residual(t, hidden, e)
    )


def mlp_cost(
    tokens: float, hidden: int, ffn: int, elem: int, *, kind: str = "swiglu", with_norm: bool = True, norm_style: str = "fused"
) -> Cost:
    """Feed-forward block on ``tokens`` tokens, with its residual add.

    ``swiglu``: ``down(silu(gate x) * up x)``, ``3 h f`` parameters; gate and up are two
    linears on the same input (their input gradients are summed: 3 passes over ``T h``);
    saves gate, ``silu(gate)``, up and the product. ``gelu``: ``down(gelu(up x))``,
    ``2 h f`` parameters, saves the GELU input and output. ``with_norm=False`` (experts):
    no norm and no residual, the router and combine own them.

    >>> [int(mlp_cost(tokens=1, hidden=4, ffn=8, elem=2, kind=k).params) for k in ("swiglu", "gelu")]
    [100, 68]
    """
    if kind == "swiglu":
        cost = linear(tokens, hidden, 2 * ffn, elem) + pointwise(tokens * hidden, elem, 0, 3, kernels=(0, 1)) + swiglu(tokens, ffn, elem)
    else:
        cost = linear(tokens, hidden, ffn, elem) + gelu(tokens, ffn, elem)
    cost = cost + linear(tokens, ffn, hidden, elem)
    if not with_norm:
        return cost
    return norm(tokens, hidden, elem, style=norm_style) + cost + residual(tokens, hidden, elem)


def head_cost(tokens: float, hidden: int, vocab: int, elem: int, *, norm_style: str = "fused") -> Cost:
    """Final norm + LM head (untied) + fp32 softmax cross-entropy (logits are transient workspace)."""
    return norm(tokens, hidden, elem, style=norm_style) + linear(tokens, hidden, vocab, elem) + cross_entropy(tokens, vocab, elem)


def make_operator(name: str, cost: Cost, *, group: str, keep: float | None = None, **extra: Any) -> Operator:
    """An operator from a cost; ``keep`` = input bytes kept under recomputation (None: off)."""
    if keep is not None:
        cost = cost.recomputed(keep)
    return Operator(
        name=name,
        flops=cost.flops,
        params=cost.params,
        static_bytes=cost.static_bytes,
        activation_bytes=cost.saved,
        w_retained_bytes=cost.retained,
        work=cost.work,
        workspace_bytes=cost.workspace,
        group=group,
        **extra,
    )


class GraphBuilder:
    """Collects operators and edges in declaration order (which fixes topological ties)."""

    def __init__(self) -> None:
        self.operators: list[Operator] = []
        self.edges: list[Edge] = []

    def add(self, op: Operator, *inputs: tuple[str, float]) -> str:
        """Add ``op`` fed by ``(src, bytes)`` pairs; returns its name for chaining."""
        self.operators.append(op)
        self.edges.extend(Edge(src, op.name, size) for src, size in inputs)
        return op.name

    def build(self, name: str, section: Section) -> OperatorGraph:
        return OperatorGraph(name=name, operators=apply_measured(section, self.operators), edges=tuple(self.edges))


# -- the dense transformer -----------------------------------------------------------------
@dataclass(frozen=True)
class TransformerConfig:
    """A dense decoder: shapes plus the shared :class:`Settings`."""

    layers: int
    hidden: int
    heads: int
    kv_heads: int
    ffn: int
    vocab: int
    settings: Settings
    preset: str = ""

    @property
    def params(self) -> float:
        """Parameter count from the shapes (the graph's operators sum to the same)."""
        s = self.settings
        layer = attention_cost(s, self.hidden, self.heads, self.kv_heads).params + mlp_cost(1, self.hidden, self.ffn, 2).params
        return self.layers * layer + 2 * self.vocab * self.hidden + self.hidden


def check_heads(section: Section, hidden: int, heads: int, kv_heads: int | None = None, prefix: str = "") -> None:
    """``heads`` must divide ``hidden`` and ``kv_heads`` must divide ``heads``."""
    if hidden % heads:
        raise section.error(f"{prefix}heads ({heads}) must divide {prefix}hidden ({hidden})", "heads")
    if kv_heads is not None and heads % kv_heads:
        raise section.error(f"{prefix}kv_heads ({kv_heads}) must divide {prefix}heads ({heads})", "kv_heads")


def config_from_section(section: Section) -> TransformerConfig:
    """Validate a ``type: transformer`` section into a :class:`TransformerConfig`."""
    section.check_keys(SETTING_KEYS | set(_ARCH_FIELDS) | {"preset"})
    preset = section.str("preset", choices=sorted(PRESETS)) if "preset" in section else ""
    base: dict[str, Any] = dict.fromkeys(_ARCH_FIELDS)
    base["vocab"] = 32000
    base.update(PRESETS.get(preset, {}))
    values = read_fields(section, base, ints={k: 1 for k in _ARCH_FIELDS if k != "kv_heads"})
    values["kv_heads"] = section.integer("kv_heads", minimum=1) if "kv_heads" in section else values["kv_heads"] or values["heads"]
    check_heads(section, values["hidden"], values["heads"], values["kv_heads"])
    return TransformerConfig(
        **{k: values[k] for k in _ARCH_FIELDS},
        settings=read_settings(section, PRESETS.get(preset, {})),
        preset=preset,
    )


def transformer_graph(config: TransformerConfig, name: str, section: Section | None = None) -> OperatorGraph:
    """The operator graph of a dense decoder (``section`` supplies ``measured:``)."""
    s = config.settings
    t, e, h = s.tokens, s.elem, config.hidden
    stream = t * h * e  # the residual stream between operators
    keep = stream if s.recompute else None
    g = GraphBuilder()
    prev = g.add(make_operator("embed", embedding(t, config.vocab, h, e), group="embed"))
    for i in range(config.layers):
        attn = make_operator(f"L{i}.attn", attention_cost(s, h, config.heads, config.kv_heads), group=f"layer{i}", keep=keep)
        prev = g.add(attn, (prev, stream))
        mlp = make_operator(f"L{i}.mlp", mlp_cost(t, h, config.ffn, e, norm_style=s.norm), group=f"layer{i}", keep=keep)
        prev = g.add(mlp, (prev, stream))
    g.add(make_operator("head", head_cost(t, h, config.vocab, e, norm_style=s.norm), group="head"), (prev, stream))
    return g.build(name, section or Section({}))


def build_transformer(section: Section, base_dir: Path) -> OperatorGraph:
    config = config_from_section(section)
    return transformer_graph(config, str(section.raw("name", config.preset or "transformer")), section)


def model_facts(section: Section) -> list[tuple[str, str]]:
    """Rows for ``opplan describe``: what the graph alone does not say."""
    c = config_from_section(section)
    s = c.settings
    return [
        ("preset", c.preset or "(none)"),
        ("shape", f"{c.layers} layers, hidden {c.hidden}, {c.heads} heads ({c.kv_heads} KV), ffn {c.ffn}, vocab {c.vocab}"),
        ("tokens per micro-batch", f"{s.tokens} ({s.micro_batch_size} x {s.seq_len})"),
        ("precision / recompute", f"{s.precision} / {'on' if s.recompute else 'off'}"),
        ("kernels (costs)", f"attention {s.attention_kernel}, norm {s.norm}, qkv {s.qkv}"),
    ]
