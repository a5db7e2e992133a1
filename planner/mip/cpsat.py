"""A primal heuristic for the lower level: the same scheduling problem in OR-Tools CP-SAT.

CP-SAT is made for this kind of problem: every task is an interval variable, a device
stream is a no-overlap constraint, memory is a reservoir (bytes added when a task
starts, removed when it ends, the level held under the limit), and its search combines
clause learning with large-neighbourhood search. It finds the short orders the MIP's
branch and bound does not reach when F, B and W differ; the CVXPY + HiGHS MIP
(:mod:`planner.mip.lower`) still proves the lower bound and the gap. Only the *order*
found here is used: it is timed exactly by :meth:`TaskGraph.left_shift` and its memory
checked task by task, so rounding times to integer ticks can cost optimality, never
feasibility.

Laid out like the OR-Tools samples: data (integer ticks, horizon) → variables (one
interval per task) → constraints per family (precedence, stream no-overlap, memory
reservoir, interchangeable micro-batches in order) → objective → solve → status checked
before values. The seed is fixed; CP-SAT's parallel portfolio (``workers`` threads sharing
solutions) stopped by the wall clock is not deterministic (an unproven answer may differ
run to run), so the lower level by default passes ``deterministic_time``: the workers'
steps interleaved on one thread (``interleave_search``) and stopped by CP-SAT's own work
count. Its search also depends on the wall-clock limit it is given, so the caller derives
that limit from the time limit, not from the time left.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from planner.mip.strengthen import interchangeable_classes
from planner.taskgraph import TaskGraph

__all__ = ["CpSatResult", "cpsat_available", "solve_order"]

#: Integer ticks per second: durations are rounded to a microsecond.
TICKS_PER_SECOND = 1e6


@dataclass(frozen=True)
class CpSatResult:
    order: dict[tuple[str, str], list[int]]
    status: str  # "optimal" or "feasible" (CP-SAT's own words)
    bound_seconds: float  # CP-SAT's proven lower bound on the makespan (in its ticks)
    by_clock: bool = False  # stopped by the wall-clock limit (then not reproducible)


def cpsat_available() -> bool:
    try:
        import ortools.sat.python.cp_model  # noqa: F401
    except ImportError:
        return False
    return True


def _ticks(seconds: float) -> int:
    """Seconds as whole ticks, rounded up (a float a hair above a whole tick is that tick):
    an order feasible in ticks is feasible in seconds, and re-timing never lengthens it."""
    q = seconds * TICKS_PER_SECOND
    r = round(q)
    return int(r) if abs(q - r) < 1e-6 else math.ceil(q)


@dataclass(frozen=True)
class _TickData:
    """Durations, lags, heads and tails in ticks, all from the same rounded numbers."""

    p: list[int]
    lag: list[int]  # per arc of graph.arcs
    release: list[int]
    tail: list[int]

    @classmethod
    def of(cls, graph: TaskGraph) -> _TickData:
        p = [_ticks(x) for x in graph.duration]
        lag = [_ticks(a.lag) for a in graph.arcs]
        release, tail = [0] * len(p), [0] * len(p)
        preds: list[list[int]] = [[] for _ in p]
        for k, arc in enumerate(graph.arcs):
            preds[arc.dst].append(k)
        for j in graph.topological:
            for k in preds[j]:
                release[j] = max(release[j], release[graph.arcs[k].src] + p[graph.arcs[k].src] + lag[k])
        for j in reversed(graph.topological):
            for k in preds[j]:
                i = graph.arcs[k].src
                tail[i] = max(tail[i], lag[k] + p[j] + tail[j])
        return cls(p, lag, release, tail)

    def left_shift(self, graph: TaskGraph, order: Mapping[tuple[str, str], Sequence[int]]) -> list[int]:
        """Integer start times of ``order`` (as :meth:`TaskGraph.left_shift`, in ticks)."""
        n = len(self.p)
        start, previous, following = [0] * n, [-1] * n, [-1] * n
        for members in order.values():
            for x, y in zip(members, members[1:]):
                previous[y], following[x] = x, y
        lags = {(arc.src, arc.dst): self.lag[k] for k, arc in enumerate(graph.arcs)}
        indegree = [len(graph.preds[j]) + (previous[j] >= 0) for j in range(n)]
        ready = [j for j in range(n) if indegree[j] == 0]
        while ready:
            i = ready.pop()
            end = start[i] + self.p[i]
            nexts = [(arc.dst, end + lags[i, arc.dst]) for arc in graph.succs[i]]
            if following[i] >= 0:
                nexts.append((following[i], end))
            for j, at in nexts:
                start[j] = max(start[j], at)
                indegree[j] -= 1
                if indegree[j] == 0:
                    ready.append(j)
        return start


def _interchangeable_chains(graph: TaskGraph) -> list[list[int]]:
    """Tasks of one operator and kind whose micro-batches take the same devices: any
    schedule can run them in micro-batch order (the MIP's symmetry breaking)."""
    return [members for members in interchangeable_classes(graph).values() if len(members) > 1]


def solve_order(
    graph: TaskGraph,
    limits: Mapping[str, float],
    *,
    seconds: float,
    hint: Mapping[tuple[str, str], Sequence[int]] | None = None,
    seed: int = 0,
    workers: int = 8,
    precedences: Sequence[tuple[int, int]] = (),
    lower_bound: float = 0.0,
    deterministic_time: float | None = None,
) -> CpSatResult | None:
    """The best order CP-SAT finds in about ``seconds`` (None when it finds none); with a
    ``hint``, never worse than it in ticks. ``precedences`` (i ends before j starts) and
    ``lower_bound`` (seconds) are what the caller proved holds for some optimal schedule
    (:mod:`planner.mip.strengthen`): with them CP-SAT stops as soon as it reaches the bound.
    Precedences the hint breaks are left out. With ``deterministic_time`` the search is
    deterministic (``interleave_search``: the workers' steps interleaved on one thread,
    stopped by CP-SAT's own work count); ``seconds`` is then only a safety net."""
    from ortools.sat.python import cp_model

    # -- data: ticks rounded up; the hint re-timed in ticks is feasible, so it bounds the horizon
    n = len(graph.tasks)
    ticks = _TickData.of(graph)
    p, tail, release = ticks.p, ticks.tail, ticks.release
    starts = ticks.left_shift(graph, hint) if hint is not None else None
    horizon = max(s + p[t] for t, s in enumerate(starts)) if starts else sum(p) + sum(ticks.lag)
    position = {t: pos for members in (hint or {}).values() for pos, t in enumerate(members)}
    model = cp_model.CpModel()
    # -- variables ---------------------------------------------------------------------------------
    start = [model.NewIntVar(release[t], max(horizon - p[t] - tail[t], release[t]), f"S{t}") for t in range(n)]
    interval = [model.NewFixedSizeIntervalVar(start[t], p[t], f"I{t}") for t in range(n)]
    makespan = model.NewIntVar(min(math.floor(lower_bound * TICKS_PER_SECOND), horizon), horizon, "C")
    # -- constraints -------------------------------------------------------------------------------
    for k, arc in enumerate(graph.arcs):  # precedence
        model.Add(start[arc.dst] >= start[arc.src] + p[arc.src] + ticks.lag[k])
    for members in graph.streams.values():  # one task at a time per stream
        model.AddNoOverlap([interval[t] for t in members])
    for chain in _interchangeable_chains(graph):  # where the hint agrees
        for a, b in zip(chain, chain[1:]):
            if not position or position[a] < position[b]:
                model.Add(start[b] >= start[a] + p[a])
    if not position or all(position[i] < position[j] for i, j in precedences if graph.device_stream[i] == graph.device_stream[j]):
        for i, j in precedences:
            model.Add(start[j] >= start[i] + p[i])
    lengths = _memory(model, graph, limits, start, p, horizon)
    for t in range(n):  # completion with the tail cut
        model.Add(makespan >= start[t] + p[t] + tail[t])
    # -- objective ---------------------------------------------------------------------------------
    model.Minimize(makespan)
    if starts is not None:
        for t in range(n):
            model.AddHint(start[t], starts[t])
        for (first, last), length in lengths.items():
            model.AddHint(length, starts[last] + p[last] - starts[first])
        model.AddHint(makespan, max(starts[t] + p[t] + tail[t] for t in range(n)))
    return _solve(model, graph, start, seconds, seed, workers, deterministic_time)


def _lifetimes(graph: TaskGraph) -> list[tuple[int, int, float]] | None:
    """(first task, last task, bytes): each allocation from the start of the first to the
    end of the last, as :meth:`~simulator.problem.Problem.task_memory` counts it — a task's
    workspace while it runs, activations from F until B frees them but what W still needs,
    that until W ends (inference: activations while F runs). None when the passes of one
    micro-batch of an operator run on different devices (then a reservoir is used)."""
    problem, index = graph.problem, graph.index
    out: list[tuple[int, int, float]] = []
    for t, task in enumerate(graph.tasks):
        op = problem.graph.by_name[task.op]
        if op.workspace_bytes:
            out.append((t, t, op.workspace_bytes))
        if task.kind != "F" or not op.activation_bytes:
            continue
        if problem.workload.mode != "training":
            out.append((t, t, op.activation_bytes))
            continue
        b, w = index[type(task)(task.op, task.mb, "B")], index[type(task)(task.op, task.mb, "W")]
        if len({graph.device_stream[t][0], graph.device_stream[b][0], graph.device_stream[w][0]}) > 1:
            return None
        out.append((t, b, op.activation_bytes - op.w_retained_bytes))
        if op.w_retained_bytes:
            out.append((t, w, op.w_retained_bytes))
    return [item for item in out if item[2] > 0]


def _memory(model, graph: TaskGraph, limits: Mapping[str, float], start, p: list[int], horizon: int) -> dict:
    """Per device, the bytes alive at every moment stay within the limit: a cumulative over
    each allocation's lifetime (CP-SAT's energetic reasoning prunes well), or a reservoir
    of start and end events when lifetimes cross devices. Returns the lifetimes' length
    variables by (first, last) task."""
    lifetimes = _lifetimes(graph)
    lengths: dict[tuple[int, int], object] = {}
    if lifetimes is None:
        _reservoirs(model, graph, limits, start, p)
        return lengths
    by_device: dict[str, list[tuple[int, int, float]]] = {}
    for first, last, size in lifetimes:
        by_device.setdefault(graph.device_stream[first][0], []).append((first, last, size))
    static = graph.static_memory
    for device, items in by_device.items():
        unit = max(math.gcd(*(round(size) for *_, size in items)), 1)  # exact for whole bytes
        intervals, demands = [], []
        for first, last, size in items:
            end = start[last] + p[last]
            length = model.NewIntVar(p[first], horizon, f"L{first}_{last}")
            model.Add(length == end - start[first])
            lengths[first, last] = length
            intervals.append(model.NewIntervalVar(start[first], length, end, f"M{first}_{last}"))
            demands.append(round(size / unit))
        model.AddCumulative(intervals, demands, max(math.floor((limits[device] - static[device]) / unit + 1e-9), 0))
    return lengths


def _reservoirs(model, graph: TaskGraph, limits: Mapping[str, float], start, p: list[int]) -> None:
    """Per device: bytes added when a task starts, removed when it ends; the level stays
    within the limit."""
    delta = graph.memory_delta()
    static = graph.static_memory
    by_device: dict[str, list[int]] = {}
    for t, (device, _) in enumerate(graph.device_stream):
        if delta[t][0] or delta[t][1]:
            by_device.setdefault(device, []).append(t)
    for device, members in by_device.items():
        # Bytes in units of their greatest common divisor: exact for whole bytes.
        unit = max(math.gcd(*(round(x) for t in members for x in delta[t] if round(x))), 1)
        times, changes = [], []
        for t in members:
            times += [start[t], start[t] + p[t]]
            changes += [round(delta[t][0] / unit), -round(delta[t][1] / unit)]
        capacity = math.floor((limits[device] - static[device]) / unit + 1e-9)
        model.AddReservoirConstraint(times, changes, 0, max(capacity, 0))


def _solve(model, graph: TaskGraph, start, seconds: float, seed: int, workers: int,
           deterministic_time: float | None) -> CpSatResult | None:
    """Solve within ``seconds`` of wall-clock (and ``deterministic_time`` of CP-SAT's work
    units, deterministically, when given); the order of a feasible or optimal answer."""
    from ortools.sat.python import cp_model

    solver = cp_model.CpSolver()
    solver.parameters.random_seed = seed
    solver.parameters.num_workers = workers
    solver.parameters.max_time_in_seconds = seconds
    if deterministic_time is not None:
        solver.parameters.interleave_search = True
        solver.parameters.max_deterministic_time = deterministic_time
    status = solver.Solve(model)
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        return None
    order = graph.order_from_starts([solver.Value(s) / TICKS_PER_SECOND for s in start])
    by_clock = status != cp_model.OPTIMAL and solver.WallTime() >= 0.98 * seconds
    return CpSatResult(order, "optimal" if status == cp_model.OPTIMAL else "feasible",
                       solver.BestObjectiveBound() / TICKS_PER_SECOND, by_clock)
