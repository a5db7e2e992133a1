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
(other data-parallel replicas) list only the collectives they share with it, unless the
collectives are priced (then they list nothing: a priced call does not wait for them).
"""

from __future__ import annotations

from planner.layouts.context import Context, Copy
from planner.layouts.dataparallel import comm_stream
from simulator.problem import Task
from simulator.schedule import CollectiveCall, Entry

__all__ = ["expand_all"]


def _unit_collectives(ctx: Context, unit: int, kind: str, mb: int, device: str) -> list[CollectiveCall]:
    u = ctx.units[unit]
    out = []
    if ctx.tp_mode == "replay":
        calls = u.tp_forward if kind == "F" else u.tp_backward
        group = ctx.group("tp", device)
        out += [ctx.call(f"tp.{u.name}.{kind}{i}.{mb}", op, size, group, "compute") for i, (op, size) in enumerate(calls)]
    calls = u.cp_forward if kind == "F" else u.cp_backward if kind == "B" else ()
    if calls:
        group = ctx.group("cp", device)
        out += [ctx.call(f"cp.{u.name}.{kind}{i}.{mb}", op, size, group, "compute") for i, (op, size) in enumerate(calls)]
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
    phantoms = _add_phantoms(ctx, lists) if not ctx.priced else ()
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
