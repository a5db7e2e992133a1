"""Expanding a pipeline schedule of stages into per-rank unit tasks and collectives.

A stage task ``F:s3:mb`` of the generated pipeline schedule becomes, on every replayed
rank of that pipeline rank, ``F`` of each unit of stage 3 in model order, each followed
by its TP collectives (all-reduce, or all-gather + reduce-scatter under sequence
parallelism) over the rank's TP group and its EP all-to-alls over its EP group; ``B``
and ``W`` walk the units in reverse. A fused ``B+W`` slot (1F1B's full backward) becomes
``B`` then ``W`` per unit, as Megatron computes both gradients layer by layer; an
overlapped ``F&B`` slot (DualPipe) becomes its F units then its B units, which takes the
same time when ``fb_overlap`` is 0. Collectives are named by what they reduce and by
their group, so every member lists the same call; members outside the replayed slice
(other data-parallel replicas) list only the collectives they share with it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property

from planner.layouts.dataparallel import comm_stream
from simulator.cluster import Cluster
from simulator.collectives import Collective, collective_time
from simulator.hybrid import Unit
from simulator.layout import Layout
from simulator.problem import Task
from simulator.schedule import CollectiveCall, Entry, Schedule

__all__ = ["Context", "expand_all"]

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
    calls: dict[str, CollectiveCall] = field(default_factory=dict)

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
        for token in ("tp", "ep", "dp-cp", "expert-dp"):
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
            collective = self._stand_in(op, size, group) or Collective(op, group, size)
            found = self.calls[name] = CollectiveCall(name, collective, stream, tuple(after), tuple(before))
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
        seconds = collective_time(Collective(op, group, size), self.cluster)
        route = self.cluster.route(group[i], group[j])
        size = max(0.0, seconds - route.latency) * route.bandwidth
        matrix = [[0.0] * len(group) for _ in group]
        matrix[i][j] = size
        return Collective("all_to_all", group, size, matrix=tuple(tuple(row) for row in matrix))

    def final(self, item):
        """``item`` with a collective call replaced by its final version (every member's tasks)."""
        return self.calls[item.name] if isinstance(item, CollectiveCall) else item


def _unit_collectives(ctx: Context, unit: int, kind: str, mb: int, device: str) -> list[CollectiveCall]:
    u = ctx.units[unit]
    out = []
    if ctx.tp_mode == "replay":
        calls = u.tp_forward if kind == "F" else u.tp_backward
        group = ctx.group("tp", device)
        out += [ctx.call(f"tp.{u.name}.{kind}{i}.{mb}", op, size, group, "compute") for i, (op, size) in enumerate(calls)]
    if u.all_to_all and kind in ("F", "B"):
        group = ctx.group("ep", device)
        out += [ctx.call(f"ep.{u.name}.{kind}{i}.{mb}", "all_to_all", size, group, "compute")
                for i, size in enumerate(u.all_to_all[:2] if kind == "F" else u.all_to_all[2:])]
    return out


def _stage_tasks(ctx: Context, task: Task, copy: Copy, device: str, with_w: bool = False) -> list:
    """The unit tasks (and their collectives) of one stage task on one rank."""
    units = ctx.stages[int(task.op[1:])]
    order = units if task.kind == "F" else tuple(reversed(units))
    out: list = []
    for unit in order:
        out.append(Task(ctx.op_name(unit, copy), task.mb, task.kind))
        out += _unit_collectives(ctx, unit, task.kind, task.mb, device)
        if with_w:
            out.append(Task(ctx.op_name(unit, copy), task.mb, "W"))
    return out


def _expand_entry(ctx: Context, entry: Entry, copy: Copy, device: str) -> list:
    tasks = entry.tasks
    kinds = [t.kind for t in tasks]
    if not entry.overlap and kinds == ["B", "W"] and tasks[0].op == tasks[1].op and tasks[0].mb == tasks[1].mb:
        return _stage_tasks(ctx, tasks[0], copy, device, with_w=True)
    out: list = []
    for task in tasks:
        out += _stage_tasks(ctx, task, copy, device)
    return out


def expand_all(ctx: Context) -> tuple[dict[str, list], tuple[str, ...]]:
    """Per device, its entries (unit tasks and collective calls); and the devices outside the
    replayed slice that join its collectives."""
    lists: dict[str, list] = {}
    for generator_device, entries in ctx.pipeline.devices.items():
        r = ctx.pipeline_ranks[generator_device]
        for copy in ctx.copies:
            device = ctx.device(copy, r)
            compute: list = []
            for entry in entries:
                compute += _expand_entry(ctx, entry, copy, device)
            lists[device] = compute + comm_stream(ctx, compute, device)
    phantoms = _add_phantoms(ctx, lists)
    return {device: [ctx.final(item) for item in items] for device, items in lists.items()}, phantoms


def _add_phantoms(ctx: Context, lists: dict[str, list]) -> tuple[str, ...]:
    """Members of the slice's collectives that run no task list the calls they share, in order."""
    simulated = set(lists)
    phantoms: dict[str, list] = {}
    seen: set[tuple[str, str]] = set()
    for device in ctx.simulated:
        for item in lists[device]:
            if not isinstance(item, CollectiveCall):
                continue
            for member in item.collective.group:
                if member not in simulated and (member, item.name) not in seen:
                    seen.add((member, item.name))
                    phantoms.setdefault(member, []).append(item)
    lists.update(phantoms)
    return tuple(sorted(phantoms, key=ctx.names.index))
