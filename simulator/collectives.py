"""Collectives over a group of devices, as steps of point-to-point transfers.

A collective (all-reduce, reduce-scatter, all-gather, all-to-all, broadcast,
send/recv) over a named group of devices is decomposed, the way NCCL's ring kernels
and the textbook analyses decompose it, into *steps*: in each step every rank sends
one chunk to a peer, and the next step starts when every transfer of the step has
arrived. Each transfer follows the cluster's route between the two devices, so a step
costs ``latency + bytes / bandwidth`` of its slowest transfer (and more where two
transfers share a link). The simulator replays these steps on SimPy link resources, so
collectives contend with each other and with pipeline traffic exactly where they share
links; :func:`collective_time` prices the same steps without contention, for the
planner.

Sizes follow the nccl-tests convention: ``bytes`` is the full buffer ``S`` — the
all-reduce buffer, the reduce-scatter *input*, the all-gather *output*, one rank's
all-to-all send buffer, the broadcast or send/recv message.

On an idle ring of ``n`` ranks with latency α and bandwidth ``B`` per hop, the steps
add up to the α–β costs (Thakur, Rabenseifner & Gropp, "Optimization of collective
communication operations in MPICH", IJHPCA 2005; Patarasuk & Yuan, JPDC 2009):

=====================  ===========================================
all-reduce (ring)      2(n−1)·α + 2(n−1)/n · S/B
reduce-scatter, gather (n−1)·α + (n−1)/n · S/B
all-to-all (pairwise)  (n−1)·α + (n−1)/n · S/B
broadcast (pipelined)  (C+n−2)·(α + S/(C·B)) for C chunks
send/recv              α + S/B
=====================  ===========================================

Across ``m > 1`` nodes of ``k > 1`` members each, a ring runs NCCL's ``k`` channels,
one leaving each node through each member's NIC (:func:`rail_ring_steps`), and an
all-to-all runs its NVLink and InfiniBand exchanges side by side (:func:`_all_to_all`).
The ``hierarchical`` algorithms: see :func:`hierarchical_steps` for the two-level formula.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

from simulator.cluster import Cluster
from simulator.errors import InputError

__all__ = [
    "OPS",
    "ALGORITHMS",
    "Collective",
    "PointToPoint",
    "Step",
    "canonical_op",
    "collective_steps",
    "collective_time",
    "step_time",
    "expert_dispatch_matrix",
    "bus_bandwidth_factor",
]

#: Collective operations, named as ``torch.distributed`` names them.
OPS = ("all_reduce", "reduce_scatter", "all_gather", "all_to_all", "broadcast", "send_recv")
ALGORITHMS = ("ring", "hierarchical")
#: NCCL's default buffer (NCCL_BUFFSIZE = 4 MiB): the broadcast pipelines in slices of it.
BROADCAST_SLICE_BYTES = 4 * 2**20
#: At most this many pipeline chunks for a broadcast, so a replay stays cheap.
MAX_BROADCAST_CHUNKS = 64


class PointToPoint(NamedTuple):
    """``bytes`` from device ``src`` to device ``dst`` within one step."""

    src: str
    dst: str
    bytes: float


Step = tuple[PointToPoint, ...]


def canonical_op(name: str) -> str | None:
    """``AllReduce``, ``allreduce``, ``all-reduce`` → ``all_reduce``; None when unknown.

    >>> canonical_op("ReduceScatter"), canonical_op("all-to-all"), canonical_op("scan")
    ('reduce_scatter', 'all_to_all', None)
    """
    squashed = name.replace("_", "").replace("-", "").replace("/", "").lower()
    for op in OPS:
        if op.replace("_", "") == squashed:
            return op
    return None


@dataclass(frozen=True)
class Collective:
    """One collective call: what every member of ``group`` runs together.

    ``matrix`` (all-to-all only) gives the bytes rank ``i`` sends to rank ``j`` (group
    order); without it every rank sends ``bytes / n`` to every rank. ``root`` is the
    broadcast's source as an index into ``group``; ``chunks`` its pipeline depth
    (default: 4 MiB slices, at most 64).
    """

    op: str
    group: tuple[str, ...]
    bytes: float = 0.0
    algorithm: str = "ring"
    matrix: tuple[tuple[float, ...], ...] | None = None
    root: int = 0
    chunks: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "group", tuple(self.group))
        if self.matrix is not None:
            object.__setattr__(self, "matrix", tuple(tuple(float(v) for v in row) for row in self.matrix))
        _check(self)

    @property
    def n(self) -> int:
        return len(self.group)

    def pair_bytes(self, i: int, j: int) -> float:
        """Bytes rank ``i`` sends rank ``j`` in an all-to-all."""
        if self.matrix is not None:
            return self.matrix[i][j]
        return self.bytes / self.n


def _check(c: Collective) -> None:
    """Reject what no algorithm can run; ``field`` names the collective's key."""
    if c.op not in OPS:
        raise InputError(f"unknown collective {c.op!r} (one of {', '.join(OPS)})", field="op")
    if c.algorithm not in ALGORITHMS:
        raise InputError(f"unknown algorithm {c.algorithm!r} (ring or hierarchical)", field="algorithm")
    if len(c.group) < 2 or len(set(c.group)) != len(c.group):
        raise InputError(f"a group needs at least two distinct devices, got {list(c.group)}", field="group")
    if c.op == "send_recv" and len(c.group) != 2:
        raise InputError("send_recv takes a group of exactly two devices [src, dst]", field="group")
    if not (c.bytes >= 0 and math.isfinite(c.bytes)):
        raise InputError(f"bytes must be a non-negative number, got {c.bytes!r}", field="bytes")
    if c.matrix is not None:
        if c.op != "all_to_all":
            raise InputError("a bytes matrix is for all_to_all only", field="matrix")
        if len(c.matrix) != c.n or any(len(row) != c.n for row in c.matrix):
            raise InputError(f"the matrix must be {c.n}×{c.n} (one row and column per group member)", field="matrix")
        if any(v < 0 or not math.isfinite(v) for row in c.matrix for v in row):
            raise InputError("matrix entries must be non-negative bytes", field="matrix")
    if not 0 <= c.root < c.n:
        raise InputError(f"root must index the group (0..{c.n - 1}), got {c.root}", field="root")
    if c.chunks is not None and c.chunks < 1:
        raise InputError(f"chunks must be at least 1, got {c.chunks}", field="chunks")
    if c.algorithm == "hierarchical" and c.op not in ("all_reduce", "reduce_scatter", "all_gather"):
        raise InputError(f"the hierarchical algorithm applies to all_reduce, reduce_scatter, all_gather, not {c.op}",
                         field="algorithm")


# -- ring building blocks ---------------------------------------------------------------
def ring_steps(ring: Sequence[str], chunk: float, count: int) -> list[Step]:
    """``count`` steps in which every rank sends ``chunk`` bytes to its ring successor.

    A ring reduce-scatter is ``n − 1`` such steps of ``S/n`` (each rank forwards the
    partial sum of one shard); an all-gather the same; an all-reduce both, ``2(n − 1)``.
    """
    n = len(ring)
    if n < 2:
        return []
    step = tuple(PointToPoint(ring[i], ring[(i + 1) % n], chunk) for i in range(n))
    return [step] * count


def _parallel(step_lists: Sequence[list[Step]]) -> list[Step]:
    """Run several independent step sequences side by side (step ``i`` of each together).

    Merged steps made of the same parts are one object, so pricing (which prices each
    distinct step object once) stays cheap for rings of a thousand ranks.
    """
    length = max((len(s) for s in step_lists), default=0)
    merged: dict[tuple[int, ...], Step] = {}
    out = []
    for i in range(length):
        parts = [steps[i] for steps in step_lists if i < len(steps)]
        key = tuple(id(part) for part in parts)
        if key not in merged:
            merged[key] = tuple(t for part in parts for t in part)
        out.append(merged[key])
    return out


def _ring_collective(c: Collective, cluster: Cluster | None) -> list[Step]:
    """A ring over the group; across nodes, NCCL's one ring per member of a node (see
    :func:`rail_ring_steps`) when every node holds the same number (> 1) of members."""
    n = c.n
    count = 2 * (n - 1) if c.op == "all_reduce" else n - 1  # reduce_scatter, all_gather: n - 1
    nodes = _members_per_node(c, cluster) if cluster is not None else []
    if len(nodes) > 1 and len(nodes[0]) > 1 and len({len(members) for members in nodes}) == 1:
        return rail_ring_steps(nodes, c.bytes, count)
    return ring_steps(c.group, c.bytes / n, count)


def rail_ring_steps(nodes: Sequence[Sequence[str]], size: float, count: int) -> list[Step]:
    """NCCL's rings across ``m`` nodes of ``k`` members: ``k`` channels, every NIC busy.

    A single ring would cross InfiniBand through one NIC per node and leave the others
    idle. NCCL instead runs one ring (*channel*) per local rank, each carrying ``S/k``:
    channel ``c`` visits every node's members starting from its ``c``-th (``c, c+1, …,
    c−1``) and leaves the node from member ``c−1`` to member ``c`` of the next node. In
    each of the ``count`` steps every rank sends ``S/(k·n)`` per channel; member ``g``'s
    ``k−1`` intra-node hops all go to member ``g+1`` and its one inter-node hop to member
    ``g+1`` of the next node, so a step is, per member, one NVLink transfer of
    ``(k−1)·S/(k·n)`` and one InfiniBand transfer of ``S/(k·n)`` on distinct links::

        T = count · max(α₁ + (k−1)/k · S/(n·B₁),  α₂ + S/(k·n·B₂))

    (``count`` = 2(n−1) for all-reduce, n−1 for reduce-scatter / all-gather).
    """
    k, m = len(nodes[0]), len(nodes)
    chunk = size / (k * k * m)
    step = tuple(
        transfer
        for j in range(m)
        for g in range(k)
        for transfer in (
            PointToPoint(nodes[j][g], nodes[j][(g + 1) % k], (k - 1) * chunk),
            PointToPoint(nodes[j][g], nodes[(j + 1) % m][(g + 1) % k], chunk),
        )
    )
    return [step] * count


def _exchange(c: Collective, pairs: list[list[tuple[int, int]]]) -> list[Step]:
    """Steps of ``(sender, receiver)`` index pairs; zero-byte blocks are not sent (a
    placement may route nothing between two ranks), and empty steps are dropped."""
    steps = []
    for step_pairs in pairs:
        step = tuple(PointToPoint(c.group[i], c.group[j], c.pair_bytes(i, j)) for i, j in step_pairs if c.pair_bytes(i, j) > 0)
        if step:
            steps.append(step)
    return steps


def _all_to_all(c: Collective, cluster: Cluster | None) -> list[Step]:
    """Pairwise exchange: in step ``s`` rank ``i`` sends its block for rank ``i + s``.

    Across ``m`` nodes of ``k`` members each, the exchange inside the node (``k − 1``
    steps on NVLink) and the one across nodes (``(m − 1)·k`` steps, each rank to a
    different rank of another node, on InfiniBand) run side by side, as NCCL posts
    every send at once: their links are disjoint, so with a uniform buffer ``S``::

        T = (k−1)·max(α₁ + S/(n·B₁), α₂ + S/(n·B₂)) + ((m−1)·k − (k−1))·(α₂ + S/(n·B₂))
    """
    n = c.n
    nodes = _members_per_node(c, cluster) if cluster is not None else []
    if len(nodes) < 2 or len(nodes[0]) < 2 or len({len(members) for members in nodes}) != 1:
        return _exchange(c, [[(i, (i + s) % n) for i in range(n)] for s in range(1, n)])
    k, m = len(nodes[0]), len(nodes)
    index = {device: i for i, device in enumerate(c.group)}
    rank = [[index[device] for device in members] for members in nodes]
    inside = [[(rank[a][g], rank[a][(g + e) % k]) for a in range(m) for g in range(k)] for e in range(1, k)]
    across = [
        [(rank[a][g], rank[(a + d) % m][(g + e) % k]) for a in range(m) for g in range(k)]
        for d in range(1, m)
        for e in range(k)
    ]
    return _parallel([_exchange(c, inside), _exchange(c, across)])


def broadcast_chunks(c: Collective) -> int:
    """Pipeline depth ``C`` of a broadcast: given, or 4 MiB slices (NCCL_BUFFSIZE), at most 64."""
    if c.chunks is not None:
        return c.chunks
    return max(1, min(MAX_BROADCAST_CHUNKS, math.ceil(c.bytes / BROADCAST_SLICE_BYTES)))


def _broadcast(c: Collective) -> list[Step]:
    """NCCL's ring broadcast: a chain from the root, the message cut into ``C`` chunks.

    Hop ``e`` of the chain forwards chunk ``j − e`` in step ``j``, so ``C + n − 2`` steps
    of ``S/C`` bytes: ``(C + n − 2)(α + S/(C·B))``, which tends to ``S/B`` for large ``C``.
    """
    n = c.n
    chain = [c.group[(c.root + i) % n] for i in range(n)]
    chunks = broadcast_chunks(c)
    size = c.bytes / chunks
    return [
        tuple(PointToPoint(chain[e], chain[e + 1], size) for e in range(n - 1) if 0 <= j - e < chunks)
        for j in range(chunks + n - 2)
    ]


# -- hierarchical ------------------------------------------------------------------------
def _members_per_node(c: Collective, cluster: Cluster) -> list[list[str]]:
    """The group's members per node: nodes in order of first appearance, members in group order."""
    nodes: dict[int, list[str]] = {}
    for device in c.group:
        if device not in cluster.by_name:
            raise InputError(f"unknown device {device!r} in the group", field="group")
        nodes.setdefault(cluster.by_name[device].node, []).append(device)
    return list(nodes.values())


def node_groups(c: Collective, cluster: Cluster) -> list[list[str]]:
    """The group's members per node; :class:`InputError` unless every node holds as many."""
    nodes = _members_per_node(c, cluster)
    if len({len(members) for members in nodes}) != 1:
        raise InputError(
            f"hierarchical needs the same number of group members on every node, got {sorted(len(m) for m in nodes)}",
            field="group",
        )
    return nodes


def hierarchical_steps(c: Collective, cluster: Cluster) -> list[Step]:
    """Two-level collective on ``m`` nodes of ``k`` members each.

    All-reduce (Horovod's ``HOROVOD_HIERARCHICAL_ALLREDUCE``: NCCL reduce-scatter in the
    node, all-reduce across nodes, NCCL all-gather in the node; the same phases as the
    "2D-torus" all-reduce of Mikami et al. 2018, arXiv:1811.05233):

    1. ring reduce-scatter of ``S`` inside every node (NVLink): ``k − 1`` steps of ``S/k``;
    2. ring all-reduce of each ``S/k`` shard across nodes, one ring per local rank (one
       InfiniBand rail per GPU, all rails at once): ``2(m − 1)`` steps of ``S/(k·m)``;
    3. ring all-gather of ``S`` inside every node: ``k − 1`` steps of ``S/k``.

    On an idle cluster with (α₁, B₁) in the node and (α₂, B₂) across::

        T = 2(k−1)·α₁ + 2(k−1)/k · S/B₁ + 2(m−1)·α₂ + 2(m−1)/(k·m) · S/B₂

    A reduce-scatter runs phases 1 then the cross-node reduce-scatter of ``S/k``
    (``m − 1`` steps of ``S/(k·m)``): ``(k−1)α₁ + (k−1)/k·S/B₁ + (m−1)α₂ + (m−1)/(km)·S/B₂``;
    an all-gather the same phases in reverse order, at the same cost.
    """
    nodes = node_groups(c, cluster)
    k, m = len(nodes[0]), len(nodes)
    inside = _parallel([ring_steps(node, c.bytes / k, k - 1) for node in nodes])
    rails = [[node[r] for node in nodes] for r in range(k)]
    across_count = 2 * (m - 1) if c.op == "all_reduce" else m - 1
    across = _parallel([ring_steps(rail, c.bytes / (k * m), across_count) for rail in rails])
    if c.op == "all_reduce":
        return inside + across + inside
    if c.op == "reduce_scatter":
        return inside + across
    return across + inside  # all_gather


def collective_steps(c: Collective, cluster: Cluster | None = None) -> tuple[Step, ...]:
    """The steps of ``c``; with ``cluster``, rings across nodes use every node's NICs
    (:func:`rail_ring_steps`); the hierarchical algorithm needs it.

    >>> ring = Collective("all_reduce", ("a", "b", "c"), bytes=3.0)
    >>> [len(step) for step in collective_steps(ring)], collective_steps(ring)[0][0]
    ([3, 3, 3, 3], PointToPoint(src='a', dst='b', bytes=1.0))
    """
    if c.algorithm == "hierarchical":
        if cluster is None:
            raise ValueError("the hierarchical algorithm needs the cluster (which device is on which node)")
        return tuple(hierarchical_steps(c, cluster))
    if c.op in ("all_reduce", "reduce_scatter", "all_gather"):
        return tuple(_ring_collective(c, cluster))
    if c.op == "all_to_all":
        return tuple(_all_to_all(c, cluster))
    if c.op == "broadcast":
        return tuple(_broadcast(c))
    return ((PointToPoint(c.group[0], c.group[1], c.bytes),),)  # send_recv


# -- pricing -----------------------------------------------------------------------------
def step_time(step: Step, cluster: Cluster) -> float:
    """Seconds one step takes on an otherwise idle cluster.

    Every transfer holds all links of its route for ``latency + bytes / bandwidth``
    (the simulator's transfer model), so the step lasts at least its slowest transfer,
    and at least the summed time of the transfers that share one link. The two bounds
    coincide with the replay whenever no two transfers of the step share a link (rings
    on switched or direct topologies); otherwise this is a lower bound.
    """
    longest = 0.0
    per_link: dict[str, float] = {}
    for src, dst, size in step:
        route = cluster.route(src, dst)
        duration = route.transfer_time(size)
        longest = max(longest, duration)
        for link in route.links:
            per_link[link] = per_link.get(link, 0.0) + duration
    return max(longest, max(per_link.values(), default=0.0))


def collective_time(c: Collective, cluster: Cluster) -> float:
    """Seconds ``c`` takes on an idle ``cluster``: its steps, priced one after the other.

    This is what the replay of ``c`` alone gives (see :func:`step_time` for when it is
    a lower bound), without running the simulator — the planner's price of a collective.

    >>> from simulator.cluster import Device, Link
    >>> gpus = [Device(f"g{i}", "t", 1e9, 1e12) for i in range(4)]
    >>> links = [Link(f"g{i}>g{(i + 1) % 4}", f"g{i}", f"g{(i + 1) % 4}", 1e9, 1e-6) for i in range(4)]
    >>> t = collective_time(Collective("all_reduce", tuple(d.name for d in gpus), 4e9), Cluster("ring", gpus, links))
    >>> round(t, 9) == round(2 * 3 / 4 * 4e9 / 1e9 + 2 * 3 * 1e-6, 9)
    True
    """
    for device in c.group:
        if device not in cluster.by_name:
            raise InputError(f"unknown device {device!r} in the group", field="group")
    priced: dict[int, float] = {}  # a ring repeats one step object 2(n−1) times: price it once
    total = 0.0
    for step in collective_steps(c, cluster):
        seconds = priced.get(id(step))
        if seconds is None:
            seconds = priced[id(step)] = step_time(step, cluster)
        total += seconds
    return total


def bus_bandwidth_factor(op: str, n: int) -> float:
    """nccl-tests' ``busbw = algbw × factor`` (doc/PERFORMANCE.md in NVIDIA/nccl-tests).

    >>> bus_bandwidth_factor("all_reduce", 8), bus_bandwidth_factor("all_gather", 8)
    (1.75, 0.875)
    """
    if op == "all_reduce":
        return 2 * (n - 1) / n
    if op in ("reduce_scatter", "all_gather", "all_to_all"):
        return (n - 1) / n
    return 1.0


def expert_dispatch_matrix(
    tokens: Sequence[float], expert_rank: Sequence[int], ranks: int, top_k: int, token_bytes: float
) -> tuple[tuple[float, ...], ...]:
    """Bytes of an MoE dispatch all-to-all, given where the experts live.

    Rank ``i`` holds ``tokens[i]`` tokens; each goes to ``top_k`` experts chosen
    uniformly (balanced routing, what load-balancing losses aim for), and expert ``e``
    lives on rank ``expert_rank[e]``. Rank ``i`` then sends rank ``j`` ``tokens[i] ·
    top_k · (experts on j) / (experts) · token_bytes`` — with experts spread evenly,
    ``tokens × hidden × top-k / ranks`` in each direction. The combine all-to-all moves
    the transpose.

    >>> expert_dispatch_matrix([8, 8], [0, 1], 2, top_k=1, token_bytes=2.0)
    ((8.0, 8.0), (8.0, 8.0))
    """
    if len(tokens) != ranks:
        raise InputError(f"need one token count per rank ({ranks}), got {len(tokens)}", field="tokens")
    if not expert_rank or any(not 0 <= r < ranks for r in expert_rank):
        raise InputError(f"every expert needs a rank in 0..{ranks - 1}", field="expert_rank")
    if not 1 <= top_k <= len(expert_rank):
        raise InputError(f"top_k must be in 1..{len(expert_rank)}, got {top_k}", field="top_k")
    share = [sum(1 for r in expert_rank if r == j) / len(expert_rank) for j in range(ranks)]
    return tuple(tuple(tokens[i] * top_k * share[j] * token_bytes for j in range(ranks)) for i in range(ranks))
