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

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

from planner.capacity import check_memory_fits
from planner.heuristics import best_list_schedule
from planner.memory import memory_limits
from planner.mip.lower import LowerLevelResult, Progress, ScheduleSettings, solve_schedule
from planner.mip.upper import solve_placement
from planner.placements import by_operator, contiguous_partitions, pipeline_placements
from planner.taskgraph import TaskGraph
from simulator.coarsen import chain_groups, coarsen
from simulator.engine import Timeline, replay
from simulator.errors import InfeasibleError, OpplanError
from simulator.problem import Task
from simulator.scenario import Scenario
from simulator.schedule import Schedule

__all__ = ["Budget", "Candidate", "PlanResult", "check", "evaluate", "lower_level", "plan", "propose", "with_builtin_order"]


@dataclass(frozen=True)
class Candidate:
    """A placement the upper level proposes, carried through every step of :func:`plan`.

    Proposed with its task graph (and, for a built-in schedule, the schedule whose order
    comes with it); evaluated by filling in the best order known for it and its makespan.
    """

    name: str
    graph: TaskGraph
    builtin: Schedule | None = None
    makespan: float = math.inf
    order_source: str = "not evaluated"
    order: Mapping[tuple[str, str], list[int]] | None = None

    @property
    def device_of(self) -> Mapping[Task, str]:
        return self.graph.device_of

    @property
    def evaluated(self) -> bool:
        return self.order is not None


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


#: Evaluations start no new candidate after this share of the time limit.
EVALUATION_SHARE = 0.45


@dataclass(frozen=True)
class Budget:
    """When each step of :func:`plan` stops starting new work (:func:`time.monotonic` values).

    The time limit is a promise: proposals (built-in schedules, the placement MIP) take up
    to a fifth of it, evaluations (list scheduling) start no new candidate after nine
    twentieths, the lower level ends in time for the final replay, whose cost is estimated
    from the task count (the simulator replays ~70k tasks/s with links; 40 us a task
    leaves a margin).
    """

    began: float
    end: float
    proposals: float
    evaluations: float
    check: float  # seconds kept for the final replay

    @classmethod
    def of(cls, seconds: float, tasks: int, began: float | None = None) -> Budget:
        began = time.monotonic() if began is None else began
        return cls(began, began + seconds, began + 0.2 * seconds, began + EVALUATION_SHARE * seconds, 0.3 + 4e-5 * tasks)

    @property
    def lower_level_end(self) -> float:
        return self.end - self.check


def _builtin_candidates(scenario: Scenario, limits: Mapping[str, float], until: float) -> list[tuple[str, Schedule]]:
    """Applicable built-in schedules that replay cleanly within the memory limit (those
    reached before ``until``)."""
    from planner import schedules as builtins

    out = []
    for name, reason in builtins.available(scenario).items():
        if reason is not None:
            continue
        if time.monotonic() > until:
            break
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


def propose(scenario: Scenario, limits: Mapping[str, float], until: float) -> list[Candidate]:
    """Step 1, the upper level: built-in schedules that fit, pipeline patterns, and (for a
    graph that is not a chain) placements from the placement MIP, all started before ``until``."""
    problem = scenario.problem
    out = [Candidate(f"{name} (built-in)", TaskGraph(problem, schedule.placement()), builtin=schedule)
           for name, schedule in _builtin_candidates(scenario, limits, until)]
    out += [Candidate(name, TaskGraph(problem, placement)) for name, placement in pipeline_placements(problem).items()]
    if not problem.graph.is_chain:
        placements = _upper_level_placements(scenario, limits, until - time.monotonic())
        out += [Candidate(name, TaskGraph(problem, placement)) for name, placement in placements]
    return out


def with_builtin_order(candidate: Candidate) -> Candidate:
    """Step 2a (cheap: one timing pass): a built-in candidate evaluated with its own order."""
    if candidate.builtin is None:
        return candidate
    order = candidate.graph.order_from_schedule(candidate.builtin)
    try:
        span = candidate.graph.makespan(candidate.graph.left_shift(order))
    except InfeasibleError:
        return candidate
    return replace(candidate, makespan=span, order_source="built-in order", order=order)


def evaluate(candidate: Candidate, limits: Mapping[str, float], budget: Budget | None = None) -> Candidate:
    """Step 2: the best order known for the candidate's placement — a built-in's own order
    or memory-aware list scheduling, whichever is shorter (unevaluated if neither fits, or
    if list scheduling cannot finish before the lower level must start)."""
    best = with_builtin_order(candidate)
    heuristic = best_list_schedule(candidate.graph, memory_limit=limits, seeds=0, stop_trying=budget and budget.evaluations,
                                   deadline=budget and budget.lower_level_end)
    if heuristic is not None and (not best.evaluated or heuristic.makespan < best.makespan - 1e-12):
        best = replace(candidate, makespan=heuristic.makespan, order=heuristic.order,
                       order_source=f"list scheduling ({heuristic.rule}, heuristic)")
    return best


def lower_level(candidate: Candidate, limits: Mapping[str, float], settings: ScheduleSettings,
                progress: Callable[[Progress], None] | None) -> LowerLevelResult:
    """Step 3: the scheduling MIP on the candidate's placement, warm-started with its order."""
    return solve_schedule(candidate.graph, settings, warm_order=candidate.order, memory_limit=limits, progress=progress)


def check(scenario: Scenario, chosen: Candidate, lower: LowerLevelResult) -> tuple[Schedule, Timeline]:
    """Step 4: the planned order as a schedule document, replayed by the simulator."""
    schedule = chosen.graph.to_schedule(
        lower.order,
        name=f"opplan plan ({chosen.name})",
        meta={
            "planner": "bi-level MIP (CVXPY + HiGHS; OR-Tools CP-SAT as a primal heuristic)",
            "placement": chosen.name,
            "warm_start": chosen.order_source,
            "source": lower.source,
            "mip_makespan_s": lower.makespan,
            "lower_bound_s": lower.lower_bound,
            "gap": lower.gap,
        },
    )
    timeline = replay(scenario.problem, schedule)
    if timeline.violations:
        raise InfeasibleError("the planned schedule failed its replay: " + timeline.violations[0].message, file=scenario.file)
    return schedule, timeline


def _evaluate_all(proposed: list[Candidate], limits: Mapping[str, float], scenario: Scenario, budget: Budget,
                  say: Callable[[str], None]) -> list[Candidate]:
    """Every proposal evaluated, best first; none fitting the memory limit is an error.
    Built-in orders first (cheap), then list scheduling, most promising candidate first,
    none started past the evaluations' share of the time once one candidate has an order."""
    quick = [with_builtin_order(c) for c in proposed]
    ranked = sorted(range(len(quick)), key=lambda i: (not quick[i].evaluated, quick[i].makespan, i))
    done: dict[int, Candidate] = {}
    for position, i in enumerate(ranked):
        if (done or any(c.evaluated for c in quick)) and time.monotonic() > budget.evaluations:
            say(f"  {len(ranked) - position} candidates not list-scheduled: their share of the time limit is spent")
            break
        done[i] = evaluate(proposed[i], limits, budget)
    candidates = []
    for i, candidate in enumerate(proposed):
        evaluated = done.get(i, quick[i])
        if evaluated.evaluated:
            candidates.append(evaluated)
            say(f"  {evaluated.name}: {evaluated.makespan * 1e3:.6g} ms ({evaluated.order_source})")
        else:
            say(f"  {candidate.name}: no schedule within the memory limit" if i in done else f"  {candidate.name}: not evaluated")
    if not candidates and time.monotonic() > budget.lower_level_end:
        raise InfeasibleError(
            f"no schedule found within the time limit ({budget.end - budget.began:.3g} s): list scheduling did not finish;"
            " raise --time-limit",
            file=scenario.file,
            field="objective.time_limit_s",
        )
    if not candidates:
        tightest = min(limits, key=limits.get)
        raise InfeasibleError(
            f"no placement fits the memory limit ({limits[tightest] / 1e9:.4g} GB on {tightest}):"
            " every candidate runs out of memory even when scheduled one micro-batch at a time",
            file=scenario.file,
            field="objective.memory_limit_gb",
        )
    return sorted(candidates, key=lambda c: (c.makespan, c.name))


def plan(
    scenario: Scenario,
    *,
    time_limit: float | None = None,
    memory_limit_bytes: float | None = None,
    objective: str | None = None,
    formulation: str = "tight",
    progress: Callable[[Progress], None] | None = None,
    log: Callable[[str], None] | None = None,
    verbose: bool = False,
    deterministic: bool = True,
    nominal_time_limit: float | None = None,
) -> PlanResult:
    """Plan ``scenario``: the best schedule found within ``time_limit`` seconds, certified.

    Four steps: :func:`propose` placements, :func:`evaluate` each, run the
    :func:`lower_level` MIP on the best, :func:`check` it by replay. ``deterministic``: the
    lower level's engines stop on work counts set from ``nominal_time_limit`` (default
    ``time_limit``; a command passes the limit the user gave, not the time left after
    reading the scenario, nor the time left after evaluations), so the same command gives
    the same plan.

    >>> from planner.schedules.examples import example_scenario
    >>> result = plan(example_scenario(stages=2, micro_batches=4), time_limit=10)
    >>> round(result.makespan * 1e3, 6), round(result.lower.gap, 6), result.timeline.ok
    (12.0, 0.0, True)
    """
    began = time.monotonic()
    say = log or (lambda message: None)
    goal = objective or scenario.objective.minimize
    limits = memory_limits(scenario, memory_limit_bytes)
    check_memory_fits(scenario, limits)
    seconds = time_limit if time_limit is not None else scenario.objective.time_limit_s
    budget = Budget.of(seconds, scenario.problem.task_count, began)

    proposed = propose(scenario, limits, budget.proposals)
    say(f"upper level: {len(proposed)} candidate placements")
    candidates = _evaluate_all(proposed, limits, scenario, budget, say)
    chosen = candidates[0]
    remaining = budget.lower_level_end - time.monotonic()
    say(f"lower level: scheduling MIP on {chosen.name!r}, warm start {chosen.makespan * 1e3:.6g} ms ({chosen.order_source})")
    work = max((1 - EVALUATION_SHARE) * (nominal_time_limit or seconds) - budget.check, 0.0)
    settings = ScheduleSettings(objective="memory" if goal == "memory" else "makespan", time_limit=max(remaining, 0.0),
                                formulation=formulation, verbose=verbose, work_seconds=work, deterministic=deterministic)
    lower = lower_level(chosen, limits, settings, progress)
    notes = []
    if lower.source == "warm start" and lower.gap > 1e-9:
        notes.append(f"no engine found a better order in time: the schedule is the warm start ({chosen.order_source})")
    schedule, timeline = check(scenario, chosen, lower)
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
