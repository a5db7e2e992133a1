"""Static checks of a schedule's collectives, before anything is replayed.

A collective only runs when every member of its group reaches it, so the mistakes
that hang an NCCL job hang a replay too; these checks name them up front: a group
device not in the cluster, a member that never calls the collective (the others would
wait forever), a device that calls a collective it is not a member of, two members
calling two collectives in opposite orders, and a collective waiting for a task its own
stream runs after it (or gating one its stream runs before it).
"""

from __future__ import annotations

from collections.abc import Callable

import networkx as nx

from simulator.collectives import node_groups
from simulator.errors import InputError
from simulator.problem import Problem, Task
from simulator.schedule import CollectiveCall, Schedule

__all__ = ["collective_violations"]

#: ``report(kind, message, device)``: ``deadlock`` for what would hang, ``collective`` otherwise.
Report = Callable[[str, str, "str | None"], None]


def collective_violations(problem: Problem, schedule: Schedule) -> list[tuple[str, str, str | None]]:
    """Every collective rule the schedule breaks, as ``(kind, message, device)``.

    ``kind`` is ``deadlock`` for what would hang the replay (and an NCCL job), else
    ``collective``; ``device`` is where (None for the collective as a whole).
    """
    found: list[tuple[str, str, str | None]] = []

    def report(kind: str, message: str, device: str | None = None) -> None:
        found.append((kind, message, device))

    calls = _calls(schedule, report)
    calls_on = _calls_by_device(schedule, report)
    for name, call in calls.items():
        _check_group(problem, name, call, calls_on, report, set(schedule.devices))
        _check_tasks(problem, name, call, report)
    _check_stream_order(problem, schedule, report)
    _check_orders_agree(schedule, report)
    return found


def _calls(schedule: Schedule, report: Report) -> dict[str, CollectiveCall]:
    calls: dict[str, CollectiveCall] = {}
    for _, entry in schedule.entries():
        call = entry.collective
        if call is None:
            continue
        known = calls.setdefault(call.name, call)
        if known != call:
            report("collective", f"collective {call.name!r} has two different definitions", None)
    return calls


def _calls_by_device(schedule: Schedule, report: Report) -> dict[str, set[str]]:
    """Device -> names of the collectives it lists; a name listed twice is reported."""
    out: dict[str, set[str]] = {}
    for device, entries in schedule.devices.items():
        seen = out.setdefault(device, set())
        for index, entry in enumerate(entries):
            if entry.collective is None:
                continue
            name = entry.collective.name
            if name in seen:
                report("collective", f"{device}[{index}]: collective {name!r} is listed twice on {device}", device)
            seen.add(name)
    return out


def _check_group(problem: Problem, name: str, call: CollectiveCall, calls_on: dict[str, set[str]], report: Report,
                 listed: set[str]) -> None:
    """Every member calls it (a priced call's members the schedule leaves out are stand-ins), no one else does."""
    group = call.collective.group
    cluster = problem.cluster.by_name
    for device in group:
        if device not in cluster:
            report("collective", f"collective {name!r}: group device {device!r} is not in the cluster", device)
        elif name not in calls_on.get(device, ()) and not (call.priced and device not in listed):
            report(
                "deadlock",
                f"deadlock: collective {name!r} never runs on {device}, a member of its group"
                f" {list(group)}: the other members would wait for it forever",
                device,
            )
    for device, names in calls_on.items():
        if name in names and device not in group:
            report("collective", f"{device} runs collective {name!r} but is not in its group {list(group)}", device)
    if call.collective.algorithm == "hierarchical" and all(d in cluster for d in group):
        try:
            node_groups(call.collective, problem.cluster)
        except InputError as exc:
            report("collective", f"collective {name!r}: {exc.message}", None)


def _check_tasks(problem: Problem, name: str, call: CollectiveCall, report: Report) -> None:
    for key, tasks in (("after", call.after), ("before", call.before)):
        for task in tasks:
            if not problem.is_task(task):
                report("collective", f"collective {name!r}: {key} names {task}, which does not exist in this problem", None)


def _positions(problem: Problem, schedule: Schedule) -> dict[Task, tuple[str, str, int]]:
    """Task -> (device, stream, entry index) for every listed task."""
    by_name = problem.graph.by_name
    out: dict[Task, tuple[str, str, int]] = {}
    for device, entries in schedule.devices.items():
        for index, entry in enumerate(entries):
            for task in entry.tasks:
                if task.op in by_name:
                    out[task] = (device, by_name[task.op].stream, index)
    return out


def _check_stream_order(problem: Problem, schedule: Schedule, report: Report) -> None:
    """An ``after`` task listed later on the same stream of a member (or a ``before``
    task listed earlier) can never be reached: that stream is stuck in the collective."""
    position = _positions(problem, schedule)
    for device, entries in schedule.devices.items():
        for index, entry in enumerate(entries):
            call = entry.collective
            if call is None:
                continue
            for task in call.after:
                where = position.get(task)
                if where is not None and where[:2] == (device, call.stream) and where[2] > index:
                    report("deadlock", f"deadlock: {device}[{index}] runs collective {call.name!r}, which waits"
                                       f" for {task}, listed after it on the same stream ({device}[{where[2]}])", device)
            for task in call.before:
                where = position.get(task)
                if where is not None and where[:2] == (device, call.stream) and where[2] < index:
                    report("deadlock", f"deadlock: {task} at {device}[{where[2]}] waits for collective"
                                       f" {call.name!r}, listed after it on the same stream ({device}[{index}])", device)


def _check_orders_agree(schedule: Schedule, report: Report) -> None:
    """Members must call shared collectives in one order: 'A then B' on one stream and
    'B then A' on another is the classic NCCL hang. Any cycle of such orders is one."""
    order = nx.DiGraph()
    for device, entries in schedule.devices.items():
        last: dict[str, str] = {}
        for entry in entries:
            call = entry.collective
            if call is None:
                continue
            previous = last.get(call.stream)
            if previous is not None and previous != call.name:
                order.add_edge(previous, call.name, device=device)
            last[call.stream] = call.name
    try:
        cycle = nx.find_cycle(order)
    except nx.NetworkXNoCycle:
        return
    parts = [f"{order.edges[a, b]['device']} runs {a!r} before {b!r}" for a, b in cycle]
    report("deadlock", "deadlock: collectives called in conflicting orders: " + ", ".join(parts), order.edges[cycle[0]]["device"])
