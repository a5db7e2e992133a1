"""Memory limits the planner holds a plan to: the device's capacity, the scenario's
``objective.memory_limit_gb``, the caller's override, or the peak of a built-in schedule
(``--memory-like dualpipe``: "as fast as possible at DualPipe's memory")."""

from __future__ import annotations

from simulator.engine import replay
from simulator.scenario import Scenario

__all__ = ["memory_like", "memory_limits"]


def memory_limits(scenario: Scenario, override_bytes: float | None = None) -> dict[str, float]:
    """Per-device limit: the device's memory, lowered by the scenario's or the caller's limit."""
    limit = override_bytes if override_bytes is not None else scenario.objective.memory_limit_bytes
    out = {}
    for device in scenario.problem.cluster.devices:
        out[device.name] = min(device.memory_bytes, limit) if limit is not None else device.memory_bytes
    return out


def memory_like(scenario: Scenario, name: str) -> float:
    """The largest per-device memory peak of built-in schedule ``name`` on ``scenario`` (bytes).

    Lets a plan be held to the same memory as a hand-made schedule (e.g. DualPipe's).

    >>> from planner.schedules.examples import example_scenario
    >>> memory_like(example_scenario(stages=4, micro_batches=8), "1f1b") / 1e9   # 1 GB static + 4 in flight on rank 0
    5.0
    """
    from planner.schedules import generate

    timeline = replay(scenario.problem, generate(name, scenario))
    return max(level for _, level in timeline.memory_peaks().values())
