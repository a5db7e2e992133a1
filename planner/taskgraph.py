"""The task-level view the planner works on: tasks placed on devices, durations, lags.

Given a :class:`~simulator.problem.Problem` and where each task runs, this computes
what every planning method needs: each task's duration on its device, the precedence
arcs with their communication lag (the transfer time over the route, without
contention), release times (longest path from the start), tails (longest path to the
end), lower bounds, and the left-shifted timing of a given order.

It mirrors the simulator's rules exactly (same durations, same dependencies, same
transfer times), so a schedule timed here replays to the same makespan when no two
transfers contend for a link.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property

from simulator.errors import InfeasibleError
from simulator.problem import Problem, Task
from simulator.schedule import Entry, Schedule

__all__ = ["TaskGraph", "Arc"]


@dataclass(frozen=True)
class Arc:
    """``dst`` may start ``lag`` seconds after ``src`` ends."""

    src: int
    dst: int
    lag: float


@dataclass(frozen=True)
class TaskGraph:
    """Tasks with a fixed device each. Indices follow ``problem.tasks()`` order."""

    problem: Problem
    device_of: Mapping[Task, str]

    def __post_init__(self) -> None:
        missing = [t for t in self.problem.tasks() if t not in self.device_of]
        if missing:
            raise InfeasibleError(f"placement leaves {len(missing)} tasks without a device (first: {missing[0]})")

    # -- tasks ---------------------------------------------------------------------------
    @cached_property
    def tasks(self) -> tuple[Task, ...]:
        return tuple(self.problem.tasks())

    @cached_property
    def index(self) -> Mapping[Task, int]:
        return {t: i for i, t in enumerate(self.tasks)}

    @cached_property
    def devices(self) -> tuple[str, ...]:
        """Devices in cluster order that run at least one task."""
        used = set(self.device_of.values())
        return tuple(d for d in self.problem.cluster.device_names if d in used)

    @cached_property
    def device_stream(self) -> tuple[tuple[str, str], ...]:
        """(device, stream) of each task: tasks on the same stream never overlap."""
        by_name = self.problem.graph.by_name
        return tuple((self.device_of[t], by_name[t.op].stream) for t in self.tasks)

    @cached_property
    def streams(self) -> Mapping[tuple[str, str], tuple[int, ...]]:
        out: dict[tuple[str, str], list[int]] = {}
        for i, key in enumerate(self.device_stream):
            out.setdefault(key, []).append(i)
        return {k: tuple(v) for k, v in out.items()}

    @cached_property
    def duration(self) -> tuple[float, ...]:
        cluster = self.problem.cluster.by_name
        return tuple(self.problem.duration(t, cluster[self.device_of[t]]) for t in self.tasks)

    # -- precedence ------------------------------------------------------------------------
    @cached_property
    def arcs(self) -> tuple[Arc, ...]:
        out = []
        for j, task in enumerate(self.tasks):
            for dep in self.problem.dependencies(task):
                i = self.index[dep.pred]
                lag = self.problem.transfer_time(self.device_of[dep.pred], self.device_of[task], dep.bytes)
                out.append(Arc(i, j, lag))
        return tuple(out)

    @cached_property
    def preds(self) -> tuple[tuple[Arc, ...], ...]:
        out: list[list[Arc]] = [[] for _ in self.tasks]
        for arc in self.arcs:
            out[arc.dst].append(arc)
        return tuple(tuple(a) for a in out)

    @cached_property
    def succs(self) -> tuple[tuple[Arc, ...], ...]:
        out: list[list[Arc]] = [[] for _ in self.tasks]
        for arc in self.arcs:
            out[arc.src].append(arc)
        return tuple(tuple(a) for a in out)

    @cached_property
    def topological(self) -> tuple[int, ...]:
        """Task indices in an order where every arc goes forward (Kahn, ties by index)."""
        indegree = [len(p) for p in self.preds]
        ready = [i for i, d in enumerate(indegree) if d == 0]
        order: list[int] = []
        while ready:
            i = ready.pop()
            order.append(i)
            for arc in self.succs[i]:
                indegree[arc.dst] -= 1
                if indegree[arc.dst] == 0:
                    ready.append(arc.dst)
        return tuple(order)

    @cached_property
    def release(self) -> tuple[float, ...]:
        """Earliest start of each task from precedence alone (heads)."""
        head = [0.0] * len(self.tasks)
        p = self.duration
        for j in self.topological:
            for arc in self.preds[j]:
                head[j] = max(head[j], head[arc.src] + p[arc.src] + arc.lag)
        return tuple(head)

    @cached_property
    def tail(self) -> tuple[float, ...]:
        """Least time that must pass after a task ends before everything can be done."""
        tail = [0.0] * len(self.tasks)
        p = self.duration
        for i in reversed(self.topological):
            for arc in self.succs[i]:
                tail[i] = max(tail[i], arc.lag + p[arc.dst] + tail[arc.dst])
        return tuple(tail)

    @cached_property
    def ancestors_mask(self) -> tuple[int, ...]:
        """Bitset of ancestors of each task (Python ints as bitsets: cheap for <= ~10^4 tasks)."""
        mask = [0] * len(self.tasks)
        for j in self.topological:
            m = 0
            for arc in self.preds[j]:
                m |= mask[arc.src] | (1 << arc.src)
            mask[j] = m
        return tuple(mask)

    def precedes(self, i: int, j: int) -> bool:
        """True when ``i`` must finish before ``j`` starts because of the data flow."""
        return bool(self.ancestors_mask[j] >> i & 1)

    # -- bounds ------------------------------------------------------------------------------
    @cached_property
    def critical_path(self) -> float:
        return max((self.release[i] + self.duration[i] + self.tail[i] for i in range(len(self.tasks))), default=0.0)

    @cached_property
    def stream_bound(self) -> float:
        """For every stream: earliest possible start + its total work + least tail."""
        best = 0.0
        for members in self.streams.values():
            load = sum(self.duration[i] for i in members)
            bound = min(self.release[i] for i in members) + load + min(self.tail[i] for i in members)
            best = max(best, bound)
        return best

    @property
    def lower_bound(self) -> float:
        """max(critical path, per-stream load bound): no schedule on this placement is shorter."""
        return max(self.critical_path, self.stream_bound)

    # -- timing an order ---------------------------------------------------------------------
    def left_shift(self, order: Mapping[tuple[str, str], Sequence[int]]) -> list[float]:
        """Start times when every task starts as early as its inputs and its stream allow.

        ``order`` lists, per stream, the task indices in execution order. Raises
        :class:`InfeasibleError` when the order deadlocks against the data flow.
        """
        n = len(self.tasks)
        start = [0.0] * n
        previous = [-1] * n
        for members in order.values():
            for a, b in zip(members, members[1:]):
                previous[b] = a
        indegree = [len(self.preds[j]) + (previous[j] >= 0) for j in range(n)]
        next_on_stream = [-1] * n
        for j in range(n):
            if previous[j] >= 0:
                next_on_stream[previous[j]] = j
        ready = [j for j in range(n) if indegree[j] == 0]
        done = 0
        p = self.duration
        while ready:
            i = ready.pop()
            done += 1
            end = start[i] + p[i]
            for arc in self.succs[i]:
                start[arc.dst] = max(start[arc.dst], end + arc.lag)
                indegree[arc.dst] -= 1
                if indegree[arc.dst] == 0:
                    ready.append(arc.dst)
            k = next_on_stream[i]
            if k >= 0:
                start[k] = max(start[k], end)
                indegree[k] -= 1
                if indegree[k] == 0:
                    ready.append(k)
        if done != n:
            raise InfeasibleError("the task order deadlocks against the data flow")
        return start

    def makespan(self, start: Sequence[float]) -> float:
        return max((start[i] + self.duration[i] for i in range(len(self.tasks))), default=0.0)

    def order_from_starts(self, start: Sequence[float]) -> dict[tuple[str, str], list[int]]:
        """Per stream, tasks sorted by start time (ties: data-flow order, then index)."""
        rank = {t: r for r, t in enumerate(self.topological)}
        return {key: sorted(members, key=lambda i: (round(start[i], 9), rank[i])) for key, members in self.streams.items()}

    def order_from_schedule(self, schedule: Schedule) -> dict[tuple[str, str], list[int]]:
        """The per-stream order of a schedule whose groups are flattened into single tasks."""
        order: dict[tuple[str, str], list[int]] = {key: [] for key in self.streams}
        for _, entry in schedule.entries():
            for task in entry.tasks:
                i = self.index[task]
                order[self.device_stream[i]].append(i)
        return order

    def to_schedule(self, order: Mapping[tuple[str, str], Sequence[int]], *, name: str, meta: Mapping) -> Schedule:
        """A schedule document listing, per device, its streams' tasks merged by start time."""
        start = self.left_shift(order)
        lists: dict[str, list[tuple[float, int, int]]] = {d: [] for d in self.devices}
        for (device, _), members in order.items():
            for position, i in enumerate(members):
                lists[device].append((start[i], position, i))
        devices = {d: tuple(Entry((self.tasks[i],)) for _, _, i in sorted(items)) for d, items in lists.items()}
        return Schedule(devices=devices, name=name, meta=meta)

    def memory_delta(self) -> tuple[tuple[float, float], ...]:
        """(bytes allocated at start, bytes freed at end) of each task, as the simulator counts them."""
        return tuple(self.problem.task_memory(t.op, t.kind) for t in self.tasks)

    @cached_property
    def static_memory(self) -> Mapping[str, float]:
        """Weights, gradients and optimizer state per device (:meth:`Problem.static_memory`)."""
        static = self.problem.static_memory(self.device_of)
        return {d: static[d] for d in self.devices}
