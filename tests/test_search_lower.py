"""The lower level on a chosen layout (planner.search.lower) and the search iterating with it.

A four-layer transformer whose passes take about a millisecond (F, B and W differ, so the
built-in 1F1B is not optimal): its stage problem on two pipeline ranks and two
micro-batches is small enough to enumerate every order, so the lower level's answer is
checked against the brute-force optimum; the replay of its order is checked for
violations and against the built-in's replay."""

from __future__ import annotations

import copy
import itertools
import time

import pytest

from planner.layouts.build import build_layout_run
from planner.mip.lower import ScheduleSettings, solve_schedule
from planner.search.context import with_micro_batch_size
from planner.search.lower import improve_layout, replay_pipeline, stage_model
from simulator.engine import replay
from simulator.layout import Layout
from simulator.scenario import scenario_from_dict

DOC = {
    "name": "pipe",
    "model": {"type": "transformer", "layers": 4, "hidden": 1024, "heads": 8, "ffn": 4096, "vocab": 8192,
              "seq_len": 2048, "micro_batch_size": 1},
    "cluster": {"devices": 4, "device": {"type": "generic", "memory_gb": 80, "peak_tflops": 100},
                "interconnect": {"bandwidth_GBps": 100, "latency_us": 2}},
    "workload": {"micro_batches": 2},
    "parallel": {"dp": 4, "global_batch_size": 8},
}


@pytest.fixture(scope="module")
def pipe():
    return scenario_from_dict(copy.deepcopy(DOC), "pipe.yaml")


def _merges(chains: list[list[int]]):
    """Every interleaving of ``chains`` that keeps each chain's order."""
    if all(not c for c in chains):
        yield []
        return
    for i, chain in enumerate(chains):
        if chain:
            rest = [c[1:] if j == i else c for j, c in enumerate(chains)]
            for tail in _merges(rest):
                yield [chain[0], *tail]


def _brute_force(graph) -> float:
    """The shortest left-shifted makespan over every order of every compute stream (each
    micro-batch's F, B, W in that order; everything fits in memory here)."""
    per_stream = []
    for key, members in graph.streams.items():
        chains = [[t for t in members if graph.tasks[t].mb == mb] for mb in sorted({graph.tasks[t].mb for t in members})]
        chains = [sorted(c, key=lambda t: "FBW".index(graph.tasks[t].kind)) for c in chains]
        per_stream.append([(key, order) for order in _merges(chains)])
    best = float("inf")
    for combo in itertools.product(*per_stream):
        try:
            best = min(best, graph.makespan(graph.left_shift(dict(combo))))
        except Exception:  # an order that deadlocks against the data flow
            continue
    return best


def test_the_stage_model_has_a_task_per_stage_pass_and_micro_batch_and_unequal_passes(pipe):
    layout = Layout(pp=2, dp=1, global_batch_size=2, schedule="1f1b")
    graph = stage_model(pipe, layout).graph
    assert len(graph.tasks) == 2 * 2 * 3  # no data parallelism: no reduction tasks
    f, b, w = (graph.duration[graph.index[("s0", 0, kind)]] for kind in "FBW")
    assert 1e-4 < f < b and w != f  # milliseconds, and the passes differ


def test_the_lower_level_reaches_the_brute_force_optimum_the_built_in_misses(pipe):
    layout = Layout(pp=2, dp=1, global_batch_size=2, schedule="1f1b")
    model = stage_model(pipe, layout)
    graph = model.graph
    optimum = _brute_force(graph)
    own = graph.makespan(graph.left_shift(_own_order(pipe, layout, model)))
    assert optimum < own * (1 - 1e-3)  # 1F1B's fused B+W is not optimal when W can wait
    # The solver, warm-started by 1F1B's own order, finds the optimum and proves it.
    solved = solve_schedule(graph, ScheduleSettings(time_limit=10, cpsat_workers=2), warm_order=_own_order(pipe, layout, model),
                            memory_limit=model.limits)
    assert solved.source != "warm start"
    assert solved.makespan == pytest.approx(optimum, rel=1e-4)  # CP-SAT rounds to microseconds
    assert solved.lower_bound <= optimum * (1 + 1e-9) and solved.gap < 1e-3
    # improve_layout (warm start: the best built-in of the placement) gets there too, and its replay is faster.
    outcome = improve_layout(pipe, layout, time_limit=10)
    assert outcome.model_makespan == pytest.approx(optimum, rel=1e-4)
    assert outcome.model_bound <= optimum * (1 + 1e-9)
    assert outcome.kept and outcome.step < outcome.warm_step and outcome.result.note == ""


def _own_order(scenario, layout, model):
    """The layout's own built-in order in the stage model (not the best of its placement)."""
    from planner.layouts.build import pipeline_schedule
    from planner.search.lower import _warm_order
    return _warm_order(model.graph, pipeline_schedule(scenario, layout), model.generator)


def test_cp_sat_improves_interleaved_and_dualpipev_orders_and_their_replays(pipe):
    for layout in (Layout(pp=2, dp=2, vpp=2, global_batch_size=8, schedule="interleaved-1f1b", zero=1),
                   Layout(pp=2, dp=2, global_batch_size=8, schedule="dualpipev")):
        outcome = improve_layout(pipe, layout, time_limit=8, settings=ScheduleSettings(time_limit=8, cpsat_workers=2))
        assert outcome.model_makespan < outcome.model_warm * (1 - 1e-3), layout.schedule
        assert outcome.kept and outcome.step < outcome.warm_step, layout.schedule


@pytest.mark.parametrize("layout", [
    Layout(pp=2, dp=2, global_batch_size=8, schedule="1f1b"),
    Layout(pp=2, dp=2, global_batch_size=8, schedule="zb-h1", zero=3),
    Layout(pp=2, dp=2, vpp=2, global_batch_size=8, schedule="interleaved-1f1b", zero=1),
    Layout(pp=2, dp=2, global_batch_size=8, schedule="dualpipev"),
])
def test_the_lower_level_replays_cleanly_and_is_never_slower_than_its_warm_start(pipe, layout):
    warm = replay_pipeline(pipe, layout, None, "built-in")
    outcome = improve_layout(pipe, layout, time_limit=3, warm=warm, settings=ScheduleSettings(time_limit=3, cpsat_workers=2))
    assert outcome.warm_step == warm.step
    if not outcome.kept:
        return
    assert outcome.step < warm.step and outcome.result.note == ""
    run = build_layout_run(pipe, layout, pipeline=outcome.pipeline)
    timeline = replay(run.problem, run.schedule)
    assert not timeline.violations
    assert replay_pipeline(pipe, layout, outcome.pipeline).step == pytest.approx(outcome.step, rel=1e-12)


def test_dp_reductions_wait_for_every_w_of_their_stage(pipe):
    layout = Layout(pp=2, dp=2, global_batch_size=8, schedule="1f1b")
    graph = stage_model(pipe, layout).graph
    reductions = [i for i, t in enumerate(graph.tasks) if t.op.startswith("dp.")]
    assert len(reductions) == 2  # ZeRO-0: once per step, per stage
    for i in reductions:
        stage = graph.tasks[i].op.split(".")[1]
        waits = {graph.tasks[a.src] for a in graph.preds[i]}
        assert waits == {(stage, mb, "W") for mb in range(layout.micro_batches)}
        assert graph.duration[i] > 0 and graph.device_stream[i][1] == "comm"


def test_the_search_iterating_with_the_lower_level_returns_a_clean_plan_within_its_time_limit(tmp_path):
    """``opplan plan -o``: within the time limit, the lower level ran, and the plan written — layout and,
    when the lower level ordered it, its pipeline order — replays without violations at the step printed."""
    import json

    import yaml

    from opplan.cli import main
    from simulator.problem import parse_task
    from simulator.schedule import Entry, Schedule
    doc = copy.deepcopy(DOC)
    doc["cluster"]["interconnect"]["bandwidth_GBps"] = 10  # data parallelism costs: a pipeline (DualPipe) wins
    path, out = tmp_path / "pipe.yaml", tmp_path / "plan.json"
    path.write_text(yaml.safe_dump(doc))
    started = time.monotonic()
    assert main(["plan", str(path), "--time-limit", "20", "-o", str(out)]) == 0
    assert time.monotonic() - started <= 20 * 1.1
    plan = json.loads(out.read_text())
    assert plan["lower_level"]  # pipeline layouts could beat the incumbent: the lower level ran
    assert plan["lower_bound_s"] <= plan["step_s"] * (1 + 1e-12)
    assert plan["engine"] == "built-in schedule" or plan["engine"].startswith("lower level: ")
    names = [f"gpu{i}" for i in range(4)]
    order = plan.get("pipeline_order")
    pipeline = Schedule({names[int(rank.rsplit("_", 1)[1])]: tuple(Entry((parse_task(t),)) for t in tasks)
                         for rank, tasks in order.items()}) if order else None
    layout = Layout(**{k: tuple(v) if isinstance(v, list) else v for k, v in plan["layout"].items() if k != "recompute_ranges"})
    scenario = scenario_from_dict(doc, str(path))
    again = replay_pipeline(with_micro_batch_size(scenario, layout.micro_batch_size), layout, pipeline)
    assert again.note == "" and again.step == pytest.approx(plan["step_s"], rel=1e-12)


def test_zero3_gathers_when_modelled_precede_their_pass_overlapping_all_but_the_first_unit(pipe):
    layout = Layout(pp=2, dp=2, zero=3, global_batch_size=8, schedule="zb-h1")
    assert not any(t.op.startswith("ag.") for t in stage_model(pipe, layout).graph.tasks)  # off by default
    graph = stage_model(pipe, layout, gathers=True).graph
    gathers = [i for i, t in enumerate(graph.tasks) if t.op.startswith("ag.")]
    assert len(gathers) == 2 * layout.micro_batches * 2  # per stage, micro-batch, F and B
    for i in gathers:
        (arc,) = graph.succs[i]
        task, target = graph.tasks[i], graph.tasks[arc.dst]
        assert (target.mb, target.kind) == (task.mb, task.kind) and target.op == task.op.split(".")[1]
        assert -graph.duration[i] < arc.lag < 0  # the pass starts once its first unit's weights are in


def test_every_sampled_pipeline_layout_of_the_space_gets_a_stage_model_whose_warm_start_runs(pipe):
    """A sample of the space's pipeline layouts (every schedule, ZeRO stage, micro-batch size): the
    stage model builds, its warm start left-shifts without deadlock and is no shorter than its bound,
    and each stage's passes cost what its units do."""
    from planner.search.context import SearchContext
    from planner.search.space import enumerate_layouts
    from simulator.errors import InputError
    from simulator.hybrid import stage_units
    ctx = SearchContext(pipe)
    layouts = [layout for layout in enumerate_layouts(ctx.space, ctx.shape) if layout.pp > 1][::7]
    assert {layout.schedule for layout in layouts} >= {"1f1b", "interleaved-1f1b", "zb-h1", "dualpipe", "dualpipev"}
    built = 0
    for layout in layouts:
        try:
            model = stage_model(ctx.scenario_for(layout), layout)
        except InputError:  # the schedule's generator refuses the layout (too few micro-batches): never replayed
            continue
        built += 1
        graph = model.graph
        assert graph.makespan(graph.left_shift(model.warm)) >= graph.lower_bound * (1 - 1e-9), layout
        costs = ctx.costs(layout)
        for k, units in enumerate(stage_units(layout, len(ctx.shape.layers))):
            expected = sum(costs.passes[u]["F"] for u in units)
            assert graph.duration[graph.index[(f"s{k}", 0, "F")]] == pytest.approx(expected, rel=1e-12), layout
    assert built >= len(layouts) // 2


def test_a_search_cut_short_after_replaying_only_layouts_over_memory_says_so_not_that_nothing_fits():
    from opplan.commands.plan_hybrid import _refuse_if_empty
    from planner.search.bounds import Bound
    from planner.search.search import Replayed, SearchResult
    from simulator.errors import InputError
    from simulator.layout import Layout

    over = Replayed(Layout(dp=2), Bound(time=1.0, memory=1.0, compute=1.0, bubble=0.0, communication=0.0, tail=0.0), None,
                    refused="over memory")
    with pytest.raises(InputError, match=r"time limit ended before any layout was replayed within memory \(1 replayed"):
        _refuse_if_empty(SearchResult(replayed=[over], timed_out=True), None)
