"""Static checks of a schedule against a problem, before anything is simulated.

These find what can be seen without running: devices not in the cluster, tasks that do
not exist, tasks missing or listed twice, a backward pass placed away from the
activations of its forward pass, and a task listed before one of its inputs on the
same stream (a dependency the order itself violates). Deadlocks across devices and
memory over capacity are found by the replay (:mod:`simulator.engine`).
"""

from __future__ import annotations

from simulator.collective_validation import collective_violations
from simulator.problem import Problem, Task
from simulator.schedule import Entry, Schedule
from simulator.violations import Violation

__all__ = ["static_violations"]

#: Stop listing a kind of violation after this many (the count is still reported).
_MAX_PER_KIND = 20

#: task -> (device, stream, entry index, position inside the entry)
_Positions = dict[tuple, tuple[str, str, int, int]]


class _Found:
    """Violations collected per kind, kinds kept in the order first met."""

    def __init__(self) -> None:
        self.by_kind: dict[str, list[Violation]] = {}
        #: Whether any entry is a collective call (checked by :func:`collective_violations`).
        self.collectives = False

    def add(self, violation: Violation) -> None:
        self.by_kind.setdefault(violation.kind, []).append(violation)

    def listed(self) -> list[Violation]:
        """Every kind's first :data:`_MAX_PER_KIND`, then one ``omitted`` entry with the rest's count."""
        out: list[Violation] = []
        for kind, items in self.by_kind.items():
            out.extend(items[:_MAX_PER_KIND])
            if len(items) > _MAX_PER_KIND:
                more = len(items) - _MAX_PER_KIND
                out.append(Violation("omitted", f"... and {more} more {kind} violations", amount=more))
        return out


def static_violations(problem: Problem, schedule: Schedule) -> list[Violation]:
    """Every rule the schedule breaks that can be seen without replaying it.

    An empty list means the replay may proceed.
    """
    found = _Found()
    position = _positions(problem, schedule, found)
    if len(position) != problem.task_count:
        for task in problem.tasks():
            if task not in position:
                found.add(Violation("missing", f"task {task} is not scheduled on any device", task=task))
    _check_inputs(problem, position, found)
    if found.collectives:
        for kind, message, device in collective_violations(problem, schedule):
            found.add(Violation(kind, message, device=device))
    return found.listed()


def _positions(problem: Problem, schedule: Schedule, found: _Found) -> _Positions:
    """Where each known task is listed; unknown devices and tasks, duplicates and bad
    groups go to ``found``."""
    cluster = problem.cluster.by_name
    stream_of_op = {name: op.stream for name, op in problem.graph.by_name.items()}
    kinds = problem.workload.kinds
    micro_batches = problem.workload.micro_batches
    position: _Positions = {}
    for device, entries in schedule.devices.items():
        if device not in cluster:
            known = ", ".join(list(cluster)[:8]) + (", ..." if len(cluster) > 8 else "")
            found.add(Violation("device", f"device {device!r} is not in the cluster (devices: {known})", device=device))
            continue
        for index, entry in enumerate(entries):
            tasks = entry.tasks
            if len(tasks) == 1:  # the common case, without a group's bookkeeping
                task = tasks[0]
                stream = stream_of_op.get(task[0])
                if stream is None or task[2] not in kinds or not 0 <= task[1] < micro_batches or task in position:
                    _report_task(problem, task, device, index, position, found)
                else:
                    position[task] = (device, stream, index, 0)
                continue
            if entry.collective is not None:
                found.collectives = True
                continue
            streams = set()
            for slot, task in enumerate(tasks):
                stream = stream_of_op.get(task[0])
                if stream is None or task[2] not in kinds or not 0 <= task[1] < micro_batches or task in position:
                    _report_task(problem, task, device, index, position, found)
                else:
                    streams.add(stream)
                    position[task] = (device, stream, index, slot)
            _check_group(entry, streams, problem, device, index, found)
    return position


def _report_task(problem: Problem, task: Task, device: str, index: int, position: _Positions, found: _Found) -> None:
    """``task`` at ``device[index]`` does not exist, or is listed a second time."""
    if not problem.is_task(task):
        message = f"{device}[{index}]: task {task} does not exist in this problem ({_why_unknown(problem, task)})"
        found.add(Violation("unknown", message, device=device, task=task))
    else:
        other = position[task]
        message = f"task {task} is listed twice ({other[0]}[{other[2]}] and {device}[{index}])"
        found.add(Violation("duplicate", message, device=device, task=task))


def _check_group(entry: Entry, streams: set[str], problem: Problem, device: str, index: int, found: _Found) -> None:
    """A group's tasks share one stream; an overlapped first task is independent of the rest."""
    if len(streams) > 1:
        found.add(Violation("group", f"{device}[{index}]: grouped tasks {entry} run on different streams",
                            device=device, task=entry.tasks[0]))
    if not entry.overlap:
        return
    first, rest = entry.tasks[0], set(entry.tasks[1:])
    if not problem.is_task(first) or not all(problem.is_task(t) for t in rest):
        return
    linked = {d.pred for d in problem.dependencies(first)} & rest
    linked |= {t for t in rest if first in {d.pred for d in problem.dependencies(t)}}
    if linked:
        message = f"{device}[{index}]: overlapped {first} depends on (or feeds) {', '.join(map(str, linked))}"
        found.add(Violation("group", message, device=device, task=first))


def _check_inputs(problem: Problem, position: _Positions, found: _Found) -> None:
    """B and W run where their F ran; on one stream, every input is listed before its consumer."""
    deps = problem.dependency_template
    for task, (device, stream, index, slot) in position.items():
        op, mb, kind = task
        for pred_op, pred_kind, _ in deps[op, kind]:
            pred = (pred_op, mb, pred_kind)
            where = position.get(pred)
            if where is None or (where[0] != device and pred_op != op):
                continue  # missing (reported already), or on another device: the replay orders those
            if where[0] != device:
                message = (f"{task} runs on {device} but its activations from {Task(*pred)} live on {where[0]}"
                           " (B and W must run where their F ran)")
                found.add(Violation("placement", message, device=device, task=task))
            elif where[1] == stream and (where[2], where[3]) > (index, slot):
                message = (f"dependency violated: {task} is listed at {device}[{index}] before its input"
                           f" {Task(*pred)} at {device}[{where[2]}]")
                found.add(Violation("dependency", message, device=device, task=task))


def _why_unknown(problem: Problem, task: Task) -> str:
    if task.op not in problem.graph.by_name:
        return f"no operator {task.op!r}"
    if not 0 <= task.mb < problem.workload.micro_batches:
        return f"micro-batch {task.mb} outside 0..{problem.workload.micro_batches - 1}"
    return f"kind {task.kind!r} not in {'/'.join(problem.workload.kinds)}"
