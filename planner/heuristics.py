"""List scheduling: fast, memory-aware schedules used as MIP warm starts (heuristic).

A serial schedule-generation scheme: repeatedly take the stream that can start
something earliest, and among the tasks ready on it by then pick one by a priority
rule. Forward passes are admitted only while the device's memory (static + live
activations) stays under its limit, so the result respects memory by construction.
Several priority rules are tried and the shortest schedule is kept.

Everything here is a heuristic: it gives an upper bound and a starting point, never a
proof. Results carry ``heuristic=True`` so reports can say so.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from planner.taskgraph import TaskGraph

__all__ = ["HeuristicResult", "list_schedule", "best_list_schedule", "RULES"]

#: Priority rules: smaller key = scheduled first among tasks ready on a stream.
#: ``zb``: backward for inputs first (it frees memory and unblocks upstream stages),
#: then forward, and weight gradients fill the gaps (zero-bubble's idea).
#: ``critical``: longest remaining path first. ``fifo``: micro-batch order.
RULES = ("zb", "critical", "zb-critical", "fifo", "bfw")

_KIND_RANK = {
    "zb": {"B": 0, "F": 1, "W": 2},
    "zb-critical": {"B": 0, "F": 1, "W": 2},
    "bfw": {"B": 0, "W": 1, "F": 2},
    "fifo": {"F": 0, "B": 0, "W": 0},
    "critical": {"F": 0, "B": 0, "W": 0},
}


@dataclass(frozen=True)
class HeuristicResult:
    rule: str
    reserve: bool
    order: dict[tuple[str, str], list[int]]
    start: list[float]
    makespan: float
    peak_memory: Mapping[str, float]


def _priority(graph: TaskGraph, rule: str, seed: int | None) -> Callable[[int], tuple]:
    tasks = graph.tasks
    tail = graph.tail
    rank = _KIND_RANK[rule]
    noise = [0.0] * len(tasks)
    if seed is not None:
        rng = random.Random(seed)
        noise = [rng.random() for _ in tasks]
    if rule == "critical":
        return lambda i: (-round(tail[i] + graph.duration[i], 9), tasks[i].mb, noise[i], i)
    if rule == "zb-critical":
        return lambda i: (rank[tasks[i].kind], -round(tail[i], 9), tasks[i].mb, noise[i], i)
    return lambda i: (rank[tasks[i].kind], tasks[i].mb, noise[i], -tail[i], i)


@dataclass
class _State:
    """A list schedule under construction: what is ready, what is running, what memory holds."""

    graph: TaskGraph
    limits: dict[str, float]
    key: Callable[[int], tuple]
    reserve: bool
    delta: tuple[tuple[float, float], ...]
    device_of: list[str]
    memory: dict[str, float]  # live bytes per device, releases not yet applied
    peak: dict[str, float]
    waiting: list[int]  # inputs not yet scheduled, per task
    ready_time: list[float]
    ready: dict[tuple[str, str], set[int]]  # per stream, tasks whose inputs are all scheduled
    free_at: dict[tuple[str, str], float]
    # Memory is released when a task ends; keep (end, device, amount) until the clock passes it.
    releases: list[tuple[float, str, float]] = field(default_factory=list)
    order: dict[tuple[str, str], list[int]] = field(default_factory=dict)
    start: list[float] = field(default_factory=list)
    # Forwards still to run per (device, operator), and the operators with forwards per device.
    pending_f: dict[tuple[str, str], int] = field(default_factory=dict)
    ops_on: dict[str, list[str]] = field(default_factory=dict)


def _initial_state(graph: TaskGraph, memory_limit, rule: str, seed: int | None, reserve: bool) -> _State:
    n = len(graph.tasks)
    delta = graph.memory_delta()
    device_of = [s[0] for s in graph.device_stream]
    limits = dict(memory_limit or {d: graph.problem.cluster.by_name[d].memory_bytes for d in graph.devices})
    waiting = [len(graph.preds[j]) for j in range(n)]
    ready: dict[tuple[str, str], set[int]] = {s: set() for s in graph.streams}
    for j in range(n):
        if waiting[j] == 0:
            ready[graph.device_stream[j]].add(j)
    state = _State(graph, limits, _priority(graph, rule, seed), reserve, delta, device_of, dict(graph.static_memory),
                   dict(graph.static_memory), waiting, [0.0] * n, ready, dict.fromkeys(graph.streams, 0.0),
                   order={s: [] for s in graph.streams}, start=[0.0] * n)
    for j, t in enumerate(graph.tasks):
        if t.kind == "F" and delta[j][0] > 0:
            state.pending_f[device_of[j], t.op] = state.pending_f.get((device_of[j], t.op), 0) + 1
    for dev, op in state.pending_f:
        state.ops_on.setdefault(dev, []).append(op)
    return state


def _fits(s: _State, j: int, available: float, device: str) -> bool:
    """Task j's allocation fits (keeping, with ``reserve``, one activation free for every
    other operator on the device that still has forwards to run)."""
    reserved = 0.0
    task = s.graph.tasks[j]
    if s.reserve and task.kind == "F":
        by_name = s.graph.problem.graph.by_name
        reserved = sum(by_name[o].activation_bytes for o in s.ops_on.get(device, ())
                       if o != task.op and s.pending_f[device, o] > 0)
    return available + s.delta[j][0] + reserved <= s.limits[device] * (1 + 1e-9)


def _available(s: _State, device: str, moment: float) -> float:
    """Live bytes on ``device`` at ``moment``: everything released by then is gone."""
    return s.memory[device] - sum(a for t, d, a in s.releases if d == device and t <= moment + 1e-12)


def _stream_choice(s: _State, stream: tuple[str, str], candidates: set[int]) -> tuple[float, int] | None:
    """(when, task): the earliest moment something ready on ``stream`` fits, and the rule's pick then."""
    device = stream[0]
    earliest = max(s.free_at[stream], min(s.ready_time[j] for j in candidates))
    available = _available(s, device, earliest)
    feasible = [j for j in candidates if s.ready_time[j] <= earliest + 1e-12 and _fits(s, j, available, device)]
    if not feasible:
        # Something fits later (after a release or once more inputs arrive)?
        later = sorted({max(s.free_at[stream], s.ready_time[j]) for j in candidates}
                       | {t for t, d, _ in s.releases if d == device and t > earliest})
        for moment in later:
            avail = _available(s, device, moment)
            feasible = [j for j in candidates if s.ready_time[j] <= moment + 1e-12 and _fits(s, j, avail, device)]
            if feasible:
                earliest = moment
                break
        if not feasible:
            return None
    return earliest, min(feasible, key=s.key)


def _next_task(s: _State) -> tuple | None:
    """(start, device rank, priority, task, stream) of the stream that can start something earliest."""
    best: tuple | None = None
    for stream, candidates in s.ready.items():
        if not candidates:
            continue
        found = _stream_choice(s, stream, candidates)
        if found is None:
            continue
        earliest, choice = found
        candidate = (earliest, s.graph.devices.index(stream[0]), s.key(choice), choice, stream)
        if best is None or candidate[:3] < best[:3]:
            best = candidate
    return best


def _commit(s: _State, j: int, at: float, stream: tuple[str, str]) -> None:
    """Start task j at ``at``: apply due releases, allocate, and release its successors."""
    device, task = s.device_of[j], s.graph.tasks[j]
    for item in [r for r in s.releases if r[1] == device and r[0] <= at + 1e-12]:
        s.memory[device] -= item[2]
        s.releases.remove(item)
    s.start[j] = at
    s.memory[device] += s.delta[j][0]
    s.peak[device] = max(s.peak[device], s.memory[device])
    end = at + s.graph.duration[j]
    if s.delta[j][1]:
        s.releases.append((end, device, s.delta[j][1]))
    s.free_at[stream] = end
    s.ready[stream].discard(j)
    s.order[stream].append(j)
    if task.kind == "F" and (device, task.op) in s.pending_f:
        s.pending_f[device, task.op] -= 1
    for arc in s.graph.succs[j]:
        s.ready_time[arc.dst] = max(s.ready_time[arc.dst], end + arc.lag)
        s.waiting[arc.dst] -= 1
        if s.waiting[arc.dst] == 0:
            s.ready[s.graph.device_stream[arc.dst]].add(arc.dst)


def list_schedule(
    graph: TaskGraph,
    *,
    memory_limit: Mapping[str, float] | None = None,
    rule: str = "zb",
    seed: int | None = None,
    reserve: bool = False,
    deadline: float | None = None,
) -> HeuristicResult | None:
    """One list schedule; None when the rule runs itself into a memory deadlock (or the
    clock passes ``deadline``, a :func:`time.monotonic` value, before it is done).

    With ``reserve``, a forward pass is admitted only if room stays for one more
    activation of every *other* operator on the device that still has forwards to run:
    one stream of micro-batches cannot fill the memory and starve another (the failure
    that makes bidirectional pipelines idle or deadlock under a memory limit).
    """
    state = _initial_state(graph, memory_limit, rule, seed, reserve)
    for step in range(len(graph.tasks)):
        if deadline is not None and step % 64 == 0 and time.monotonic() > deadline:
            return None
        best = _next_task(state)
        if best is None:
            return None  # memory deadlock: no stream can admit anything
        at, _, _, j, stream = best
        _commit(state, j, at, stream)
    shifted = graph.left_shift(state.order)
    return HeuristicResult(rule, reserve, state.order, shifted, graph.makespan(shifted), state.peak)


def best_list_schedule(
    graph: TaskGraph,
    *,
    memory_limit: Mapping[str, float] | None = None,
    seeds: int = 3,
    stop_trying: float | None = None,
    deadline: float | None = None,
) -> HeuristicResult | None:
    """Try every rule (and a few seeded tie-breaks); keep the shortest. Past ``stop_trying``
    no further rule is tried once one has succeeded; none runs past ``deadline``."""
    best: HeuristicResult | None = None
    for reserve in (False, True):
        for rule in RULES:
            for seed in [None, *range(seeds)]:
                if stop_trying is not None and best is not None and time.monotonic() > stop_trying:
                    return best
                result = list_schedule(graph, memory_limit=memory_limit, rule=rule, seed=seed, reserve=reserve,
                                       deadline=deadline)
                if result is not None and (best is None or result.makespan < best.makespan - 1e-12):
                    best = result
                if rule in ("fifo",):
                    break
    return best
