"""Replaying a schedule on a SimPy model of the cluster.

Each device has one SimPy process per stream (``compute``, ``comm``) that walks its
entries in the listed order: an entry starts once every input has *arrived on this
device* and the stream is free (and not before its declared ``start``, if any). When
a task finishes, its outputs go to the devices of the tasks that consume them: at
once on the same device, otherwise as a transfer process that holds every link of the
route (SimPy ``Resource`` of capacity 1, acquired in a fixed order so transfers never
deadlock each other) for ``latency + bytes / bandwidth``. Memory is a plain float per
device (bytes in use), not a SimPy ``Container``: nothing ever waits for memory, an
allocation that goes over the capacity is recorded as a violation instead of blocking.

Collective entries (all-reduce, all-to-all, ...) are replayed by
:mod:`simulator.collective_replay`: a member's stream waits in the collective until
every member is there and its steps' transfers, holding real links, have run (or, for a
priced call, for its idle-cluster α–β time, with no transfers).

When the event queue runs dry with entries still waiting, the schedule deadlocks: the
streams' wait-for relation is followed to name the cycle.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from types import MappingProxyType
from typing import NamedTuple

import simpy
from simpy.core import URGENT

from simulator.cluster import Route
from simulator.collective_replay import CollectiveRecord, CollectiveReplay, CollectiveTransfer, collective_key
from simulator.errors import ScheduleRejected
from simulator.problem import Problem, Task
from simulator.schedule import CollectiveCall, Entry, Schedule
from simulator.validation import static_violations
from simulator.violations import Violation

__all__ = ["Executed", "Transfer", "Timeline", "gc_paused", "replay", "simulate"]


class Executed(NamedTuple):
    """An entry as it ran: on which device and stream, from ``start`` to ``end`` (seconds)."""

    device: str
    stream: str
    entry: Entry
    start: float
    end: float


class Transfer(NamedTuple):
    """A tensor moved between devices: ``pred``'s output for ``consumer``."""

    pred: Task
    consumer: Task
    src: str
    dst: str
    bytes: float
    start: float
    end: float
    links: tuple[str, ...]


@dataclass(frozen=True)
class Timeline:
    """Everything that happened in one replay, plus every violation it found."""

    problem: Problem
    schedule: Schedule
    executed: tuple[Executed, ...]
    transfers: tuple[Transfer, ...]
    #: Per device: (time, bytes in use) after each change, starting with static memory at 0.
    memory: Mapping[str, tuple[tuple[float, float], ...]]
    static_memory: Mapping[str, float]
    violations: tuple[Violation, ...]
    makespan: float
    completed: bool
    #: Every collective as it ran, and the point-to-point transfers of its steps.
    collectives: tuple[CollectiveRecord, ...] = ()
    collective_transfers: tuple[CollectiveTransfer, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.violations

    def memory_peaks(self) -> dict[str, tuple[float, float]]:
        """Per device: ``(time, bytes)`` of its highest memory level (the first time it is reached).

        The one place a peak is read off the samples: reports, ``--memory-like`` and the
        planner's memory checks all use it.
        """
        return {device: max(samples, key=lambda s: (s[1], -s[0])) for device, samples in self.memory.items()}


#: Flat key of a delivered tensor: (pred_op, pred_kind, mb, consumer_op, consumer_kind).
_Key = tuple


class _StreamState:
    __slots__ = ("device", "stream", "entries", "position", "waiting_on", "done")

    def __init__(self, device: str, stream: str, entries: list[Entry]):
        self.device = device
        self.stream = stream
        self.entries = entries
        self.position = 0
        self.waiting_on: _Key | None = None
        self.done = False


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector inside the block (re-entrant).

    A replay allocates millions of objects (events, keys, records) that all stay
    referenced until it ends; the collector rescanning them meanwhile cost 15-35% of a
    100k-task replay in ``benchmarks/sim_throughput.py`` and reclaims nothing.
    Reference counting still frees everything as usual.

    >>> import gc
    >>> with gc_paused():
    ...     gc.isenabled()
    False
    >>> gc.isenabled()
    True
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def replay(problem: Problem, schedule: Schedule) -> Timeline:
    """Replay ``schedule``; static violations raise :class:`ScheduleRejected` at once,
    run-time ones (deadlock, memory over capacity, an impossible declared start) are
    returned in ``Timeline.violations``.

    GPipe on 4 stages and 8 micro-batches, F = B = W = 1 ms (the bundled example):

    >>> from simulator.metrics import build_report
    >>> from simulator.scenario import load_scenario
    >>> from simulator.schedule import load_schedule
    >>> scenario = load_scenario("scenarios/pipeline-4x8.yaml")
    >>> timeline = replay(scenario.problem, load_schedule(scenario.schedule_file))
    >>> timeline.ok, round(timeline.makespan * 1e3, 9)  # (m + p - 1)(F + B + W)
    (True, 33.0)
    >>> report = build_report(timeline)
    >>> round(report.max_bubble * 1e3, 9), report.peak_memory / 1e9  # (p - 1)(F + B + W); 10 GB static + 8 x 2 GB
    (9.0, 26.0)
    """
    with gc_paused():
        static = static_violations(problem, schedule)
        if static:
            raise ScheduleRejected(static)
        return _Replay(problem, schedule).run()


def simulate(problem: Problem, schedule: Schedule) -> Timeline:
    """Replay and reject on any violation: the strict entry point for hand-written schedules."""
    timeline = replay(problem, schedule)
    if timeline.violations:
        raise ScheduleRejected(list(timeline.violations))
    return timeline


class _Move:
    """One tensor in flight between two devices, driven by SimPy callbacks.

    It does what a SimPy process per transfer would do (start with an urgent event,
    request the route's links one at a time in name order, hold them for
    ``latency + bytes / bandwidth``, release them and deliver), with the same events in
    the same order (less the process's own end event, which nothing waits for), but
    without a generator and a process object per transfer: a replay moves one tensor
    per cross-device edge and micro-batch, so this path runs tens of thousands of times.
    """

    __slots__ = ("replay", "key", "src", "dst", "size", "route", "resources", "requests", "start")

    def __init__(self, replay: _Replay, key: _Key, src: str, dst: str, size: float, route: Route, resources: tuple):
        self.replay = replay
        self.key = key
        self.src = src
        self.dst = dst
        self.size = size
        self.route = route
        self.resources = resources
        self.requests: list = []
        self.start = 0.0
        env = replay.env
        begin = simpy.Event(env)
        begin._ok = True  # what simpy.Process's Initialize event is: urgent, already triggered
        begin._value = None
        begin.callbacks.append(self._acquire)
        env.schedule(begin, URGENT)

    def _acquire(self, _event: simpy.Event) -> None:
        """Request the next link, or start moving once every link is held."""
        requests = self.requests
        if len(requests) < len(self.resources):
            request = self.resources[len(requests)].request()
            requests.append(request)
            request.callbacks.append(self._acquire)
            return
        env = self.replay.env
        self.start = env.now
        duration = self.route.transfer_time(self.size)
        if duration > 0:
            env.timeout(duration).callbacks.append(self._finish)
        else:
            self._finish(None)

    def _finish(self, _event: simpy.Event | None) -> None:
        for resource, request in zip(self.resources, self.requests):
            resource.release(request)
        replay = self.replay
        key = self.key
        pred = Task(key[0], key[2], key[1])
        consumer = Task(key[3], key[2], key[4])
        replay.transfers.append(Transfer(pred, consumer, self.src, self.dst, self.size, self.start, replay.env.now, self.route.links))
        replay._arrive(key)


class _Replay:
    """One replay's mutable state; the public surface is :func:`replay`."""

    def __init__(self, problem: Problem, schedule: Schedule):
        self.problem = problem
        self.schedule = schedule
        self.env = simpy.Environment()
        self.placement: dict[tuple, str] = schedule.placement()
        self.arrival: dict[_Key, float] = {}
        self.waiting: dict[_Key, simpy.Event] = {}
        self.executed: list[Executed] = []
        self.transfers: list[Transfer] = []
        self.violations: list[Violation] = []
        cluster = problem.cluster
        self.links = {link.name: simpy.Resource(self.env, capacity=1) for link in cluster.links}
        self.capacity = {d.name: d.memory_bytes for d in cluster.devices}
        self.over_capacity: dict[str, tuple[float, float]] = {}
        self.deps = problem.dependency_template
        self.cons = problem.consumer_template
        #: ``(op, kind) -> ((pred_op, pred_kind), ...)``: the inputs' keys without their sizes.
        self.preds = {key: tuple((p, k) for p, k, _ in deps) for key, deps in self.deps.items()}
        #: ``(src, dst) -> (route, link resources)`` or None when nothing travels; see :meth:`_path`.
        self.paths: dict[tuple[str, str], tuple[Route, tuple[simpy.Resource, ...]] | None] = {}
        self.task_memory = {key: problem.task_memory(*key) for key in self.deps}
        # Memory: static (weights, gradients, optimizer state of every operator the device runs).
        static = problem.static_memory(self.placement)
        self.static = {d: static.get(d, 0.0) for d in schedule.devices}
        #: Bytes in use per device.
        self.level = dict.fromkeys(schedule.devices, 0.0)
        self.samples: dict[str, list[tuple[float, float]]] = {d: [(0.0, 0.0)] for d in schedule.devices}
        for device, amount in self.static.items():
            self._allocate(device, amount)
        self.states: list[_StreamState] = []
        self.owner: dict[tuple, _StreamState] = {}
        self.coll: CollectiveReplay | None = None
        self.watched: dict = {}
        self.gates: dict = {}
        #: ``(collective name, device) -> the stream state that runs it``, for deadlock reports.
        self.coll_member: dict[tuple[str, str], _StreamState] = {}

    def _streams(self) -> tuple[list[tuple[str, str, list[Entry]]], dict[str, CollectiveCall]]:
        """``(device, stream, entries)`` per stream in a fixed order, and the collective calls."""
        stream_of_op = {name: op.stream for name, op in self.problem.graph.by_name.items()}
        calls: dict[str, CollectiveCall] = {}
        out = []
        for device, entries in self.schedule.devices.items():
            by_stream: dict[str, list[Entry]] = {}
            for entry in entries:
                call = entry.collective
                if call is None:
                    by_stream.setdefault(stream_of_op[entry.tasks[0].op], []).append(entry)
                else:
                    calls.setdefault(call.name, call)
                    by_stream.setdefault(call.stream, []).append(entry)
            out += [(device, stream, stream_entries) for stream, stream_entries in sorted(by_stream.items())]
        return out, calls

    def _init_collectives(self, calls: dict[str, CollectiveCall]) -> None:
        """The schedule's collective calls: ``watched`` tasks wake a collective when they
        finish, ``gates`` hold tasks until a collective has ended (both stay empty, and so
        free in the stream loop, for schedules without collectives)."""
        self.coll = CollectiveReplay(self.env, self.problem.cluster, calls, self._path, self._arrive, self.schedule.devices)
        self.watched, self.gates = self.coll.watch, self.coll.gates

    def _collective(self, state: _StreamState, entry: Entry, held: list):
        """This device's part in a collective: arrive, wait for it to end, record it; then
        the sends an earlier slot ``held`` for the end of its next slot leave."""
        call = entry.collective
        run = self.coll.member_arrives(call.name, state.device)  # type: ignore[union-attr]
        state.waiting_on = collective_key(call.name)
        yield run.done
        state.waiting_on = None
        self.executed.append(Executed(state.device, state.stream, entry, run.start, run.end))
        self._send(entry, held, state.device)

    def _tasks_done(self, tasks: tuple[Task, ...]) -> None:
        """Wake the collectives that wait for any of ``tasks`` (their ``after``)."""
        for task in tasks:
            if task in self.watched:
                self.coll.task_done(task)  # type: ignore[union-attr]

    def _gated(self, entry: Entry, inputs) -> list:
        """``inputs`` plus the collectives that ``entry``'s tasks are declared ``before``."""
        extra = [key for task in entry.tasks for key in self.gates.get(task, ())]
        return [*inputs, *extra] if extra else inputs

    # -- memory ----------------------------------------------------------------------------
    def _allocate(self, device: str, amount: float) -> None:
        if amount <= 0:
            return
        level = self.level[device] = self.level[device] + amount
        self.samples[device].append((self.env.now, level))
        if level > self.capacity[device] * (1 + 1e-12):
            worst = self.over_capacity.get(device)
            if worst is None or level > worst[1]:
                self.over_capacity[device] = (self.env.now, level)

    def _free(self, device: str, amount: float) -> None:
        if amount <= 0:
            return
        level = self.level[device] = self.level[device] - amount
        self.samples[device].append((self.env.now, level))

    # -- data movement ---------------------------------------------------------------------
    def _arrive(self, key: _Key) -> None:
        self.arrival[key] = self.env.now
        event = self.waiting.pop(key, None)
        if event is not None:
            event.succeed()

    def _path(self, src: str, dst: str) -> tuple[Route, tuple[simpy.Resource, ...]] | None:
        """The route from ``src`` to ``dst`` and its link resources in acquisition order
        (None when nothing travels: an ideal interconnect), cached per device pair."""
        key = (src, dst)
        if key not in self.paths:
            route = self.problem.cluster.route(src, dst)
            # One global order (by link name): transfers holding several links cannot deadlock.
            resources = tuple(self.links[name] for name in sorted(route.links))
            self.paths[key] = (route, resources) if route.links else None
        return self.paths[key]

    def _deliver(self, task: tuple, device: str, where: str = "all") -> None:
        """Send ``task``'s outputs to every consumer: at once on the same device (or over
        an ideal interconnect), otherwise as a transfer over the route. ``where``:
        ``local`` / ``remote`` hands over only to consumers on / off ``device``."""
        op, mb, kind = task
        placement, paths = self.placement, self.paths
        arrival, waiting, now = self.arrival, self.waiting, self.env.now
        for cons_op, cons_kind, size in self.cons[op, kind]:
            key = (op, kind, mb, cons_op, cons_kind)
            target = placement[cons_op, mb, cons_kind]
            if where != "all" and (target == device) != (where == "local"):
                continue
            if target != device:
                path = paths[device, target] if (device, target) in paths else self._path(device, target)
                if path is not None:
                    _Move(self, key, device, target, size, *path)
                    continue
            arrival[key] = now  # what _arrive does, inlined: this loop runs once per edge and task
            event = waiting.pop(key, None)
            if event is not None:
                event.succeed()

    def _send(self, entry: Entry, held: list, device: str) -> None:
        """Deliver a finished slot's outputs, and those an earlier ``send_after_next`` slot held.

        A ``send_after_next`` slot hands its activations to its own device at once and
        keeps its sends for the end of the next slot (DualPipe's reference send points).
        """
        for task in held:  # an earlier slot's sends leave now, whatever this slot does
            self._deliver(task, device, "remote")
        held.clear()
        if entry.send_after_next:
            for task in entry.tasks:
                self._deliver(task, device, "local")
            held.extend(entry.tasks)
            return
        for task in entry.tasks:
            self._deliver(task, device)

    # -- streams ---------------------------------------------------------------------------
    def _inputs(self, entry: Entry) -> list[_Key]:
        """Keys of the tensors ``entry`` waits for, in a fixed order (outputs of its own
        group's tasks excluded: they are produced inside the slot)."""
        preds = self.preds
        if len(entry.tasks) == 1:
            op, mb, kind = entry.tasks[0]
            return [(p, k, mb, op, kind) for p, k in preds[op, kind]]
        inside = set(entry.tasks)
        return [
            (p, k, mb, op, kind)
            for op, mb, kind in entry.tasks
            for p, k in preds[op, kind]
            if (p, mb, k) not in inside
        ]

    def _prefetched(self, entry: Entry, device: str) -> list[_Key]:
        """Inputs from other devices of ``entry``'s prefetched tasks (receives posted early)."""
        return [
            (p, k, mb, op, kind)
            for op, mb, kind in entry.prefetch
            for p, k in self.preds[op, kind]
            if self.placement.get((p, mb, k), device) != device
        ]

    def _costs(self, device: str) -> dict[tuple[str, str], tuple[float, float, float]]:
        """``(op, kind) -> (seconds on device, bytes allocated at start, bytes freed at end)``."""
        problem = self.problem
        device_obj = problem.cluster.by_name[device]
        return {
            (op, kind): (problem.duration(Task(op, 0, kind), device_obj), *self.task_memory[op, kind]) for op, kind in self.deps
        }

    def _stream(self, state: _StreamState):
        """The SimPy process of one device stream: each entry waits for its inputs (and its
        declared start), allocates, runs, frees and delivers, in the listed order."""
        env = self.env
        device, stream = state.device, state.stream
        costs = self._costs(device)
        preds = self.preds
        arrival, waiting = self.arrival, self.waiting
        executed = self.executed
        allocate, free, deliver = self._allocate, self._free, self._deliver
        held: list = []  # outputs of a slot that sends only after the next one
        gates, watched = self.gates, self.watched
        for index, entry in enumerate(state.entries):
            state.position = index
            tasks = entry.tasks
            if entry.collective is not None:
                yield from self._collective(state, entry, held)
                continue
            if len(tasks) == 1:
                op, mb, kind = tasks[0]
                template = preds[op, kind]
                inputs = [(p, k, mb, op, kind) for p, k in template] if template else ()
            else:
                inputs = self._inputs(entry)
            if entry.prefetch:
                inputs = [*inputs, *self._prefetched(entry, device)]
            if gates:
                inputs = self._gated(entry, inputs)
            for key in inputs:
                if key not in arrival:
                    event = waiting.get(key)
                    if event is None:
                        event = waiting[key] = env.event()
                    state.waiting_on = key
                    yield event
            state.waiting_on = None
            if entry.start is not None:
                if entry.start > env.now:
                    yield env.timeout(entry.start - env.now)
                else:
                    self._check_start(entry, device)
            start = env.now
            if len(tasks) == 1:
                duration, alloc, freed = costs[op, kind]
                if alloc > 0:
                    allocate(device, alloc)
            else:
                duration, freed = self._start_group(entry, costs, device)
            if duration > 0:
                yield env.timeout(duration)
            if freed > 0:
                free(device, freed)
            executed.append(Executed(device, stream, entry, start, env.now))
            self._send(entry, held, device)
            if watched:
                self._tasks_done(tasks)
        for task in held:
            deliver(task, device, "remote")
        state.position = len(state.entries)
        state.done = True

    def _start_group(self, entry: Entry, costs: Mapping, device: str) -> tuple[float, float]:
        """Allocate for every task of a group at its start; return (seconds, bytes freed at its end)."""
        parts = [costs[op, kind] for op, _, kind in entry.tasks]
        times = [part[0] for part in parts]
        if entry.overlap:
            duration = self.problem.fused_duration(times[0], sum(times[1:]))
        else:
            duration = sum(times)
        freed = 0.0
        for _, alloc, task_frees in parts:
            self._allocate(device, alloc)
            freed += task_frees
        return duration, freed

    def _check_start(self, entry: Entry, device: str) -> None:
        """An entry ready only after its declared start runs late: a ``start`` violation."""
        declared, ready = entry.start, self.env.now
        assert declared is not None
        if declared < ready - (1e-9 + 1e-6 * declared):
            message = (f"{entry} on {device} is declared to start at {declared * 1e3:.6g} ms"
                       f" but cannot start before {ready * 1e3:.6g} ms (inputs or the stream are not ready)")
            self.violations.append(Violation("start", message, device=device, task=entry.tasks[0],
                                             time=declared, amount=ready - declared))

    def run(self) -> Timeline:
        with gc_paused():
            return self._run()

    def _run(self) -> Timeline:
        owner = self.owner
        streams, calls = self._streams()
        if calls:
            self._init_collectives(calls)
        for device, stream, stream_entries in streams:
            state = _StreamState(device, stream, stream_entries)
            self.states.append(state)
            owner.update((task, state) for entry in stream_entries for task in entry.tasks)
            if calls:
                self.coll_member.update(((e.collective.name, device), state) for e in stream_entries if e.collective)
            self.env.process(self._stream(state))
        self.env.run()
        completed = all(state.done for state in self.states)
        if not completed:
            self.violations.insert(0, self._deadlock())
        for device, (when, level) in sorted(self.over_capacity.items()):
            cap = self.capacity[device]
            message = (f"memory over capacity on {device}: {level / 1e9:.4g} GB in use at {when * 1e3:.6g} ms,"
                       f" {(level - cap) / 1e9:.4g} GB over its {cap / 1e9:.4g} GB")
            self.violations.append(Violation("memory", message, device=device, time=when, amount=level - cap))
        ends = [e.end for e in self.executed] + [t.end for t in self.transfers]
        coll = self.coll
        return Timeline(
            problem=self.problem,
            schedule=self.schedule,
            executed=tuple(self.executed),
            transfers=tuple(self.transfers),
            memory=MappingProxyType({d: tuple(s) for d, s in self.samples.items()}),
            static_memory=MappingProxyType(dict(self.static)),
            violations=tuple(self.violations),
            makespan=max(ends, default=0.0),
            completed=completed,
            collectives=tuple(coll.records) if coll else (),
            collective_transfers=tuple(coll.transfers) if coll else (),
        )

    def _deadlock(self) -> Violation:
        """Follow 'stream A waits for a task that stream B has not run' to a cycle."""
        stuck = [s for s in self.states if not s.done]
        for first in stuck:
            seen: list[_StreamState] = []
            state: _StreamState | None = first
            while state is not None and state not in seen:
                seen.append(state)
                state = self._blocker(state)
            if state is None:
                continue
            cycle = seen[seen.index(state):]
            return Violation("deadlock", "deadlock: " + "; ".join(self._waits(s) for s in cycle),
                             device=cycle[0].device, task=self._waiting_task(cycle[0]))
        heads = ", ".join(f"{s.device}:{s.entries[s.position]}" for s in stuck[:5])
        message = f"deadlock: {len(stuck)} streams never finished (stuck at {heads})"
        return Violation("deadlock", message, device=stuck[0].device, task=self._waiting_task(stuck[0]))

    @staticmethod
    def _waiting_task(state: _StreamState) -> Task | None:
        """The task ``state`` is stuck at: the consumer of the input it waits for, else its
        entry's first task (None in a collective entry, which has no task)."""
        key = state.waiting_on
        if key is not None and len(key) == 5:
            return Task(key[3], key[2], key[4])
        tasks = state.entries[state.position].tasks if state.position < len(state.entries) else ()
        return tasks[0] if tasks else None

    def _blocker(self, state: _StreamState) -> _StreamState | None:
        """The stream ``state`` waits for: the owner of its missing input or, in a
        collective, a member not there yet or the owner of an ``after`` task not yet run."""
        key = state.waiting_on
        if key is None:
            return None
        if len(key) == 2:  # a collective
            members, inputs = self.coll.blockers(key[1])  # type: ignore[union-attr]
            if members:
                return self.coll_member.get((key[1], members[0]))
            return self.owner.get(inputs[0]) if inputs else None
        pred_op, pred_kind, mb = key[:3]
        return self.owner.get((pred_op, mb, pred_kind))

    def _waits(self, state: _StreamState) -> str:
        """One link of a deadlock cycle, in words."""
        key = state.waiting_on
        if len(key) == 2:  # type: ignore[arg-type]
            members, inputs = self.coll.blockers(key[1])  # type: ignore[union-attr,index]
            why = f"{', '.join(members)} not there yet" if members else f"{inputs[0]} not yet run"
            entry = state.entries[state.position]
            if entry.collective is None:
                return f"{state.device} waits at {entry} for collective {key[1]!r} ({why})"  # type: ignore[index]
            return f"{state.device} waits in collective {key[1]!r} ({why})"  # type: ignore[index]
        pred_op, pred_kind, mb, cons_op, cons_kind = key  # type: ignore[misc]
        owner = self.owner[(pred_op, mb, pred_kind)]
        return (f"{state.device} waits at {Task(cons_op, mb, cons_kind)} for {Task(pred_op, mb, pred_kind)}"
                f" (on {owner.device}, not yet run)")
