"""``measured:``: a user's own timings and memory, laid over a built model's estimates.

Example (in a builder's ``model:`` section, or a file it includes)::

    measured:
      "L*.attn":                       # a pattern (fnmatch): every layer's attention
        H100-SXM5: {F: 1.51, B: 2.31, W: 0.85}     # milliseconds
      "*.mlp":
        H100-SXM5: {F: 1.66, backward: 3.64}       # full backward, split into B and W
        memory: {activation_MiB: 408, retained_MiB: 322}
      head:
        "*": {F: 2.5, B: 2.5, W: 1.49}             # any device type

``measured: FILE.yaml`` (a path relative to the scenario) reads the table from a file
whose top level is ``measured:`` (and optionally ``meta:``), as ``opplan profile`` writes.

Keys under a pattern are device types (as the cluster names them, e.g. ``H100-SXM5``),
``"*"`` for any device, and ``memory`` (``activation_MiB``, ``retained_MiB``,
``workspace_MiB``: what autograd keeps, e.g. from ``opplan profile``). A ``backward``
time is split into B and W by the model's own B : W ratio for that operator, priced on the
bundled profile with that device type when there is one, else by FLOPs. A pattern that
matches no operator, and (once the cluster is known, :func:`check_device_types`) a device
type no device has, is a one-line error naming the file and the field — a typo must not
silently leave the estimate in place.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace
from fnmatch import fnmatchcase
from functools import cache
from pathlib import Path

from simulator.cluster import Cluster, Device
from simulator.errors import InputError
from simulator.graph import KINDS, Operator, OperatorGraph
from simulator.profiles import load_profile, profile_names
from simulator.yamlio import Section, read_section

__all__ = ["apply_measured", "check_device_types", "measured_table", "MEMORY_KEYS"]

#: ``memory:`` keys and the operator field each overrides.
MEMORY_KEYS = {"activation_MiB": "activation_bytes", "retained_MiB": "w_retained_bytes", "workspace_MiB": "workspace_bytes"}
_TIME_KEYS = set(KINDS) | {"backward"}


def measured_table(section: Section) -> Section | None:
    """``section["measured"]``: inline, or read from the file it names; None when absent."""
    if "measured" not in section:
        return None
    if not isinstance(section.raw("measured"), str):
        return section.section("measured")
    path = Path(section.str("measured"))
    if not path.is_absolute() and section.file:
        path = Path(section.file).parent / path
    if not path.is_file():
        raise section.error(f"measured file {str(path)!r} does not exist", "measured")
    doc = read_section(path)
    doc.check_keys({"measured", "meta"})
    return doc.section("measured")


def apply_measured(section: Section, operators: Sequence[Operator]) -> tuple[Operator, ...]:
    """Lay ``section["measured"]`` over ``operators``; later patterns win over earlier ones."""
    table = measured_table(section)
    if table is None:
        return tuple(operators)
    by_name = {op.name: op for op in operators}
    for pattern in table.keys():
        names = [name for name in by_name if fnmatchcase(name, pattern)]
        if not names:
            example = ", ".join(list(by_name)[:3])
            raise table.error(f"{pattern!r} matches no operator in this model (e.g. {example})", pattern)
        entry = table.section(pattern)
        for name in names:
            by_name[name] = _apply_entry(entry, by_name[name])
    return tuple(by_name[op.name] for op in operators)


def _apply_entry(entry: Section, op: Operator) -> Operator:
    measured = {key: dict(times) for key, times in op.measured.items()}
    changes: dict[str, float] = {}
    for key in entry.keys():
        if key == "memory":
            memory = entry.section("memory")
            memory.check_keys(set(MEMORY_KEYS))
            changes.update({MEMORY_KEYS[k]: memory.number(k, minimum=0.0) * 2**20 for k in memory.keys()})
            continue
        times = entry.section(key)
        times.check_keys(_TIME_KEYS)
        values = {kind: times.number(kind, minimum=0.0) * 1e-3 for kind in times.keys()}
        if "backward" in values:
            if "B" in values or "W" in values:
                raise times.error("give backward, or B and W, not both", "backward")
            share = _backward_share(op, key)
            total = values.pop("backward")
            values.update(B=total * share, W=total * (1.0 - share))
        measured[key] = values
    if "activation_bytes" in changes and "w_retained_bytes" not in changes:
        changes["w_retained_bytes"] = min(op.w_retained_bytes, changes["activation_bytes"])
    try:
        return replace(op, measured=measured, **changes)
    except InputError as exc:
        raise entry.error(exc.message, "memory") from None


def _backward_share(op: Operator, device_type: str) -> float:
    """B's share of B + W for ``op``: priced on ``device_type``'s bundled profile, else by FLOPs."""
    device = _bundled_device(device_type)
    if device is not None and op.work:
        b, w = (device.work_time(op.work.get(kind, {})) for kind in ("B", "W"))
    else:
        b, w = op.flops.get("B", 0.0), op.flops.get("W", 0.0)
    return b / (b + w) if b + w > 0 else 1.0


@cache
def _bundled_device(device_type: str) -> Device | None:
    for name in profile_names():
        profile = load_profile(name)
        if profile.device_type == device_type:
            return Device("ref", device_type, profile.memory_bytes, profile.peak_flops, profile.efficiency, rates=profile.rates)
    return None


def check_device_types(model: Section, graph: OperatorGraph, cluster: Cluster) -> None:
    """Refuse measured times keyed by a device type that no device in ``cluster`` has."""
    types = {d.type for d in cluster.devices}
    known = ", ".join(sorted(types))
    table = measured_table(model)
    if table is not None:
        for pattern in table.keys():
            for key in _unknown(table.section(pattern).keys(), types):
                raise table.section(pattern).error(f"no device of type {key!r} in the cluster (types: {known})", key)
    for op in graph.operators:
        for key in _unknown(op.measured, types):
            raise InputError(f"no device of type {key!r} in the cluster (types: {known})", field=f"operators.{op.name}.measured.{key}")


def _unknown(keys: Iterable[str], types: set[str]) -> list[str]:
    return [key for key in keys if key not in types and key not in ("*", "memory")]
