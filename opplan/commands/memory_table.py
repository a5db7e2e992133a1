"""The per-rank memory table of ``opplan describe``, for a scenario's ``parallel:`` layout.

Like Megatron-LM's theoretical-memory report (``megatron/training/theoretical_memory_usage.py``:
"weight and optimizer", "activation", "total" for the most loaded rank), but one row per
pipeline stage, with the model states split into weights, gradients and optimizer
states (ZeRO) and the activations of the micro-batches the schedule keeps in flight
(:mod:`simulator.memory_model`). Ranks of one stage hold the same amounts.
"""

from __future__ import annotations

from rich.table import Table

from simulator.layout import Layout
from simulator.memory_model import RankMemory, layout_memory
from simulator.model_shapes import model_shape
from simulator.report import fmt_bytes
from simulator.scenario import Scenario
from simulator.yamlio import Section

__all__ = ["memory_table", "layout_text"]


def layout_text(layout: Layout) -> str:
    """One line: degrees, ZeRO stage, schedule and batch.

    >>> layout_text(Layout(dp=8, zero=3, global_batch_size=64))
    'dp 8 x tp 1 x pp 1 x cp 1 (ep 1), ZeRO-3, 1f1b, recompute none, 8 micro-batches of 1 per step (global batch 64)'
    """
    sp = " + SP" if layout.sequence_parallel else ""
    vpp = f" (vpp {layout.vpp})" if layout.vpp > 1 else ""
    recompute = layout.recompute if not layout.recompute_ranges else "per layer range"
    return (
        f"dp {layout.dp} x tp {layout.tp}{sp} x pp {layout.pp} x cp {layout.cp} (ep {layout.ep}), ZeRO-{layout.zero},"
        f" {layout.schedule}{vpp}, recompute {recompute}, {layout.micro_batches} micro-batches of {layout.micro_batch_size}"
        f" per step (global batch {layout.global_batch_size})"
    )


def _ranks(ranks: list[int]) -> str:
    if len(ranks) > 4:
        return f"{len(ranks)} ranks ({ranks[0]}, {ranks[1]}, ...)"
    return ", ".join(map(str, ranks))


def memory_table(scenario: Scenario) -> Table | None:
    """Per-stage memory of the scenario's layout; None without a layout or for models without layers."""
    layout = scenario.parallel
    model = Section(dict(scenario.model_config), file=scenario.file, path="model")
    shape = model_shape(str(scenario.model_config.get("type", "")), model) if layout is not None else None
    if layout is None or shape is None:
        return None
    training = scenario.problem.workload.mode == "training"
    memories = layout_memory(shape, layout, training=training)
    capacity = scenario.problem.cluster.devices[0].memory_bytes
    peak = max(memories, key=lambda m: (m.total, -m.rank))
    name, size = peak.largest
    title = (
        f"per-rank memory ({'training' if training else 'inference'}): {layout_text(layout)}\n"
        f"largest: rank {peak.rank}, {fmt_bytes(peak.total)} of {fmt_bytes(capacity)}, biggest component {name} {fmt_bytes(size)}"
    )
    table = Table(title=title)
    for header in ("stage", "ranks", "layers", "params", "weights", "grads", "optimizer", "activations", "in flight", "buffers", "total"):
        table.add_column(header, justify="left" if header in ("stage", "ranks") else "right")
    by_stage: dict[int, list[RankMemory]] = {}
    for memory in memories:
        by_stage.setdefault(memory.pp_rank, []).append(memory)
    for stage, group in sorted(by_stage.items()):
        m = group[0]
        table.add_row(
            f"{stage} {list(m.stages)}" if len(m.stages) > 1 else str(stage),
            _ranks([x.rank for x in group]),
            str(m.layers),
            f"{m.params / 1e9:.3g}e9",
            *(fmt_bytes(v) for v in (m.weights, m.grads, m.optimizer, m.activations)),
            f"{m.in_flight:g}",
            fmt_bytes(m.buffers),
            fmt_bytes(m.total),
        )
    return table
