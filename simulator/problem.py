"""What a schedule is replayed against: graph + cluster + workload, and the tasks it implies.

A *task* is one pass of one operator on one micro-batch: ``F`` (forward), ``B``
(backward for inputs) or ``W`` (backward for weights). Training needs all three for
every operator and micro-batch; inference needs ``F`` only. Dependencies follow the
graph: forward along edges, backward against them, and ``W`` after its own ``B``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import NamedTuple

from simulator.cluster import Cluster, Device
from simulator.errors import InputError
from simulator.graph import OperatorGraph

__all__ = ["Task", "Workload", "Problem", "Dependency", "parse_task"]


class Task(NamedTuple):
    """One schedulable unit. Written ``KIND:op:mb`` in schedule files, e.g. ``F:s0:3``."""

    op: str
    mb: int
    kind: str

    def __str__(self) -> str:
        return f"{self.kind}:{self.op}:{self.mb}"


def parse_task(text: str) -> Task:
    """Parse ``KIND:op:mb``; the operator name may itself contain colons.

    >>> parse_task("B:layer:3:0")
    Task(op='layer:3', mb=0, kind='B')
    """
    kind, sep, rest = text.partition(":")
    op, sep2, mb = rest.rpartition(":")
    if not sep or not sep2 or not op:
        raise ValueError(f"task {text!r} is not of the form KIND:op:mb")
    try:
        index = int(mb)
    except ValueError:
        raise ValueError(f"task {text!r}: micro-batch {mb!r} is not an integer") from None
    return Task(op, index, kind)


class Dependency(NamedTuple):
    """``task`` needs the output of ``pred``; ``bytes`` travel if they sit on two devices."""

    pred: Task
    bytes: float


@dataclass(frozen=True)
class Workload:
    """How many micro-batches, training or inference, and how well F and B overlap.

    ``fb_overlap`` in [0, 1]: a fused F&B pair (DualPipe's overlapped chunks) takes
    ``max(F, B) + (1 - fb_overlap) * min(F, B)``; 0 means no gain over running both.
    """

    micro_batches: int
    mode: str = "training"
    fb_overlap: float = 0.0

    def __post_init__(self) -> None:
        if self.micro_batches < 1:
            raise InputError(f"need at least one micro-batch, got {self.micro_batches}", field="workload.micro_batches")
        if self.mode not in ("training", "inference"):
            raise InputError(f"unknown mode {self.mode!r} (training or inference)", field="workload.mode")
        if not 0.0 <= self.fb_overlap <= 1.0:
            raise InputError(f"fb_overlap must be in [0, 1], got {self.fb_overlap:g}", field="workload.fb_overlap")

    @property
    def kinds(self) -> tuple[str, ...]:
        return ("F", "B", "W") if self.mode == "training" else ("F",)


@dataclass(frozen=True)
class Problem:
    """The instance: operators to run, devices to run them on, micro-batches to push."""

    graph: OperatorGraph
    cluster: Cluster
    workload: Workload

    # -- tasks ---------------------------------------------------------------------------
    def tasks(self) -> Iterator[Task]:
        """Every task of one iteration, in a deterministic order."""
        for mb in range(self.workload.micro_batches):
            for kind in self.workload.kinds:
                for op in self.graph.topological_order:
                    yield Task(op, mb, kind)

    @cached_property
    def task_count(self) -> int:
        return len(self.graph.operators) * self.workload.micro_batches * len(self.workload.kinds)

    def is_task(self, task: Task) -> bool:
        return (
            task.op in self.graph.by_name
            and 0 <= task.mb < self.workload.micro_batches
            and task.kind in self.workload.kinds
        )

    def dependencies(self, task: Task) -> tuple[Dependency, ...]:
        """The tasks whose outputs ``task`` consumes, with the bytes each one sends."""
        op, mb, kind = task
        return tuple(Dependency(Task(p, mb, k), b) for p, k, b in self.dependency_template[op, kind])

    def consumers(self, task: Task) -> tuple[Dependency, ...]:
        """The inverse of :meth:`dependencies`: who needs ``task``'s output, and how many bytes."""
        op, mb, kind = task
        return tuple(Dependency(Task(c, mb, k), b) for c, k, b in self.consumer_template[op, kind])

    @cached_property
    def dependency_template(self) -> dict[tuple[str, str], tuple[tuple[str, str, float], ...]]:
        """``(op, kind) -> ((pred_op, pred_kind, bytes), ...)``: the same for every micro-batch.

        Forward follows the edges; ``B`` needs its own ``F`` (activations) and the ``B``
        of every successor (gradients); ``W`` needs its own ``B``.
        """
        graph = self.graph
        out: dict[tuple[str, str], tuple[tuple[str, str, float], ...]] = {}
        for op in graph.by_name:
            out[op, "F"] = tuple((e.src, "F", e.bytes) for e in graph.predecessors[op])
            if self.workload.mode == "training":
                out[op, "B"] = ((op, "F", 0.0),) + tuple((e.dst, "B", e.bytes) for e in graph.successors[op])
                out[op, "W"] = ((op, "B", 0.0),)
        return out

    @cached_property
    def consumer_template(self) -> dict[tuple[str, str], tuple[tuple[str, str, float], ...]]:
        """The inverse of :attr:`dependency_template`."""
        out: dict[tuple[str, str], list[tuple[str, str, float]]] = {key: [] for key in self.dependency_template}
        for (op, kind), preds in self.dependency_template.items():
            for pred_op, pred_kind, size in preds:
                out[pred_op, pred_kind].append((op, kind, size))
        return {key: tuple(value) for key, value in out.items()}

    # -- costs ---------------------------------------------------------------------------
    def duration(self, task: Task, device: Device) -> float:
        """Seconds ``task`` takes on ``device``: measured time if known, else FLOPs / achieved FLOP/s.

        A communication operator (``stream: comm``) with ``comm_bytes`` takes latency +
        bytes / bandwidth of the device's slowest outgoing link.
        """
        return self._duration(task.op, task.kind, device.name)

    def _duration(self, op_name: str, kind: str, device_name: str) -> float:
        key = (op_name, kind, device_name)
        cache = self._duration_cache
        value = cache.get(key)
        if value is None:
            op = self.graph.by_name[op_name]
            device = self.cluster.by_name[device_name]
            measured = op.measured_time(device.type, kind)
            if measured is not None:
                value = measured
            elif op.stream == "comm" and op.comm_bytes:
                value = self.cluster.collective_time(device_name, op.comm_bytes) if kind != "W" else 0.0
            elif op.work:
                value = device.work_time(op.work.get(kind, {}))
            else:
                value = op.flops.get(kind, 0.0) / device.effective_flops
            cache[key] = value
        return value

    @cached_property
    def _duration_cache(self) -> dict:
        return {}

    def task_memory(self, op_name: str, kind: str) -> tuple[float, float]:
        """Bytes a task allocates when it starts and frees when it ends.

        F allocates its activations (plus workspace); B frees them except what W still
        needs (``w_retained_bytes``), which W frees. In inference the activations live
        only while F runs. The simulator and the planner both count memory with this.
        """
        op = self.graph.by_name[op_name]
        work = op.workspace_bytes
        if kind == "F":
            if self.workload.mode == "inference":
                return op.activation_bytes + work, op.activation_bytes + work
            return op.activation_bytes + work, work
        if kind == "B":
            return work, work + op.activation_bytes - op.w_retained_bytes
        return work, work + op.w_retained_bytes

    def static_memory(self, placement: Mapping[Task, str]) -> dict[str, float]:
        """Bytes each device holds for the whole iteration, per device that runs a task.

        A device holds the weights, gradients and optimizer state (``static_bytes``) of
        every operator it runs at least one task of, once however many tasks that is: an
        operator split over two devices costs its weights on both. The simulator and the
        planner both count static memory with this.
        """
        ops_on: dict[str, set[str]] = {}
        for task, device in placement.items():
            ops_on.setdefault(device, set()).add(task[0])
        by_name = self.graph.by_name
        return {device: float(sum(by_name[op].static_bytes for op in ops)) for device, ops in ops_on.items()}

    def fused_duration(self, first: float, second: float) -> float:
        """Time of two tasks run overlapped on one device (DualPipe's F&B)."""
        return max(first, second) + (1.0 - self.workload.fb_overlap) * min(first, second)

    def transfer_time(self, src_device: str, dst_device: str, size: float) -> float:
        return self.cluster.transfer_time(src_device, dst_device, size)
