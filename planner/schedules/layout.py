"""What every built-in pipeline schedule reads from a scenario, checked once.

The built-in schedules are defined on a *chain* of stages (``s0 -> s1 -> ...``, the
``type: pipeline`` model) trained with F, B and W passes. :func:`pipeline_of` pulls
out the stage order, the micro-batch count, the devices in cluster order and the
``pipeline:`` settings, and refuses anything else with an :class:`InputError` naming
the field, so a generator only has to check its own preconditions (:func:`require`).

:class:`RankProgram` is the per-rank bookkeeping every generator shares: which
micro-batch is next for each forward / backward stream, and the FIFO of weight passes
a zero-bubble schedule has deferred. Generators read like the published pseudo-code
("F", "B", "W", "F&B") and the program turns that into :class:`Entry` objects.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

from simulator.errors import InputError
from simulator.problem import Task
from simulator.scenario import Scenario
from simulator.schedule import Entry, Schedule

__all__ = ["Pipeline", "RankProgram", "pipeline_of", "require", "build_schedule"]

#: The ``pipeline:`` settings generators understand (``opplan schedule --chunks/--ranks`` override them).
OPTION_NAMES = ("chunks", "ranks")


@dataclass(frozen=True)
class Pipeline:
    """A chain-of-stages scenario as the built-in schedules see it."""

    name: str
    file: str
    stages: tuple[str, ...]
    micro_batches: int
    devices: tuple[str, ...]
    #: ``pipeline:`` settings of the scenario, overridden by explicit options.
    options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "options", MappingProxyType(dict(self.options)))

    @property
    def stage_count(self) -> int:
        return len(self.stages)

    def option(self, key: str) -> int | None:
        """An integer setting (``chunks`` / ``ranks``) or None when not given."""
        value = self.options.get(key)
        if value is None:
            return None
        require(self, isinstance(value, int) and not isinstance(value, bool) and value >= 1,
                f"expected a positive integer, got {value!r}", f"pipeline.{key}")
        return int(value)

    def ranks(self, count: int, schedule: str) -> tuple[str, ...]:
        """The first ``count`` devices of the cluster, after checking there are enough.

        ``pipeline.ranks``, when set, pins the rank count; a schedule whose layout needs
        another count does not apply (comparing it on other ranks would mislead).
        """
        pinned = self.option("ranks")
        require(self, pinned is None or pinned == count,
                f"{schedule} runs on {count} ranks for {self.stage_count} stages, but pipeline.ranks = {pinned}", "pipeline.ranks")
        require(self, count <= len(self.devices),
                f"{schedule} needs {count} ranks for {self.stage_count} stages, the cluster has {len(self.devices)}",
                "cluster.devices")
        return self.devices[:count]


def require(pipeline: Pipeline, condition: bool, message: str, field_name: str) -> None:
    """Raise a one-line :class:`InputError` naming ``field_name`` unless ``condition`` holds."""
    if not condition:
        raise InputError(message, file=pipeline.file or None, field=field_name)


def pipeline_of(scenario: Scenario, options: Mapping[str, Any] | None = None) -> Pipeline:
    """Check that ``scenario`` is a trainable chain of stages and describe it.

    >>> from simulator.scenario import scenario_from_dict
    >>> s = scenario_from_dict({"model": {"type": "pipeline", "stages": 4, "F_ms": 1, "B_ms": 1, "W_ms": 1},
    ...                         "cluster": {"devices": 4}, "workload": {"micro_batches": 8}}, "x.yaml")
    >>> p = pipeline_of(s)
    >>> p.stages, p.micro_batches, p.devices
    (('s0', 's1', 's2', 's3'), 8, ('gpu0', 'gpu1', 'gpu2', 'gpu3'))
    """
    problem = scenario.problem
    graph = problem.graph
    file = scenario.file or None
    unknown = sorted(set(options or {}) - set(OPTION_NAMES))
    if unknown:
        raise InputError(f"unknown schedule option {unknown[0]!r} (known: {', '.join(OPTION_NAMES)})", file=file, field="pipeline")
    if problem.workload.mode != "training":
        raise InputError("the built-in pipeline schedules are training schedules (F, B and W passes)", file=file,
                         field="workload.mode")
    why = graph.chain_break()
    if why is not None:
        raise InputError(f"the built-in pipeline schedules need a chain of stages (model type: pipeline); {why}",
                         file=file, field="model")
    for op in graph.operators:
        if op.stream != "compute":
            raise InputError(f"operator {op.name!r} runs on the {op.stream} stream; pipeline stages must be compute",
                             file=file, field="model")
    order = graph.topological_order
    merged = dict(scenario.pipeline)
    merged.update({k: v for k, v in (options or {}).items() if v is not None})
    return Pipeline(
        name=scenario.name,
        file=scenario.file,
        stages=tuple(order),
        micro_batches=problem.workload.micro_batches,
        devices=tuple(device.name for device in problem.cluster.devices),
        options=merged,
    )


class RankProgram:
    """The ordered entries of one rank, written with the schedule's own vocabulary.

    ``forward(stage)`` runs the next micro-batch of ``stream`` through ``stage``;
    ``backward`` runs the matching backward, either full (B and W fused into one slot)
    or split (B now, W queued); ``weight()`` runs the oldest queued W. Each stream
    (a direction of a bidirectional schedule, or a chunk of an interleaved one) walks
    its own micro-batch list in order.
    """

    def __init__(self, micro_batches: Mapping[Any, list[int]]):
        self._forward = {key: deque(mbs) for key, mbs in micro_batches.items()}
        self._backward = {key: deque(mbs) for key, mbs in micro_batches.items()}
        self.entries: list[Entry] = []
        self.deferred: deque[Task] = deque()

    def _next_forward(self, stream: Any, stage: str) -> Task:
        return Task(stage, self._forward[stream].popleft(), "F")

    def _next_backward(self, stream: Any, stage: str) -> Task:
        return Task(stage, self._backward[stream].popleft(), "B")

    def forward(self, stream: Any, stage: str) -> None:
        self.entries.append(Entry((self._next_forward(stream, stage),)))

    def backward(self, stream: Any, stage: str, *, split: bool = False) -> None:
        """Full backward (B+W in one slot), or with ``split`` B alone and W queued."""
        task = self._next_backward(stream, stage)
        weight = Task(task.op, task.mb, "W")
        if split:
            self.entries.append(Entry((task,)))
            self.deferred.append(weight)
        else:
            self.entries.append(Entry((task, weight)))

    def send_after_next(self) -> None:
        """The last entry's outputs leave only when the next entry ends (a deferred send)."""
        self.entries[-1] = replace(self.entries[-1], send_after_next=True)

    def prefetch_forward(self, stream: Any, stage: str) -> None:
        """The last entry also waits for the input of ``stream``'s next forward (a receive posted early)."""
        if self._forward[stream]:
            upcoming = Task(stage, self._forward[stream][0], "F")
            self.entries[-1] = replace(self.entries[-1], prefetch=(*self.entries[-1].prefetch, upcoming))

    def weight(self) -> None:
        """Run the oldest deferred W."""
        self.entries.append(Entry((self.deferred.popleft(),)))

    def forward_backward(self, forward: tuple[Any, str], backward: tuple[Any, str]) -> None:
        """DualPipe's F&B: a forward overlapped with a full backward of another micro-batch."""
        f_task = self._next_forward(*forward)
        b_task = self._next_backward(*backward)
        self.entries.append(Entry((f_task, b_task, Task(b_task.op, b_task.mb, "W")), overlap=True))

    def finished(self) -> bool:
        return not self.deferred and not any(self._forward.values()) and not any(self._backward.values())


def build_schedule(name: str, programs: Mapping[str, RankProgram], meta: Mapping[str, Any]) -> Schedule:
    """Collect the ranks' programs; every forward, backward and deferred W must have been used."""
    for device, program in programs.items():
        if not program.finished():
            raise AssertionError(f"{name}: the program of {device} leaves tasks unscheduled")
    return Schedule(devices={device: tuple(p.entries) for device, p in programs.items()}, name=name, meta=dict(meta))
