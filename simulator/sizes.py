"""Up-front size accounting: how many operators, devices and tasks a scenario asks for.

Read off the scenario document *before* anything is built, from the few numbers that
set the size (``stages``, ``layers``, ``experts``, ``nodes``, ``devices``,
``micro_batches``), so ``micro_batches: 1e100`` or ``devices: 100000000`` is refused in
microseconds with memory that does not grow with the refused size, instead of after
minutes and gigabytes. The limits are :class:`simulator.limits.Limits`; the messages
give the numbers and the option that raises the limit.

The counts follow the builders in :mod:`simulator.models` (the operators each one
emits per layer). A value that is missing or of the wrong type is left to the
builders' own validation, which names the field; after building,
:func:`check_tasks` checks the exact count too.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from simulator.errors import InputError
from simulator.limits import current_limits, fmt_count

__all__ = ["SizeEstimate", "estimate_scenario", "check_scenario_size", "check_tasks"]


@dataclass(frozen=True)
class SizeEstimate:
    """What a scenario would build; ``None`` where the document does not say (yet)."""

    operators: int | None
    devices: int | None
    micro_batches: int | None
    passes: int

    @property
    def tasks(self) -> int | None:
        if self.operators is None or self.micro_batches is None:
            return None
        return self.operators * self.micro_batches * self.passes


def _int(mapping: Any, key: str, default: Any = None) -> int | None:
    """``mapping[key]`` if it is a whole number (an integral float counts), else ``default``."""
    value = mapping.get(key, default) if isinstance(mapping, Mapping) else default
    if isinstance(value, bool):
        return None
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    return value if isinstance(value, int) else None


def _preset(model: Mapping, presets: Mapping[str, Mapping], default: Mapping | None = None) -> Mapping:
    name = model.get("preset")
    return presets.get(name, default or {}) if isinstance(name, str) else default or {}


def _moe_operators(model: Mapping) -> int | None:
    from simulator.models import moe

    base = {**_preset(model, moe.PRESETS, moe.DEFAULTS), **model}
    layers, dense, experts = _int(base, "layers"), _int(base, "dense_layers", 0), _int(base, "experts")
    shared = _int(base, "shared_experts", 0)
    if None in (layers, dense, experts, shared):
        return None
    # Per MoE layer: attn, router, dispatch, the experts, combine (+ shared); per dense layer: attn, mlp.
    return 2 + 2 * dense + max(layers - dense, 0) * (4 + experts + (shared > 0))


def _two_tower_operators(model: Mapping) -> int | None:
    from simulator.models import multimodal

    vision = model.get("vision") if isinstance(model.get("vision"), Mapping) else {}
    v_layers = _int({**_preset(vision, multimodal.VISION_PRESETS, multimodal.VISION_PRESETS["vit-l-14"]), **vision}, "layers")
    text = model.get("text") if isinstance(model.get("text"), Mapping) else {}
    t_layers = _int({**multimodal.TEXT_DEFAULTS, **text}, "layers")
    fusion = _int(model, "fusion_layers", 6)
    if None in (v_layers, t_layers, fusion):
        return None
    return 2 * v_layers + 2 * t_layers + 3 * fusion + 4


def _operators(model: Any) -> int | None:
    if not isinstance(model, Mapping):
        return None
    kind = model.get("type")
    if kind == "pipeline":
        return _int(model, "stages")
    if kind == "graph":
        operators = model.get("operators")
        return len(operators) if isinstance(operators, list) else None
    if kind == "transformer":
        from simulator.models import transformer

        layers = _int({**_preset(model, transformer.PRESETS), **model}, "layers")
        return None if layers is None else 2 * layers + 2
    if kind == "moe":
        return _moe_operators(model)
    if kind == "two_tower":
        return _two_tower_operators(model)
    return None


def _devices(cluster: Any, base_dir: Path | None) -> int | None:
    if not isinstance(cluster, Mapping):
        return None
    if "profile" not in cluster:
        return _int(cluster, "devices")
    nodes, per_node = _int(cluster, "nodes", 1), _int(cluster, "gpus_per_node")
    if per_node is None and isinstance(cluster.get("profile"), str):
        from simulator.profiles import load_profile

        try:
            per_node = load_profile(cluster["profile"], base_dir=base_dir).gpus_per_node
        except InputError:
            per_node = 1  # the profile's own error is reported, with its field, when the cluster is built
    return None if nodes is None or per_node is None else nodes * per_node


def estimate_scenario(doc: Mapping[str, Any], base_dir: Path | None = None) -> SizeEstimate:
    """The sizes a scenario document asks for (nothing is built; nothing is validated).

    ``base_dir`` is where relative files (a hardware profile) are found.

    >>> estimate_scenario({"model": {"type": "transformer", "preset": "llama-7b"}, "cluster": {"devices": 8},
    ...                    "workload": {"micro_batches": 16}})
    SizeEstimate(operators=66, devices=8, micro_batches=16, passes=3)
    """
    workload = doc.get("workload") if isinstance(doc.get("workload"), Mapping) else {}
    passes = 1 if workload.get("mode") == "inference" else 3
    return SizeEstimate(_operators(doc.get("model")), _devices(doc.get("cluster"), base_dir), _int(workload, "micro_batches"),
                        passes)


def check_tasks(operators: int, micro_batches: int, passes: int, *, file: str | None, field: str) -> None:
    """Refuse more tasks than :attr:`~simulator.limits.Limits.max_tasks`, with the numbers."""
    limit = current_limits().max_tasks
    tasks = operators * micro_batches * passes
    if tasks > limit:
        raise InputError(
            f"{fmt_count(tasks)} tasks ({fmt_count(operators)} operators x {fmt_count(micro_batches)} micro-batches"
            f" x {passes} passes); the limit is {fmt_count(limit)}; raise it with --max-tasks",
            file=file,
            field=field,
        )


def check_scenario_size(doc: Mapping[str, Any], *, file: str | None = None, base_dir: Path | None = None) -> SizeEstimate:
    """Refuse a scenario document whose devices or tasks exceed the limits (see the module docstring)."""
    size = estimate_scenario(doc, base_dir)
    limit = current_limits().max_devices
    if size.devices is not None and size.devices > limit:
        raise InputError(f"{fmt_count(size.devices)} devices; the limit is {fmt_count(limit)}; raise it with --max-devices",
                         file=file, field="cluster")
    if size.operators is not None and size.micro_batches is not None:
        field = "workload.micro_batches" if size.micro_batches > size.operators else "model"
        check_tasks(size.operators, size.micro_batches, size.passes, file=file, field=field)
    return size
