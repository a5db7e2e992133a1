"""Per-rank memory of a layout, from the formulas people check against.

Model states (ZeRO, Rajbhandari et al. SC'20, section 5 and Figure 1): mixed-precision
Adam holds 16-bit weights (2 bytes per parameter), 16-bit gradients (2) and optimizer
states (K = 12: fp32 master weights, momentum, variance). Stage 1 shards the optimizer
states over the ``N_d`` data-parallel ranks, stage 2 also the gradients, stage 3 (FSDP
full shard) also the weights::

    stage 0: (2 + 2 + K) Psi      stage 2: 2 Psi + (2 + K) Psi / N_d
    stage 1: 4 Psi + K Psi / N_d  stage 3: (2 + 2 + K) Psi / N_d

Tensor parallelism divides the column/row-parallel weights by ``tp`` (norms and routers
stay replicated), pipeline parallelism gives each rank its stages' layers, the
embedding to the first stage and the final norm + head to the last (Megatron-LM), and
expert parallelism divides the routed experts by ``ep x tp``. Dense weights shard over
the ``dp x cp`` group (Megatron's distributed optimizer), expert weights over the expert
data-parallel group ``dp cp / ep``.

Activations per layer (Korthikanti et al. 2022, "Reducing Activation Recomputation in
Large Transformer Models", Table 2) for a GPT layer, in bytes::

    no parallelism                   s b h (34 + 5 a s / h)
    tensor parallel t                s b h (10 + 24 / t + 5 a s / (h t))
    t + sequence parallel            s b h (34 + 5 a s / h) / t
    t + selective recompute          s b h (10 + 24 / t)
    t + sequence parallel + selective  34 s b h / t
    full recompute                   2 s b h   (the layer input; / t with sequence parallel,
                                                 where the input is stored sequence-sharded)

:func:`layer_activations` applies the same rules to any layer's
:class:`~simulator.shapes.LayerMemory` split (``outside`` / ``inside`` / ``score``);
context parallelism divides the tokens by ``cp``.

Pipeline schedules keep several micro-batches in flight (:func:`in_flight`); inference
needs the weights only.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from simulator.cluster import Cluster
from simulator.errors import InputError
from simulator.layout import Layout, read_layout
from simulator.model_shapes import model_shape
from simulator.shapes import LayerMemory, ModelShape
from simulator.yamlio import Section

__all__ = [
    "WEIGHT_BYTES",
    "GRAD_BYTES",
    "OPTIMIZER_BYTES",
    "ModelStates",
    "zero_model_states",
    "korthikanti_layer",
    "layer_activations",
    "in_flight",
    "RankMemory",
    "rank_memory",
    "layout_memory",
    "check_capacity",
    "read_parallel",
]

WEIGHT_BYTES = 2
GRAD_BYTES = 2
#: ZeRO's K for mixed-precision Adam: fp32 master weights, momentum and variance.
OPTIMIZER_BYTES = 12
COMPONENTS = ("weights", "grads", "optimizer", "activations", "buffers")


@dataclass(frozen=True)
class ModelStates:
    """Bytes of weights, gradients and optimizer states on one rank."""

    weights: float
    grads: float
    optimizer: float

    @property
    def total(self) -> float:
        return self.weights + self.grads + self.optimizer

    def __add__(self, other: ModelStates) -> ModelStates:
        return ModelStates(self.weights + other.weights, self.grads + other.grads, self.optimizer + other.optimizer)


def zero_model_states(
    params: float,
    dp: int,
    zero: int,
    *,
    weight_bytes: float = WEIGHT_BYTES,
    grad_bytes: float = GRAD_BYTES,
    optimizer_bytes: float = OPTIMIZER_BYTES,
) -> ModelStates:
    """Model states of ``params`` parameters replicated over ``dp`` ranks at ZeRO stage ``zero``.

    The ZeRO paper's Figure 1 example, 7.5e9 parameters on 64 ranks (GB = 1e9 bytes):

    >>> [round(zero_model_states(7.5e9, 64, z).total / 1e9, 1) for z in (0, 1, 2, 3)]
    [120.0, 31.4, 16.6, 1.9]
    """
    return ModelStates(
        weights=weight_bytes * params / (dp if zero >= 3 else 1),
        grads=grad_bytes * params / (dp if zero >= 2 else 1),
        optimizer=optimizer_bytes * params / (dp if zero >= 1 else 1),
    )


def korthikanti_layer(s: int, b: int, h: int, a: int, *, t: int = 1, sequence_parallel: bool = False, recompute: str = "none") -> float:
    """Activation bytes of one GPT layer, Korthikanti et al. 2022, Table 2 (closed form).

    >>> korthikanti_layer(2048, 1, 12288, 96) == 2048 * 12288 * (34 + 5 * 96 * 2048 / 12288)
    True
    """
    sbh = s * b * h
    if recompute == "full":
        return 2 * sbh / (t if sequence_parallel else 1)
    score = 0.0 if recompute == "selective" else 5 * a * s / h
    if sequence_parallel:
        return sbh * (34 + score) / t
    return sbh * (10 + 24 / t + score / t)


def layer_activations(layer: LayerMemory, samples: float, *, tp: int = 1, cp: int = 1, sequence_parallel: bool = False,
                      recompute: str = "none") -> float:
    """Bytes one layer keeps for ``samples`` samples on one rank: Korthikanti's rules on its split.

    ``outside`` is divided by ``tp`` only with sequence parallelism, ``inside`` always,
    ``score`` too unless selective recomputation drops it; full recomputation keeps the
    layer input. Context parallelism gives each rank ``1 / cp`` of the tokens.
    """
    scale = samples / cp
    if recompute == "full":
        return layer.input * scale / (tp if sequence_parallel else 1)
    outside = layer.outside / (tp if sequence_parallel else 1)
    score = 0.0 if recompute == "selective" else layer.score / tp
    return (outside + layer.inside / tp + score) * scale


def in_flight(schedule: str, pp: int, pp_rank: int, micro_batches: int, vpp: int = 1) -> tuple[float, float]:
    """Peak micro-batches of one pipeline chunk held by ``pp_rank``: ``(full, weight-inputs only)``.

    - ``gpipe``: all ``m`` (Huang et al. 2019);
    - ``1f1b``: ``p - r`` on rank ``r``, so ``p`` on the first stage (Narayanan et al. 2021);
    - ``interleaved-1f1b``: Megatron's warm-up ``2 (p - r - 1) + (v - 1) p`` plus one, in
      chunks of ``1 / v`` stage; on the first rank ``p v (1 + (p - 1) / (p v))`` chunks,
      Megatron's ``1 + (p - 1) / (p v)`` penalty;
    - ``zb-h1``: ``(p - r) M_B + r M_W``, ``zb-h2``: ``(2p - 2r - 1) M_B + 2r M_W``
      (Qi et al. 2024, section 3; ``M_W`` = what W still needs after B);
    - ``dualpipe`` / ``dualpipev``: ``S + 1`` chunks for ``S`` stages (DualPipe README table);
      on every rank, as a walk of DualPipe's eight phases shows: the warm-up leaves
      ``2(N - h - 1) + 2(h + 1) = S`` chunks, each overlapped ``F0B1F1B0`` step adds one
      before its backward frees one.

    Never more than the micro-batches of a step (``m`` chunks, ``m v`` interleaved).

    >>> in_flight("1f1b", 4, 0, 8), in_flight("interleaved-1f1b", 4, 0, 8, vpp=2), in_flight("zb-h1", 4, 3, 8)
    ((4, 0), (11, 0), (1, 3))
    """
    p, r, m = pp, pp_rank, micro_batches
    if schedule == "gpipe":
        return m, 0
    if schedule == "interleaved-1f1b":
        return min(2 * (p - r - 1) + (vpp - 1) * p + 1, m * vpp), 0
    if schedule == "zb-h1":
        return min(p - r, m), min(r, m)
    if schedule == "zb-h2":
        return min(2 * p - 2 * r - 1, m), min(2 * r, m)
    if schedule == "dualpipe":
        return min(p + 1, m), 0
    if schedule == "dualpipev":
        return min(2 * p + 1, m * 2), 0
    return min(p - r, m), 0


@dataclass(frozen=True)
class RankMemory:
    """One rank's memory at its peak, by component (bytes)."""

    rank: int
    pp_rank: int
    stages: tuple[int, ...]
    layers: int
    params: float
    weights: float
    grads: float
    optimizer: float
    activations: float
    buffers: float
    in_flight: float

    @property
    def total(self) -> float:
        return self.weights + self.grads + self.optimizer + self.activations + self.buffers

    def components(self) -> dict[str, float]:
        return {name: getattr(self, name) for name in COMPONENTS}

    @property
    def largest(self) -> tuple[str, float]:
        """The biggest component and its bytes."""
        return max(self.components().items(), key=lambda kv: kv[1])


Held = list[list[tuple[int | None, LayerMemory]]]


def held_layers(shape: ModelShape, layout: Layout, pp_rank: int) -> Held:
    """Per stage the rank holds, ``(layer index, layer)``; the embedding (index None) joins
    stage 0 and the final norm + head the last stage, as in Megatron-LM."""
    ranges = layout.stage_layer_ranges(len(shape.layers))
    held: Held = []
    for stage in layout.stages_of(pp_rank):
        items: list[tuple[int | None, LayerMemory]] = [(i, shape.layers[i]) for i in ranges[stage]]
        if stage == 0:
            items.insert(0, (None, shape.pre))
        if stage == layout.stages - 1:
            items.append((None, shape.post))
        held.append(items)
    return held


def _states(held: Held, layout: Layout, training: bool) -> tuple[float, ModelStates, float]:
    """Parameters on the rank, their model states, and the largest layer's parameters."""
    dense = expert = biggest = 0.0
    for stage in held:
        for _, layer in stage:
            d = layer.tp_params / layout.tp + layer.replicated_params
            x = layer.expert_params / (layout.ep * layout.tp)
            dense, expert, biggest = dense + d, expert + x, max(biggest, d + x)
    if not training:
        return dense + expert, ModelStates(WEIGHT_BYTES * (dense + expert), 0.0, 0.0), biggest
    states = zero_model_states(dense, layout.dp * layout.cp, layout.zero) + zero_model_states(expert, layout.expert_dp, layout.zero)
    return dense + expert, states, biggest


def _chunk(held: Held, layout: Layout) -> tuple[float, float, float]:
    """Mean activations of one micro-batch through one of the rank's stages, the part of it
    W still needs after B (``M_W``, in proportion to the unsplit layers), and the largest
    layer's full activations (rebuilt inside B under full recomputation)."""
    per_stage, kept, full, rebuilt = [], 0.0, 0.0, 0.0
    b = layout.micro_batch_size
    for stage in held:
        total = 0.0
        for index, layer in stage:
            mode = layout.recompute_mode(index) if index is not None else "none"
            opts = {"tp": layout.tp, "cp": layout.cp, "sequence_parallel": layout.sequence_parallel}
            total += layer_activations(layer, b, recompute=mode, **opts)
            if mode == "full":
                rebuilt = max(rebuilt, layer_activations(layer, b, **opts))
            kept, full = kept + layer.weight_inputs, full + layer.activations
        per_stage.append(total)
    mean = sum(per_stage) / len(per_stage)
    return mean, mean * min(1.0, kept / full) if full else 0.0, rebuilt


def rank_memory(shape: ModelShape, layout: Layout, rank: int, *, training: bool = True) -> RankMemory:
    """Peak memory of ``rank``: model states by ZeRO stage, activations of the micro-batches its
    schedule keeps in flight, and buffers (FSDP's gathered layer plus the one prefetched; a
    layer's activations rebuilt under full recomputation). Inference holds the weights only."""
    pp_rank = layout.coordinate(rank, "pp")
    held = held_layers(shape, layout, pp_rank)
    params, states, biggest = _states(held, layout, training)
    activations = buffers = flight = 0.0
    if training:
        chunk, weight_part, rebuilt = _chunk(held, layout)
        full, w_only = in_flight(layout.schedule, layout.pp, pp_rank, layout.micro_batches, layout.vpp)
        activations, flight = full * chunk + w_only * weight_part, full + w_only
        gathered = 2 * WEIGHT_BYTES * biggest if layout.zero == 3 else 0.0
        buffers = gathered + rebuilt
    return RankMemory(
        rank=rank,
        pp_rank=pp_rank,
        stages=layout.stages_of(pp_rank),
        layers=sum(1 for stage in held for index, _ in stage if index is not None),
        params=params,
        weights=states.weights,
        grads=states.grads,
        optimizer=states.optimizer,
        activations=activations,
        buffers=buffers,
        in_flight=flight,
    )


def layout_memory(shape: ModelShape, layout: Layout, *, training: bool = True) -> tuple[RankMemory, ...]:
    """Every rank's memory; ranks differ only by pipeline stage, so each stage is costed once."""
    by_stage: dict[int, RankMemory] = {}
    out = []
    for rank in range(layout.world_size):
        pp_rank = layout.coordinate(rank, "pp")
        if pp_rank not in by_stage:
            by_stage[pp_rank] = rank_memory(shape, layout, rank, training=training)
        out.append(replace(by_stage[pp_rank], rank=rank))
    return tuple(out)


def check_capacity(memories: tuple[RankMemory, ...], capacities: list[float], *, file: str | None = None) -> None:
    """Raise one line naming the fullest rank over its capacity, the amount and the biggest component."""
    over = [(m.total - cap, m, cap) for m, cap in zip(memories, capacities) if m.total > cap]
    if not over:
        return
    _, worst, cap = max(over, key=lambda item: (item[0], -item[1].rank))
    name, size = worst.largest
    parts = ", ".join(f"{k} {v / 1e9:.1f}" for k, v in worst.components().items())
    raise InputError(
        f"rank {worst.rank} (pipeline stage {worst.pp_rank}) needs {worst.total / 1e9:.1f} GB > {cap / 1e9:.1f} GB;"
        f" biggest: {name} {size / 1e9:.1f} GB ({parts} GB)",
        file=file,
        field="parallel",
    )


def read_parallel(doc: Section, cluster: Cluster, training: bool) -> Layout | None:
    """A scenario's ``parallel:`` section, validated against the cluster and the model, and
    checked to fit every device's memory; None when the scenario has none."""
    if "parallel" not in doc:
        return None
    model = doc.section("model")
    shape = model_shape(str(model.raw("type", "")), model)
    layout = read_layout(doc.section("parallel"), len(cluster.devices), shape)
    if shape is not None:
        memories = layout_memory(shape, layout, training=training)
        check_capacity(memories, [d.memory_bytes for d in cluster.devices], file=doc.file)
    return layout
