"""Model builders: a ``model:`` section of a scenario becomes an :class:`OperatorGraph`.

:data:`BUILDERS` names, per ``type``, the module and function that build it:
``pipeline`` (a uniform chain of stages with given times, the textbook setting),
``graph`` (operators and edges written out), ``transformer`` (LLaMA-style dense),
``moe`` (DeepSeek-style mixture of experts) and ``two_tower`` (multi-modal). A
builder module is imported only when a scenario uses its type, and imports nothing
from this package, so there is no registration side effect and no import cycle.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

from simulator.graph import OperatorGraph
from simulator.yamlio import Section

__all__ = ["BUILDERS", "build_model"]

ModelBuilder = Callable[[Section, Path], OperatorGraph]

#: ``model.type`` -> ``"module:function"`` of its builder.
BUILDERS: dict[str, str] = {
    "pipeline": "simulator.models.pipeline:build_pipeline",
    "graph": "simulator.models.explicit:build_graph",
    "transformer": "simulator.models.transformer:build_transformer",
    "moe": "simulator.models.moe:build_moe",
    "two_tower": "simulator.models.multimodal:build_two_tower",
}


def build_model(section: Section, base_dir: Path) -> OperatorGraph:
    """Dispatch on ``section.type``; unknown types fail with the list of known ones.

    >>> from simulator.yamlio import Section
    >>> graph = build_model(Section({"type": "pipeline", "stages": 2, "F_ms": 1, "B_ms": 1, "W_ms": 1}, "m.yaml", "model"), Path("."))
    >>> [op.name for op in graph.operators]
    ['s0', 's1']
    """
    kind = section.str("type", choices=sorted(BUILDERS))
    module, function = BUILDERS[kind].split(":")
    builder: ModelBuilder = getattr(importlib.import_module(module), function)
    return builder(section, base_dir)
