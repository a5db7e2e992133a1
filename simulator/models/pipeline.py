"""``type: pipeline``: a chain of identical stages with given F / B / W times.

This is the setting the published pipeline formulas use (GPipe, 1F1B, zero bubble,
DualPipe): ``stages`` operators ``s0 -> s1 -> ...``, each taking ``F``, ``B`` (backward
for inputs) and ``W`` (backward for weights) seconds on any device, holding
``activation`` bytes per micro-batch from F until B, of which ``w_retained`` stay
until W.

Example (``scenarios/dualpipe-8x20.yaml``)::

    model: {type: pipeline, stages: 8, F_ms: 1, B_ms: 1, W_ms: 1, activation_gb: 1}
"""

from __future__ import annotations

from pathlib import Path

from simulator.graph import OperatorGraph, chain_graph
from simulator.units import BYTE_UNITS, TIME_UNITS, read_bytes, read_seconds, unit_keys
from simulator.yamlio import Section

_KEYS = {"type", "stages", "name"}
for _base in ("F", "B", "W"):
    _KEYS |= unit_keys(_base, TIME_UNITS)
for _base in ("activation", "w_retained", "static", "edge"):
    _KEYS |= unit_keys(_base, BYTE_UNITS)


def build_pipeline(section: Section, base_dir: Path) -> OperatorGraph:
    section.check_keys(_KEYS)
    stages = section.integer("stages", minimum=1)
    times = {kind: read_seconds(section, kind, None) for kind in ("F", "B", "W")}
    activation = read_bytes(section, "activation", 1.0)
    retained = read_bytes(section, "w_retained", 0.0)
    if retained > activation:
        raise section.error("w_retained cannot exceed activation", "w_retained")
    return chain_graph(
        section.raw("name", f"pipeline-{stages}"),
        stages,
        times,
        activation_bytes=activation,
        w_retained_bytes=retained,
        static_bytes=read_bytes(section, "static", 0.0),
        edge_bytes=read_bytes(section, "edge", 0.0),
    )
