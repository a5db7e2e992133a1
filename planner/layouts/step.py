"""One training step of a layout: replay, then the once-per-step tail, reduced to the figures
practitioners compare (step time, tokens/s, MFU, per-rank memory, communication exposed
vs hidden).

After the replay (every micro-batch's F, B, W, the TP / EP collectives, the gradient
buckets and ZeRO-3 gathers), each rank runs the optimizer step — memory-bound: the fused
Adam's bytes over HBM bandwidth (:func:`simulator.hybrid.optimizer_seconds`) on its shard
of the parameters — and under ZeRO-1/2 all-gathers the updated 16-bit weights over its
data-parallel group, priced on the cluster's links by
:func:`simulator.collectives.collective_time`. Nothing overlaps these, so they are added
to the rank's last finish: step = max over ranks of (finish + optimizer + gather).

Communication exposed on a rank is the time some collective of the rank runs while its
compute stream is idle (collectives on the compute stream — TP, EP — are exposed by
construction), plus TP communication folded into task times when TP is priced, plus the
ZeRO-1/2 gather; hidden is the rest of its collectives' time. MFU is the model's FLOPs
(the operator graph's F + B + W, without recomputation) per step over the peak of every
device of the layout (Chowdhery et al. 2022, appendix B).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from planner.layouts.build import LINK_REPLAY_EVENTS, LayoutRun, build_layout_run
from simulator.collectives import Collective, collective_time
from simulator.engine import Timeline, replay
from simulator.hybrid import GATHER_BYTES, optimizer_seconds
from simulator.layout import Layout
from simulator.memory_model import rank_memory
from simulator.scenario import Scenario
from simulator.schedule import Schedule

__all__ = ["StepResult", "simulate_layout", "step_result"]


@dataclass(frozen=True)
class StepResult:
    """One layout's training step, in seconds and bytes."""

    name: str
    layout: str
    step: float
    tokens_per_s: float
    mfu: float
    memory_peak: float
    #: Peak rank's memory by component (weights, grads, optimizer from the ZeRO formulas;
    #: activations as replayed; buffers: FSDP's gathered units, recompute's rebuilt layer).
    weights: float
    grads: float
    optimizer: float
    activations: float
    buffers: float
    comm: float
    comm_exposed: float
    comm_hidden: float
    optimizer_step: float
    simulated: str
    note: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def _measure(intervals: list[tuple[float, float]]) -> list[tuple[float, float]]:
    merged: list[list[float]] = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        elif end > start:
            merged.append([start, end])
    return [(a, b) for a, b in merged]


def _outside(comm: list[tuple[float, float]], busy: list[tuple[float, float]]) -> float:
    """Length of ``comm`` (merged) not covered by ``busy`` (merged)."""
    total, j = 0.0, 0
    for start, end in comm:
        covered = 0.0
        while j < len(busy) and busy[j][1] <= start:
            j += 1
        k = j
        while k < len(busy) and busy[k][0] < end:
            covered += min(end, busy[k][1]) - max(start, busy[k][0])
            k += 1
        total += (end - start) - covered
    return total


def _streams(timeline: Timeline) -> dict[str, tuple[list, list, float]]:
    """Per device: merged compute intervals, merged collective intervals, last end."""
    compute: dict[str, list] = {}
    comm: dict[str, list] = {}
    end: dict[str, float] = {}
    for done in timeline.executed:
        target = comm if done.entry.collective is not None else compute
        target.setdefault(done.device, []).append((done.start, done.end))
        if done.entry.collective is None or done.device in end:
            end[done.device] = max(end.get(done.device, 0.0), done.end)
    return {d: (_measure(compute.get(d, [])), _measure(comm.get(d, [])), end.get(d, 0.0)) for d in compute}


def _tail(run: LayoutRun, device: str, units: set[str]) -> tuple[float, float]:
    """(optimizer seconds, ZeRO-1/2 parameter all-gather seconds) of ``device``, which holds ``units``."""
    layout, cluster = run.layout, run.problem.cluster
    names = cluster.device_names
    dense = sum(u.dense_params for u in run.units if u.name in units)
    expert = sum(u.expert_params for u in run.units if u.name in units)
    shard = (dense / (layout.dp * layout.cp) + expert / layout.expert_dp) if layout.zero >= 1 else dense + expert
    gather = 0.0
    if layout.zero in (1, 2):
        rank = names.index(device)
        for token, params in (("dp-cp", dense), ("expert-dp", expert)):
            group = next(g for g in layout.groups(token) if rank in g)
            if len(group) > 1 and params:
                gather += collective_time(Collective("all_gather", tuple(names[r] for r in group), GATHER_BYTES * params), cluster)
    return optimizer_seconds(shard, cluster.by_name[device]), gather


def _units_on(run: LayoutRun) -> dict[str, set[str]]:
    groups = {op.name: op.group for op in run.problem.graph.operators}
    out: dict[str, set[str]] = {}
    for device, entry in run.schedule.entries():
        for task in entry.tasks:
            out.setdefault(device, set()).add(groups[task.op])
    return out


def _model_flops(scenario: Scenario, layout: Layout) -> float:
    """FLOPs of one step: the graph's F + B + W per micro-batch times the global micro-batches."""
    per_mb = sum(sum(op.flops.get(k, 0.0) for k in ("F", "B", "W")) for op in scenario.problem.graph.operators)
    return per_mb * layout.global_batch_size / layout.micro_batch_size


def step_result(run: LayoutRun, timeline: Timeline, name: str) -> StepResult:
    """Reduce one replay of ``run`` to a :class:`StepResult`."""
    streams = _streams(timeline)
    held = _units_on(run)
    finish = {}
    for device, (_, _, end) in streams.items():
        optimizer, gather = _tail(run, device, held.get(device, set()))
        finish[device] = (end + optimizer + gather, optimizer, gather)
    device = max(finish, key=lambda d: finish[d][0])
    step, optimizer, gather = finish[device]
    busy, comm, _ = streams[device]
    priced = run.priced_tp.get(device, 0.0)
    comm_total = sum(b - a for a, b in comm) + priced + gather
    exposed = _outside(comm, busy) + priced + gather
    peaks = timeline.memory_peaks()
    fullest = max(run.simulated, key=lambda d: peaks.get(d, (0.0, 0.0))[1])
    peak = peaks.get(fullest, (0.0, 0.0))[1]
    memory = rank_memory(run.shape, run.layout, run.problem.cluster.device_names.index(fullest))
    layout, scenario = run.layout, run.scenario
    devices = run.problem.cluster.devices[: layout.world_size]
    tokens = layout.global_batch_size * run.shape.seq_len
    note = _note(timeline, fullest, peak)
    return StepResult(
        name=name, layout=describe_layout(layout), step=step, tokens_per_s=tokens / step,
        mfu=_model_flops(scenario, layout) / (step * sum(d.peak_flops for d in devices)),
        memory_peak=peak, weights=memory.weights, grads=memory.grads, optimizer=memory.optimizer,
        activations=peak - timeline.static_memory.get(fullest, 0.0), buffers=memory.buffers,
        comm=comm_total, comm_exposed=exposed, comm_hidden=comm_total - exposed, optimizer_step=optimizer,
        simulated=_simulated(run), note=note,
    )


def _note(timeline: Timeline, device: str, peak: float) -> str:
    """The first violation, short (the full sentence is in the timeline)."""
    if not timeline.violations:
        return ""
    first = timeline.violations[0]
    if first.kind == "memory":
        capacity = timeline.problem.cluster.by_name[device].memory_bytes
        return f"over memory: {peak / 1e9:.1f} > {capacity / 1e9:.0f} GB"
    return first.message[:60]


def _simulated(run: LayoutRun) -> str:
    what = f"{len(run.simulated)}/{run.layout.world_size}"
    if run.phantoms:
        what += f" +{len(run.phantoms)} in coll."
    if run.tp_mode == "priced":
        what += ", TP priced"
    if run.collectives == "priced" and run.schedule.collectives:
        what += ", collectives priced"
    return what


def describe_layout(layout: Layout) -> str:
    """``dp8 zero3`` / ``tp8 pp4 sp 1f1b`` — the degrees that are not 1."""
    parts = [f"{axis}{getattr(layout, axis)}" for axis in ("dp", "tp", "pp", "cp", "ep") if getattr(layout, axis) > 1]
    if layout.vpp > 1:
        parts.append(f"vpp{layout.vpp}")
    if layout.sequence_parallel:
        parts.append("sp")
    if layout.zero:
        parts.append(f"zero{layout.zero}")
    if layout.recompute != "none":
        parts.append(f"rc-{layout.recompute}")
    if layout.pp > 1:
        parts.append(layout.schedule)
    return " ".join(parts) or "single"


def simulate_layout(scenario: Scenario, layout: Layout, name: str = "", collectives: str = "auto",
                    event_budget: float = LINK_REPLAY_EVENTS, pipeline: Schedule | None = None) -> StepResult:
    """Build, replay and measure ``layout`` on ``scenario`` (``pipeline`` and collectives as
    :func:`planner.layouts.build.build_layout_run` takes them)."""
    run = build_layout_run(scenario, layout, name, pipeline=pipeline, collectives=collectives, event_budget=event_budget)
    return step_result(run, replay(run.problem, run.schedule), name or describe_layout(layout))
