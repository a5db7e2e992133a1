"""What expanding a pipeline schedule into a layout's tasks reads: the layout, its units and
stages, which copies of the slice are replayed, and the collective calls made so far."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property

from simulator.cluster import Cluster
from simulator.collectives import Collective, collective_time
from simulator.hybrid import Unit
from simulator.layout import Layout
from simulator.problem import Task
from simulator.schedule import CollectiveCall, Schedule

__all__ = ["Copy", "Context", "PRICED_GROUP"]

Copy = tuple[int, int, int]  # (dp replica, tp rank, cp rank)
#: Collectives over at least this many ranks with one replayed member are priced (see Context._stand_in).
PRICED_GROUP = 16


@dataclass
class Context:
    """What the expansion reads, and the collective calls it has made so far."""

    layout: Layout
    units: tuple[Unit, ...]
    stages: tuple[tuple[int, ...], ...]
    names: tuple[str, ...]
    tp_mode: str
    replicas: int
    pipeline: Schedule
    cluster: Cluster | None = None
    #: Every collective a priced call (no transfers, no stand-ins, no phantom members).
    priced: bool = False
    calls: dict[str, CollectiveCall] = field(default_factory=dict)
    prices: dict[Collective, float] = field(default_factory=dict)

    @cached_property
    def copies(self) -> tuple[Copy, ...]:
        tps = range(self.layout.tp if self.tp_mode != "priced" else 1)
        return tuple((d, t, c) for d in range(self.replicas) for t in tps for c in range(self.layout.cp))

    @cached_property
    def unit_index(self) -> dict[str, int]:
        return {unit.name: i for i, unit in enumerate(self.units)}

    def op_name(self, unit: int, copy: Copy) -> str:
        name = self.units[unit].name
        return name if len(self.copies) == 1 else f"{name}@{copy[0]}.{copy[1]}.{copy[2]}"

    @cached_property
    def pipeline_ranks(self) -> dict[str, int]:
        """Generator device -> pipeline rank (its index in the cluster)."""
        return {device: self.names.index(device) for device in self.pipeline.devices}

    @cached_property
    def stages_on_rank(self) -> dict[int, tuple[int, ...]]:
        out: dict[int, set[int]] = {}
        for device, entry in self.pipeline.entries():
            out.setdefault(self.pipeline_ranks[device], set()).update(int(t.op[1:]) for t in entry.tasks)
        return {r: tuple(sorted(s)) for r, s in out.items()}

    @cached_property
    def simulated(self) -> tuple[str, ...]:
        return tuple(self.device(copy, r) for r in sorted(self.stages_on_rank) for copy in self.copies)

    def device(self, copy: Copy, pp_rank: int) -> str:
        d, t, c = copy
        return self.names[self.layout.rank_of(tp=t, cp=c, dp=d, pp=pp_rank)]

    @cached_property
    def _groups(self) -> dict[str, dict[int, tuple[int, ...]]]:
        out = {}
        for token in ("tp", "cp", "ep", "dp-cp", "expert-dp"):
            out[token] = {r: g for g in self.layout.groups(token) for r in g}
        return out

    def group(self, token: str, device: str) -> tuple[str, ...]:
        return tuple(self.names[r] for r in self._groups[token][self.names.index(device)])

    def call(self, tag: str, op: str, size: float, group: tuple[str, ...], stream: str, *,
             after: Sequence[Task] = (), before: Sequence[Task] = ()) -> CollectiveCall:
        """The named collective (made once; every member's expansion gets the same call)."""
        name = f"{tag}@{group[0]}"
        found = self.calls.get(name)
        if found is None:
            collective = (None if self.priced else self._stand_in(op, size, group)) or Collective(op, group, size)
            found = self.calls[name] = CollectiveCall(name, collective, stream, tuple(after), tuple(before), self.priced)
        elif after or before:  # another member's tasks: the call waits for every member's
            found = self.calls[name] = replace(found, after=found.after + tuple(after), before=found.before + tuple(before))
        return found

    @cached_property
    def _simulated_set(self) -> frozenset[str]:
        return frozenset(self.simulated)

    def _stand_in(self, op: str, size: float, group: tuple[str, ...]) -> Collective | None:
        """A collective over :data:`PRICED_GROUP` or more ranks, most outside the replayed slice:
        priced by :func:`collective_time` on its real group, and replayed as one transfer of
        that duration from the slice's member to the next member on its own links (so it
        still holds the member's NIC against the slice's pipeline traffic). A ring over 32
        ranks in 4 nodes would be 62 steps of 64 transfers each."""
        if self.cluster is None or len(group) < PRICED_GROUP:
            return None
        inside = [i for i, d in enumerate(group) if d in self._simulated_set]
        if len(inside) != 1:
            return None
        i = inside[0]
        j = (i + 1) % len(group)
        real = Collective(op, group, size)
        seconds = self.prices.get(real)
        if seconds is None:  # a layer's all-to-all repeats every micro-batch: price it once
            seconds = self.prices[real] = collective_time(real, self.cluster)
        route = self.cluster.route(group[i], group[j])
        size = max(0.0, seconds - route.latency) * route.bandwidth
        matrix = [[0.0] * len(group) for _ in group]
        matrix[i][j] = size
        return Collective("all_to_all", group, size, matrix=tuple(tuple(row) for row in matrix))

    def final(self, item):
        """``item`` with a collective call replaced by its final version (every member's tasks)."""
        return self.calls[item.name] if isinstance(item, CollectiveCall) else item
