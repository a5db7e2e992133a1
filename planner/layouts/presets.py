"""Practitioner layouts as named presets, and the built-in pipeline schedules as layouts.

For a scenario with ``N`` devices in nodes of ``k``, global batch ``G`` (the scenario's
``parallel.global_batch_size``, else ``N x workload.micro_batches x micro_batch_size``):

- ``ddp``: PyTorch DDP, ``dp = N``, ZeRO-0;
- ``zero1``: ``dp = N`` with the optimizer states sharded (DeepSpeed ZeRO-1, Megatron's
  distributed optimizer);
- ``fsdp``: PyTorch FSDP full shard, ``dp = N``, ZeRO-3;
- ``megatron``: Megatron-LM's recipe: TP inside the node (the largest degree ``<= k``
  dividing heads, KV heads and ffn) with sequence parallelism, PP across nodes when the
  layers split evenly, DP for the rest, distributed optimizer, 1F1B;
  ``megatron-interleaved`` the same with interleaved 1F1B, 2 virtual stages per rank;
- ``megatron-moe`` (MoE models): no TP, ``dp = N`` with expert parallelism inside the
  node (the largest degree ``<= k`` dividing the experts), distributed optimizer;
- ``deepseek-v3`` (MoE models): DeepSeek-V3's training layout (DeepSeek-AI, "DeepSeek-V3
  Technical Report", arXiv 2412.19437, section 3.2): no TP, 16-way PP with DualPipe, 64-way
  EP spanning 8 nodes carved out of ZeRO-1 data parallelism. On other clusters: ``pp`` the
  largest even divisor of ``N`` up to 16 that leaves DualPipe its ``2 pp`` micro-batches and
  one layer per stage, ``ep`` the largest divisor of ``dp`` up to 64 dividing the experts;
  refused (one line) where no even ``pp`` applies. Stages cut by cost, as the pipelines below.

Each preset turns on the least activation recomputation that makes every rank fit its GPU
(per :mod:`simulator.memory_model`). The built-in pipeline schedules run as ``pp = N`` layouts (``dp = 1``) on stages cut by
cost with :func:`simulator.partition.contiguous_split` (the embedding's cost counted with
the first layer, the head's with the last).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from planner.layouts.build import shape_of
from simulator.errors import InputError
from simulator.hybrid import model_units
from simulator.layout import SCHEDULES, Layout, check_model
from simulator.memory_model import layout_memory
from simulator.partition import contiguous_split
from simulator.scenario import Scenario
from simulator.shapes import ModelShape
from simulator.yamlio import Section

__all__ = ["PRESETS", "preset_layouts", "pipeline_layouts", "global_batch"]


def global_batch(scenario: Scenario, shape: ModelShape) -> int:
    if scenario.parallel is not None:
        return scenario.parallel.global_batch_size
    devices = len(scenario.problem.cluster.devices)
    return devices * scenario.problem.workload.micro_batches * shape.micro_batch_size


def _per_node(scenario: Scenario) -> int:
    return sum(1 for d in scenario.problem.cluster.devices if d.node == scenario.problem.cluster.devices[0].node)


def _largest_divisor(limit: int, *values: int) -> int:
    return max(t for t in range(1, limit + 1) if all(v % t == 0 for v in values))


def _data(zero: int) -> Callable[[Scenario, ModelShape], Layout]:
    def build(scenario: Scenario, shape: ModelShape) -> Layout:
        n = len(scenario.problem.cluster.devices)
        return Layout(dp=n, zero=zero, micro_batch_size=shape.micro_batch_size, global_batch_size=global_batch(scenario, shape))
    return build


def _megatron(scenario: Scenario, shape: ModelShape) -> Layout:
    n, k = len(scenario.problem.cluster.devices), _per_node(scenario)
    towers = [v for t in shape.towers for v in (t.heads, t.kv_heads, t.ffn)] + [shape.seq_len]
    tp = _largest_divisor(k, *towers)
    nodes = n // k
    pp = nodes if nodes > 1 and len(shape.layers) % nodes == 0 else 1
    return Layout(dp=n // (tp * pp), tp=tp, pp=pp, sequence_parallel=tp > 1, zero=1,
                  micro_batch_size=shape.micro_batch_size, global_batch_size=global_batch(scenario, shape))


def _megatron_interleaved(scenario: Scenario, shape: ModelShape) -> Layout:
    base = _megatron(scenario, shape)
    if base.pp == 1:
        raise InputError("megatron-interleaved needs pipeline parallelism (more than one node)", field="parallel.pp")
    return replace(base, schedule="interleaved-1f1b", vpp=2)


#: DeepSeek-V3's pipeline and expert-parallel degrees on 2048 H800 (arXiv 2412.19437, section 3.2).
DEEPSEEK_PP, DEEPSEEK_EP = 16, 64


def _deepseek_pp(n: int, layers: int, batch: int, mbs: int) -> int:
    """The largest even ``pp <= 16`` dividing ``n`` with a layer per stage and DualPipe's
    (even, ``>= 2 pp``) micro-batches per replica; 0 when there is none."""
    for pp in range(min(DEEPSEEK_PP, n, layers), 1, -1):
        if pp % 2 or n % pp or batch % (n // pp * mbs):
            continue
        m = batch // (n // pp * mbs)
        if m >= 2 * pp and m % 2 == 0:
            return pp
    return 0


def _deepseek_v3(scenario: Scenario, shape: ModelShape) -> Layout:
    """PP (DualPipe) x ZeRO-1 DP with EP inside DP, no TP; the least recompute that fits is
    chosen by :func:`_fitting` (DeepSeek keeps FP8 activations and recomputes only RMSNorm
    and MLA's up-projections, which this memory model does not represent)."""
    if not shape.experts:
        raise InputError("deepseek-v3 needs a mixture-of-experts model", field="model.type")
    n, batch, mbs = len(scenario.problem.cluster.devices), global_batch(scenario, shape), shape.micro_batch_size
    pp = _deepseek_pp(n, len(shape.layers), batch, mbs)
    if not pp:
        raise InputError(f"deepseek-v3 needs an even pipeline degree dividing the {n} GPUs with DualPipe's 2 pp micro-batches"
                         f" and a layer per stage ({len(shape.layers)} layers)", field="parallel.pp")
    dp = n // pp
    ep = _largest_divisor(min(DEEPSEEK_EP, dp), shape.experts, dp)
    return Layout(dp=dp, pp=pp, ep=ep, zero=1, schedule="dualpipe", stage_layers=_balanced(scenario, shape, pp),
                  micro_batch_size=mbs, global_batch_size=batch)


def _megatron_moe(scenario: Scenario, shape: ModelShape) -> Layout:
    if not shape.experts:
        raise InputError("megatron-moe needs a mixture-of-experts model", field="model.type")
    n, k = len(scenario.problem.cluster.devices), _per_node(scenario)
    ep = _largest_divisor(min(k, n), shape.experts, n)
    return Layout(dp=n, ep=ep, zero=1, micro_batch_size=shape.micro_batch_size, global_batch_size=global_batch(scenario, shape))


#: name -> ``(scenario, shape) -> Layout``, in the order tables list them.
PRESETS: dict[str, Callable[[Scenario, ModelShape], Layout]] = {
    "ddp": _data(0),
    "zero1": _data(1),
    "fsdp": _data(3),
    "megatron": _megatron,
    "megatron-interleaved": _megatron_interleaved,
    "megatron-moe": _megatron_moe,
    "deepseek-v3": _deepseek_v3,
}


def preset_layouts(scenario: Scenario) -> tuple[dict[str, Layout], dict[str, str]]:
    """The presets that apply to ``scenario`` (name -> layout) and why the others do not."""
    shape = shape_of(scenario)
    out: dict[str, Layout] = {}
    why: dict[str, str] = {}
    for name, build in PRESETS.items():
        try:
            out[name] = _fitting(scenario, shape, checked(scenario, shape, build(scenario, shape)))
        except InputError as exc:
            why[name] = exc.message
    return out, why


def checked(scenario: Scenario, shape: ModelShape, layout: Layout) -> Layout:
    """``layout`` after Megatron's divisibility rules for ``shape`` (:func:`simulator.layout.check_model`)."""
    check_model(layout, shape, Section({}, file=scenario.file or None, path="parallel"))
    return layout


def _fitting(scenario: Scenario, shape: ModelShape, layout: Layout) -> Layout:
    """``layout`` with the least activation recomputation (none, selective, full) whose ranks fit
    their GPUs by :func:`simulator.memory_model.layout_memory`, as practitioners turn it on
    (FSDP's activation checkpointing, Megatron's ``--recompute-granularity``); unchanged
    when even full recomputation does not fit (the row then says so)."""
    capacity = min(d.memory_bytes for d in scenario.problem.cluster.devices)
    for mode in ("none", "selective", "full"):
        candidate = replace(layout, recompute=mode)
        if max(m.total for m in layout_memory(shape, candidate)) <= capacity:
            return candidate
    return layout


def _balanced(scenario: Scenario, shape: ModelShape, stages: int) -> tuple[int, ...]:
    """Layers per stage, cut by each layer's F + B + W (embedding with the first, head with the last)."""
    mbs = shape.micro_batch_size
    units = model_units(scenario.problem.graph, shape, Layout(global_batch_size=mbs, micro_batch_size=mbs),
                        scenario.problem.cluster.devices[0])
    cost = [sum(u.seconds.values()) for u in units]
    weights = cost[1:-1]
    weights[0] += cost[0]
    weights[-1] += cost[-1]
    split = contiguous_split(weights, stages)
    return tuple(split.count(k) for k in range(stages))


def pipeline_layouts(scenario: Scenario) -> tuple[dict[str, Layout], dict[str, str]]:
    """Every built-in pipeline schedule as a ``pp = N`` layout on cost-balanced stages."""
    shape = shape_of(scenario)
    n = len(scenario.problem.cluster.devices)
    out: dict[str, Layout] = {}
    why: dict[str, str] = {}
    for schedule in SCHEDULES:
        stages = {"interleaved-1f1b": 2 * n, "dualpipev": 2 * n}.get(schedule, n)
        if stages > len(shape.layers):
            why[schedule] = f"{stages} stages for {len(shape.layers)} layers"
            continue
        try:
            out[schedule] = checked(scenario, shape, Layout(pp=n, schedule=schedule, vpp=2 if schedule == "interleaved-1f1b" else 1,
                                   stage_layers=_balanced(scenario, shape, stages), micro_batch_size=shape.micro_batch_size,
                                   global_batch_size=global_batch(scenario, shape)))
        except InputError as exc:
            why[schedule] = exc.message
    return out, why
