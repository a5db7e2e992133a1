"""Where tasks run: placements the upper level proposes and the lower level schedules.

A placement maps every task to a device. Most map an operator (or a group of them) to
one device for all micro-batches. Pipeline placements may also depend on the
micro-batch: the bidirectional placement of DualPipe sends half the micro-batches
through the stages in the reverse device order (each device then holds two stages,
so its static memory doubles).
"""

from __future__ import annotations

from collections.abc import Mapping

from simulator.errors import InfeasibleError
from simulator.partition import contiguous_split
from simulator.problem import Problem, Task

__all__ = ["by_operator", "pipeline_placements", "contiguous_partitions"]


def by_operator(problem: Problem, op_device: Mapping[str, str]) -> dict[Task, str]:
    """Every task of an operator runs on that operator's device."""
    missing = [op for op in problem.graph.by_name if op not in op_device]
    if missing:
        raise InfeasibleError(f"no device for operator {missing[0]!r}")
    return {task: op_device[task.op] for task in problem.tasks()}


def contiguous_partitions(problem: Problem, devices: int) -> dict[str, str]:
    """Split the topological order into ``devices`` contiguous blocks of balanced work.

    The classic chain partition (what pipeline parallelism does by hand): minimises the
    largest block's forward+backward time on the first device
    (:func:`simulator.partition.contiguous_split`); block ``b`` goes to device ``b``.
    """
    ops = problem.graph.topological_order
    names = problem.cluster.device_names
    device0 = problem.cluster.devices[0]
    work = [sum(problem.duration(Task(op, 0, k), device0) for k in problem.workload.kinds) for op in ops]
    return {op: names[block] for op, block in zip(ops, contiguous_split(work, min(devices, len(ops))))}


def pipeline_placements(problem: Problem) -> dict[str, dict[Task, str]]:
    """The stage-to-device patterns hand-made pipeline schedules use, where they apply.

    ``chain``: contiguous balanced blocks; ``interleaved``: stage s on device s mod D
    (when D divides the stages); ``bidirectional``: S = D stages, micro-batches of the
    second half run stage s on device D-1-s (DualPipe); ``v-shape``: S = 2D stages,
    stage s < D on device s and stage s >= D on device 2D-1-s (ZB-V, DualPipeV).
    """
    if not problem.graph.is_chain:
        return {}
    stages = list(problem.graph.topological_order)
    names = problem.cluster.device_names
    count, total = len(names), len(stages)
    m = problem.workload.micro_batches
    out: dict[str, dict[Task, str]] = {"chain": by_operator(problem, contiguous_partitions(problem, count))}
    if total > count and total % count == 0:
        out["interleaved"] = by_operator(problem, {op: names[s % count] for s, op in enumerate(stages)})
    if total == count and count % 2 == 0 and m >= 2:
        index = {op: s for s, op in enumerate(stages)}
        out["bidirectional"] = {
            t: names[index[t.op]] if t.mb < m // 2 else names[count - 1 - index[t.op]] for t in problem.tasks()
        }
    if total == 2 * count:
        out["v-shape"] = by_operator(
            problem, {op: names[s] if s < count else names[2 * count - 1 - s] for s, op in enumerate(stages)}
        )
    return out
