"""The lower level on a chosen layout: one pipeline replica's stage passes, and the
data-parallel communication their order controls, scheduled by the scheduling MIP and
judged by the layout's replay.

**Modelled** (a stage-level problem, one task per stage, micro-batch and pass):

- every stage's F, B and W on its pipeline rank's compute stream, each lasting the sum of
  its units' seconds plus their TP all-reduces (or reduce-scatter + all-gather), EP
  all-to-alls and CP exchanges priced on an idle cluster
  (:class:`planner.search.bounds.LayoutCosts`, :func:`simulator.collectives.collective_time`):
  they run on the compute stream in the replay too;
- the point-to-point activation / gradient transfers between stages on the real pipeline
  ranks' devices (the residual stream of the stage's last unit, over the cluster's routes);
- memory: each rank's model states and buffers (:func:`planner.search.bounds.static_bytes`,
  from :func:`simulator.memory_model.rank_memory`) as static bytes, each stage's
  activations held from its F to its B (what W needs until W) — the limit is the device's
  capacity;
- **gradient reduction**: per rank and stage, a comm-stream task of the stage's gradients
  reduced over the ``dp x cp`` group (and expert gradients over the expert data-parallel
  group) that starts only after the stage's last W (ZeRO-0/1: once per step, gradient
  accumulation) or after each micro-batch's W (ZeRO-2/3 reduce every micro-batch): the
  order of the last Ws decides how much of it the remaining compute hides;
- **ZeRO-3 parameter gathers**, optional (``stage_model(..., gathers=True)``): per rank,
  stage, micro-batch and pass (F, B), a comm-stream task gathering the stage's weights,
  which the pass may overlap except for its first unit's share (an arc with a negative
  lag: FSDP prefetches unit by unit). Off by default: a stage-level gather queues behind
  the stage-level reduce-scatters on the one comm stream where the replay interleaves
  them unit by unit, so the model overstated the built-in's step (LLaMA-2-7B dp4 pp2
  ZeRO-3 DualPipe: 2935 ms against 2701 ms replayed; 70B tp4 pp2: 18.2 s against 14.6 s)
  and CP-SAT's orders replayed slower than those found without them (7B interleaved:
  2774 against 2705 ms; the built-in 2810 ms).

**Left to the replay**: ZeRO-3 gathers (by default), bucket sizes (units grouped into
25 MiB / Megatron buckets and launched as each fills, not at the stage's end), link
contention (transfers are lags, not link occupancy: on slow links the model is
optimistic), the optimizer step and ZeRO-1/2 weight gather after the last task, and
unit-level memory.

**Warm start**: the shortest order, in this model, among the built-in schedules that place
the stages as the layout's own does and fit in memory (1F1B, ZB-H1, ZB-H2 and GPipe share a
chain, so a 1F1B layout may start from ZB-H2's order; the output names it).

**Engines**: :func:`planner.mip.lower.solve_schedule` (CP-SAT as primal heuristic, then the
CVXPY + HiGHS MIP for the bound); when that MIP is too large for the time given (its own
guard: e.g. 128 micro-batches on 8 virtual stages), CP-SAT alone
(:func:`planner.mip.cpsat.solve_order`) from the same warm start. The solved compute order becomes the
layout's stage-level pipeline schedule (:func:`planner.layouts.build.build_layout_run`
expands it, adding the same communication); the replay is the judge: the order is kept
only when its replayed step is shorter than the built-in schedule's.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from functools import cached_property

from planner.layouts.build import pipeline_schedule, shape_of
from planner.layouts.step import StepResult, simulate_layout
from planner.mip.cpsat import cpsat_available, solve_order
from planner.mip.lower import LowerLevelResult, ScheduleSettings, solve_schedule
from planner.schedules import SCHEDULES
from planner.search.bounds import LayoutCosts, static_bytes
from planner.search.context import with_micro_batch_size
from planner.search.evaluate import SEARCH_REPLAY_EVENTS
from planner.taskgraph import Arc, TaskGraph
from simulator.collectives import Collective, collective_time
from simulator.errors import OpplanError
from simulator.graph import Edge, Operator, OperatorGraph
from simulator.hybrid import GATHER_BYTES, Unit, model_units, stage_units
from simulator.layout import Layout
from simulator.memory_model import GRAD_BYTES
from simulator.problem import Problem, Task, Workload
from simulator.scenario import Scenario
from simulator.schedule import Entry, Schedule

__all__ = ["LowerOutcome", "StageModel", "improve_layout", "replay_pipeline", "stage_model"]


@dataclass(frozen=True)
class _StageGraph(TaskGraph):
    """A :class:`TaskGraph` of the stage problem's compute tasks plus the comm-stream tasks
    (``kept``), with the arcs the per-micro-batch data flow cannot express (``extra``:
    every W of a stage before its reduction; a gather before its pass, with a lag)."""

    kept: tuple[Task, ...] = ()
    extra: tuple[tuple[Task, Task, float], ...] = ()

    @cached_property
    def tasks(self) -> tuple[Task, ...]:
        return self.kept

    @cached_property
    def arcs(self) -> tuple[Arc, ...]:
        index, out, by_name = self.index, [], self.problem.graph.by_name
        for j, task in enumerate(self.tasks):
            if by_name[task.op].stream == "comm":  # comm tasks wait only for their extra arcs
                continue
            for dep in self.problem.dependencies(task):
                i = index.get(dep.pred)
                if i is not None:
                    out.append(Arc(i, j, self.problem.transfer_time(self.device_of[dep.pred], self.device_of[task], dep.bytes)))
        out += [Arc(index[src], index[dst], lag) for src, dst, lag in self.extra]
        return tuple(out)


@dataclass(frozen=True)
class StageModel:
    """One pipeline replica's stage problem, its built-in order, and where its ranks are."""

    graph: _StageGraph
    #: The warm start: the order of the shortest built-in schedule with the layout's placement
    #: that fits in memory (the layout's own when none does), and its name.
    warm: dict[tuple[str, str], list[int]]
    warm_name: str
    #: Real device of each pipeline rank -> the device the stage-level schedule names it by.
    generator: dict[str, str]
    limits: dict[str, float]


def _price(scenario: Scenario, layout: Layout, op: str, token: str, rank: int, size: float) -> float:
    names = scenario.problem.cluster.device_names
    group = next(g for g in layout.groups(token) if rank in g)
    if len(group) == 1 or size <= 0:
        return 0.0
    return collective_time(Collective(op, tuple(names[r] for r in group), size), scenario.problem.cluster)


def _passes(costs: LayoutCosts, scenario: Scenario, layout: Layout, units: tuple[int, ...]) -> dict[str, float]:
    """Seconds of one stage's F, B, W with the collectives its units run on the compute stream (TP, CP
    and EP: :attr:`planner.search.bounds.LayoutCosts.passes` prices all three)."""
    return {k: sum(costs.passes[u][k] for u in units) for k in ("F", "B", "W")}


def _reduce_seconds(scenario: Scenario, layout: Layout, units: list[Unit], rank: int) -> float:
    """The stage's gradients reduced once (dense over ``dp x cp``, experts over expert-DP), unit by unit."""
    op = "all_reduce" if layout.zero < 2 else "reduce_scatter"
    return sum(_price(scenario, layout, op, "dp-cp", rank, GRAD_BYTES * u.dense_params)
               + _price(scenario, layout, op, "expert-dp", rank, GRAD_BYTES * u.expert_params) for u in units)


def _gather_seconds(scenario: Scenario, layout: Layout, units: list[Unit], rank: int) -> list[float]:
    return [_price(scenario, layout, "all_gather", "dp-cp", rank, GATHER_BYTES * u.dense_params) for u in units]


def _compute_ops(scenario: Scenario, layout: Layout, costs: LayoutCosts, stages, held: dict[int, set[int]]) -> list[Operator]:
    """One operator per stage: its passes, activations and its ranks' static bytes (a rank's
    states shared by the stages it holds; a stage on two ranks, as in DualPipe, takes the larger share)."""
    shape = shape_of(scenario)
    share: dict[int, float] = {}
    for r, mine in held.items():
        states = static_bytes(shape, layout, r)
        for k in mine:
            share[k] = max(share.get(k, 0.0), states / len(mine))
    ops = []
    for k, units in enumerate(stages):
        members = [costs.units[u] for u in units]
        ops.append(Operator(f"s{k}", measured={"*": _passes(costs, scenario, layout, units)}, static_bytes=share.get(k, 0.0),
                            activation_bytes=sum(u.activation_bytes for u in members),
                            w_retained_bytes=sum(u.w_retained_bytes for u in members), group=f"s{k}"))
    return ops


def _comm_ops(scenario: Scenario, layout: Layout, costs: LayoutCosts, stages, held: dict[int, set[int]],
              gathers: bool) -> list[tuple]:
    """(operator, pipeline rank, stage, kind of link) of every comm-stream task family."""
    out: list[tuple] = []
    reduce = layout.dp * layout.cp > 1 or layout.expert_dp > 1
    for r, mine in sorted(held.items()):
        rank = layout.rank_of(pp=r)
        for k in sorted(mine):
            members = [costs.units[u] for u in stages[k]]
            if not members:
                continue
            if reduce:
                seconds = _reduce_seconds(scenario, layout, members, rank)
                out.append((Operator(f"dp.s{k}.r{r}", measured={"*": {"W": seconds}}, stream="comm"), r, k, "reduce"))
            if gathers and layout.zero == 3 and layout.dp * layout.cp > 1:
                each = _gather_seconds(scenario, layout, members, rank)
                op = Operator(f"ag.s{k}.r{r}", measured={"*": {"F": sum(each), "B": sum(each)}}, stream="comm")
                out.append((op, r, k, ("gather", sum(each) - each[0], sum(each) - each[-1])))
    return out


def _comm_tasks(family: tuple, placed: dict[Task, int], zero: int) -> tuple[list[Task], list[tuple]]:
    """The kept tasks of one comm family and their extra arcs (src, dst, lag)."""
    op, r, k, what = family
    mbs = sorted({t.mb for t, rank in placed.items() if rank == r and t.op == f"s{k}" and t.kind == "F"})
    tasks: list[Task] = []
    arcs: list[tuple] = []
    if what == "reduce":
        for mb in mbs:
            target = Task(op.name, mb if zero >= 2 else 0, "W")
            if target not in tasks:
                tasks.append(target)
            arcs.append((Task(f"s{k}", mb, "W"), target, 0.0))
        return tasks, arcs
    _, ahead_f, ahead_b = what
    for mb in mbs:
        for kind, ahead in (("F", ahead_f), ("B", ahead_b)):
            tasks.append(Task(op.name, mb, kind))
            arcs.append((Task(op.name, mb, kind), Task(f"s{k}", mb, kind), -ahead))
    return tasks, arcs


def stage_model(scenario: Scenario, layout: Layout, *, gathers: bool = False) -> StageModel:
    """The stage-level problem of ``layout``'s pipeline replica (``scenario`` at the layout's
    micro-batch size), warm-started by the layout's built-in schedule; ``gathers`` adds the
    ZeRO-3 parameter gathers (off by default: see the module's docstring)."""
    cluster, names = scenario.problem.cluster, scenario.problem.cluster.device_names
    shape = shape_of(scenario)
    costs = LayoutCosts(model_units(scenario.problem.graph, shape, layout, cluster.devices[0]), layout, cluster)
    stages = stage_units(layout, len(shape.layers))
    builtin = pipeline_schedule(scenario, layout)
    placed = {task: names.index(device) for task, device in builtin.placement().items()}
    held: dict[int, set[int]] = {}
    for task, r in placed.items():
        held.setdefault(r, set()).add(int(task.op[1:]))
    compute = _compute_ops(scenario, layout, costs, stages, held)
    families = _comm_ops(scenario, layout, costs, stages, held, gathers)
    flat = [u for units in stages for u in units]
    sent = [costs.units[flat[sum(map(len, stages[:k + 1])) - 1]].stream_bytes if sum(map(len, stages[:k + 1])) else 0.0
            for k in range(len(stages) - 1)]  # the residual stream out of the last unit so far (a stage may hold none)
    edges = tuple(Edge(f"s{k}", f"s{k + 1}", sent[k]) for k in range(len(stages) - 1))
    graph = OperatorGraph(f"{scenario.name}-stages", tuple(compute + [f[0] for f in families]), edges)
    problem = Problem(graph, cluster, Workload(layout.micro_batches, fb_overlap=scenario.problem.workload.fb_overlap))
    real = {r: names[layout.rank_of(pp=r)] for r in held}
    device_of = {t: real[placed[t]] for t in problem.tasks() if t in placed}
    kept, extra = [t for t in problem.tasks() if t in placed], []
    for family in families:
        device_of.update({t: real[family[1]] for t in problem.tasks() if t.op == family[0].name})
        tasks, arcs = _comm_tasks(family, placed, layout.zero)
        kept += tasks
        extra += arcs
    stage_graph = _StageGraph(problem, device_of, tuple(kept), tuple(extra))
    generator = {real[r]: names[r] for r in held}
    limits = {d: cluster.by_name[d].memory_bytes for d in stage_graph.devices}
    warm = _warm_order(stage_graph, builtin, generator)
    name, order = min(_same_placement(scenario, layout, stage_graph, generator, limits),
                      key=lambda found: found[2], default=(layout.schedule, warm, math.inf))[:2]
    return StageModel(stage_graph, order, name, generator, limits)


def _same_placement(scenario: Scenario, layout: Layout, graph: _StageGraph, generator: dict[str, str],
                    limits: dict[str, float]) -> list[tuple[str, dict, float]]:
    """(name, order, stage-model makespan) of every built-in schedule that places the stages as
    ``layout``'s own does (1F1B, ZB-H1, ZB-H2 and GPipe share a chain) and fits in memory."""
    out = []
    for name in SCHEDULES:
        try:
            builtin = pipeline_schedule(scenario, replace(layout, schedule=name))
        except (OpplanError, ValueError):
            continue
        placement = builtin.placement()
        compute = [t for t in graph.tasks if t.op.startswith("s")]
        if len(placement) != len(compute) or any(placement.get(t) != generator[graph.device_of[t]] for t in compute):
            continue
        order = _warm_order(graph, builtin, generator)
        if _within_memory(graph, order, limits):
            out.append((name, order, graph.makespan(graph.left_shift(order))))
    return out


def _within_memory(graph: _StageGraph, order, limits: dict[str, float]) -> bool:
    """Each device's bytes, its compute stream run in ``order``, stay within its limit."""
    delta = graph.memory_delta()
    for (device, _), members in order.items():
        level = graph.static_memory[device]
        for t in members:
            if level + delta[t][0] > limits[device] * (1 + 1e-9):
                return False
            level += delta[t][0] - delta[t][1]
    return True


def _warm_order(graph: _StageGraph, builtin: Schedule, generator: dict[str, str]) -> dict[tuple[str, str], list[int]]:
    """The built-in schedule's order on each compute stream; on each comm stream, every task
    right after the last compute task it waits for, or right before the first that waits for it."""
    order: dict[tuple[str, str], list[int]] = {key: [] for key in graph.streams}
    back = {g: real for real, g in generator.items()}
    position: dict[int, float] = {}
    for device, entry in builtin.entries():
        for task in entry.tasks:
            i = graph.index[task]
            position[i] = len(order[back[device], "compute"])
            order[back[device], "compute"].append(i)
    for key, members in graph.streams.items():
        if key[1] == "compute":
            continue

        def at(t: int) -> float:
            before = [position[a.src] for a in graph.preds[t] if a.src in position]
            return max(before) + 0.5 if before else min(position[a.dst] for a in graph.succs[t]) - 0.5
        order[key] = sorted(members, key=lambda t: (at(t), t))
    return order


def _as_pipeline(model: StageModel, order) -> Schedule:
    """The solved compute order as the stage-level schedule the layout replay expands."""
    graph = model.graph
    devices = {model.generator[device]: tuple(Entry((graph.tasks[i],)) for i in members)
               for (device, stream), members in order.items() if stream == "compute"}
    return Schedule(devices=devices, name="lower level", meta={"generator": "planner.search.lower"})


def replay_pipeline(scenario: Scenario, layout: Layout, pipeline: Schedule | None, name: str = "") -> StepResult:
    """One replayed step of ``layout`` with ``pipeline`` as its stage-level schedule (None: the built-in),
    in the search's collective mode so the warm and improved steps compare like for like."""
    return simulate_layout(scenario, layout, name or "lower level", event_budget=SEARCH_REPLAY_EVENTS, pipeline=pipeline)


@dataclass(frozen=True)
class LowerOutcome:
    """The lower level on one layout: the stage model's warm start and answer, and both replays."""

    layout: Layout
    warm_step: float  # replayed step with the built-in schedule
    step: float  # replayed step with the lower level's order (inf: none found or refused)
    result: StepResult | None  # that replay, when it is shorter than the built-in's and within memory
    engine: str  # which engine found the order: "cp-sat", "mip neighbourhood search", "mip" or "warm start (<built-in> order)"
    model_warm: float  # the stage model's makespan of the warm start
    model_makespan: float
    model_bound: float  # the stage model's lower bound (critical path, stream load, solver bound)
    seconds: float
    note: str = ""
    warm_name: str = ""  # the built-in schedule whose order was the warm start
    #: The lower level's stage-level schedule (on the first ``pp`` devices, as the layout replay names them).
    pipeline: Schedule | None = None

    @property
    def kept(self) -> bool:
        return self.result is not None

    @property
    def improvement(self) -> float:
        """Fraction of the built-in's replayed step the lower level saved (0 when not kept)."""
        return 1.0 - self.step / self.warm_step if self.kept else 0.0


def improve_layout(scenario: Scenario, layout: Layout, *, time_limit: float, warm: StepResult | None = None,
                   settings: ScheduleSettings | None = None) -> LowerOutcome:
    """Run the lower level on ``layout`` (``pp > 1``) for about ``time_limit`` seconds of solving,
    then replay its order; ``warm`` is the built-in schedule's replay when already known."""
    began = time.monotonic()
    at_size = with_micro_batch_size(scenario, layout.micro_batch_size)
    warm = warm or replay_pipeline(at_size, layout, None)
    try:
        model = stage_model(at_size, layout)
        warm_span = model.graph.makespan(model.graph.left_shift(model.warm))
        chosen = settings or ScheduleSettings(time_limit=max(time_limit, 0.0))
        lower: LowerLevelResult = solve_schedule(model.graph, chosen, warm_order=model.warm, memory_limit=model.limits)
        order, span, engine = _cpsat_alone(model, lower, began + chosen.time_limit, chosen)
    except OpplanError as exc:
        return LowerOutcome(layout, warm.step, math.inf, None, "none", math.nan, math.nan, math.nan,
                            time.monotonic() - began, f"lower level refused: {exc}")
    improved = span < warm_span - 1e-12
    engine = engine if improved else f"warm start ({model.warm_name} order)"
    done = dict(model_warm=warm_span, model_makespan=span if improved else warm_span, model_bound=lower.lower_bound,
                warm_name=model.warm_name)
    if not improved and model.warm_name == layout.schedule:
        return LowerOutcome(layout, warm.step, warm.step, None, engine, seconds=time.monotonic() - began,
                            note="the built-in order is the lower level's best", **done)
    pipeline = _as_pipeline(model, order if improved else model.warm)
    result = replay_pipeline(at_size, layout, pipeline, f"{warm.name} (lower level)")
    kept = result if not result.note and result.step < warm.step * (1 - 1e-9) else None
    note = "" if kept else (result.note or "its replay is no faster than the built-in's")
    return LowerOutcome(layout, warm.step, result.step, kept, engine, seconds=time.monotonic() - began, note=note,
                        pipeline=pipeline, **done)


#: CP-SAT alone gets this share of what is left, less this many seconds per task for building
#: its model and stopping (what :mod:`planner.mip.lower` allows it too).
CPSAT_SHARE, CPSAT_SECONDS_PER_TASK = 0.8, 4e-3


def _cpsat_alone(model: StageModel, lower: LowerLevelResult, end: float, settings: ScheduleSettings) -> tuple[dict, float, str]:
    """(order, stage-model makespan, engine): the MIP's answer, or — when its model was too large
    to build in the time given — CP-SAT's alone from the same warm start, re-timed exactly and
    checked for memory like the MIP's primal phase does."""
    if not lower.status.startswith("not solved") or not cpsat_available():
        return lower.order, lower.makespan, lower.source
    graph = model.graph
    seconds = CPSAT_SHARE * (end - time.monotonic()) - CPSAT_SECONDS_PER_TASK * len(graph.tasks)
    found = solve_order(graph, model.limits, seconds=seconds, hint=model.warm, seed=settings.seed,
                        workers=settings.cpsat_workers) if seconds > 1.0 else None
    if found is None or not _within_memory(graph, found.order, model.limits):
        return lower.order, lower.makespan, lower.source
    span = graph.makespan(graph.left_shift(found.order))
    return (found.order, span, "cp-sat (alone: the MIP too large)") if span < lower.makespan else (lower.order, lower.makespan,
                                                                                                  lower.source)
