"""``type: graph``: operators and edges written out, inline or in a separate file.

Example::

    model:
      type: graph
      operators:
        - {name: router, time_ms: {F: 0.2, B: 0.2, W: 0.1}, activation_mb: 64}
        - {name: expert0, flops: {F: 2.0e12, B: 2.0e12, W: 2.0e12}, activation_mb: 256, static_gb: 2}
      edges:
        - {src: router, dst: expert0, size_mb: 32}

``time_ms`` (or ``time_us`` / ``time_s``) is a measured time on any device and wins
over ``flops``; ``measured: {<device type>: {F: ms, ...}}`` gives per-device-type
measured milliseconds.
"""

from __future__ import annotations

from pathlib import Path

from simulator.errors import InputError
from simulator.graph import Edge, Operator, OperatorGraph
from simulator.units import BYTE_UNITS, TIME_UNITS, read_bytes, unit_keys
from simulator.yamlio import Section, read_section

_OP_KEYS = {"name", "flops", "measured", "params", "stream", "group"}
_OP_KEYS |= unit_keys("time", TIME_UNITS)
for _base in ("activation", "w_retained", "static", "workspace", "comm"):
    _OP_KEYS |= unit_keys(_base, BYTE_UNITS)
_EDGE_KEYS = {"src", "dst"} | unit_keys("size", BYTE_UNITS)


def _kind_map(section: Section, key: str, scale: float) -> dict[str, float]:
    values = section.section(key)
    values.check_keys({"F", "B", "W"})
    return {kind: values.number(kind) * scale for kind in values.keys()}


def _operator(item: Section) -> Operator:
    item.check_keys(_OP_KEYS)
    name = item.str("name")
    measured: dict[str, dict[str, float]] = {}
    times = [k for k in item.keys() if k.startswith("time_")]
    if len(times) > 1:
        raise item.error("give only one time_* field", times[1])
    if times:
        measured["*"] = _kind_map(item, times[0], TIME_UNITS[times[0][5:]])
    if "measured" in item:
        per_type = item.section("measured")
        for device_type in per_type.keys():
            measured[device_type] = _kind_map(per_type, device_type, 1e-3)
    flops = _kind_map(item, "flops", 1.0) if "flops" in item else {}
    if not measured and not flops:
        raise item.error("an operator needs flops or a measured time (time_ms)", "flops")
    group = item.str("group") if "group" in item else ""
    try:
        return Operator(
            name=name,
            flops=flops,
            measured=measured,
            static_bytes=read_bytes(item, "static"),
            params=item.number("params", 0.0),
            activation_bytes=read_bytes(item, "activation"),
            w_retained_bytes=read_bytes(item, "w_retained"),
            workspace_bytes=read_bytes(item, "workspace"),
            comm_bytes=read_bytes(item, "comm"),
            stream=item.str("stream", "compute", choices=("compute", "comm")),
            group=group,
        )
    except InputError as exc:
        raise InputError(exc.message, file=item.file, field=item.path) from None


def build_graph(section: Section, base_dir: Path) -> OperatorGraph:
    section.check_keys({"type", "name", "file", "operators", "edges"})
    source = section
    if "file" in section:
        path = base_dir / section.str("file")
        source = read_section(path)
        source.check_keys({"name", "operators", "edges"})
    operators = tuple(_operator(item) for item in source.sections("operators"))
    if not operators:
        raise source.error("a graph needs at least one operator", "operators")
    edges = []
    for item in source.sections("edges", []):
        item.check_keys(_EDGE_KEYS)
        edges.append(Edge(item.str("src"), item.str("dst"), read_bytes(item, "size")))
    try:
        return OperatorGraph(name=str(source.raw("name", section.raw("name", "graph"))), operators=operators, edges=tuple(edges))
    except InputError as exc:
        raise InputError(exc.message, file=source.file, field=f"{source.where(exc.field or 'edges')}") from None
