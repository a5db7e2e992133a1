"""The bi-level planner: place (upper level), then order and time (lower level).

1. **Candidates** (upper level). For a pipeline (a chain of stages): the stage-to-device
   patterns of hand-made schedules (chain, interleaved, bidirectional, V) and the
   placement of every applicable built-in schedule. For any graph: placements from the
   placement MIP on the coarsened graph (:mod:`planner.mip.upper`) at several weights of
   communication against load, each new one excluded from the next solve, and the best
   contiguous chain partition (what a pipeline split by hand would do).
2. **Evaluation**. Each candidate is scheduled by memory-aware list scheduling
   (:mod:`planner.heuristics`), and built-in schedules count with their own order. This
   is the lower level's quick answer; the best candidate goes on.
3. **Lower level**. The scheduling MIP (:mod:`planner.mip.lower`) on the best candidate,
   warm-started with its best known order, improves it within the time left and proves a
   lower bound (max of critical path, per-device load, and the solver's bound).
4. **Check**. The schedule is replayed by the simulator; its makespan must equal the
   MIP's timing of the same order whenever transfers do not contend for links.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from planner.heuristics import best_list_schedule
from planner.memory import memory_limits
from planner.mip.lower import LowerLevelResult, Progress, solve_schedule
from planner.mip.upper import solve_placement
from planner.placements import by_operator, contiguous_partitions, pipeline_placements
from planner.taskgraph import TaskGraph
from simulator.coarsen import chain_groups, coarsen
from simulator.engine import Timeline, replay
from simulator.errors import InfeasibleError, OpplanError
from simulator.problem import Task
from simulator.scenario import Scenario
from simulator.schedule import Schedule

__all__ = ["Candidate", "PlanResult", "plan"]


@dataclass(frozen=True)
class Candidate:
    """A placement and the best order known for it (makespan from the heuristic or a built-in)."""

    name: str
    device_of: Mapping[Task, str]
    makespan: float
    order_source: str
    order: Mapping[tuple[str, str], list[int]] | None = None


@dataclass(frozen=True)
class PlanResult:
    schedule: Schedule
    timeline: Timeline
    placement: str
    lower: LowerLevelResult
    candidates: tuple[tuple[str, float, str], ...]
    memory_limit: Mapping[str, float]
    warm_start: str
    seconds: float
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def makespan(self) -> float:
        """The simulator's makespan of the planned schedule."""
        return self.timeline.makespan


def _check_fits(scenario: Scenario, limits: Mapping[str, float]) -> None:
    """Fail early, and say by how much, when an operator cannot fit on any device."""
    largest = max(limits.values())
    for op in scenario.problem.graph.operators:
        need = op.static_bytes + op.activation_bytes + op.workspace_bytes
        if need > largest:
            raise InfeasibleError(
                f"operator {op.name!r} needs {need / 1e9:.4g} GB (weights, optimizer state, one micro-batch of"
                f" activations) but the largest device memory limit is {largest / 1e9:.4g} GB:"
                f" short by {(need - largest) / 1e9:.4g} GB",
                file=scenario.file,
                field="objective.memory_limit_gb" if scenario.objective.memory_limit_bytes else "cluster",
            )


def _builtin_candidates(scenario: Scenario, limits: Mapping[str, float]) -> list[tuple[str, Schedule]]:
    """Applicable built-in schedules that replay cleanly within the memory limit."""
    from planner import schedules as builtins

    out = []
    for name, reason in builtins.available(scenario).items():
        if reason is not None:
            continue
        try:
            schedule = builtins.generate(name, scenario)
            timeline = replay(scenario.problem, schedule)
        except OpplanError:
            continue
        if timeline.violations:
            continue
        peaks = {d: level for d, (_, level) in timeline.memory_peaks().items()}
        if all(peaks[d] <= limits[d] * (1 + 1e-9) for d in peaks):
            out.append((name, schedule))
    return out


#: Up to this many operators the placement MIP decides every operator on its own.
OPERATOR_LEVEL_LIMIT = 200


def _placement_groups(graph) -> dict[str, str]:
    """Operator level when small enough (branches stay free to spread: experts, towers);
    else the model's own groups (layers, experts of a layer); else contiguous chunks."""
    if len(graph.operators) <= OPERATOR_LEVEL_LIMIT:
        return {op.name: op.name for op in graph.operators}
    labelled = {op.name: op.group or op.name for op in graph.operators}
    if len(set(labelled.values())) <= OPERATOR_LEVEL_LIMIT:
        return labelled
    return chain_groups(graph, OPERATOR_LEVEL_LIMIT)


def _upper_level_placements(scenario: Scenario, limits: Mapping[str, float], budget: float) -> list[tuple[str, dict[Task, str]]]:
    """Placements from the placement MIP on the coarsened graph, plus the chain partition."""
    problem = scenario.problem
    graph = problem.graph
    devices = list(problem.cluster.device_names)
    out: list[tuple[str, dict[Task, str]]] = [("chain-partition", by_operator(problem, contiguous_partitions(problem, len(devices))))]
    if len(devices) == 1:
        return out
    coarsening = coarsen(graph, _placement_groups(graph))
    began = time.monotonic()
    seen: list[dict[str, str]] = []
    for weight in (0.0, 0.5, 1.0, 2.0):
        left = budget - (time.monotonic() - began)
        if left <= 0.5:
            break
        found = solve_placement(
            problem, coarsening, devices=devices, memory_limit=limits, comm_weight=weight, exclude=seen, time_limit=left
        )
        if found is None:
            continue
        seen.append(dict(found.groups))
        out.append((f"placement-mip(w={weight:g})", by_operator(problem, coarsening.expand_placement(found.groups))))
    return out


def plan(
    scenario: Scenario,
    *,
    time_limit: float | None = None,
    memory_limit_bytes: float | None = None,
    objective: str | None = None,
    formulation: str = "tight",
    progress: Callable[[Progress], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> PlanResult:
    """Plan ``scenario``: the best schedule found within ``time_limit`` seconds, certified."""
    began = time.monotonic()
    say = log or (lambda message: None)
    problem = scenario.problem
    budget = time_limit if time_limit is not None else scenario.objective.time_limit_s
    goal = objective or scenario.objective.minimize
    limits = memory_limits(scenario, memory_limit_bytes)
    _check_fits(scenario, limits)

    # 1. candidates ---------------------------------------------------------------------------
    raw: list[tuple[str, dict[Task, str], Schedule | None]] = []
    for name, schedule in _builtin_candidates(scenario, limits):
        raw.append((f"{name} (built-in)", schedule.placement(), schedule))
    for name, placement in pipeline_placements(problem).items():
        raw.append((name, placement, None))
    if not problem.graph.is_chain:
        raw.extend((name, placement, None) for name, placement in _upper_level_placements(scenario, limits, 0.2 * budget))
    say(f"upper level: {len(raw)} candidate placements")

    # 2. evaluation -----------------------------------------------------------------------------
    candidates: list[Candidate] = []
    graphs: dict[str, TaskGraph] = {}
    for name, placement, schedule in raw:
        graph = TaskGraph(problem, placement)
        graphs[name] = graph
        best: Candidate | None = None
        if schedule is not None:
            order = graph.order_from_schedule(schedule)
            try:
                span = graph.makespan(graph.left_shift(order))
                best = Candidate(name, placement, span, "built-in order", order)
            except InfeasibleError:
                best = None
        heuristic = best_list_schedule(graph, memory_limit=limits, seeds=0)
        if heuristic is not None and (best is None or heuristic.makespan < best.makespan - 1e-12):
            best = Candidate(name, placement, heuristic.makespan, f"list scheduling ({heuristic.rule}, heuristic)", heuristic.order)
        if best is not None:
            candidates.append(best)
            say(f"  {name}: {best.makespan * 1e3:.6g} ms ({best.order_source})")
        else:
            say(f"  {name}: no schedule within the memory limit")
    if not candidates:
        tightest = min(limits, key=limits.get)
        raise InfeasibleError(
            f"no placement fits the memory limit ({limits[tightest] / 1e9:.4g} GB on {tightest}):"
            " every candidate runs out of memory even when scheduled one micro-batch at a time",
            file=scenario.file,
            field="objective.memory_limit_gb",
        )
    candidates.sort(key=lambda c: (c.makespan, c.name))
    chosen = candidates[0]
    graph = graphs[chosen.name]

    # 3. lower level ---------------------------------------------------------------------------
    remaining = max(1.0, budget - (time.monotonic() - began))
    say(f"lower level: scheduling MIP on {chosen.name!r}, warm start {chosen.makespan * 1e3:.6g} ms ({chosen.order_source})")
    lower = solve_schedule(
        graph,
        warm_order=chosen.order,
        memory_limit=limits,
        objective="memory" if goal == "memory" else "makespan",
        time_limit=remaining,
        formulation=formulation,
        progress=progress,
    )
    notes = []
    if lower.source == "warm start":
        notes.append(f"the MIP found no better order in time: the schedule is the warm start ({chosen.order_source})")

    # 4. check -----------------------------------------------------------------------------------
    schedule = graph.to_schedule(
        lower.order,
        name=f"opplan plan ({chosen.name})",
        meta={
            "planner": "bi-level MIP (CVXPY + HiGHS)",
            "placement": chosen.name,
            "warm_start": chosen.order_source,
            "source": lower.source,
            "mip_makespan_s": lower.makespan,
            "lower_bound_s": lower.lower_bound,
            "gap": lower.gap,
        },
    )
    timeline = replay(problem, schedule)
    if timeline.violations:
        raise InfeasibleError("the planned schedule failed its replay: " + timeline.violations[0].message, file=scenario.file)
    return PlanResult(
        schedule=schedule,
        timeline=timeline,
        placement=chosen.name,
        lower=lower,
        candidates=tuple((c.name, c.makespan, c.order_source) for c in candidates),
        memory_limit=limits,
        warm_start=chosen.order_source,
        seconds=time.monotonic() - began,
        notes=tuple(notes),
    )
