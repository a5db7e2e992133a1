"""A scenario file: model + cluster + workload (+ objective, + a default schedule).

This is what a user runs::

    name: pipeline-4x8
    model: {type: pipeline, stages: 4, F_ms: 1, B_ms: 1, W_ms: 1}
    cluster: {devices: 4, interconnect: ideal}
    workload: {micro_batches: 8}
    schedule: pipeline-4x8.schedule.json     # optional, relative to this file
    objective: {minimize: makespan, memory_limit_gb: 40}

Everything is validated on load; the first problem found is raised as an
:class:`~simulator.errors.InputError` naming the file and the field.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from simulator.errors import InputError
from simulator.graph import OperatorGraph
from simulator.layout import Layout, read_layout
from simulator.measured import check_device_types
from simulator.memory_model import WEIGHT_BYTES, read_parallel
from simulator.model_shapes import model_shape
from simulator.models import build_model
from simulator.problem import Problem, Workload
from simulator.profiles import build_cluster
from simulator.serving.workload import SERVING_KEYS, ServingWorkload, read_serving
from simulator.sizes import check_scenario_size, check_tasks
from simulator.yamlio import Section, read_section

__all__ = ["Objective", "Scenario", "load_scenario", "scenario_from_dict"]

OBJECTIVES = ("makespan", "bubble", "memory", "utilization")


@dataclass(frozen=True)
class Objective:
    """What the planner optimises, and the limits it must respect."""

    minimize: str = "makespan"
    memory_limit_bytes: float | None = None
    time_limit_s: float = 60.0


@dataclass(frozen=True)
class Scenario:
    name: str
    problem: Problem
    objective: Objective = field(default_factory=Objective)
    description: str = ""
    file: str = ""
    schedule_file: Path | None = None
    #: Settings for the built-in schedules (e.g. ``chunks`` for interleaved 1F1B).
    pipeline: Mapping[str, Any] = field(default_factory=dict)
    #: The model section as written (builders' settings, for reports).
    model_config: Mapping[str, Any] = field(default_factory=dict)
    #: The ``parallel:`` layout (dp, tp, pp, ...), validated; not yet read by the replay.
    parallel: Layout | None = None
    #: ``workload: {mode: inference, requests: ...}``: what ``opplan serve`` replays.
    serving: ServingWorkload | None = None
    #: ``objective: {serving: latency | throughput, slo: {...}}`` as written (read by the serving planner).
    serving_objective: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "pipeline", MappingProxyType(dict(self.pipeline)))
        object.__setattr__(self, "model_config", MappingProxyType(dict(self.model_config)))
        object.__setattr__(self, "serving_objective", MappingProxyType(dict(self.serving_objective)))


def _workload(section: Section) -> Workload:
    serving = "requests" in section
    section.check_keys({"micro_batches", "mode", "fb_overlap"} | (SERVING_KEYS if serving else set()))
    if serving and section.raw("mode", "training") != "inference":
        raise section.error("requests: needs mode: inference", "mode")
    try:
        return Workload(
            micro_batches=section.integer("micro_batches", 1, minimum=1) if serving else section.integer("micro_batches", minimum=1),
            mode=section.str("mode", "training", choices=("training", "inference")),
            fb_overlap=section.number("fb_overlap", 0.0, maximum=1.0),
        )
    except InputError as exc:
        raise InputError(exc.message, file=section.file, field=exc.field) from None


def weights_only(graph: OperatorGraph) -> OperatorGraph:
    """Inference holds each operator's weights only (2 bytes per parameter), not the 16 bytes of
    mixed-precision Adam training; operators that give no parameter count keep their static bytes."""
    operators = tuple(replace(op, static_bytes=op.params * WEIGHT_BYTES) if op.params else op for op in graph.operators)
    return OperatorGraph(graph.name, operators, graph.edges)


def _serving_objective(section: Section) -> dict[str, Any]:
    """``serving: latency | throughput`` and ``slo: {ttft_p99_ms, tpot_p99_ms}``, checked here, read by the serving planner."""
    out: dict[str, Any] = {}
    if "serving" in section:
        out["serving"] = section.str("serving", choices=("latency", "throughput"))
    if "slo" in section:
        slo = section.section("slo")
        slo.check_keys({"ttft_p99_ms", "tpot_p99_ms"})
        out["slo"] = {key: slo.number(key, strictly_positive=True) for key in slo.keys()}
    return out


def _serving_parallel(doc: Section, cluster) -> Layout | None:
    """A serving scenario's ``parallel:``, checked against the devices and the model; whether the
    weights (bf16 or fp8) leave room for a KV cache is the serving step model's check."""
    if "parallel" not in doc:
        return None
    model = doc.section("model")
    return read_layout(doc.section("parallel"), len(cluster.devices), model_shape(str(model.raw("type", "")), model))


def _objective(section: Section) -> Objective:
    section.check_keys({"minimize", "memory_limit_gb", "time_limit_s", "serving", "slo"})
    limit = section.number("memory_limit_gb", None, minimum=1e-3, maximum=1e6) if "memory_limit_gb" in section else None
    return Objective(
        minimize=section.str("minimize", "makespan", choices=OBJECTIVES),
        memory_limit_bytes=limit * 1e9 if limit is not None else None,
        time_limit_s=section.number("time_limit_s", 60.0, minimum=1.0, maximum=1e6),
    )


def load_scenario(path: str | Path) -> Scenario:
    """Load and validate a scenario file (paths in it are relative to its folder).

    The library's front door: the scenario holds the :class:`~simulator.problem.Problem`
    (graph, cluster, workload) that :func:`simulator.engine.replay` and the planner take.

    >>> scenario = load_scenario("scenarios/pipeline-4x8.yaml")
    >>> scenario.name, len(scenario.problem.graph), scenario.problem.workload.micro_batches
    ('pipeline-4x8', 4, 8)
    >>> scenario.problem.cluster.device_names
    ('gpu0', 'gpu1', 'gpu2', 'gpu3')
    >>> scenario.schedule_file.name
    'pipeline-4x8.gpipe.json'
    """
    path = Path(path)
    return scenario_from_section(read_section(path), path)


def scenario_from_dict(data: dict, path: str | Path) -> Scenario:
    """Build a scenario from an already-loaded (possibly modified) document.

    ``path`` is where it notionally lives: relative files resolve against its folder
    and errors name it. Sweeps use this to apply overrides to a scenario.
    """
    if not isinstance(data, dict):
        raise InputError("expected a mapping at the top level", file=str(path))
    return scenario_from_section(Section(data, file=str(path), path=""), Path(path))


def scenario_from_section(doc: Section, path: Path) -> Scenario:
    doc.check_keys({"name", "description", "model", "cluster", "workload", "schedule", "objective", "pipeline", "parallel"})
    size = check_scenario_size(doc.data, file=str(path), base_dir=path.parent)  # before building anything
    base_dir = path.parent
    try:
        graph = build_model(doc.section("model"), base_dir)
    except InputError as exc:
        if exc.file is None:
            exc.file = str(path)
            exc.field = f"model.{exc.field}" if exc.field else "model"
        raise
    try:
        cluster = build_cluster(doc.section("cluster"), base_dir=base_dir)
    except InputError as exc:
        if exc.file is None:
            exc.file = str(path)
            exc.field = f"cluster.{exc.field}" if exc.field and not exc.field.startswith("cluster") else exc.field
        raise
    check_device_types(doc.section("model"), graph, cluster)
    workload = _workload(doc.section("workload"))
    if size.operators is None:  # e.g. a graph read from its own file: count what was built
        check_tasks(len(graph.operators), workload.micro_batches, len(workload.kinds), file=str(path), field="model")
    if workload.mode == "inference":
        graph = weights_only(graph)
    serving = None
    if "requests" in doc.section("workload"):
        serving = read_serving(doc.section("workload"), len(cluster.devices), base_dir)
    schedule_file = None
    if "schedule" in doc:
        schedule_file = base_dir / doc.str("schedule")
    pipeline = doc.section("pipeline", {})
    pipeline.check_keys({"chunks", "ranks"})
    return Scenario(
        name=doc.str("name", path.stem),
        description=str(doc.raw("description", "")),
        problem=Problem(graph=graph, cluster=cluster, workload=workload),
        objective=_objective(doc.section("objective", {})),
        file=str(path),
        schedule_file=schedule_file,
        pipeline=pipeline.data,
        model_config=doc.section("model").data,
        parallel=_serving_parallel(doc, cluster) if serving is not None else read_parallel(doc, cluster, workload.mode == "training"),
        serving=serving,
        serving_objective=_serving_objective(doc.section("objective", {})),
    )
