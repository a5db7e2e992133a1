"""The operator graph: a DAG of operators whose edges carry tensors.

Operators are the *jobs* of the scheduling problem. Each carries what it costs
(FLOPs of the forward pass, of the backward pass for inputs ``B`` and for weights
``W``, or measured times that override them), and what memory it holds (weights and
optimizer state for the whole iteration, activations from its forward until its
backward, workspace while it runs). Edges carry the activation tensor forward and the
gradient of the same size backward.

Branches are first-class: an operator may have any number of inputs and outputs, so a
MoE layer (router -> experts -> combine) or a two-tower model is just a DAG.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from types import MappingProxyType

import networkx as nx

from simulator.errors import InputError

__all__ = ["KINDS", "Operator", "Edge", "OperatorGraph", "chain_graph"]

#: Task kinds: forward, backward for inputs, backward for weights.
KINDS = ("F", "B", "W")
STREAMS = ("compute", "comm")


def _frozen_map(mapping: Mapping | None) -> Mapping:
    return MappingProxyType(dict(mapping or {}))


@dataclass(frozen=True)
class Operator:
    """One operator of the model.

    ``flops`` maps a kind (F, B, W) to the FLOPs of that pass for one micro-batch.
    ``measured`` maps a device type (or ``"*"`` for any) to measured seconds per kind;
    a measured time wins over the FLOP-based estimate because it is what the hardware
    really did.
    """

    name: str
    flops: Mapping[str, float] = field(default_factory=dict)
    measured: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    #: Weights + gradients + optimizer state, held for the whole iteration on every
    #: device that runs any task of this operator.
    static_bytes: float = 0.0
    #: Parameter count (for reports and the cost model's cross-checks).
    params: float = 0.0
    #: Allocated when F starts; released by B except ``w_retained_bytes`` kept until W.
    activation_bytes: float = 0.0
    w_retained_bytes: float = 0.0
    #: Transient memory while any task of this operator runs.
    workspace_bytes: float = 0.0
    #: Which device stream runs it: ``compute`` or ``comm`` (collectives as operators).
    stream: str = "compute"
    #: Bytes a communication operator moves per device (e.g. an all-to-all's share).
    comm_bytes: float = 0.0
    #: Label used for coarsening (layer, expert, tower); empty means "own group".
    group: str = ""
    #: Work per kind by rate class (``gemm`` FLOPs, ``hbm`` bytes, ``attention.<kernel>``
    #: FLOPs; see :mod:`simulator.costs`). When given, a device prices it with its own rates
    #: (:meth:`simulator.cluster.Device.work_time`) instead of ``flops`` / achieved FLOP/s.
    work: Mapping[str, Mapping[str, float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "flops", _frozen_map(self.flops))
        object.__setattr__(self, "work", MappingProxyType({k: _frozen_map(v) for k, v in self.work.items()}))
        for kind, classes in self.work.items():
            if kind not in KINDS or any(v < 0 for v in classes.values()):
                raise InputError(f"work must map F/B/W to non-negative amounts, got {kind!r}", field=f"operators.{self.name}.work")
        object.__setattr__(
            self, "measured", MappingProxyType({k: _frozen_map(v) for k, v in self.measured.items()})
        )
        if not self.name:
            raise InputError("operator with an empty name", field="operators")
        for kind, value in self.flops.items():
            if kind not in KINDS:
                raise InputError(f"unknown kind {kind!r} in flops", field=f"operators.{self.name}.flops")
            if value < 0:
                raise InputError(f"negative FLOPs {value:g}", field=f"operators.{self.name}.flops.{kind}")
        for device_type, times in self.measured.items():
            for kind, value in times.items():
                if kind not in KINDS:
                    raise InputError(
                        f"unknown kind {kind!r}", field=f"operators.{self.name}.measured.{device_type}"
                    )
                if value < 0:
                    raise InputError(
                        f"negative time {value:g}", field=f"operators.{self.name}.measured.{device_type}.{kind}"
                    )
        for attr in ("static_bytes", "params", "comm_bytes", "activation_bytes", "w_retained_bytes", "workspace_bytes"):
            if getattr(self, attr) < 0:
                raise InputError(f"must not be negative, got {getattr(self, attr):g}", field=f"operators.{self.name}.{attr}")
        if self.w_retained_bytes > self.activation_bytes:
            raise InputError(
                "w_retained_bytes cannot exceed activation_bytes", field=f"operators.{self.name}.w_retained_bytes"
            )
        if self.stream not in STREAMS:
            raise InputError(f"unknown stream {self.stream!r} (expected compute or comm)", field=f"operators.{self.name}.stream")

    def measured_time(self, device_type: str, kind: str) -> float | None:
        """Measured seconds for ``kind`` on ``device_type``, or None when not measured."""
        for key in (device_type, "*"):
            times = self.measured.get(key)
            if times is not None and kind in times:
                return times[kind]
        return None


@dataclass(frozen=True)
class Edge:
    """A tensor from ``src`` to ``dst``: ``bytes`` forward, the same size of gradient backward."""

    src: str
    dst: str
    bytes: float = 0.0

    def __post_init__(self) -> None:
        if self.bytes < 0:
            raise InputError(f"negative tensor size {self.bytes:g}", field=f"edges.{self.src}->{self.dst}.bytes")


@dataclass(frozen=True)
class OperatorGraph:
    """An immutable DAG of operators; construction fails on dangling edges or cycles."""

    name: str
    operators: tuple[Operator, ...]
    edges: tuple[Edge, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "operators", tuple(self.operators))
        object.__setattr__(self, "edges", tuple(self.edges))
        seen: set[str] = set()
        for op in self.operators:
            if op.name in seen:
                raise InputError(f"duplicate operator name {op.name!r}", field="operators")
            seen.add(op.name)
        pairs: set[tuple[str, str]] = set()
        for edge in self.edges:
            for end in (edge.src, edge.dst):
                if end not in seen:
                    raise InputError(f"edge {edge.src}->{edge.dst} names unknown operator {end!r}", field="edges")
            if edge.src == edge.dst:
                raise InputError(f"self-loop on operator {edge.src!r}", field="edges")
            if (edge.src, edge.dst) in pairs:
                raise InputError(f"duplicate edge {edge.src}->{edge.dst}", field="edges")
            pairs.add((edge.src, edge.dst))
        if not nx.is_directed_acyclic_graph(self.dag):
            cycle = nx.find_cycle(self.dag)
            names = " -> ".join([u for u, _ in cycle] + [cycle[0][0]])
            raise InputError(f"the operator graph has a cycle: {names}", field="edges")

    # -- derived views (computed once) ---------------------------------------------
    @cached_property
    def dag(self) -> nx.DiGraph:
        graph = nx.DiGraph()
        graph.add_nodes_from(op.name for op in self.operators)
        graph.add_edges_from((e.src, e.dst, {"bytes": e.bytes}) for e in self.edges)
        return graph

    @cached_property
    def by_name(self) -> Mapping[str, Operator]:
        return MappingProxyType({op.name: op for op in self.operators})

    @cached_property
    def predecessors(self) -> Mapping[str, tuple[Edge, ...]]:
        preds: dict[str, list[Edge]] = {op.name: [] for op in self.operators}
        for edge in self.edges:
            preds[edge.dst].append(edge)
        return MappingProxyType({k: tuple(v) for k, v in preds.items()})

    @cached_property
    def successors(self) -> Mapping[str, tuple[Edge, ...]]:
        succs: dict[str, list[Edge]] = {op.name: [] for op in self.operators}
        for edge in self.edges:
            succs[edge.src].append(edge)
        return MappingProxyType({k: tuple(v) for k, v in succs.items()})

    @cached_property
    def topological_order(self) -> tuple[str, ...]:
        """Deterministic topological order (ties broken by declaration order)."""
        position = {op.name: i for i, op in enumerate(self.operators)}
        return tuple(nx.lexicographical_topological_sort(self.dag, key=position.__getitem__))

    def chain_break(self) -> str | None:
        """Why the operators are not one path ``s0 -> s1 -> ...`` (a pipeline of stages), or
        None when they are: the first operator that branches, else the first two operators
        of the topological order that no edge joins.

        >>> chain_graph("p", 3, {"F": 1.0}).chain_break() is None
        True
        >>> OperatorGraph("two", (Operator("a"), Operator("b"))).chain_break()
        "nothing flows from 'a' to 'b'"
        """
        for op in self.operators:
            if len(self.predecessors[op.name]) > 1 or len(self.successors[op.name]) > 1:
                return f"operator {op.name!r} branches"
        order = self.topological_order
        for first, second in zip(order, order[1:]):
            if not any(edge.dst == second for edge in self.successors[first]):
                return f"nothing flows from {first!r} to {second!r}"
        return None

    @property
    def is_chain(self) -> bool:
        return self.chain_break() is None

    def __len__(self) -> int:
        return len(self.operators)

    def total(self, attr: str) -> float:
        return float(sum(getattr(op, attr) for op in self.operators))


def chain_graph(
    name: str,
    stages: int,
    times: Mapping[str, float],
    *,
    activation_bytes: float = 1.0,
    w_retained_bytes: float = 0.0,
    static_bytes: float = 0.0,
    edge_bytes: float = 0.0,
) -> OperatorGraph:
    """A uniform pipeline: ``stages`` operators ``s0 -> s1 -> ...`` with measured times.

    >>> g = chain_graph("p", 3, {"F": 1.0, "B": 1.0, "W": 1.0})
    >>> [op.name for op in g.operators], len(g.edges)
    (['s0', 's1', 's2'], 2)
    """
    if stages < 1:
        raise InputError(f"a pipeline needs at least one stage, got {stages}", field="model.stages")
    ops = [
        Operator(
            name=f"s{i}",
            measured={"*": dict(times)},
            activation_bytes=activation_bytes,
            w_retained_bytes=w_retained_bytes,
            static_bytes=static_bytes,
            group=f"s{i}",
        )
        for i in range(stages)
    ]
    edges: Iterable[Edge] = (Edge(f"s{i}", f"s{i + 1}", edge_bytes) for i in range(stages - 1))
    return OperatorGraph(name=name, operators=tuple(ops), edges=tuple(edges))
