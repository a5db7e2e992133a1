"""The scheduling MIP: optimal on small instances (checked by brute force), and it models
exactly what the simulator replays."""

from __future__ import annotations

import itertools
import math
import random

import pytest

from planner.bilevel import plan
from planner.heuristics import best_list_schedule
from planner.mip.lower import ScheduleSettings, _peaks, solve_schedule
from planner.placements import by_operator
from planner.schedules.examples import example_scenario
from planner.taskgraph import TaskGraph
from simulator.cluster import Cluster, Device, Link
from simulator.engine import replay
from simulator.errors import InfeasibleError
from simulator.graph import Edge, Operator, OperatorGraph
from simulator.problem import Problem, Workload


def _random_problem(seed: int, *, ops: int = 5, micro_batches: int = 2, mode: str = "inference") -> Problem:
    rng = random.Random(seed)
    operators = [
        Operator(
            name=f"o{i}",
            measured={"*": {"F": rng.choice([1.0, 2.0, 3.0]), "B": rng.choice([1.0, 2.0]), "W": rng.choice([0.5, 1.0])}},
            activation_bytes=rng.choice([1.0, 2.0]),
        )
        for i in range(ops)
    ]
    edges = [Edge(f"o{i}", f"o{j}", 1.0) for i in range(ops) for j in range(i + 1, ops) if rng.random() < 0.4]
    gpus = tuple(Device(f"gpu{i}", "t", 1e12, 1e15) for i in range(2))
    links = (Link("a", "gpu0", "gpu1", 2.0, 0.5), Link("b", "gpu1", "gpu0", 2.0, 0.5))
    return Problem(OperatorGraph("random", tuple(operators), tuple(edges)), Cluster("c", gpus, links), Workload(micro_batches, mode))


def _linear_extensions(graph: TaskGraph, members: tuple[int, ...]):
    """Every order of one stream's tasks that keeps each task after its ancestors."""
    if not members:
        yield ()
        return
    for index, task in enumerate(members):
        rest = members[:index] + members[index + 1 :]
        if any(graph.precedes(other, task) for other in rest):
            continue
        for tail in _linear_extensions(graph, rest):
            yield (task, *tail)


def _brute_force(graph: TaskGraph, limits: dict[str, float] | None = None) -> float:
    """Try every order on every stream; the shortest deadlock-free one within memory."""
    streams = list(graph.streams.items())
    best = math.inf
    delta = graph.memory_delta()
    for combo in itertools.product(*(list(_linear_extensions(graph, members)) for _, members in streams)):
        order = {key: list(perm) for (key, _), perm in zip(streams, combo)}
        try:
            start = graph.left_shift(order)
        except InfeasibleError:
            continue
        if limits is not None:
            peaks = _peaks(graph, order, delta)
            if any(peaks[d] > limits[d] + 1e-9 for d in peaks):
                continue
        best = min(best, graph.makespan(start))
    return best


def _split_placement(problem: Problem, seed: int) -> dict:
    rng = random.Random(seed)
    return by_operator(problem, {op: rng.choice(["gpu0", "gpu1"]) for op in problem.graph.by_name})


@pytest.mark.parametrize("seed", range(6))
def test_mip_proves_the_brute_force_optimum(seed):
    problem = _random_problem(seed, ops=4, micro_batches=2)
    graph = TaskGraph(problem, _split_placement(problem, seed))
    result = solve_schedule(graph, ScheduleSettings(time_limit=30))
    assert result.status == "optimal"
    assert result.makespan == pytest.approx(_brute_force(graph))
    assert result.gap == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("seed", range(4))
def test_mip_respects_memory_and_matches_brute_force_under_a_limit(seed):
    problem = _random_problem(seed + 100, ops=2, micro_batches=2, mode="training")
    graph = TaskGraph(problem, by_operator(problem, {"o0": "gpu0", "o1": "gpu1"}))
    unlimited = _brute_force(graph)
    greedy_peak = _peaks(graph, best_list_schedule(graph).order, graph.memory_delta())
    # A limit of one micro-batch's activations less than the greedy peak forces a different order.
    limits = {d: max(greedy_peak[d] - 1.0, max(a for a, _ in graph.memory_delta())) for d in graph.devices}
    optimum = _brute_force(graph, limits)
    assert math.isfinite(optimum) and optimum >= unlimited
    result = solve_schedule(graph, ScheduleSettings(time_limit=30), memory_limit=limits)
    assert result.makespan == pytest.approx(optimum)
    assert all(result.peak_memory[d] <= limits[d] + 1e-9 for d in graph.devices)


def test_mip_timing_equals_the_simulators_replay_on_finite_links():
    problem = _random_problem(7, ops=6, micro_batches=3, mode="training")
    graph = TaskGraph(problem, _split_placement(problem, 7))
    warm = best_list_schedule(graph)
    result = solve_schedule(graph, ScheduleSettings(time_limit=20), warm_order=warm.order)
    schedule = graph.to_schedule(result.order, name="mip", meta={})
    timeline = replay(problem, schedule)
    assert timeline.ok
    contended = len({(t.links, t.start) for t in timeline.transfers}) < len(timeline.transfers)
    if not contended:
        assert timeline.makespan == pytest.approx(result.makespan)
    assert result.makespan <= warm.makespan + 1e-9


def test_warm_start_is_kept_when_the_time_limit_is_tiny():
    scenario = example_scenario(stages=4, micro_batches=8, w_retained_gb=0.5)
    graph = TaskGraph(scenario.problem, by_operator(scenario.problem, {f"s{i}": f"gpu{i}" for i in range(4)}))
    warm = best_list_schedule(graph)
    result = solve_schedule(graph, ScheduleSettings(time_limit=1), warm_order=warm.order)
    assert result.makespan <= warm.makespan + 1e-9
    assert result.lower_bound <= result.makespan + 1e-9
    assert 0.0 <= result.gap < 1.0


def test_lower_bound_is_never_above_the_makespan_and_certifies_optimal_plans():
    scenario = example_scenario(stages=4, micro_batches=8, w_retained_gb=0.5)
    result = plan(scenario, time_limit=20)
    assert result.lower.lower_bound <= result.makespan + 1e-12
    # The planned schedule replays to the MIP's own timing (ideal interconnect: no contention).
    assert result.makespan == pytest.approx(result.lower.makespan)


def test_dualpipe_setting_half_the_bubble_at_the_same_memory():
    """The headline claim on DualPipe's own setting (8 ranks, 20 micro-batches, F = B = W)."""
    from planner.memory import memory_like
    from planner.schedules import generate
    from simulator.metrics import build_report

    scenario = example_scenario(stages=8, micro_batches=20, w_retained_gb=0.5, static_gb=10)
    dualpipe = build_report(replay(scenario.problem, generate("dualpipe", scenario)))
    limit = memory_like(scenario, "dualpipe")
    result = plan(scenario, time_limit=30, memory_limit_bytes=limit)
    planned = build_report(result.timeline)
    assert planned.peak_memory <= dualpipe.peak_memory + 1e-9
    assert planned.max_bubble <= 0.5 * dualpipe.max_bubble + 1e-9
    assert result.lower.gap == pytest.approx(0.0, abs=1e-9)  # proven optimal for its placement


def test_infeasible_memory_names_the_operator_and_the_shortfall():
    scenario = example_scenario(stages=2, micro_batches=2, static_gb=10)
    with pytest.raises(InfeasibleError, match=r"operator 's0' needs 11 GB .* short by 6 GB"):
        plan(scenario, time_limit=5, memory_limit_bytes=5e9)


def test_static_memory_over_the_limit_is_reported_per_device():
    scenario = example_scenario(stages=2, micro_batches=2, static_gb=3)
    graph = TaskGraph(scenario.problem, by_operator(scenario.problem, {"s0": "gpu0", "s1": "gpu0"}))
    with pytest.raises(InfeasibleError, match=r"gpu0: static memory 6 GB .* by 1 GB"):
        solve_schedule(graph, ScheduleSettings(time_limit=5), memory_limit={"gpu0": 5e9})


def test_the_cli_offers_exactly_the_formulations_the_mip_has():
    from opplan.commands.plan import plan_command
    from planner.mip.lower import FORMULATIONS

    (option,) = [p for p in plan_command.params if p.name == "formulation"]
    assert tuple(option.type.choices) == FORMULATIONS


def test_memory_objective_never_raises_the_peak():
    scenario = example_scenario(stages=3, micro_batches=4, w_retained_gb=0.5, static_gb=0.0)
    graph = TaskGraph(scenario.problem, by_operator(scenario.problem, {f"s{i}": f"gpu{i}" for i in range(3)}))
    warm = best_list_schedule(graph)
    fast = solve_schedule(graph, ScheduleSettings(time_limit=10), warm_order=warm.order)
    lean = solve_schedule(graph, ScheduleSettings(time_limit=20, objective="memory", memory_weight=50.0), warm_order=warm.order)
    assert max(lean.peak_memory.values()) <= max(fast.peak_memory.values()) + 1e-9


@pytest.mark.parametrize("seed", range(4))
def test_cpsat_finds_the_brute_force_optimum_within_memory(seed):
    """CP-SAT's order, re-timed exactly, is optimal and within memory on tiny instances."""
    from planner.mip.cpsat import solve_order

    problem = _random_problem(seed + 100, ops=2, micro_batches=2, mode="training")
    graph = TaskGraph(problem, by_operator(problem, {"o0": "gpu0", "o1": "gpu1"}))
    greedy_peak = _peaks(graph, best_list_schedule(graph).order, graph.memory_delta())
    limits = {d: max(greedy_peak[d] - 1.0, max(a for a, _ in graph.memory_delta())) for d in graph.devices}
    found = solve_order(graph, limits, seconds=10)
    assert found is not None and found.status == "optimal"
    assert graph.makespan(graph.left_shift(found.order)) == pytest.approx(_brute_force(graph, limits))
    peaks = _peaks(graph, found.order, graph.memory_delta())
    assert all(peaks[d] <= limits[d] + 1e-9 for d in graph.devices)
