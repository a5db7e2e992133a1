"""A constructive primal heuristic for the lower level: active schedules over the
strengthened precedence graph (:mod:`planner.mip.strengthen`).

Giffler and Thompson's scheme (1960) builds an *active* schedule (no task can start
earlier without delaying another), and some active schedule is optimal for the makespan.
At each step it takes the stream whose ready task can end first, and among that
stream's ready tasks that could start before then picks the one with the longest tail
(the most work that must still follow it: a "latest start first" rule). Done over the
data flow *plus* the symmetry and memory precedences, with the tails those imply, the
rule sees what memory will force: on the benchmark's 8 x 20 pipelines it gives the
optimum when F, B and W differ on the bidirectional placement (189 and 106 ms) and is
within 1 ms on the chain at ZB-H1's memory (209 against 208), where list scheduling
gave 195, 109 and 215. Memory is checked at every allocation (a forward that does not fit
waits), so the order is feasible; it is still re-timed and checked by the caller.
Deterministic: ties go to the lower task index.
"""

from __future__ import annotations

from collections.abc import Mapping

from planner.mip.strengthen import Strengthening
from planner.taskgraph import TaskGraph

__all__ = ["active_schedule"]


def _graph(graph: TaskGraph, strong: Strengthening) -> tuple[list[list[tuple[int, float]]], list[int]]:
    """Successors (task, lag) over the data flow and the extra precedences; in-degrees."""
    n = len(graph.tasks)
    succs: list[list[tuple[int, float]]] = [[(a.dst, a.lag) for a in graph.succs[i]] for i in range(n)]
    indegree = [len(graph.preds[j]) for j in range(n)]
    for i, j in strong.precedences:
        succs[i].append((j, 0.0))
        indegree[j] += 1
    return succs, indegree


def active_schedule(graph: TaskGraph, strong: Strengthening,
                    limits: Mapping[str, float]) -> dict[tuple[str, str], list[int]] | None:
    """Per stream, the order of the active schedule built longest-tail-first; None when
    memory blocks every ready task (a forward that can never fit)."""
    p, delta, stream_of = graph.duration, graph.memory_delta(), graph.device_stream
    succs, indegree = _graph(graph, strong)
    earliest = [0.0] * len(p)
    free: dict[tuple[str, str], float] = {key: 0.0 for key in graph.streams}
    live = dict(graph.static_memory)
    cap = {d: limits[d] * (1 + 1e-9) + 1e-9 for d in graph.devices}
    ready = {j for j, k in enumerate(indegree) if k == 0}
    order: dict[tuple[str, str], list[int]] = {key: [] for key in graph.streams}
    key = [(-strong.tail[j], j) for j in range(len(p))]
    while ready:
        fits = [j for j in ready if live[stream_of[j][0]] + delta[j][0] <= cap[stream_of[j][0]]]
        if not fits:
            return None
        begin = {j: max(earliest[j], free[stream_of[j]]) for j in fits}
        end, first = min((begin[j] + p[j], j) for j in fits)
        stream = stream_of[first]
        j = min((j for j in fits if stream_of[j] == stream and (begin[j] < end - 1e-12 or j == first)), key=key.__getitem__)
        free[stream] = begin[j] + p[j]
        live[stream[0]] += delta[j][0] - delta[j][1]
        order[stream].append(j)
        ready.remove(j)
        for k, lag in succs[j]:
            earliest[k] = max(earliest[k], free[stream] + lag)
            indegree[k] -= 1
            if indegree[k] == 0:
                ready.add(k)
    return order
