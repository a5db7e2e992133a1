"""Valid inequalities for the scheduling MIP: precedences that memory forces, and the
heads and tails they imply.

Why: the memory rows of :mod:`planner.mip.lower` are knapsack rows over order binaries;
their LP relaxation lets every binary sit at a fraction, so the relaxation does not see
memory at all and the MIP's bound stays at the combinatorial one (8 x 20 chain, F, B,
W = 3, 4, 2 ms at ZB-H1's memory: bound 201 ms, optimum 208 ms). Memory seen as
*precedence* is seen by the LP.

**Symmetry.** Micro-batches whose forward passes visit the same devices are
interchangeable: relabelling, per operator and kind, the tasks of such micro-batches in
the order they start gives a schedule as feasible and as long (a task's inputs come from
classes on one stream each, where the k-th to start is the k-th to end, and memory per
device depends only on how many of each class have run). So every class may keep
micro-batch order (the MIP and CP-SAT fix this).

**Memory precedence.** Within such a class on one device the activations of micro-batches
m, ..., m+k-1 are all alive when F of m+k starts unless B of m has ended (the Bs keep
micro-batch order too). If static + k x activation + the new allocation exceeds the limit,
B of m must end first: ``S_F(m+k) >= S_B(m) + p_B``. The same with W and the bytes W still
needs. Sound when every other allocation on the device is freed on the same device (so the
rest of the device's live bytes are never negative); else no cut is made there.

**Heads and tails along a stream.** A task cannot start before every task forced before
it on its stream has run: ``head_j >= min_{u in P} head_u + sum_{u in P} p_u`` for any set P
of its same-stream predecessors (the best P: those with the latest heads), and the same
for tails. With the memory precedences this is what the LP needs: in the 8 x 20 chain,
B of micro-batch 0 on rank 0 cannot start before 52 ms, and everything forced after it on
that rank (the other Bs, every W, the Fs of micro-batches 8 and later) is 152 ms of work:
208 ms, the optimum, through ``S_t + p_t + q_t <= C`` alone.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from planner.taskgraph import TaskGraph

__all__ = ["Strengthening", "interchangeable_classes", "memory_precedences", "strengthen"]


def interchangeable_classes(graph: TaskGraph) -> dict[tuple, list[int]]:
    """Tasks of one operator and kind on one device whose micro-batches visit the same
    devices, in micro-batch order, keyed by (operator, kind, device, route)."""
    ops = graph.problem.graph.topological_order
    route: dict[int, tuple] = {}
    classes: dict[tuple, list[int]] = {}
    for t, task in enumerate(graph.tasks):
        if task.mb not in route:
            route[task.mb] = tuple(graph.device_of[type(task)(op, task.mb, "F")] for op in ops)
        classes.setdefault((task.op, task.kind, graph.device_of[task], route[task.mb]), []).append(t)
    return {key: sorted(members, key=lambda t: graph.tasks[t].mb) for key, members in classes.items()}


def _sound_devices(graph: TaskGraph) -> set[str]:
    """Devices where every allocation is freed on the same device: all passes of every
    (operator, micro-batch) that holds memory there run there."""
    problem = graph.problem
    where: dict[tuple[str, int], set[str]] = {}
    for task in graph.tasks:
        op = problem.graph.by_name[task.op]
        if op.activation_bytes or op.workspace_bytes:
            where.setdefault((task.op, task.mb), set()).add(graph.device_of[task])
    unsound = {d for devices in where.values() if len(devices) > 1 for d in devices}
    return set(graph.devices) - unsound


def _distance(room: float, held: float) -> int | None:
    """The least k with k x held > room (k older allocations cannot stay alive), None if
    nothing is held. Rounded so that k is never too small (a larger k is a weaker cut)."""
    if held <= 0:
        return None
    return max(math.floor(room / held + 1e-9) + 1, 1)


def memory_precedences(graph: TaskGraph, limits: Mapping[str, float],
                       classes: Mapping[tuple, list[int]] | None = None) -> list[tuple[int, int]]:
    """Pairs (i, j): i must end before j starts, because memory cannot hold both
    micro-batches' activations with the others of their class (module docstring)."""
    problem = graph.problem
    if problem.workload.mode != "training":
        return []
    classes = classes if classes is not None else interchangeable_classes(graph)
    sound = _sound_devices(graph)
    static = graph.static_memory
    out: list[tuple[int, int]] = []
    for (op_name, kind, device, route), forwards in classes.items():
        if kind != "F" or device not in sound:
            continue
        op = problem.graph.by_name[op_name]
        backwards = classes.get((op_name, "B", device, route), [])
        weights = classes.get((op_name, "W", device, route), [])
        if len(backwards) != len(forwards) or len(weights) != len(forwards):
            continue
        limit = limits[device] * (1 + 1e-9) + 1e-9  # the tolerance the memory check allows
        room = limit - static[device] - op.activation_bytes - op.workspace_bytes  # left for older micro-batches
        for frees, held in ((backwards, op.activation_bytes), (weights, op.w_retained_bytes)):
            k = _distance(room, held)
            if k is not None:
                out += [(frees[m], forwards[m + k]) for m in range(len(forwards) - k)]
    return out


@dataclass(frozen=True)
class Strengthening:
    """Precedences beyond the data flow (symmetry and memory), their transitive closure,
    and the heads, tails and lower bound they imply."""

    precedences: tuple[tuple[int, int], ...]
    ancestors: tuple[int, ...]  # bitsets over the data flow and the precedences
    release: tuple[float, ...]
    tail: tuple[float, ...]
    lower: float

    def precedes(self, i: int, j: int) -> bool:
        return bool(self.ancestors[j] >> i & 1)


def _augmented(graph: TaskGraph, extra: list[tuple[int, int]]) -> tuple[list[list[tuple[int, float]]], list[int]] | None:
    """Predecessor lists (task, lag after its end) of the data flow plus ``extra``, and a
    topological order; None if they form a cycle (the memory limit cannot be met)."""
    n = len(graph.tasks)
    preds: list[list[tuple[int, float]]] = [[(a.src, a.lag) for a in graph.preds[j]] for j in range(n)]
    for i, j in extra:
        preds[j].append((i, 0.0))
    succs: list[list[int]] = [[] for _ in range(n)]
    for j in range(n):
        for i, _ in preds[j]:
            succs[i].append(j)
    indegree = [len(p) for p in preds]
    ready = [j for j in range(n) if indegree[j] == 0]
    order: list[int] = []
    while ready:
        i = ready.pop()
        order.append(i)
        for j in succs[i]:
            indegree[j] -= 1
            if indegree[j] == 0:
                ready.append(j)
    return (preds, order) if len(order) == n else None


def _stream_sum(members: list[int], head: list[float], p) -> float:
    """The latest a task can start after the tasks ``members`` (all before it on its stream):
    max over k of the k-th latest head plus the work of the k latest."""
    best, work = 0.0, 0.0
    for u in sorted(members, key=lambda u: -head[u]):
        work += p[u]
        best = max(best, head[u] + work)
    return best


def _heads(graph: TaskGraph, preds, order: list[int], ancestors: list[int], streams: Mapping[int, list[int]]) -> list[float]:
    """Heads over the augmented arcs and along each stream, in one topological pass."""
    p = graph.duration
    head = [0.0] * len(p)
    for j in order:
        value = max((head[i] + p[i] + lag for i, lag in preds[j]), default=0.0)
        before = [u for u in streams[j] if ancestors[j] >> u & 1]
        head[j] = max(value, _stream_sum(before, head, p)) if before else value
    return head


def strengthen(graph: TaskGraph, limits: Mapping[str, float]) -> Strengthening | None:
    """Symmetry chains and memory precedences, closed, with the heads and tails they
    imply; None when they contradict each other (then the MIP decides, unstrengthened)."""
    classes = interchangeable_classes(graph)
    extra = [(a, b) for members in classes.values() for a, b in zip(members, members[1:])]
    extra += memory_precedences(graph, limits, classes)
    built = _augmented(graph, extra)
    if built is None:
        return None
    preds, order = built
    n = len(graph.tasks)
    ancestors = [0] * n
    descendants = [0] * n
    for j in order:
        for i, _ in preds[j]:
            ancestors[j] |= ancestors[i] | (1 << i)
    for j in reversed(order):
        for i, _ in preds[j]:
            descendants[i] |= descendants[j] | (1 << j)
    same = {j: list(graph.streams[graph.device_stream[j]]) for j in range(n)}
    head = _heads(graph, preds, order, ancestors, same)
    succs: list[list[tuple[int, float]]] = [[] for _ in range(n)]
    for j in range(n):
        for i, lag in preds[j]:
            succs[i].append((j, lag))
    tail = _heads(graph, succs, list(reversed(order)), descendants, same)  # tails: heads of the reversed graph
    p = graph.duration
    critical = max((head[t] + p[t] + tail[t] for t in range(n)), default=0.0)
    stream = max((min(head[t] for t in m) + sum(p[t] for t in m) + min(tail[t] for t in m) for m in graph.streams.values()),
                 default=0.0)
    lower = max(critical, stream, graph.lower_bound)
    return Strengthening(tuple(extra), tuple(ancestors), tuple(head), tuple(tail), lower)


def canonical_order(graph: TaskGraph, order: Mapping[tuple[str, str], list[int]],
                    classes: Mapping[tuple, list[int]] | None = None) -> dict[tuple[str, str], list[int]]:
    """``order`` with every interchangeable class in micro-batch order: the k-th task of a
    class on its stream becomes the class's k-th micro-batch. As feasible and never
    longer (module docstring); it is what the symmetry-fixed model can represent."""
    classes = classes if classes is not None else interchangeable_classes(graph)
    class_of = {t: key for key, members in classes.items() for t in members}
    out: dict[tuple[str, str], list[int]] = {}
    for stream, members in order.items():
        taken: dict[tuple, int] = {}
        renamed = []
        for t in members:
            key = class_of[t]
            renamed.append(classes[key][taken.get(key, 0)])
            taken[key] = taken.get(key, 0) + 1
        out[stream] = renamed
    return out
