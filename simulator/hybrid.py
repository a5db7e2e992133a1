"""A model seen by one rank of a hybrid-parallel layout: per-layer *units* and their costs.

The replay of a layout (:mod:`planner.layouts`) runs one task per layer, not per
operator: a *unit* is the embedding (everything before the first layer, as Megatron
puts it on the first pipeline stage), one transformer layer (attention + MLP, or
attention + router + experts for MoE), or the head (final norm + LM head + loss, on the
last stage). Each unit carries what one rank of the layout does for one micro-batch:

- seconds of F, B and W on the cluster's device: the graph operators' own cost model
  (measured times, else each work class — GEMM FLOPs, attention FLOPs, HBM bytes — at
  the device's rate, :meth:`simulator.cluster.Device.work_time`) with every class but
  kernel launches divided by ``tp x cp`` (Megatron's column/row-parallel split gives each
  TP rank ``1/tp`` of every GEMM and of the attention heads; context parallelism gives
  each rank ``1/cp`` of the tokens; a kernel is launched on every rank whatever its
  size). The replicated norms are divided too: with sequence parallelism they are, and
  without it they are under 1 % of a layer's time. Also the FLOPs, for MFU.
  Full recomputation adds the unit's F inside its B (Korthikanti et al. 2022, section 5);
  selective recomputation adds nothing with flash attention (the score tensors it would
  recompute are never stored: flash attention's backward already recomputes them, and
  the graph's B FLOPs include that).
- activation bytes kept from F to B, from :func:`simulator.memory_model.layer_activations`
  (Korthikanti's rules: TP, sequence parallel, recompute, CP), and the part W still needs;
- the tensor-parallel collectives of each pass: one all-reduce of the unit's output
  stream ``s b h`` per row-parallel block in F (attention output projection, MLP fc2,
  cross-attention), the same in B (the column-parallel inputs' gradients) — with
  sequence parallelism a reduce-scatter plus an all-gather of the same buffer instead
  (Shoeybi et al. 2019, Korthikanti et al. 2022 section 4.2.2); the vocabulary-parallel
  embedding all-reduces its output in F, the head its input gradient in B;
- the expert-parallel all-to-alls (dispatch and combine in F, their transposes in B),
  each rank's send buffer the graph's dispatch operator's ``comm_bytes`` (tokens x top-k x
  hidden: what :func:`simulator.collectives.expert_dispatch_matrix` gives with experts
  spread evenly).

This module only transforms the model; building and replaying the schedule is
:mod:`planner.layouts`'s job.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType

from simulator.cluster import Device
from simulator.graph import OperatorGraph
from simulator.layout import Layout
from simulator.memory_model import GRAD_BYTES, WEIGHT_BYTES, layer_activations
from simulator.shapes import LayerMemory, ModelShape

__all__ = ["Unit", "UnitWork", "model_work", "HBM_BANDWIDTH", "ADAM_BYTES_PER_PARAM", "unit_of_group", "model_units",
           "stage_units", "optimizer_seconds"]

#: HBM bandwidth (bytes/s) by device type, datasheet figures (shared/reference/hardware.md):
#: H100 SXM5 and H800 SXM 3.35 TB/s, A100 SXM 80GB 2.039 TB/s.
HBM_BANDWIDTH: Mapping[str, float] = MappingProxyType({
    "H100-SXM5": 3.35e12,
    "H800-SXM": 3.35e12,
    "A100-SXM-80GB": 2.039e12,
})
#: Bytes a fused mixed-precision Adam step moves per parameter of its shard: read and write
#: the fp32 master weight, momentum and variance (12 + 12), read the 16-bit gradient (2),
#: write the 16-bit weight (2) — apex / Megatron ``FusedAdam``'s traffic; the step is
#: memory-bound (about 1 FLOP per byte).
ADAM_BYTES_PER_PARAM = 28
#: Bytes per parameter a ZeRO-3 (or ZeRO-1/2 post-step) all-gather brings back: the 16-bit weights.
GATHER_BYTES = WEIGHT_BYTES

_LAYER = re.compile(r"^(?:(?P<tower>.+)\.)?layer(?P<index>\d+)(?:\..*)?$")


def unit_of_group(group: str) -> str:
    """The unit an operator group belongs to: ``layer3.experts`` -> ``L3``,
    ``vision.layer0`` -> ``vision.L0``, ``head`` -> ``head``, anything else -> ``embed``.

    >>> [unit_of_group(g) for g in ("layer3.experts", "vision.layer0", "head", "vision.proj")]
    ['L3', 'vision.L0', 'head', 'embed']
    """
    match = _LAYER.match(group)
    if match:
        tower = match.group("tower")
        return f"{tower}.L{match.group('index')}" if tower else f"L{match.group('index')}"
    return "head" if group == "head" else "embed"


@dataclass(frozen=True)
class Unit:
    """One layer (or the embedding / head) as one rank of the layout runs it, per micro-batch."""

    name: str
    #: Transformer layer index (None for the embedding and head).
    layer: int | None
    flops: Mapping[str, float]
    #: Seconds of each pass on one rank (the cluster's device type).
    seconds: Mapping[str, float]
    activation_bytes: float
    w_retained_bytes: float
    #: Parameters this rank holds of the unit, dense (sharded over dp x cp) and expert.
    dense_params: float
    expert_params: float
    #: Bytes of the residual stream leaving the unit (``s b h e`` per rank, / tp when sequence parallel).
    stream_bytes: float
    #: Tensor-parallel collectives per pass: ``(op, bytes)`` in order, for F and for B.
    tp_forward: tuple[tuple[str, float], ...] = ()
    tp_backward: tuple[tuple[str, float], ...] = ()
    #: Expert-parallel all-to-all send buffers per pass (F: dispatch, combine; B the same).
    all_to_all: tuple[float, ...] = ()
    #: Context-parallel KV exchange per pass: ``(op, bytes)`` for F and for B.
    cp_forward: tuple[tuple[str, float], ...] = ()
    cp_backward: tuple[tuple[str, float], ...] = ()

    @property
    def params(self) -> float:
        return self.dense_params + self.expert_params

    @property
    def grad_bytes(self) -> float:
        return GRAD_BYTES * self.params


def _tp_calls(points: int, size: float, layout: Layout) -> tuple[tuple[str, float], ...]:
    if layout.tp == 1 or points == 0:
        return ()
    if layout.sequence_parallel:
        return (("all_gather", size), ("reduce_scatter", size)) * points
    return (("all_reduce", size),) * points


def _row_parallel_blocks(unit: str, ops: list) -> tuple[int, int]:
    """Row-parallel blocks (TP all-reduces) of a unit in F and in B."""
    if unit == "head":
        return 0, 1  # column-parallel LM head: its input gradient is all-reduced
    if unit == "embed":
        return 1, 0  # vocabulary-parallel lookup: its output is all-reduced
    names = [op.name for op in ops]
    blocks = sum(1 for n in names if n.endswith((".attn", ".xattn", ".mlp")) or n.endswith(".shared"))
    experts = any(".expert" in n for n in names)
    return blocks + (1 if experts else 0), blocks + (1 if experts else 0)


@dataclass(frozen=True)
class UnitWork:
    """A unit's operators summed once, whatever the layout: per pass its FLOPs, the seconds of its
    measured (or FLOP-only) operators and its modelled work per class on one device type, the
    row-parallel blocks, the all-to-all send buffers and the bytes leaving it.
    :meth:`simulator.cluster.Device.work_time` is linear in each class's amount, so the sum of
    the operators' times is the time of their summed work (a DeepSeek-V3 layer has 700 operators)."""

    flops: Mapping[str, float]
    fixed: Mapping[str, float]
    work: Mapping[str, Mapping[str, float]]
    blocks: tuple[int, int]
    comm: tuple[float, ...]
    stream: float

    def seconds(self, kind: str, device: Device, split: int) -> float:
        """One rank's share of the ``kind`` pass: every class but kernel launches divided by ``split``."""
        work = self.work[kind]
        return self.fixed[kind] / split + device.work_time({c: a if c == "launch" else a / split for c, a in work.items()})


def _unit_work(name: str, ops: list, graph: OperatorGraph, device: Device) -> UnitWork:
    compute = [op for op in ops if op.stream == "compute"]
    fixed = dict.fromkeys(("F", "B", "W"), 0.0)
    work: dict[str, dict[str, float]] = {k: {} for k in ("F", "B", "W")}
    for op in compute:
        for kind in ("F", "B", "W"):
            measured = op.measured_time(device.type, kind)
            if measured is not None:
                fixed[kind] += measured
            elif op.work:
                for c, a in op.work.get(kind, {}).items():
                    work[kind][c] = work[kind].get(c, 0.0) + a
            else:
                fixed[kind] += op.flops.get(kind, 0.0) / device.effective_flops
    flops = {k: sum(op.flops.get(k, 0.0) for op in compute) for k in ("F", "B", "W")}
    comm = tuple(op.comm_bytes for op in ops if op.stream == "comm" and op.comm_bytes)
    return UnitWork(flops, fixed, work, _row_parallel_blocks(name, ops), comm, _stream_bytes(graph, ops))


def _unit_costs(name: str, unit: UnitWork, memory: LayerMemory, layout: Layout, index: int | None, device: Device) -> Unit:
    split = layout.tp * layout.cp
    flops = {k: unit.flops[k] / split for k in ("F", "B", "W")}
    seconds = {k: unit.seconds(k, device, split) for k in ("F", "B", "W")}
    mode = layout.recompute_mode(index) if index is not None else "none"
    if mode == "full":
        flops["B"] += flops["F"]
        seconds["B"] += seconds["F"]
    samples = layout.micro_batch_size
    opts = {"tp": layout.tp, "cp": layout.cp, "sequence_parallel": layout.sequence_parallel}
    activations = layer_activations(memory, samples, recompute=mode, **opts)
    kept = min(1.0, memory.weight_inputs / memory.activations) if memory.activations else 0.0
    size = unit.stream / layout.cp
    forward, backward = unit.blocks
    a2a = tuple(c / layout.cp for c in unit.comm) if layout.ep > 1 else ()
    return Unit(
        name=name,
        layer=index,
        flops=MappingProxyType(flops),
        seconds=MappingProxyType(seconds),
        activation_bytes=activations,
        w_retained_bytes=activations * kept if mode != "full" else 0.0,
        dense_params=memory.tp_params / layout.tp + memory.replicated_params,
        expert_params=memory.expert_params / (layout.ep * layout.tp),
        stream_bytes=size / (layout.tp if layout.sequence_parallel else 1),
        tp_forward=_tp_calls(forward, size, layout),
        tp_backward=_tp_calls(backward, size, layout),
        all_to_all=a2a + a2a[::-1] if a2a else (),
    )


def _stream_bytes(graph: OperatorGraph, ops: list) -> float:
    """Bytes leaving a unit: its largest outgoing edge (the residual stream), else its largest incoming."""
    names = {op.name for op in ops}
    out = [e.bytes for op in ops for e in graph.successors[op.name] if e.dst not in names]
    inside = [e.bytes for op in ops for e in graph.predecessors[op.name]]
    return max(out or inside or [0.0])


def model_work(graph: OperatorGraph, shape: ModelShape, device: Device) -> dict[str, UnitWork]:
    """Every unit's operators summed (:class:`UnitWork`), by unit name: what :func:`model_units`
    needs of the graph, computed once for any number of layouts."""
    grouped: dict[str, list] = {}
    for op in graph.operators:
        grouped.setdefault(unit_of_group(op.group or op.name), []).append(op)
    names = [shape.pre.name, *(m.name for m in shape.layers), shape.post.name]
    missing = [name for name in names if name not in grouped]
    if missing:
        raise ValueError(f"the graph has no operators for unit {missing[0]!r}")
    return {name: _unit_work(name, grouped[name], graph, device) for name in names}


def model_units(graph: OperatorGraph, shape: ModelShape, layout: Layout, device: Device, *,
                work: Mapping[str, UnitWork] | None = None) -> tuple[Unit, ...]:
    """The embedding, every layer and the head, in model order, as one rank of ``layout`` runs them on
    ``device`` (``work``: :func:`model_work` of the same graph, shape and device, when already known)."""
    work = work if work is not None else model_work(graph, shape, device)
    order = [(shape.pre.name, None, shape.pre)] + [(m.name, i, m) for i, m in enumerate(shape.layers)]
    order.append((shape.post.name, None, shape.post))
    units = tuple(_unit_costs(name, work[name], memory, layout, index, device) for name, index, memory in order)
    return tuple(_with_context_parallel(u, shape, layout) for u in units) if layout.cp > 1 else units


def _with_context_parallel(unit: Unit, shape: ModelShape, layout: Layout) -> Unit:
    """A layer under context parallelism exchanges its self-attention's K and V around the CP
    ring in F (each rank ends with all ``cp`` chunks: an all-gather's ring steps, as ring
    attention and Megatron's CP send them) and the gradients of K and V back in B (a
    reduce-scatter). The gathered buffer is ``2 s b (kv_heads d) e / tp`` bytes; the stream
    ``s b h e`` is the same with ``h = heads d``. Modelled blocking (Megatron overlaps the ring
    with the attention blocks)."""
    if unit.layer is None:
        return unit
    prefix = unit.name.split(".", 1)[0] if "." in unit.name else ""
    tower = next((t for t in shape.towers if t.name == ("text" if prefix == "fusion" else prefix)), shape.towers[0])
    full = unit.stream_bytes * layout.cp * (layout.tp if layout.sequence_parallel else 1)
    size = 2 * full * tower.kv_heads / tower.heads / layout.tp
    return replace(unit, cp_forward=(("all_gather", size),), cp_backward=(("reduce_scatter", size),))


def stage_units(layout: Layout, layers: int) -> tuple[tuple[int, ...], ...]:
    """Unit indices of each (virtual) pipeline stage: the layout's layer ranges, the
    embedding (unit 0) joining the first stage and the head (unit ``layers + 1``) the last."""
    ranges = layout.stage_layer_ranges(layers)
    stages = []
    for k, layer_range in enumerate(ranges):
        units = [i + 1 for i in layer_range]
        if k == 0:
            units.insert(0, 0)
        if k == len(ranges) - 1:
            units.append(layers + 1)
        stages.append(tuple(units))
    return tuple(stages)


def optimizer_seconds(params: float, device: Device, *, default_bandwidth: float = 3.35e12) -> float:
    """Seconds of a fused Adam step over ``params`` parameters: bytes moved / achieved HBM
    bandwidth (the profile's ``hbm`` rate; else the datasheet figure of :data:`HBM_BANDWIDTH`).

    >>> round(optimizer_seconds(1e9, Device("g", "H100-SXM5", 80e9, 1e15)) * 1e3, 3)  # 28 GB at 3.35 TB/s
    8.358
    """
    rate = device.rates.get("hbm") or HBM_BANDWIDTH.get(device.type, default_bandwidth)
    return ADAM_BYTES_PER_PARAM * params / rate
