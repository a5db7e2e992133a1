"""Setting a field of a scenario document by its dotted path (``cluster.profile``).

A sweep point is a handful of such assignments applied to a copy of the base
scenario's YAML document, which is then validated by the ordinary scenario loader:
a sweep can change exactly what a user could have written by hand, no more.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

from simulator.errors import InputError

__all__ = ["SCENARIO_FIELDS", "apply_overrides", "check_field", "set_field"]

#: Top-level keys of a scenario document a sweep may change (``schedule`` is handled by the sweep itself).
SCENARIO_FIELDS = ("name", "description", "model", "cluster", "workload", "objective", "pipeline")


def check_field(path: Any, *, file: str | None = None, where: str = "grid") -> str:
    """Validate a dotted field path; ``schedule`` is allowed as a whole.

    >>> check_field("cluster.profile")
    'cluster.profile'
    >>> check_field("clutser.nodes")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    simulator.errors.InputError: grid.clutser.nodes: unknown scenario field 'clutser' (one of: name, ..., schedule)
    """
    if not isinstance(path, str) or not path or any(not part for part in path.split(".")):
        raise InputError(f"expected a dotted field path like cluster.profile, got {path!r}", file=file, field=where)
    head = path.split(".", 1)[0]
    if path == "schedule":
        return path
    if head == "schedule":
        raise InputError("schedule takes a value of its own, not sub-fields", file=file, field=f"{where}.{path}")
    if head not in SCENARIO_FIELDS:
        known = ", ".join((*SCENARIO_FIELDS, "schedule"))
        raise InputError(f"unknown scenario field {head!r} (one of: {known})", file=file, field=f"{where}.{path}")
    return path


def set_field(doc: dict, path: str, value: Any) -> None:
    """Set ``doc[a][b][c] = value`` for ``path = "a.b.c"``, creating mappings on the way.

    A numeric segment indexes into a list (``model.operators.0.flops.F``).

    >>> doc = {"cluster": {"profile": "h100-sxm", "nodes": 1}}
    >>> set_field(doc, "cluster.nodes", 2); set_field(doc, "workload.micro_batches", 8); doc
    {'cluster': {'profile': 'h100-sxm', 'nodes': 2}, 'workload': {'micro_batches': 8}}
    """
    parts = path.split(".")
    node: Any = doc
    for depth, part in enumerate(parts[:-1]):
        node = _step(node, part, ".".join(parts[: depth + 1]))
    last = parts[-1]
    if isinstance(node, list):
        node[_index(node, last, path)] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise InputError(f"cannot set {last!r} inside a {type(node).__name__}", field=path)


def _step(node: Any, part: str, where: str) -> Any:
    if isinstance(node, list):
        return node[_index(node, part, where)]
    if not isinstance(node, dict):
        raise InputError(f"cannot descend into a {type(node).__name__}", field=where)
    child = node.get(part)
    if child is None:
        child = node[part] = {}
    return child


def _index(items: list, part: str, where: str) -> int:
    try:
        index = int(part)
    except ValueError:
        raise InputError(f"{part!r} is not a list index", field=where) from None
    if not -len(items) <= index < len(items):
        raise InputError(f"index {index} out of range (list of {len(items)})", field=where)
    return index


def apply_overrides(doc: dict, overrides: Iterable[tuple[str, Any]]) -> dict:
    """A deep copy of ``doc`` with every ``(path, value)`` set; ``doc`` is left untouched.

    >>> base = {"workload": {"micro_batches": 4}}
    >>> apply_overrides(base, [("workload.micro_batches", 16)]), base
    ({'workload': {'micro_batches': 16}}, {'workload': {'micro_batches': 4}})
    """
    out = copy.deepcopy(doc)
    for path, value in overrides:
        set_field(out, path, copy.deepcopy(value))
    return out
