"""Activations a pipeline schedule provably holds at once, whatever the timings.

A device runs its list in order, and an F's activations are freed only by that
micro-batch's B (and W) on the same stage. So just before a device's first B, every F
listed before it has run and none of them has been freed: the peak holds at least their
activations. Counting them per stage needs only the generated schedule on a chain of
stages (timings do not matter), so one generation serves every layout with the same
schedule, pipeline size, virtual stages and micro-batch count."""

from __future__ import annotations

from collections import Counter

from planner.schedules import generate
from simulator.errors import InputError
from simulator.graph import chain_graph
from simulator.layout import Layout
from simulator.problem import Problem, Workload
from simulator.scenario import Scenario

__all__ = ["forwards_before_first_backward"]


def forwards_before_first_backward(scenario: Scenario, layout: Layout) -> dict[int, Counter]:
    """Pipeline rank -> {stage: Fs listed before the rank's first B}; empty when the schedule cannot be generated."""
    problem = scenario.problem
    chain = chain_graph("stages", layout.stages, {"F": 1.0, "B": 1.0, "W": 1.0})
    stand_in = Scenario(name=scenario.name, problem=Problem(chain, problem.cluster, Workload(layout.micro_batches)))
    options = {"chunks": layout.vpp} if layout.schedule == "interleaved-1f1b" else {}
    try:
        schedule = generate(layout.schedule, stand_in, **options)
    except InputError:
        return {}
    names = problem.cluster.device_names
    out: dict[int, Counter] = {}
    for device, entries in schedule.devices.items():
        counts: Counter = Counter()
        for entry in entries:
            if any(t.kind == "B" for t in entry.tasks):
                break
            counts.update(int(t.op[1:]) for t in entry.tasks if t.kind == "F")
        out[names.index(device)] = counts
    return out
