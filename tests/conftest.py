"""Small builders shared by the test files: operators with measured times, tiny clusters.

They are fixtures that return plain functions ("factory as fixture"), so a test reads
``problem = make_problem([op("a", F=1)], devices=2)`` and nothing is hidden.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import pytest

from simulator.cluster import Cluster, Device, Link
from simulator.graph import Edge, Operator, OperatorGraph
from simulator.problem import Problem, Task, Workload
from simulator.schedule import Schedule


def _op(name: str, F: float = 1.0, B: float = 1.0, W: float = 1.0, **fields) -> Operator:
    """An operator whose passes take exactly ``F``, ``B``, ``W`` seconds on any device."""
    return Operator(name=name, measured={"*": {"F": F, "B": B, "W": W}}, **fields)


def _cluster(
    devices: int = 2,
    *,
    memory: float = 1e12,
    bandwidth: float | None = None,
    latency: float = 0.0,
    links: Iterable[tuple[str, str]] | None = None,
) -> Cluster:
    """``devices`` GPUs ``gpu0..``; free transfers unless ``bandwidth`` (bytes/s) is given.

    With a bandwidth, every ordered pair in ``links`` (default: all pairs) gets its own
    direct link ``"gpuA->gpuB"`` of that bandwidth and latency.
    """
    names = [f"gpu{i}" for i in range(devices)]
    gpus = tuple(Device(name, "test", memory, 1e15) for name in names)
    if bandwidth is None:
        return Cluster("test", gpus, ideal_interconnect=True)
    pairs = list(links) if links is not None else [(a, b) for a in names for b in names if a != b]
    return Cluster("test", gpus, tuple(Link(f"{a}->{b}", a, b, bandwidth, latency) for a, b in pairs))


def _problem(
    operators: Iterable[Operator],
    edges: Iterable[tuple[str, str] | tuple[str, str, float]] = (),
    *,
    cluster: Cluster | None = None,
    micro_batches: int = 1,
    mode: str = "training",
    fb_overlap: float = 0.0,
    **cluster_options,
) -> Problem:
    """A problem over the given operators; edges are ``(src, dst)`` or ``(src, dst, bytes)``."""
    graph = OperatorGraph("test", tuple(operators), tuple(Edge(*edge) for edge in edges))
    return Problem(graph, cluster or _cluster(**cluster_options), Workload(micro_batches, mode, fb_overlap))


def _gpipe(stages: int, micro_batches: int) -> Schedule:
    """GPipe on a chain ``s0 -> s1 -> ...``: all forwards, then all full backwards (B+W fused)."""
    return Schedule.from_lists(
        {
            f"gpu{s}": [Task(f"s{s}", m, "F") for m in range(micro_batches)]
            + [(Task(f"s{s}", m, "B"), Task(f"s{s}", m, "W")) for m in range(micro_batches)]
            for s in range(stages)
        },
        name="gpipe",
    )


def _one_f_one_b(stages: int, micro_batches: int) -> Schedule:
    """1F1B on a chain: ``stages - s - 1`` warm-up forwards, then one forward / one full backward."""
    lists = {}
    for s in range(stages):
        warmup = min(stages - s - 1, micro_batches)
        order: list = [Task(f"s{s}", m, "F") for m in range(warmup)]
        for i in range(micro_batches):
            if warmup + i < micro_batches:
                order.append(Task(f"s{s}", warmup + i, "F"))
            order.append((Task(f"s{s}", i, "B"), Task(f"s{s}", i, "W")))
        lists[f"gpu{s}"] = order
    return Schedule.from_lists(lists, name="1f1b")


@pytest.fixture
def pipeline_orders() -> dict[str, Callable[[int, int], Schedule]]:
    """Reference schedules for a uniform pipeline, by name: ``order(stages, micro_batches)``."""
    return {"gpipe": _gpipe, "1f1b": _one_f_one_b}


@pytest.fixture
def op() -> Callable[..., Operator]:
    return _op


@pytest.fixture
def make_cluster() -> Callable[..., Cluster]:
    return _cluster


@pytest.fixture
def make_problem() -> Callable[..., Problem]:
    return _problem
