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

__all__ = ["static_violations", "stream_of"]

#: Stop listing a category after this many (the count is still reported).
_MAX_PER_CATEGORY = 20


def stream_of(problem: Problem, task: Task) -> str:
    return problem.graph.by_name[task.op].stream


def static_violations(problem: Problem, schedule: Schedule) -> list[str]:
    """Every rule the schedule breaks that can be seen without replaying it.

    Returns human-readable messages; an empty list means the replay may proceed.
    """
    found: dict[str, list[str]] = {}

    def report(category: str, message: str) -> None:
        found.setdefault(category, []).append(message)

    cluster = problem.cluster.by_name
    stream_of_op = {name: op.stream for name, op in problem.graph.by_name.items()}
    kinds = problem.workload.kinds
    micro_batches = problem.workload.micro_batches
    deps = problem.dependency_template
    # task -> (device, stream, entry index, position inside the entry)
    position: dict[tuple, tuple[str, str, int, int]] = {}
    has_collectives = False
    for device, entries in schedule.devices.items():
        if device not in cluster:
            known = ", ".join(list(cluster)[:8]) + (", ..." if len(cluster) > 8 else "")
            report("device", f"device {device!r} is not in the cluster (devices: {known})")
            continue
        for index, entry in enumerate(entries):
            tasks = entry.tasks
            if len(tasks) == 1:  # the common case, without the per-group bookkeeping below
                task = tasks[0]
                op, mb, kind = task
                stream = stream_of_op.get(op)
                if stream is None or kind not in kinds or not 0 <= mb < micro_batches:
                    report("unknown", f"{device}[{index}]: task {task} does not exist in this problem ({_why_unknown(problem, task)})")
                elif task in position:
                    other = position[task]
                    report("duplicate", f"task {task} is listed twice ({other[0]}[{other[2]}] and {device}[{index}])")
                else:
                    position[task] = (device, stream, index, 0)
                continue
            if entry.collective is not None:  # checked below, by collective_violations
                has_collectives = True
                continue
            streams = set()
            for slot, task in enumerate(tasks):
                op, mb, kind = task
                if op not in stream_of_op or kind not in kinds or not 0 <= mb < micro_batches:
                    report("unknown", f"{device}[{index}]: task {task} does not exist in this problem ({_why_unknown(problem, task)})")
                    continue
                other = position.get(task)
                if other is not None:
                    report("duplicate", f"task {task} is listed twice ({other[0]}[{other[2]}] and {device}[{index}])")
                    continue
                stream = stream_of_op[op]
                streams.add(stream)
                position[task] = (device, stream, index, slot)
            if len(streams) > 1:
                report("group", f"{device}[{index}]: grouped tasks {entry} run on different streams")
            if entry.overlap:
                _check_overlap(entry, problem, device, index, report)

    if len(position) != problem.task_count:
        for task in problem.tasks():
            if task not in position:
                report("missing", f"task {task} is not scheduled on any device")

    for task, (device, stream, index, slot) in position.items():
        op, mb, kind = task
        for pred_op, pred_kind, _ in deps[op, kind]:
            pred = (pred_op, mb, pred_kind)
            where = position.get(pred)
            if where is None or (where[0] != device and pred_op != op):
                continue  # missing (reported above), or on another device: the replay orders those
            if where[0] != device:
                report(
                    "placement",
                    f"{task} runs on {device} but its activations from {Task(*pred)} live on {where[0]}"
                    " (B and W must run where their F ran)",
                )
            elif where[1] == stream and (where[2], where[3]) > (index, slot):
                report(
                    "dependency",
                    f"dependency violated: {task} is listed at {device}[{index}] before its input"
                    f" {Task(*pred)} at {device}[{where[2]}]",
                )

    if has_collectives:
        for kind, message, _device in collective_violations(problem, schedule):
            report(kind, message)

    messages: list[str] = []
    for category, items in found.items():
        messages.extend(items[:_MAX_PER_CATEGORY])
        if len(items) > _MAX_PER_CATEGORY:
            messages.append(f"... and {len(items) - _MAX_PER_CATEGORY} more {category} violations")
    return messages


def _check_overlap(entry: Entry, problem: Problem, device: str, index: int, report) -> None:
    """The overlapped first task must be independent of the rest of its group."""
    first, rest = entry.tasks[0], set(entry.tasks[1:])
    if not problem.is_task(first) or not all(problem.is_task(t) for t in rest):
        return
    linked = {d.pred for d in problem.dependencies(first)} & rest
    linked |= {t for t in rest if first in {d.pred for d in problem.dependencies(t)}}
    if linked:
        report("group", f"{device}[{index}]: overlapped {first} depends on (or feeds) {', '.join(map(str, linked))}")


def _why_unknown(problem: Problem, task: Task) -> str:
    if task.op not in problem.graph.by_name:
        return f"no operator {task.op!r}"
    if not 0 <= task.mb < problem.workload.micro_batches:
        return f"micro-batch {task.mb} outside 0..{problem.workload.micro_batches - 1}"
    return f"kind {task.kind!r} not in {'/'.join(problem.workload.kinds)}"
