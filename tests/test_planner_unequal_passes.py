"""When F, B and W differ the built-in schedules are not optimal; the lower level reaches
the optimum (issue 12), says which engine found it, and gives the same answer twice.

The instance: DualPipe's bidirectional placement on 4 ranks, 8 micro-batches, F, B, W =
2, 2, 1 ms, held to DualPipe's own peak memory (5 activations per rank; activations live
from F to B). DualPipe's order takes 43 ms. Every rank has 8 x 5 = 40 ms of work and
cannot start before its inputs arrive nor finish before the last gradients leave, so no
schedule on this placement is shorter than the per-stream bound of 42 ms — which is
reached, hence the known optimum.
"""

from __future__ import annotations

import pytest

from planner.memory import memory_like
from planner.mip.lower import ScheduleSettings, solve_schedule
from planner.placements import pipeline_placements
from planner.schedules import generate
from planner.schedules.examples import example_scenario
from planner.taskgraph import TaskGraph


def _instance():
    scenario = example_scenario(stages=4, micro_batches=8, F=2, B=2, W=1, w_retained_gb=0.0, static_gb=0.0)
    graph = TaskGraph(scenario.problem, pipeline_placements(scenario.problem)["bidirectional"])
    limit = memory_like(scenario, "dualpipe")
    return graph, {d: limit for d in graph.devices}, graph.order_from_schedule(generate("dualpipe", scenario))


def test_the_optimum_is_reached_and_proven_within_a_tight_budget():
    graph, limits, dualpipe = _instance()
    assert graph.makespan(graph.left_shift(dualpipe)) == pytest.approx(43e-3)
    assert graph.lower_bound == pytest.approx(42e-3)
    result = solve_schedule(graph, ScheduleSettings(time_limit=10), warm_order=dualpipe, memory_limit=limits)
    assert result.makespan == pytest.approx(42e-3)
    assert result.gap == pytest.approx(0.0, abs=1e-9)
    assert result.source == "active schedule"  # the strengthened graph's longest-tail-first schedule
    assert all(result.peak_memory[d] <= limits[d] * (1 + 1e-9) for d in graph.devices)


def test_two_runs_give_the_same_makespan():
    graph, limits, dualpipe = _instance()
    runs = [solve_schedule(graph, ScheduleSettings(time_limit=10), warm_order=dualpipe, memory_limit=limits) for _ in range(2)]
    assert runs[0].makespan == runs[1].makespan and runs[0].source == runs[1].source
