"""Which collectives of a schedule nothing else can slow down, so pricing them is exact.

A collective replayed on links (:mod:`simulator.collective_replay`) lasts exactly
:func:`simulator.collectives.collective_time` — the sum of its steps' α–β costs — when
(a) no two transfers of one of its steps share a link (then each step lasts its slowest
transfer, which is what :func:`simulator.collectives.step_time` prices), and (b) no other
traffic can hold one of its links meanwhile. Statically, (b) holds when every other user of
its links is a collective of its own *class* — the same group on the same stream, which
every member runs one at a time, so two of them never overlap — and no pipeline transfer
(a task's output sent to another device) crosses them. Such calls can be made priced
(:class:`simulator.schedule.CollectiveCall`) without changing the replay (but for float
rounding: a sum of step times instead of event times), at one
event each instead of ``steps × ranks`` transfers.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from simulator.cluster import Cluster
from simulator.collectives import Collective, collective_steps
from simulator.problem import Problem
from simulator.schedule import Entry, Schedule

__all__ = ["price_calls", "uncontended"]


def _links(c: Collective, cluster: Cluster) -> frozenset[str] | None:
    """The links ``c``'s transfers use; None when two transfers of one step share a link."""
    used: set[str] = set()
    seen_steps: set[int] = set()
    for step in collective_steps(c, cluster):
        if id(step) in seen_steps:  # a ring repeats one step object 2(n−1) times
            continue
        seen_steps.add(id(step))
        in_step: set[str] = set()
        for src, dst, _ in step:
            for link in cluster.route(src, dst).links:
                if link in in_step:
                    return None
                in_step.add(link)
        used |= in_step
    return frozenset(used)


def _pipeline_links(problem: Problem, schedule: Schedule) -> set[str]:
    """Every link a task's output crosses on its way to a consumer on another device."""
    placement = schedule.placement()
    consumers = problem.consumer_template
    pairs: set[tuple[str, str]] = set()
    for (op, mb, kind), device in placement.items():
        for cons_op, cons_kind, _ in consumers.get((op, kind), ()):
            target = placement.get((cons_op, mb, cons_kind))
            if target is not None and target != device:
                pairs.add((device, target))
    return {link for src, dst in pairs for link in problem.cluster.route(src, dst).links}


def uncontended(problem: Problem, schedule: Schedule) -> frozenset[str]:
    """Names of the schedule's collectives whose price is exactly what their link replay takes."""
    cluster = problem.cluster
    calls = schedule.collectives
    if cluster.ideal_interconnect:
        return frozenset(calls)
    by_class: dict[tuple[str, Collective], list[str]] = {}  # calls alike share one analysis
    for name, call in calls.items():
        by_class.setdefault((call.stream, call.collective), []).append(name)
    links = {key: _links(key[1], cluster) for key in by_class}
    users: dict[str, set] = {}
    for (stream, c), used in links.items():
        for link in used or ():
            users.setdefault(link, set()).add((stream, c.group))
    for link in _pipeline_links(problem, schedule):
        users.setdefault(link, set()).add("pipeline")
    free = [key for key, used in links.items()
            if used is not None and all(users[link] == {(key[0], key[1].group)} for link in used)]
    return frozenset(name for key in free for name in by_class[key])


def price_calls(schedule: Schedule, names: Iterable[str]) -> Schedule:
    """``schedule`` with the collectives ``names`` priced (everything else unchanged)."""
    names = frozenset(names)
    if not names:
        return schedule
    priced: dict[str, Entry] = {}  # one entry per call, shared by its members (entries are immutable)

    def swap(entry: Entry) -> Entry:
        call = entry.collective
        if call is None or call.name not in names:
            return entry
        found = priced.get(call.name)
        if found is None:
            found = priced[call.name] = Entry((), collective=replace(call, priced=True))
        return found

    devices = {device: tuple(swap(e) for e in entries) for device, entries in schedule.devices.items()}
    return Schedule(devices=devices, name=schedule.name, meta=schedule.meta)
