"""Coarsening: collapse groups of operators into single operators (a quotient graph).

The planner's upper level decides where *groups* go (a layer, a layer's experts, a
tower), which is a much smaller problem than placing every operator; the lower level
then schedules the operators of the chosen placement. :func:`coarsen` builds the
smaller graph and remembers which operators each group stands for, so a placement of
groups expands back to a placement of operators.

A group operator runs its members one after another, so it sums their FLOPs, their
measured times, their static memory, parameters and activations; transient workspace
is the largest member's (they never run at once). Edges between groups sum the bytes
of the edges they replace; edges inside a group disappear.

Limits: a group mixing communication and compute operators runs on the compute stream
and its communication time is lost (the bytes stay in ``comm_bytes`` for reports), so
keep collectives in groups of their own, as the MoE builder does. Measured times are
summed only for device types every member is measured on; a group with members that
are only FLOP-costed falls back to the summed FLOPs there.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

import networkx as nx

from simulator.errors import InputError
from simulator.graph import KINDS, Edge, Operator, OperatorGraph
from simulator.partition import contiguous_split

__all__ = ["Coarsening", "coarsen", "chain_groups"]


@dataclass(frozen=True)
class Coarsening:
    """The quotient graph of a grouping, and the way back to the operators.

    ``graph`` has one operator per group, named after the group, in topological order;
    ``members`` lists each group's operators (in the original topological order);
    ``group_of`` maps each original operator to its group.
    """

    graph: OperatorGraph
    members: Mapping[str, tuple[str, ...]]
    group_of: Mapping[str, str]

    def expand_placement(self, placement: Mapping[str, str]) -> dict[str, str]:
        """A device per group becomes a device per operator.

        >>> from simulator.graph import chain_graph
        >>> c = coarsen(chain_graph("p", 4, {"F": 1.0}), chain_groups(chain_graph("p", 4, {"F": 1.0}), 2))
        >>> c.expand_placement({"stage0": "gpu0", "stage1": "gpu1"})
        {'s0': 'gpu0', 's1': 'gpu0', 's2': 'gpu1', 's3': 'gpu1'}
        """
        unknown = sorted(set(placement) - set(self.members))
        if unknown:
            raise InputError(f"placement names unknown groups: {', '.join(unknown)}", field="placement")
        missing = [g for g in self.members if g not in placement]
        if missing:
            raise InputError(f"placement has no device for groups: {', '.join(missing)}", field="placement")
        return {op: placement[group] for group, ops in self.members.items() for op in ops}


def coarsen(graph: OperatorGraph, groups: Mapping[str, str] | None = None) -> Coarsening:
    """Collapse ``graph`` by ``groups`` (operator -> group label).

    Without ``groups`` each operator goes to its ``Operator.group`` (an empty label means
    a group of its own, named after the operator). A grouping whose quotient has a cycle
    (some path leaves a group and comes back) is rejected, naming the groups.

    >>> from simulator.graph import chain_graph
    >>> c = coarsen(chain_graph("p", 3, {"F": 1.0, "B": 2.0}), {"s0": "a", "s1": "a", "s2": "b"})
    >>> [(op.name, dict(op.measured["*"])) for op in c.graph.operators]
    [('a', {'F': 2.0, 'B': 4.0}), ('b', {'F': 1.0, 'B': 2.0})]
    >>> c.members["a"], [(e.src, e.dst) for e in c.graph.edges]
    (('s0', 's1'), [('a', 'b')])
    """
    group_of = _assign(graph, groups)
    order = graph.topological_order
    members: dict[str, list[str]] = {}
    for op in order:
        members.setdefault(group_of[op], []).append(op)

    sizes: dict[tuple[str, str], float] = {}
    for edge in graph.edges:
        src, dst = group_of[edge.src], group_of[edge.dst]
        if src != dst:
            sizes[src, dst] = sizes.get((src, dst), 0.0) + edge.bytes
    quotient = nx.DiGraph()
    quotient.add_nodes_from(members)
    quotient.add_edges_from(sizes)
    if not nx.is_directed_acyclic_graph(quotient):
        cycle = nx.find_cycle(quotient)
        names = " -> ".join([u for u, _ in cycle] + [cycle[0][0]])
        raise InputError(f"grouping creates a cycle between groups: {names}", field="groups")

    first_seen = {group: i for i, group in enumerate(members)}
    group_order = list(nx.lexicographical_topological_sort(quotient, key=first_seen.__getitem__))
    by_name = graph.by_name
    operators = tuple(_merge(group, [by_name[op] for op in members[group]]) for group in group_order)
    edges = tuple(Edge(src, dst, size) for (src, dst), size in sizes.items())
    coarse = OperatorGraph(name=f"{graph.name}/coarse", operators=operators, edges=edges)
    return Coarsening(
        graph=coarse,
        members=MappingProxyType({group: tuple(members[group]) for group in group_order}),
        group_of=MappingProxyType(dict(group_of)),
    )


def chain_groups(graph: OperatorGraph, n: int, *, weight: Callable[[Operator], float] | None = None) -> dict[str, str]:
    """Split the topological order into ``n`` contiguous groups ``stage0 .. stage<n-1>``.

    Balanced: the heaviest group is as light as a contiguous split allows
    (:func:`simulator.partition.contiguous_split`). The weight of an operator is
    ``weight(op)``; by default its total FLOPs when the graph has any, else its total
    measured time (on ``"*"`` or its first device type), else 1. Contiguous pieces of
    a topological order always give an acyclic quotient.

    >>> from simulator.graph import chain_graph
    >>> chain_groups(chain_graph("p", 5, {"F": 1.0}), 2)
    {'s0': 'stage0', 's1': 'stage0', 's2': 'stage1', 's3': 'stage1', 's4': 'stage1'}
    """
    order = graph.topological_order
    if n < 1:
        raise InputError(f"need at least one group, got {n}", field="groups")
    if n > len(order):
        raise InputError(f"cannot split {len(order)} operators into {n} non-empty groups", field="groups")
    weigh = weight or _default_weight(graph)
    weights = [float(weigh(graph.by_name[op])) for op in order]
    if any(w < 0 for w in weights):
        raise InputError("operator weights must not be negative", field="groups")
    return {op: f"stage{group}" for op, group in zip(order, contiguous_split(weights, n))}


# -- helpers -------------------------------------------------------------------------------
def _assign(graph: OperatorGraph, groups: Mapping[str, str] | None) -> dict[str, str]:
    if groups is None:
        labels = {op.group for op in graph.operators if op.group}
        for op in graph.operators:
            if not op.group and op.name in labels:
                raise InputError(f"operator {op.name!r} has no group, but another operator uses its name as a group label", field="groups")
        return {op.name: op.group or op.name for op in graph.operators}
    unknown = sorted(set(groups) - set(graph.by_name))
    if unknown:
        raise InputError(f"groups name unknown operators: {', '.join(unknown)}", field="groups")
    missing = [op.name for op in graph.operators if op.name not in groups]
    if missing:
        raise InputError(f"groups leave operators without a group: {', '.join(missing)}", field="groups")
    empty = [op for op, label in groups.items() if not label]
    if empty:
        raise InputError(f"empty group label for operators: {', '.join(empty)}", field="groups")
    return dict(groups)


def _merge(name: str, ops: Sequence[Operator]) -> Operator:
    """One operator standing for ``ops``, which run back to back."""
    flops: dict[str, float] = {}
    for kind in KINDS:
        if any(kind in op.flops for op in ops):
            flops[kind] = sum(op.flops.get(kind, 0.0) for op in ops)
    measured: dict[str, dict[str, float]] = {}
    for device_type in sorted({key for op in ops for key in op.measured}):
        times: dict[str, float] = {}
        for kind in KINDS:
            parts = [op.measured_time(device_type, kind) if device_type != "*" else op.measured.get("*", {}).get(kind) for op in ops]
            if all(p is not None for p in parts):
                times[kind] = sum(parts)
        if times:
            measured[device_type] = times
    all_comm = all(op.stream == "comm" for op in ops)
    work: dict[str, dict[str, float]] = {}
    for op in ops if any(op.work for op in ops) else ():
        # A member without work stands for its FLOPs at the GEMM rate, as it would alone.
        for kind, classes in (op.work or {k: {"gemm": v} for k, v in op.flops.items()}).items():
            for cls, amount in classes.items():
                work.setdefault(kind, {})[cls] = work.get(kind, {}).get(cls, 0.0) + amount
    return Operator(
        name=name,
        flops=flops,
        measured=measured,
        static_bytes=sum(op.static_bytes for op in ops),
        params=sum(op.params for op in ops),
        activation_bytes=sum(op.activation_bytes for op in ops),
        w_retained_bytes=sum(op.w_retained_bytes for op in ops),
        workspace_bytes=max(op.workspace_bytes for op in ops),
        stream="comm" if all_comm else "compute",
        comm_bytes=sum(op.comm_bytes for op in ops),
        group=name,
        work=work,
    )


def _default_weight(graph: OperatorGraph) -> Callable[[Operator], float]:
    if any(sum(op.flops.values()) > 0 for op in graph.operators):
        return lambda op: sum(op.flops.values())
    if any(op.measured for op in graph.operators):

        def measured_total(op: Operator) -> float:
            if not op.measured:
                return 0.0
            key = "*" if "*" in op.measured else sorted(op.measured)[0]
            return sum(op.measured[key].values())

        return measured_total
    return lambda op: 1.0
