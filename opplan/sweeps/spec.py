"""The sweep file: a base scenario and the points to run it at.

Example (``scenarios/sweeps/hardware-x-microbatches.yaml``)::

    name: hardware-x-microbatches
    scenario: pipeline-8-profile.yaml        # relative to this file
    grid:                                    # every combination, first field outermost
      cluster.profile: [h100-sxm, h800-sxm, a100-80gb]
      workload.micro_batches: [8, 16, 32]
      schedule: all                          # every built-in schedule
    points:                                  # extra points, run as well
      - {cluster.profile: h100-sxm, workload.micro_batches: 8, schedule: planner}
    planner: {time_limit_s: 30}              # for schedule: planner
    plots:                                   # drawn into the output folder at the end
      - {file: bubble.png, x: workload.micro_batches, y: bubble_ratio, series: schedule}

A grid value that is not a list is one value for every point. ``schedule`` is a
built-in schedule name, a schedule file (``.json`` / ``.yaml``, relative to the sweep
file), ``planner`` (the MIP planner), or ``all`` (every built-in); without it the
scenario's own ``schedule:`` file is replayed.

Each point has a stable *key*, a hash of the base scenario document, the point's
fields and the content of a schedule file it names; results are stored under it, so
re-running a sweep skips what is done, and editing the base scenario recomputes all.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from opplan.sweeps.overrides import check_field
from simulator.errors import InputError
from simulator.limits import current_limits, fmt_count
from simulator.reading import read_input_bytes
from simulator.yamlio import Section, read_section, show

__all__ = ["PLANNER", "ALL_BUILTINS", "Point", "PlotSpec", "SweepSpec", "builtin_names", "is_schedule_file", "load_sweep", "point_key"]

#: ``schedule:`` value asking for the MIP planner.
PLANNER = "planner"
#: ``schedule:`` value expanding to every built-in schedule.
ALL_BUILTINS = "all"
_SCHEDULE_SUFFIXES = (".json", ".yaml", ".yml")
_KEY_VERSION = 1


@dataclass(frozen=True)
class Point:
    """One run: ``(field, value)`` assignments in sweep order, and the key its result is stored under."""

    fields: tuple[tuple[str, Any], ...]
    key: str

    @property
    def schedule(self) -> str | None:
        """The point's ``schedule`` value, or None for the scenario's own schedule file."""
        return dict(self.fields).get("schedule")

    @property
    def overrides(self) -> tuple[tuple[str, Any], ...]:
        """The fields that change the scenario document (all but ``schedule``)."""
        return tuple((path, value) for path, value in self.fields if path != "schedule")

    def label(self) -> str:
        """Short human-readable form: ``cluster.profile=h100-sxm workload.micro_batches=8``."""
        return " ".join(f"{path}={_short(value)}" for path, value in self.fields) or "(base scenario)"


@dataclass(frozen=True)
class PlotSpec:
    """A chart of the results table: ``y`` against ``x``, one line per ``series``, one panel per ``facet``."""

    file: str
    x: str
    y: str
    series: str | None = None
    facet: str | None = None


@dataclass(frozen=True)
class SweepSpec:
    name: str
    file: Path
    base_file: Path
    base_doc: Mapping[str, Any]
    points: tuple[Point, ...]
    #: Field paths in order of first appearance (the table's leading columns).
    fields: tuple[str, ...]
    planner_time_limit_s: float | None = None
    plots: tuple[PlotSpec, ...] = ()
    description: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "base_doc", MappingProxyType(dict(self.base_doc)))

    @property
    def folder(self) -> Path:
        """Relative schedule files resolve against this folder (the sweep file's)."""
        return self.file.parent


def builtin_names() -> list[str]:
    """Names of the built-in schedules (``planner.schedules.SCHEDULES``), in their order."""
    from planner.schedules import SCHEDULES

    return [str(name) for name in SCHEDULES]


def is_schedule_file(value: str) -> bool:
    """A ``schedule`` value names a file when it has a schedule-file suffix.

    >>> is_schedule_file("1f1b"), is_schedule_file("my.gpipe.json")
    (False, True)
    """
    return Path(value).suffix in _SCHEDULE_SUFFIXES


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def point_key(base_doc: Mapping[str, Any], fields: tuple[tuple[str, Any], ...], *, extra: Mapping[str, Any] | None = None) -> str:
    """Stable key of a point: same base, same fields, same extras -> same key, on any machine.

    >>> a = point_key({"model": {"stages": 4}}, (("workload.micro_batches", 8),))
    >>> a == point_key({"model": {"stages": 4}}, (("workload.micro_batches", 8),)), len(a)
    (True, 16)
    >>> a == point_key({"model": {"stages": 8}}, (("workload.micro_batches", 8),))
    False
    """
    payload = {"v": _KEY_VERSION, "base": dict(base_doc), "fields": [list(f) for f in fields], "extra": dict(extra or {})}
    return hashlib.sha256(_canonical(payload).encode()).hexdigest()[:16]


def _short(value: Any) -> str:
    return value if isinstance(value, str) else _canonical(value)


def _schedule_values(values: list[Any], section: Section, where: str | int) -> list[str]:
    out: list[str] = []
    for value in values:
        if not isinstance(value, str) or not value:
            raise section.error(f"a schedule is a built-in name, a file, {PLANNER!r} or {ALL_BUILTINS!r}; got {value!r}", where)
        expanded = builtin_names() if value == ALL_BUILTINS else [value]
        out.extend(name for name in expanded if name not in out)
    return out


def _check_points(count: int, section: Section, where: str | None) -> None:
    """Refuse more points than :attr:`~simulator.limits.Limits.max_points` before expanding any."""
    limit = current_limits().max_points
    if count > limit:
        raise section.error(f"{fmt_count(count)} points; the limit is {fmt_count(limit)}; raise it with --max-points", where)


def _axis_size(path: Any, raw: Any) -> int:
    values = raw if isinstance(raw, list) else [raw]
    if path == "schedule":
        return sum(len(builtin_names()) if value == ALL_BUILTINS else 1 for value in values)
    return len(values)


def _grid_points(grid: Section, extra: int = 0) -> list[list[tuple[str, Any]]]:
    sizes = [_axis_size(path, raw) for path, raw in grid.data.items()]
    _check_points(math.prod(sizes) + extra, grid, None)
    axes: list[list[tuple[str, Any]]] = []
    for path in grid.keys():
        check_field(path, file=grid.file, where=grid.where())
        raw = grid.raw(path)
        values = raw if isinstance(raw, list) else [raw]
        if not values:
            raise grid.error("needs at least one value", path)
        if path == "schedule":
            values = _schedule_values(values, grid, path)
        axes.append([(path, value) for value in values])
    return [list(combination) for combination in itertools.product(*axes)] if axes else []


def _explicit_points(items: list[Section]) -> list[list[tuple[str, Any]]]:
    out: list[list[tuple[str, Any]]] = []
    for item in items:
        fields = []
        for path in item.keys():
            check_field(path, file=item.file, where=item.where())
            fields.append((path, item.raw(path)))
        schedules = [value for path, value in fields if path == "schedule"]
        if not schedules:
            out.append(fields)
            continue
        for name in _schedule_values(schedules, item, "schedule"):
            out.append([(path, name if path == "schedule" else value) for path, value in fields])
    return out


def _plot(item: Section) -> PlotSpec:
    item.check_keys({"file", "x", "y", "series", "facet"})
    file = item.str("file")
    if Path(file).suffix not in (".png", ".svg", ".pdf") or Path(file).name != file:
        raise item.error("a plot file is a plain name ending in .png, .svg or .pdf (written into the output folder)", "file")
    optional = {key: item.str(key) if key in item else None for key in ("series", "facet")}
    return PlotSpec(file=file, x=item.str("x"), y=item.str("y"), **optional)


def _file_digest(path: Path) -> str | None:
    try:
        return hashlib.sha256(read_input_bytes(path)).hexdigest()[:16]  # never a FIFO or /dev/zero
    except InputError:
        return None  # reported when the point runs


def _plain_name(doc: Section, path: Path) -> str:
    """The sweep's name, which names its output folder (``out/<name>``): a plain file name, so
    a ``name:`` such as ``../../x`` or ``/etc`` can never put files outside ``out/``."""
    name = doc.str("name", path.stem)
    if "/" in name or "\\" in name or name in (".", "..") or name.startswith(".") or len(name.encode()) > 200 or "\0" in name:
        raise doc.error(f"a sweep name is a plain folder name (no '/', not starting with '.', at most 200 bytes), got {show(name)}",
                        "name")
    return name


def load_sweep(path: str | Path) -> SweepSpec:
    """Read and validate a sweep file and its base scenario document; expand every point."""
    path = Path(path)
    doc = read_section(path)
    doc.check_keys({"name", "description", "scenario", "grid", "points", "planner", "plots"})
    base_file = path.parent / doc.str("scenario")
    base_doc = read_section(base_file).data
    name = _plain_name(doc, path)
    explicit = doc.sections("points", [])
    combos = _grid_points(doc.section("grid", {}), len(explicit))
    combos += _explicit_points(explicit)
    if not combos:
        combos = [[]]
    planner = doc.section("planner", {})
    planner.check_keys({"time_limit_s"})
    time_limit = planner.number("time_limit_s", strictly_positive=True) if "time_limit_s" in planner else None
    points: list[Point] = []
    seen: set[str] = set()
    fields: list[str] = []
    for combo in combos:
        extra: dict[str, Any] = {}
        schedule = dict(combo).get("schedule")
        if schedule == PLANNER:
            extra["time_limit_s"] = time_limit
        elif isinstance(schedule, str) and is_schedule_file(schedule):
            extra["schedule_file"] = _file_digest(path.parent / schedule)
        elif schedule is None and isinstance(base_doc.get("schedule"), str):
            extra["schedule_file"] = _file_digest(base_file.parent / base_doc["schedule"])
        key = point_key(base_doc, tuple(combo), extra=extra)
        if key in seen:
            continue
        seen.add(key)
        points.append(Point(fields=tuple(combo), key=key))
        fields.extend(name for name, _ in combo if name not in fields)
    return SweepSpec(
        name=name,
        description=str(doc.raw("description", "")),
        file=path,
        base_file=base_file,
        base_doc=base_doc,
        points=tuple(points),
        fields=tuple(fields),
        planner_time_limit_s=time_limit,
        plots=tuple(_plot(item) for item in doc.sections("plots", [])),
    )
