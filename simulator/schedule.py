"""The schedule document: per device, an ordered list of tasks.

A schedule is plain data any person or program can write::

    {"format": "opplan-schedule/1",
     "name": "1f1b",
     "devices": {
        "gpu0": ["F:s0:0", "F:s0:1", "B:s0:0", "W:s0:0", ...],
        "gpu1": [{"task": "F:s1:0", "start": 0.001},
                 {"overlap": ["F:s1:3", "B:s1:1"]}, ...]}}

An entry is a task string ``KIND:op:mb``, an object ``{"op", "mb", "kind"}``, an
object ``{"task": ..., "start": seconds}`` giving a not-before start time, or a group
of tasks that occupy the stream as one slot and release their outputs together when
it ends:

- ``{"fused": [B, W]}``: run one after the other (a full backward ``B = T_B + T_W``,
  as 1F1B and DualPipe use it);
- ``{"overlap": [F, B, ...]}``: the first task runs overlapped with the rest (DualPipe's
  F&B chunk), taking ``max(F, rest) + (1 - fb_overlap) * min(F, rest)``.

Groups take an optional ``start`` too, and ``"send": "after-next"``: the slot's outputs
are sent only when the *next* slot on the device ends (DualPipe's reference code posts
some sends after the following computation), and ``"prefetch": [TASK, ...]``: the slot
also waits for those later tasks' inputs from other devices (a receive posted early and
waited for at this slot, as DualPipe's ``batch_isend_irecv`` commits do). Transfers
between devices are implied by the graph's edges.

Collectives are defined once, by name, in a top-level ``collectives`` section (like an
NCCL call on a communicator), and every member of the group lists
``{"collective": NAME}`` where its stream runs it::

    {"collectives": {
        "dp.grads": {"op": "all_reduce", "group": ["gpu0", "gpu1"], "bytes": 2.0e9,
                     "algorithm": "ring", "after": ["W:s0:3", "W:s0b:3"]}},
     "devices": {"gpu0": [..., "W:s0:3", {"collective": "dp.grads"}], ...}}

``op`` is one of ``all_reduce``, ``reduce_scatter``, ``all_gather``, ``all_to_all``,
``broadcast``, ``send_recv`` (NCCL's ``AllReduce`` spellings are accepted); ``bytes`` is
the full buffer in the nccl-tests convention; ``algorithm`` is ``ring`` (default) or
``hierarchical``; ``stream`` is ``comm`` (default) or ``compute``; ``after`` lists tasks
that must finish first, ``before`` tasks that wait for it; an all-to-all may give a
``matrix`` of bytes per (sender, receiver), a broadcast a ``root`` index and ``chunks``.
``"priced": true`` replays the call by its α–β price instead of its steps' transfers
(see :class:`CollectiveCall`). See :mod:`simulator.collectives` for the algorithms.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from simulator.collectives import Collective, canonical_op
from simulator.errors import InputError
from simulator.graph import STREAMS
from simulator.problem import Task, parse_task
from simulator.yamlio import load_document, show

__all__ = [
    "CollectiveCall", "Entry", "Schedule", "load_schedule", "save_schedule", "schedule_from_dict", "schedule_text",
    "schedule_to_dict",
]

FORMAT = "opplan-schedule/1"
#: Latest not-before start time (seconds): a day, the longest time any quantity may take (see simulator.units).
MAX_START_S = 86_400.0


@dataclass(frozen=True)
class CollectiveCall:
    """A named collective in a schedule: what runs, on which stream, between which tasks.

    It starts when every member of ``collective.group`` has reached it on its ``stream``
    and every task in ``after`` has finished; tasks in ``before`` start after it ends.

    A ``priced`` call moves nothing on links: it holds its members' streams for
    :func:`simulator.collectives.collective_time` (its steps' α–β cost on the idle
    cluster), so it neither slows nor is slowed by other traffic, and costs one event to
    replay instead of one per transfer. Members of its group that the schedule does not
    list at all (replicas left out of the replay, identical by symmetry) are taken to
    arrive with the others.
    """

    name: str
    collective: Collective
    stream: str = "comm"
    after: tuple[Task, ...] = ()
    before: tuple[Task, ...] = ()
    priced: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "after", tuple(self.after))
        object.__setattr__(self, "before", tuple(self.before))
        if self.stream not in STREAMS:
            raise ValueError(f"unknown stream {self.stream!r} (expected compute or comm)")

    def __str__(self) -> str:
        return f"{self.collective.op}:{self.name}"


@dataclass(frozen=True)
class Entry:
    """One slot on a device stream: a task, a group of tasks, or a collective call.

    A group with ``overlap`` runs its first task alongside the others; without, its
    tasks run back to back. Either way the slot's outputs are released at its end.
    A collective entry has no tasks: ``collective`` says what the device joins.
    """

    tasks: tuple[Task, ...]
    start: float | None = None
    overlap: bool = False
    #: Outputs are sent when the next slot on this device ends, not when this one does.
    send_after_next: bool = False
    #: Later tasks whose inputs from other devices this slot also waits for.
    prefetch: tuple[Task, ...] = ()
    collective: CollectiveCall | None = None

    def __post_init__(self) -> None:
        if self.collective is not None:
            if self.tasks or self.overlap or self.start is not None or self.send_after_next or self.prefetch:
                raise ValueError("a collective entry takes no tasks, overlap, start, send or prefetch")
            return
        if not self.tasks:
            raise ValueError("an entry needs at least one task")
        if self.overlap and len(self.tasks) < 2:
            raise ValueError("an overlapped entry needs at least two tasks")

    @property
    def first(self) -> Task:
        """The first task (the overlapped one of an ``overlap`` group; the only one of a single task)."""
        return self.tasks[0]

    def __str__(self) -> str:
        if self.collective is not None:
            return str(self.collective)
        if len(self.tasks) == 1:
            return str(self.tasks[0])
        return ("&" if self.overlap else "+").join(str(t) for t in self.tasks)


@dataclass(frozen=True)
class Schedule:
    """Ordered entries per device. ``meta`` records who made it (and whether heuristically)."""

    devices: Mapping[str, tuple[Entry, ...]]
    name: str = ""
    meta: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "devices", MappingProxyType({k: tuple(v) for k, v in self.devices.items()}))
        object.__setattr__(self, "meta", MappingProxyType(dict(self.meta)))

    @classmethod
    def from_lists(cls, lists: Mapping[str, list], name: str = "", meta: Mapping | None = None) -> Schedule:
        """Build from ``{device: [Task | tuple-of-Tasks | Entry, ...]}`` (generators use this).

        A bare tuple of tasks becomes a ``fused`` group; build an :class:`Entry` with
        ``overlap=True`` for an overlapped one. A :class:`CollectiveCall` is that
        device's part in the collective.
        """
        devices = {}
        for device, items in lists.items():
            entries = []
            for item in items:
                if isinstance(item, Entry):
                    entries.append(item)
                elif isinstance(item, Task):
                    entries.append(Entry((item,)))
                elif isinstance(item, CollectiveCall):
                    entries.append(Entry((), collective=item))
                else:
                    entries.append(Entry(tuple(item)))
            devices[device] = tuple(entries)
        return cls(devices=devices, name=name, meta=meta or {})

    def entries(self):
        for device, entries in self.devices.items():
            for entry in entries:
                yield device, entry

    @property
    def collectives(self) -> dict[str, CollectiveCall]:
        """Every collective call any device lists, by name (in order of first appearance)."""
        calls: dict[str, CollectiveCall] = {}
        for _, entry in self.entries():
            if entry.collective is not None:
                calls.setdefault(entry.collective.name, entry.collective)
        return calls

    def placement(self) -> dict[Task, str]:
        return {task: device for device, entry in self.entries() for task in entry.tasks}

    def __len__(self) -> int:
        return sum(len(entry.tasks) for _, entry in self.entries())


def _parse_task(value: Any, file: str | None, where: str) -> Task:
    if isinstance(value, str):
        try:
            return parse_task(value)
        except ValueError as exc:
            raise InputError(str(exc), file=file, field=where) from None
    if isinstance(value, dict) and {"op", "mb", "kind"} <= set(value):
        mb = value["mb"]
        if isinstance(mb, bool) or not isinstance(mb, int):
            raise InputError(f"micro-batch must be an integer, got {show(mb)}", file=file, field=f"{where}.mb")
        return Task(str(value["op"]), mb, str(value["kind"]))
    raise InputError(f"expected a task 'KIND:op:mb' or {{op, mb, kind}}, got {show(value)}", file=file, field=where)


def _parse_entry(value: Any, file: str | None, where: str, calls: Mapping[str, CollectiveCall] | None = None) -> Entry:
    if isinstance(value, dict) and "collective" in value:
        return _parse_collective_entry(value, file, where, calls or {})
    for key in ("overlap", "fused"):
        if isinstance(value, dict) and key in value:
            group = value[key]
            if not isinstance(group, list) or len(group) < 2:
                raise InputError(f"{key} takes a list of at least two tasks", file=file, field=f"{where}.{key}")
            tasks = tuple(_parse_task(v, file, f"{where}.{key}[{i}]") for i, v in enumerate(group))
            return Entry(tasks, _parse_start(value, file, where), overlap=key == "overlap", **_parse_comm(value, file, where))
    if isinstance(value, dict) and "task" in value:
        task = _parse_task(value["task"], file, f"{where}.task")
        return Entry((task,), _parse_start(value, file, where), **_parse_comm(value, file, where))
    return Entry((_parse_task(value, file, where),))


def _parse_comm(value: dict, file: str | None, where: str) -> dict[str, Any]:
    """``send`` and ``prefetch`` of an entry object."""
    prefetch = value.get("prefetch", [])
    if not isinstance(prefetch, list):
        raise InputError("prefetch takes a list of tasks", file=file, field=f"{where}.prefetch")
    tasks = tuple(_parse_task(v, file, f"{where}.prefetch[{i}]") for i, v in enumerate(prefetch))
    return {"send_after_next": _parse_send(value, file, where), "prefetch": tasks}


def _parse_send(value: dict, file: str | None, where: str) -> bool:
    send = value.get("send", "at-end")
    if send not in ("at-end", "after-next"):
        raise InputError(f"send must be 'at-end' or 'after-next', got {send!r}", file=file, field=f"{where}.send")
    return send == "after-next"


def _parse_start(value: dict, file: str | None, where: str) -> float | None:
    start = value.get("start")
    if start is None:
        return None
    ok = not isinstance(start, bool) and isinstance(start, (int, float)) and 0 <= start <= MAX_START_S  # False for NaN
    if not ok:
        raise InputError(f"start must be a number of seconds in [0, {MAX_START_S:g}], got {show(start)}", file=file,
                         field=f"{where}.start")
    return float(start)


def _parse_collective_entry(value: dict, file: str | None, where: str, calls: Mapping[str, CollectiveCall]) -> Entry:
    """``{"collective": NAME}``: this device's part in a collective defined under ``collectives``."""
    if set(value) != {"collective"}:
        extra = sorted(set(value) - {"collective"})
        raise InputError(f"a collective entry takes only its name, not {extra}", file=file, field=where)
    name = value["collective"]
    if not isinstance(name, str) or name not in calls:
        known = ", ".join(calls) or "none defined"
        raise InputError(f"unknown collective {name!r} (defined under collectives: {known})", file=file,
                         field=f"{where}.collective")
    return Entry((), collective=calls[name])


_CALL_KEYS = {"op", "group", "bytes", "algorithm", "stream", "after", "before", "matrix", "root", "chunks", "priced"}


def _parse_collectives(section: Any, file: str | None) -> dict[str, CollectiveCall]:
    """The top-level ``collectives`` section: ``{name: {op, group, bytes, ...}}``."""
    if not isinstance(section, dict):
        raise InputError("expected a mapping of collective name -> definition", file=file, field="collectives")
    return {str(name): _parse_call(str(name), spec, file, f"collectives.{name}") for name, spec in section.items()}


def _parse_call(name: str, spec: Any, file: str | None, where: str) -> CollectiveCall:
    if not isinstance(spec, dict):
        raise InputError("expected a mapping {op, group, bytes, ...}", file=file, field=where)
    unknown = sorted(set(spec) - _CALL_KEYS)
    if unknown:
        raise InputError(f"unknown key {unknown[0]!r} (expected {', '.join(sorted(_CALL_KEYS))})", file=file,
                         field=f"{where}.{unknown[0]}")
    op = canonical_op(str(spec.get("op", "")))
    if op is None:
        raise InputError(f"unknown collective op {spec.get('op')!r} (all_reduce, reduce_scatter, all_gather,"
                         " all_to_all, broadcast, send_recv)", file=file, field=f"{where}.op")
    group = spec.get("group")
    if not isinstance(group, list) or not all(isinstance(d, str) for d in group):
        raise InputError("expected a list of device names", file=file, field=f"{where}.group")
    _check_call_values(spec, file, where)
    tasks = {key: _task_list(spec.get(key, []), file, f"{where}.{key}") for key in ("after", "before")}
    matrix = spec.get("matrix")
    try:
        collective = Collective(op, tuple(group), float(spec.get("bytes", 0.0)), str(spec.get("algorithm", "ring")),
                                None if matrix is None else tuple(tuple(row) for row in matrix), int(spec.get("root", 0)),
                                None if spec.get("chunks") is None else int(spec["chunks"]))
    except InputError as exc:
        raise InputError(exc.message, file=file, field=f"{where}.{exc.field}") from None
    return CollectiveCall(name, collective, spec.get("stream", "comm"), tasks["after"], tasks["before"],
                          priced=spec.get("priced", False))


def _check_call_values(spec: dict, file: str | None, where: str) -> None:
    """Numbers are numbers, ``matrix`` a list of lists of numbers, ``stream`` a stream."""
    def number(value: Any) -> bool:
        return not isinstance(value, bool) and isinstance(value, (int, float))

    for key in ("bytes", "root", "chunks"):
        if spec.get(key) is not None and not number(spec[key]):
            raise InputError(f"expected a number, got {spec[key]!r}", file=file, field=f"{where}.{key}")
    matrix = spec.get("matrix")
    if matrix is not None and not (isinstance(matrix, list) and all(isinstance(r, list) and all(map(number, r)) for r in matrix)):
        raise InputError("expected a list of rows of bytes (one row per sender)", file=file, field=f"{where}.matrix")
    if not isinstance(spec.get("priced", False), bool):
        raise InputError(f"expected true or false, got {spec['priced']!r}", file=file, field=f"{where}.priced")
    if spec.get("stream", "comm") not in STREAMS:
        raise InputError(f"unknown stream {spec['stream']!r} (expected compute or comm)", file=file, field=f"{where}.stream")


def _task_list(value: Any, file: str | None, where: str) -> tuple[Task, ...]:
    if not isinstance(value, list):
        raise InputError("expected a list of tasks 'KIND:op:mb'", file=file, field=where)
    return tuple(_parse_task(v, file, f"{where}[{i}]") for i, v in enumerate(value))


def schedule_from_dict(doc: Any, *, file: str | None = None) -> Schedule:
    """Parse a schedule document (already loaded from JSON/YAML)."""
    if not isinstance(doc, dict):
        raise InputError("expected a mapping at the top level", file=file)
    fmt = doc.get("format", FORMAT)
    if fmt != FORMAT:
        raise InputError(f"unsupported format {fmt!r} (expected {FORMAT})", file=file, field="format")
    calls = _parse_collectives(doc.get("collectives", {}), file)
    devices = doc.get("devices")
    if not isinstance(devices, dict) or not devices:
        raise InputError("expected a non-empty mapping of device -> task list", file=file, field="devices")
    parsed: dict[str, tuple[Entry, ...]] = {}
    for device, items in devices.items():
        where = f"devices.{device}"
        if not isinstance(items, list):
            raise InputError(f"expected a list of tasks, got {type(items).__name__}", file=file, field=where)
        parsed[str(device)] = tuple(_parse_entry(item, file, f"{where}[{i}]", calls) for i, item in enumerate(items))
    meta = doc.get("meta", {})
    if not isinstance(meta, dict):
        raise InputError("expected a mapping", file=file, field="meta")
    schedule = Schedule(devices=parsed, name=str(doc.get("name", "")), meta=meta)
    unused = [name for name in calls if name not in schedule.collectives]
    if unused:
        raise InputError(f"collective {unused[0]!r} is defined but no device lists it (add {{collective: {unused[0]}}}"
                         " where each member runs it)", file=file, field=f"collectives.{unused[0]}")
    return schedule


def load_schedule(path: str | Path) -> Schedule:
    return schedule_from_dict(load_document(path), file=str(path))


def _entry_to_json(entry: Entry) -> Any:
    if entry.collective is not None:
        return {"collective": entry.collective.name}
    if len(entry.tasks) > 1:
        out: dict[str, Any] = {"overlap" if entry.overlap else "fused": [str(t) for t in entry.tasks]}
    elif entry.start is None and not entry.send_after_next and not entry.prefetch:
        return str(entry.first)
    else:
        out = {"task": str(entry.first)}
    if entry.start is not None:
        out["start"] = entry.start
    if entry.send_after_next:
        out["send"] = "after-next"
    if entry.prefetch:
        out["prefetch"] = [str(t) for t in entry.prefetch]
    return out


def _call_to_json(call: CollectiveCall) -> dict:
    c = call.collective
    out: dict[str, Any] = {"op": c.op, "group": list(c.group), "bytes": c.bytes, "algorithm": c.algorithm,
                           "stream": call.stream}
    if call.after:
        out["after"] = [str(t) for t in call.after]
    if call.before:
        out["before"] = [str(t) for t in call.before]
    if call.priced:
        out["priced"] = True
    if c.matrix is not None:
        out["matrix"] = [list(row) for row in c.matrix]
    if c.op == "broadcast":
        out["root"] = c.root
        if c.chunks is not None:
            out["chunks"] = c.chunks
    return out


def schedule_to_dict(schedule: Schedule) -> dict:
    doc: dict[str, Any] = {"format": FORMAT, "name": schedule.name, "meta": dict(schedule.meta)}
    calls = schedule.collectives
    if calls:
        doc["collectives"] = {name: _call_to_json(call) for name, call in calls.items()}
    doc["devices"] = {device: [_entry_to_json(e) for e in entries] for device, entries in schedule.devices.items()}
    return doc


def schedule_text(schedule: Schedule, path: str | Path) -> str:
    """The schedule document as ``path`` wants it: JSON (``.json``) or YAML (anything else)."""
    doc = schedule_to_dict(schedule)
    if Path(path).suffix == ".json":
        return json.dumps(doc, indent=1) + "\n"
    return yaml.safe_dump(doc, sort_keys=False, width=120)


def save_schedule(schedule: Schedule, path: str | Path) -> None:
    """Write JSON (``.json``) or YAML (anything else)."""
    Path(path).write_text(schedule_text(schedule, path))
