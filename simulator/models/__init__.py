"""Model builders: a ``model:`` section of a scenario becomes an :class:`OperatorGraph`.

Each builder registers itself under a ``type`` name. The built-in ones are
``pipeline`` (a uniform chain of stages with given times, the textbook setting) and
``graph`` (operators and edges written out). Others (dense transformers, MoE,
multi-modal) live in their own modules and register the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from simulator.graph import OperatorGraph
from simulator.yamlio import Section

__all__ = ["register", "build_model", "model_types"]

ModelBuilder = Callable[[Section, Path], OperatorGraph]
_BUILDERS: dict[str, ModelBuilder] = {}


def register(type_name: str) -> Callable[[ModelBuilder], ModelBuilder]:
    """Decorator: make ``builder`` available as ``model: {type: type_name}``."""

    def decorate(builder: ModelBuilder) -> ModelBuilder:
        _BUILDERS[type_name] = builder
        return builder

    return decorate


def model_types() -> list[str]:
    _load_builtin_builders()
    return sorted(_BUILDERS)


def build_model(section: Section, base_dir: Path) -> OperatorGraph:
    """Dispatch on ``section.type``; unknown types fail with the list of known ones."""
    _load_builtin_builders()
    kind = section.str("type", choices=sorted(_BUILDERS))
    return _BUILDERS[kind](section, base_dir)


def _load_builtin_builders() -> None:
    # Imported for their @register side effect; kept lazy so importing the registry is cheap.
    from simulator.models import explicit, pipeline  # noqa: F401

    for optional in ("transformer", "moe", "multimodal"):
        try:
            __import__(f"simulator.models.{optional}")
        except ModuleNotFoundError as exc:
            if exc.name != f"simulator.models.{optional}":
                raise
