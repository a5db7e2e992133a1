"""Collectives in the replay: every member's stream meets, then the steps hold real links.

A collective call (:class:`simulator.schedule.CollectiveCall`) starts when every member
of its group has reached it on its stream and every task it comes ``after`` has
finished, as an NCCL kernel starts moving data once all ranks have launched it. Its
steps (:func:`simulator.collectives.collective_steps`) then run one after the other;
each point-to-point transfer of a step requests the links of its route (SimPy
``Resource`` of capacity 1, in the same global name order as every other transfer, so
nothing deadlocks) and holds them for ``latency + bytes / bandwidth``. Two collectives,
or a collective and a pipeline transfer, therefore slow each other exactly where their
routes share a link. Every member's stream is released when the last step ends; tasks
the call comes ``before`` may start then.

A *priced* call (``CollectiveCall.priced``) meets the same way but then holds its
members for :func:`simulator.collectives.collective_time` — the sum of its steps'
α–β costs on the idle cluster (a ring all-reduce over ``n`` ranks: ``2(n−1)·α +
2(n−1)/n · S/B``; NCCL's ring cost) — with no transfers: exact when nothing else uses its
links meanwhile, and one event instead of ``steps × ranks`` transfers. Members of its
group that the schedule does not list (data-parallel replicas left out of the replay)
are not waited for.

The engine (:mod:`simulator.engine`) owns the streams; this module owns the calls.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

import simpy

from simulator.cluster import Cluster, Route
from simulator.collectives import Collective, PointToPoint, Step, collective_steps, collective_time
from simulator.problem import Task
from simulator.schedule import CollectiveCall

__all__ = ["CollectiveRecord", "CollectiveTransfer", "CollectiveReplay", "collective_key"]

#: ``(src, dst) -> (route, link resources in acquisition order)``, or None when nothing travels.
PathLookup = Callable[[str, str], "tuple[Route, tuple[simpy.Resource, ...]] | None"]


def collective_key(name: str) -> tuple[str, str]:
    """The arrival key a task gated ``before`` a collective waits for."""
    return ("collective", name)


class CollectiveRecord(NamedTuple):
    """A collective as it ran: when every member was there (``start``) to its last step's end."""

    name: str
    op: str
    algorithm: str
    group: tuple[str, ...]
    bytes: float
    start: float
    end: float
    #: ``(start, end)`` of every step.
    steps: tuple[tuple[float, float], ...]
    #: Seconds it takes alone on the idle cluster (:func:`simulator.collectives.collective_time`):
    #: ``(end - start) / idle`` is the slowdown that contention caused.
    idle: float
    #: Replayed by its price (``end - start == idle``), not by its steps' transfers.
    priced: bool = False


class CollectiveTransfer(NamedTuple):
    """One point-to-point transfer of one step of a collective."""

    collective: str
    step: int
    src: str
    dst: str
    bytes: float
    start: float
    end: float
    links: tuple[str, ...]


class _StepMove:
    """One transfer of a step, driven by SimPy callbacks like the engine's tensor moves."""

    __slots__ = ("run", "step", "part", "route", "resources", "requests", "start")

    def __init__(self, run: _Run, step: int, part: PointToPoint, route: Route, resources: tuple):
        self.run, self.step, self.part = run, step, part
        self.route, self.resources = route, resources
        self.requests: list = []
        self.start = 0.0
        self._acquire(None)

    def _acquire(self, _event: simpy.Event | None) -> None:
        """Request the next link of the route, or start moving once every link is held."""
        if len(self.requests) < len(self.resources):
            request = self.resources[len(self.requests)].request()
            self.requests.append(request)
            request.callbacks.append(self._acquire)
            return
        env = self.run.owner.env
        self.start = env.now
        env.timeout(self.route.transfer_time(self.part.bytes)).callbacks.append(self._finish)

    def _finish(self, _event: simpy.Event) -> None:
        for resource, request in zip(self.resources, self.requests):
            resource.release(request)
        run = self.run
        src, dst, size = self.part
        run.owner.transfers.append(
            CollectiveTransfer(run.call.name, self.step, src, dst, size, self.start, run.owner.env.now, self.route.links)
        )
        run.transfer_done()


class _Run:
    """The state of one call: who has arrived, which step runs, how many transfers are out."""

    def __init__(self, owner: CollectiveReplay, call: CollectiveCall, cluster: Cluster):
        self.owner = owner
        self.call = call
        if call.priced:
            self.steps, self.idle = (), owner.price_of(call.collective, cluster)
            members = set(call.collective.group)
            self.missing_members = members if owner.listed is None else members & owner.listed
        else:
            self.steps, self.idle = owner.steps_of(call.collective, cluster)
            self.missing_members = set(call.collective.group)
        self.missing_inputs = set(call.after)
        self.done = simpy.Event(owner.env)
        self.started = False
        self.start = self.end = 0.0
        self.step = -1
        self.step_start = 0.0
        self.outstanding = 0
        self.step_times: list[tuple[float, float]] = []

    def arrive(self, device: str) -> None:
        self.missing_members.discard(device)
        self._maybe_start()

    def input_done(self, task: Task) -> None:
        self.missing_inputs.discard(task)
        self._maybe_start()

    def _maybe_start(self) -> None:
        if self.started or self.missing_members or self.missing_inputs:
            return
        self.started = True
        self.start = self.owner.env.now
        if self.call.priced:
            self.owner.env.timeout(self.idle).callbacks.append(self._priced_end)
            return
        self._next_step()

    def _priced_end(self, _event: simpy.Event) -> None:
        self.step_times.append((self.start, self.owner.env.now))
        self._finish()

    def _next_step(self) -> None:
        """Launch the following step; steps whose transfers are all free complete at once."""
        env = self.owner.env
        while True:
            if self.step >= 0:
                self.step_times.append((self.step_start, env.now))
            self.step += 1
            if self.step == len(self.steps):
                self._finish()
                return
            self.step_start = env.now
            moves = []
            for part in self.steps[self.step]:
                path = self.owner.path(part.src, part.dst)
                if path is not None:
                    moves.append((part, path))
            if moves:
                self.outstanding = len(moves)
                for part, (route, resources) in moves:
                    _StepMove(self, self.step, part, route, resources)
                return

    def transfer_done(self) -> None:
        self.outstanding -= 1
        if self.outstanding == 0:
            self._next_step()

    def _finish(self) -> None:
        owner, c = self.owner, self.call.collective
        self.end = owner.env.now
        owner.records.append(
            CollectiveRecord(self.call.name, c.op, c.algorithm, c.group, c.bytes, self.start, self.end,
                             tuple(self.step_times), self.idle, self.call.priced)
        )
        self.done.succeed()
        owner.arrive(collective_key(self.call.name))


class CollectiveReplay:
    """Every collective call of one replay.

    ``env`` is the replay's environment, ``path`` its cached route lookup, ``arrive``
    the function that marks a key as arrived (waking whatever waits for it), ``listed``
    the devices the schedule lists (a priced call waits only for those of its members;
    None: for all of them).
    """

    def __init__(self, env: simpy.Environment, cluster: Cluster, calls: Mapping[str, CollectiveCall],
                 path: PathLookup, arrive: Callable[[Any], None], listed: Iterable[str] | None = None):
        self.env = env
        self.path = path
        self.arrive = arrive
        self.listed = None if listed is None else frozenset(listed)
        self.records: list[CollectiveRecord] = []
        self.transfers: list[CollectiveTransfer] = []
        self._steps: dict[Collective, tuple[tuple[Step, ...], float]] = {}
        self._prices: dict[Collective, float] = {}
        self.runs = {name: _Run(self, call, cluster) for name, call in calls.items()}
        #: Task -> the runs that wait for it to finish (``after``).
        self.watch: dict[Task, list[_Run]] = {}
        #: Task -> the collective keys it waits for (``before``).
        self.gates: dict[Task, list[tuple[str, str]]] = {}
        for name, call in calls.items():
            for task in call.after:
                self.watch.setdefault(task, []).append(self.runs[name])
            for task in call.before:
                self.gates.setdefault(task, []).append(collective_key(name))

    def steps_of(self, collective: Collective, cluster: Cluster) -> tuple[tuple[Step, ...], float]:
        """The steps of ``collective`` and its idle-cluster time, computed once per replay
        (layouts repeat the same bucket all-reduce or layer all-gather many times)."""
        known = self._steps.get(collective)
        if known is None:
            known = self._steps[collective] = (collective_steps(collective, cluster), collective_time(collective, cluster))
        return known

    def price_of(self, collective: Collective, cluster: Cluster) -> float:
        """:func:`collective_time` of ``collective``, computed once per replay."""
        known = self._prices.get(collective)
        if known is None:
            known = self._prices[collective] = collective_time(collective, cluster)
        return known

    def member_arrives(self, name: str, device: str) -> _Run:
        run = self.runs[name]
        run.arrive(device)
        return run

    def task_done(self, task: Task) -> None:
        for run in self.watch.get(task, ()):
            run.input_done(task)

    def blockers(self, name: str) -> tuple[list[str], list[Task]]:
        """Why ``name`` has not started: members not yet there, inputs not yet done (sorted)."""
        run = self.runs[name]
        return sorted(run.missing_members), sorted(run.missing_inputs)
