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
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from simulator.errors import InputError
from simulator.problem import Task, parse_task
from simulator.yamlio import load_document, show

__all__ = ["Entry", "Schedule", "load_schedule", "save_schedule", "schedule_from_dict", "schedule_text", "schedule_to_dict"]

FORMAT = "opplan-schedule/1"
#: Latest not-before start time (seconds): a day, the longest time any quantity may take (see simulator.units).
MAX_START_S = 86_400.0


@dataclass(frozen=True)
class Entry:
    """One slot on a device stream: a task or a group of tasks; optional not-before start.

    A group with ``overlap`` runs its first task alongside the others; without, its
    tasks run back to back. Either way the slot's outputs are released at its end.
    """

    tasks: tuple[Task, ...]
    start: float | None = None
    overlap: bool = False
    #: Outputs are sent when the next slot on this device ends, not when this one does.
    send_after_next: bool = False
    #: Later tasks whose inputs from other devices this slot also waits for.
    prefetch: tuple[Task, ...] = ()

    def __post_init__(self) -> None:
        if not self.tasks:
            raise ValueError("an entry needs at least one task")
        if self.overlap and len(self.tasks) < 2:
            raise ValueError("an overlapped entry needs at least two tasks")

    @property
    def first(self) -> Task:
        """The first task (the overlapped one of an ``overlap`` group; the only one of a single task)."""
        return self.tasks[0]

    def __str__(self) -> str:
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
        ``overlap=True`` for an overlapped one.
        """
        devices = {}
        for device, items in lists.items():
            entries = []
            for item in items:
                if isinstance(item, Entry):
                    entries.append(item)
                elif isinstance(item, Task):
                    entries.append(Entry((item,)))
                else:
                    entries.append(Entry(tuple(item)))
            devices[device] = tuple(entries)
        return cls(devices=devices, name=name, meta=meta or {})

    def entries(self):
        for device, entries in self.devices.items():
            for entry in entries:
                yield device, entry

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


def _parse_entry(value: Any, file: str | None, where: str) -> Entry:
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


def schedule_from_dict(doc: Any, *, file: str | None = None) -> Schedule:
    """Parse a schedule document (already loaded from JSON/YAML)."""
    if not isinstance(doc, dict):
        raise InputError("expected a mapping at the top level", file=file)
    fmt = doc.get("format", FORMAT)
    if fmt != FORMAT:
        raise InputError(f"unsupported format {fmt!r} (expected {FORMAT})", file=file, field="format")
    devices = doc.get("devices")
    if not isinstance(devices, dict) or not devices:
        raise InputError("expected a non-empty mapping of device -> task list", file=file, field="devices")
    parsed: dict[str, tuple[Entry, ...]] = {}
    for device, items in devices.items():
        where = f"devices.{device}"
        if not isinstance(items, list):
            raise InputError(f"expected a list of tasks, got {type(items).__name__}", file=file, field=where)
        parsed[str(device)] = tuple(_parse_entry(item, file, f"{where}[{i}]") for i, item in enumerate(items))
    meta = doc.get("meta", {})
    if not isinstance(meta, dict):
        raise InputError("expected a mapping", file=file, field="meta")
    return Schedule(devices=parsed, name=str(doc.get("name", "")), meta=meta)


def load_schedule(path: str | Path) -> Schedule:
    return schedule_from_dict(load_document(path), file=str(path))


def _entry_to_json(entry: Entry) -> Any:
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


def schedule_to_dict(schedule: Schedule) -> dict:
    return {
        "format": FORMAT,
        "name": schedule.name,
        "meta": dict(schedule.meta),
        "devices": {device: [_entry_to_json(e) for e in entries] for device, entries in schedule.devices.items()},
    }


def schedule_text(schedule: Schedule, path: str | Path) -> str:
    """The schedule document as ``path`` wants it: JSON (``.json``) or YAML (anything else)."""
    doc = schedule_to_dict(schedule)
    if Path(path).suffix == ".json":
        return json.dumps(doc, indent=1) + "\n"
    return yaml.safe_dump(doc, sort_keys=False, width=120)


def save_schedule(schedule: Schedule, path: str | Path) -> None:
    """Write JSON (``.json``) or YAML (anything else)."""
    Path(path).write_text(schedule_text(schedule, path))
