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
from collections.abc import Callable, Mapping
from dataclasses import dataclass

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


def list_schedule(
    graph: TaskGraph,
    *,
    memory_limit: Mapping[str, float] | None = None,
    rule: str = "zb",
    seed: int | None = None,
    reserve: bool = False,
) -> HeuristicResult | None:
    """One list schedule; None when the rule runs itself into a memory deadlock.

    With ``reserve``, a forward pass is admitted only if room stays for one more
    activation of every *other* operator on the device that still has forwards to run:
    one stream of micro-batches cannot fill the memory and starve another (the failure
    that makes bidirectional pipelines idle or deadlock under a memory limit).
    """
    n = len(graph.tasks)
    p = graph.duration
    key = _priority(graph, rule, seed)
    delta = graph.memory_delta()
    device_stream = graph.device_stream
    device_of = [s[0] for s in device_stream]
    limits = dict(memory_limit or {d: graph.problem.cluster.by_name[d].memory_bytes for d in graph.devices})
    memory = dict(graph.static_memory)
    peak = dict(memory)
    waiting = [len(graph.preds[j]) for j in range(n)]
    ready_time = [0.0] * n
    ready: dict[tuple[str, str], set[int]] = {s: set() for s in graph.streams}
    for j in range(n):
        if waiting[j] == 0:
            ready[device_stream[j]].add(j)
    free_at = dict.fromkeys(graph.streams, 0.0)
    # Memory is released when a task ends; keep (end, device, amount) until the clock passes it.
    releases: list[tuple[float, str, float]] = []
    order: dict[tuple[str, str], list[int]] = {s: [] for s in graph.streams}
    start = [0.0] * n
    done = 0
    tasks = graph.tasks
    # Forwards still to run per (device, operator), and one activation's size per operator.
    pending_f: dict[tuple[str, str], int] = {}
    for j, t in enumerate(tasks):
        if t.kind == "F" and delta[j][0] > 0:
            pending_f[device_of[j], t.op] = pending_f.get((device_of[j], t.op), 0) + 1
    ops_on: dict[str, list[str]] = {}
    for dev, op in pending_f:
        ops_on.setdefault(dev, []).append(op)

    def reserved(j: int) -> float:
        """Bytes to keep free for the other operators on ``j``'s device."""
        if not reserve or tasks[j].kind != "F":
            return 0.0
        device, op = device_of[j], tasks[j].op
        by_name = graph.problem.graph.by_name
        return sum(by_name[o].activation_bytes for o in ops_on.get(device, ()) if o != op and pending_f[device, o] > 0)

    def fits(j: int, available: float, device: str) -> bool:
        return available + delta[j][0] + reserved(j) <= limits[device] * (1 + 1e-9)

    while done < n:
        best: tuple | None = None
        for stream, candidates in ready.items():
            if not candidates:
                continue
            device = stream[0]
            earliest = max(free_at[stream], min(ready_time[j] for j in candidates))
            # Memory available at that time: everything released by then.
            available = memory[device] - sum(a for t, d, a in releases if d == device and t <= earliest + 1e-12)
            feasible = [j for j in candidates if ready_time[j] <= earliest + 1e-12 and fits(j, available, device)]
            if not feasible:
                # Something fits later (after a release or once more inputs arrive)?
                later = sorted(
                    {max(free_at[stream], ready_time[j]) for j in candidates}
                    | {t for t, d, _ in releases if d == device and t > earliest}
                )
                for moment in later:
                    avail = memory[device] - sum(a for t, d, a in releases if d == device and t <= moment + 1e-12)
                    feasible = [j for j in candidates if ready_time[j] <= moment + 1e-12 and fits(j, avail, device)]
                    if feasible:
                        earliest = moment
                        break
                if not feasible:
                    continue
            choice = min(feasible, key=key)
            candidate = (earliest, graph.devices.index(device), key(choice), choice, stream)
            if best is None or candidate[:3] < best[:3]:
                best = candidate
        if best is None:
            return None  # memory deadlock: no stream can admit anything
        at, _, _, j, stream = best
        device = device_of[j]
        for item in [r for r in releases if r[1] == device and r[0] <= at + 1e-12]:
            memory[device] -= item[2]
            releases.remove(item)
        start[j] = at
        memory[device] += delta[j][0]
        peak[device] = max(peak[device], memory[device])
        end = at + p[j]
        if delta[j][1]:
            releases.append((end, device, delta[j][1]))
        free_at[stream] = end
        ready[stream].discard(j)
        order[stream].append(j)
        if tasks[j].kind == "F" and (device, tasks[j].op) in pending_f:
            pending_f[device, tasks[j].op] -= 1
        done += 1
        for arc in graph.succs[j]:
            ready_time[arc.dst] = max(ready_time[arc.dst], end + arc.lag)
            waiting[arc.dst] -= 1
            if waiting[arc.dst] == 0:
                ready[device_stream[arc.dst]].add(arc.dst)
    shifted = graph.left_shift(order)
    return HeuristicResult(rule, reserve, order, shifted, graph.makespan(shifted), peak)


def best_list_schedule(
    graph: TaskGraph,
    *,
    memory_limit: Mapping[str, float] | None = None,
    seeds: int = 3,
) -> HeuristicResult | None:
    """Try every rule (and a few seeded tie-breaks); keep the shortest."""
    best: HeuristicResult | None = None
    for reserve in (False, True):
        for rule in RULES:
            for seed in [None, *range(seeds)]:
                result = list_schedule(graph, memory_limit=memory_limit, rule=rule, seed=seed, reserve=reserve)
                if result is not None and (best is None or result.makespan < best.makespan - 1e-12):
                    best = result
                if rule in ("fifo",):
                    break
    return best
