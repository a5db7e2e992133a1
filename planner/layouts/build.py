"""From (scenario, layout) to what the engine replays: a problem of per-rank layer units and
a schedule with the layout's collectives.

1. The model becomes units (:func:`simulator.hybrid.model_units`): the embedding, each
   layer, the head, with one rank's share of the work under TP / CP / EP / recompute.
2. The units are cut into the layout's pipeline (virtual) stages (its ``stage_layers``
   or Megatron's even split; embedding on the first stage, head on the last), and the
   layout's pipeline schedule (1F1B, interleaved, ZB, DualPipe, DualPipeV from
   :mod:`planner.schedules`) is generated on that chain of stages.
3. Each stage task of the generated schedule expands, on every rank of that pipeline
   rank's slice, into the unit tasks in model order (F) or reverse order (B, W), each
   followed by its tensor-parallel collectives on the TP group and its expert-parallel
   all-to-alls on the EP group (compute stream: Megatron blocks on them).
4. Per rank, the comm stream gets the once-per-step data-parallel work
   (:mod:`planner.layouts.dataparallel`): ZeRO-3 parameter all-gathers before every F and
   B of a unit (one ahead), gradient buckets launched when their last W is done.

Scale (issue 10, item 6): every data-parallel replica is replayed when the layout has
at most :data:`FULL_REPLAY_DEVICES` ranks; above that one replica (one pipeline x tensor
x context slice) is replayed in full and the other replicas take part only in the
collectives they share with it (data-parallel reductions and gathers, expert all-to-alls),
so those still run step by step on the real cluster's links. When replaying every TP
all-reduce would cost more than :data:`TP_REPLAY_TRANSFERS` simulated transfers, the TP
ranks of a stage (identical by symmetry) are represented by their first, whose unit
durations include its TP collectives priced by :func:`simulator.collectives.collective_time`
on the real TP group (NVLink inside a node: links no other traffic of the slice uses).

Collectives (``collectives=``): ``links`` replays every collective's steps as transfers
on the real links (exact, contention included); ``priced`` makes every collective a
priced call (:class:`simulator.schedule.CollectiveCall`): it holds its members for its
idle-cluster α–β time on the real group and topology, with no transfers and no phantom
members; ``auto`` (the default) replays links unless that would run more than
``event_budget`` transfers and phantom entries (:func:`link_events`), then prices; on links
it prices the collectives no other traffic can slow (:func:`simulator.contention.uncontended`:
the same replay to float rounding, with one event per such call instead of its transfers).
Priced and links agree exactly when no two transfers share a link; where they do (DP
buckets under pipeline sends on one NIC, two all-to-alls at once), links is slower.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType

from planner.layouts.context import PRICED_GROUP, Context
from planner.layouts.expand import expand_all
from planner.schedules import generate
from simulator.collectives import Collective, collective_steps, collective_time
from simulator.contention import price_calls, uncontended
from simulator.errors import InputError
from simulator.graph import Edge, Operator, OperatorGraph, chain_graph
from simulator.hybrid import Unit, model_units, stage_units
from simulator.layout import Layout
from simulator.memory_model import rank_memory
from simulator.model_shapes import model_shape
from simulator.problem import Problem, Workload
from simulator.scenario import Scenario
from simulator.schedule import Schedule
from simulator.shapes import ModelShape
from simulator.yamlio import Section

__all__ = ["COLLECTIVE_MODES", "FULL_REPLAY_DEVICES", "LINK_REPLAY_EVENTS", "TP_REPLAY_TRANSFERS", "LayoutRun",
           "build_layout_run", "link_events", "pipeline_schedule", "shape_of"]

FULL_REPLAY_DEVICES = 16
TP_REPLAY_TRANSFERS = 300_000
COLLECTIVE_MODES = ("auto", "links", "priced")
#: ``auto`` replays collectives on links up to this many events (:func:`link_events`: about
#: 10 s of replay on one core, ~30 us a transfer), and prices them above.
LINK_REPLAY_EVENTS = 300_000
#: A layout whose replay would run more unit tasks than this is refused (one line) rather
#: than left running for minutes: about 20 s of replay on one core.
MAX_TASKS = 2_000_000


@dataclass(frozen=True)
class LayoutRun:
    """Everything one replay of a layout needs, and what it reduced."""

    scenario: Scenario
    layout: Layout
    shape: ModelShape
    units: tuple[Unit, ...]
    problem: Problem
    schedule: Schedule
    #: Devices that run tasks (the replayed slice), and devices that only join collectives.
    simulated: tuple[str, ...]
    phantoms: tuple[str, ...]
    #: ``replay`` (TP collectives as entries), ``priced`` (folded into unit times) or ``none``.
    tp_mode: str
    dp_replicas: int
    #: Seconds of TP communication folded into each simulated device's task durations.
    priced_tp: Mapping[str, float] = field(default_factory=dict)
    #: How the schedule's collectives replay: ``links`` (steps on links) or ``priced``.
    collectives: str = "links"

    def __post_init__(self) -> None:
        object.__setattr__(self, "priced_tp", MappingProxyType(dict(self.priced_tp)))


def shape_of(scenario: Scenario) -> ModelShape:
    """The model's shape (``transformer``, ``moe``, ``two_tower``); :class:`InputError` for others."""
    kind = str(scenario.model_config.get("type", ""))
    shape = model_shape(kind, Section(dict(scenario.model_config), file=scenario.file or None, path="model"))
    if shape is None:
        raise InputError(f"layouts need a transformer, moe or two_tower model, not {kind!r}", file=scenario.file or None,
                         field="model.type")
    return shape


def _tp_seconds(units: tuple[Unit, ...], layout: Layout, scenario: Scenario) -> dict[tuple[int, str], float]:
    """Idle-cluster seconds of each unit's TP collectives per pass, on the first TP group."""
    cluster = scenario.problem.cluster
    group = tuple(cluster.device_names[r] for r in layout.groups("tp")[0])
    prices: dict[tuple[str, float], float] = {}
    out = {}
    for i, unit in enumerate(units):
        for kind, calls in (("F", unit.tp_forward), ("B", unit.tp_backward)):
            total = 0.0
            for op, size in calls:
                if (op, size) not in prices:
                    prices[op, size] = collective_time(Collective(op, group, size), cluster)
                total += prices[op, size]
            out[i, kind] = total
    return out


def _modes(units: tuple[Unit, ...], layout: Layout) -> tuple[str, int]:
    """(TP mode, replicas replayed) for this layout's size."""
    replicas = layout.dp if layout.world_size <= FULL_REPLAY_DEVICES else 1
    if layout.tp == 1:
        return "none", replicas
    calls = layout.micro_batches * sum(len(u.tp_forward) + len(u.tp_backward) for u in units) * replicas * layout.cp
    transfers = calls * 2 * (layout.tp - 1) * layout.tp
    return ("replay" if transfers <= TP_REPLAY_TRANSFERS else "priced"), replicas


def pipeline_schedule(scenario: Scenario, layout: Layout) -> Schedule:
    """The layout's pipeline schedule generated on a chain of ``layout.stages`` stages."""
    problem = scenario.problem
    chain = chain_graph(f"{scenario.name}-stages", layout.stages, {"F": 1.0, "B": 1.0, "W": 1.0})
    stand_in = Scenario(name=scenario.name, problem=Problem(chain, problem.cluster, Workload(layout.micro_batches)),
                        file=scenario.file)
    options = {"chunks": layout.vpp} if layout.schedule == "interleaved-1f1b" else {}
    try:
        return generate(layout.schedule, stand_in, **options)
    except InputError as exc:
        raise InputError(f"{layout.schedule}: {exc.message}", file=scenario.file or None, field="parallel.schedule") from None


def _operators(ctx: Context, shape: ModelShape, tp_prices: Mapping) -> tuple[Operator, ...]:
    """One operator per unit and replayed copy; static memory = the rank's model states and
    buffers (:func:`simulator.memory_model.rank_memory`) shared evenly by the units it holds."""
    static: dict[int, float] = {}
    for r, stages in ctx.stages_on_rank.items():
        memory = rank_memory(shape, ctx.layout, ctx.layout.rank_of(pp=r))
        held = sorted({u for k in stages for u in ctx.stages[k]})
        for u in held:
            static.setdefault(u, (memory.total - memory.activations) / len(held))
    priced = ctx.tp_mode == "priced"
    ops = []
    for copy in ctx.copies:
        for i, unit in enumerate(ctx.units):
            times = {k: unit.seconds[k] + (tp_prices.get((i, k), 0.0) if priced else 0.0) for k in ("F", "B", "W")}
            ops.append(Operator(ctx.op_name(i, copy), measured={"*": times}, static_bytes=static.get(i, 0.0),
                                activation_bytes=unit.activation_bytes, w_retained_bytes=unit.w_retained_bytes,
                                params=unit.params, group=unit.name))
    return tuple(ops)


def _graph(ctx: Context, operators: tuple[Operator, ...], name: str) -> OperatorGraph:
    edges = [Edge(ctx.op_name(i, copy), ctx.op_name(i + 1, copy), unit.stream_bytes)
             for copy in ctx.copies for i, unit in enumerate(ctx.units[:-1])]
    return OperatorGraph(name=name, operators=operators, edges=tuple(edges))


def build_layout_run(scenario: Scenario, layout: Layout, name: str = "", pipeline: Schedule | None = None,
                     collectives: str = "auto", event_budget: float = LINK_REPLAY_EVENTS) -> LayoutRun:
    """The problem and schedule that replay ``layout`` on ``scenario``'s model and cluster; ``pipeline``
    (a stage-level schedule on the first ``pp`` devices) replaces the layout's built-in one; its
    collectives on links or priced (``collectives``: ``auto``, ``links``, ``priced``)."""
    if collectives not in COLLECTIVE_MODES:
        raise ValueError(f"collectives must be one of {COLLECTIVE_MODES}, not {collectives!r}")
    if collectives == "links":
        return _build(scenario, layout, name, pipeline, priced=False)
    priced = _build(scenario, layout, name, pipeline, priced=True)
    if collectives == "priced" or link_events(priced, frozenset(priced.schedule.collectives)) > event_budget:
        return priced  # even with every call exact-priced, the phantom members alone are over budget
    if link_events(priced, uncontended(priced.problem, priced.schedule)) > event_budget:
        return priced
    links = _build(scenario, layout, name, pipeline, priced=False)
    return replace(links, schedule=price_calls(links.schedule, uncontended(links.problem, links.schedule)))


def link_events(run: LayoutRun, exact: frozenset[str] = frozenset()) -> int:
    """What replaying ``run``'s collectives on links costs, in replay events: every
    point-to-point transfer of every step (one for a stand-in: a group of
    :data:`PRICED_GROUP` or more ranks with one replayed member, and for a call in
    ``exact``, priced since nothing contends with it), plus one entry per member outside
    the replayed slice (a phantom device's place in the call)."""
    simulated = set(run.simulated)
    cluster = run.problem.cluster
    sizes: dict[Collective, int] = {}
    total = 0
    for call in run.schedule.collectives.values():
        c = call.collective
        inside = sum(d in simulated for d in c.group)
        total += len(c.group) - inside
        if call.name in exact or (len(c.group) >= PRICED_GROUP and inside == 1):
            total += 1
            continue
        if c not in sizes:
            sizes[c] = sum(len(step) for step in collective_steps(c, cluster))
        total += sizes[c]
    return total


def _build(scenario: Scenario, layout: Layout, name: str, pipeline: Schedule | None, priced: bool) -> LayoutRun:
    """The run with every collective on links, or every collective priced."""
    shape = shape_of(scenario)
    units = model_units(scenario.problem.graph, shape, layout, scenario.problem.cluster.devices[0])
    tp_mode, replicas = _modes(units, layout)
    copies = replicas * layout.cp * (layout.tp if tp_mode != "priced" else 1)
    tasks = 3 * len(units) * layout.micro_batches * copies
    if scenario.problem.workload.mode != "training" or tasks > MAX_TASKS:
        why = "layouts replay training steps" if tasks <= MAX_TASKS else f"{tasks:,} tasks to replay (at most {MAX_TASKS:,})"
        raise InputError(why, file=scenario.file or None, field="workload.mode" if tasks <= MAX_TASKS else "parallel")
    pipeline = pipeline or pipeline_schedule(scenario, layout)
    ctx = Context(layout, units, stage_units(layout, len(shape.layers)), scenario.problem.cluster.device_names, tp_mode,
                  replicas, pipeline, scenario.problem.cluster, priced)
    cluster = scenario.problem.cluster
    tp_prices = _tp_seconds(units, layout, scenario) if tp_mode == "priced" else {}
    operators = _operators(ctx, shape, tp_prices)
    problem = Problem(_graph(ctx, operators, f"{scenario.name}-{name or 'layout'}"), cluster,
                      Workload(layout.micro_batches, fb_overlap=scenario.problem.workload.fb_overlap))
    lists, phantoms = expand_all(ctx)
    schedule = Schedule.from_lists(lists, name=name or layout.schedule,
                                   meta={"generator": "planner.layouts", "tp": tp_mode, "collectives": "priced" if priced else "links"})
    priced_tp = {d: _priced_total(ctx, tp_prices, d) for d in ctx.simulated} if tp_prices else {}
    return LayoutRun(scenario, layout, shape, units, problem, schedule, ctx.simulated, phantoms, tp_mode, replicas,
                     priced_tp, "priced" if priced else "links")


def _priced_total(ctx: Context, tp_prices: Mapping, device: str) -> float:
    """Seconds of priced TP communication inside ``device``'s tasks over the step."""
    stages = ctx.stages_on_rank[ctx.layout.coordinate(ctx.names.index(device), "pp")]
    units = {u for k in stages for u in ctx.stages[k]}
    per_mb = sum(tp_prices.get((u, k), 0.0) for u in units for k in ("F", "B"))
    direction = 2 if ctx.layout.schedule == "dualpipe" else 1
    return per_mb * ctx.layout.micro_batches / direction
