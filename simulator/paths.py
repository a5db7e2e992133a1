"""Paths through the operator graph: the critical path of one micro-batch, and operator kinds.

The critical path is the time one micro-batch needs even on unlimited devices
(transfers left out): a lower bound on any schedule's makespan, and what
``opplan describe`` shows before anything is planned.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import networkx as nx

from simulator.problem import Problem, Task

__all__ = ["CriticalPath", "critical_path", "operator_kind"]

_LAYER = re.compile(r"^(L|layer)\d+$")
#: A sink joined to every operator, so that node weights can ride on edges.
_END = object()


def operator_kind(name: str) -> str:
    """The kind of an operator, from its name: layer indices and numbering dropped.

    >>> [operator_kind(n) for n in ("L3.attn", "L2.expert15", "vision.L0.mlp", "head", "s4")]
    ['attn', 'expert', 'vision.mlp', 'head', 's']
    """
    parts = [p.rstrip("0123456789") or p for p in name.split(".") if not _LAYER.match(p)]
    return ".".join(parts) or name


@dataclass(frozen=True)
class CriticalPath:
    """The heaviest chain of operators for one micro-batch and its serial time."""

    operators: tuple[str, ...]
    seconds: float
    device_type: str


def critical_path(problem: Problem, device: str | None = None) -> CriticalPath:
    """Longest chain of the graph, weighting each operator by its F + B + W time on ``device``.

    Its forward runs down the chain and its backward back up it. Inference counts F
    only. ``device`` defaults to the cluster's first device. Ties go to the operator
    met first (edges in the graph's order, ends in topological order).

    :func:`networkx.dag_longest_path` weighs edges, so each edge carries its source's
    time and every operator gets an edge to one extra sink carrying its own.

    >>> from simulator.cluster import Cluster, Device
    >>> from simulator.graph import Edge, Operator, OperatorGraph
    >>> from simulator.problem import Workload
    >>> ops = [Operator(n, measured={"*": {"F": t, "B": t, "W": 0.0}}) for n, t in (("a", 1.0), ("b", 5.0), ("c", 1.0), ("d", 1.0))]
    >>> g = OperatorGraph("g", ops, (Edge("a", "b"), Edge("a", "c"), Edge("b", "d"), Edge("c", "d")))
    >>> p = Problem(g, Cluster("c", (Device("gpu0", "x", 1.0, 1.0),)), Workload(1))
    >>> critical_path(p)
    CriticalPath(operators=('a', 'b', 'd'), seconds=14.0, device_type='x')
    """
    dev = problem.cluster.by_name[device] if device else problem.cluster.devices[0]
    graph = problem.graph
    order = graph.topological_order
    cost = {op: sum(problem.duration(Task(op, 0, kind), dev) for kind in problem.workload.kinds) for op in order}
    dag = nx.DiGraph()
    dag.add_nodes_from(order)
    dag.add_edges_from((e.src, e.dst, {"seconds": cost[e.src]}) for e in graph.edges)
    dag.add_edges_from((op, _END, {"seconds": cost[op]}) for op in order)
    path = nx.dag_longest_path(dag, weight="seconds", topo_order=[*order, _END])[:-1]
    return CriticalPath(tuple(path), sum(cost[op] for op in path), dev.type)
