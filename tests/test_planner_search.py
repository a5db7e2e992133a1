"""The hybrid-space search (planner.search): sound bounds, valid plans, honest time limits.

A four-layer transformer on 4 devices (two nodes of two) is small enough to enumerate
and replay every layout, so the search's claims are checked against brute force."""

from __future__ import annotations

import copy
import time

import pytest

from planner.search.context import SearchContext
from planner.search.cuts import balanced_cut, max_stage_seconds
from planner.search.evaluate import replay_layout
from planner.search.search import search_layouts
from planner.search.space import enumerate_layouts
from simulator.layout import Layout, check_model
from simulator.scenario import scenario_from_dict
from simulator.yamlio import Section

SMALL = {
    "name": "small",
    "model": {"type": "transformer", "layers": 4, "hidden": 256, "heads": 4, "ffn": 512, "vocab": 1024,
              "seq_len": 128, "micro_batch_size": 1},
    "cluster": {"devices": 4, "device": {"type": "generic", "memory_gb": 80, "peak_tflops": 100},
                "interconnect": {"bandwidth_GBps": 100, "latency_us": 2}},
    "workload": {"micro_batches": 2},
    "parallel": {"dp": 4, "global_batch_size": 8},
}


@pytest.fixture(scope="module")
def small():
    return scenario_from_dict(copy.deepcopy(SMALL), "small.yaml")


@pytest.fixture(scope="module")
def brute(small):
    """Every layout of the space, its bounds and its replay."""
    ctx = SearchContext(small)
    rows = []
    for layout in enumerate_layouts(ctx.space, ctx.shape):
        if layout.micro_batch_size > 1 or layout.recompute == "selective":
            continue  # keeps the test fast; the other modes still cover each axis
        rows.append((layout, ctx.bound(layout), replay_layout(small, layout)))
    return ctx, rows


@pytest.fixture(scope="module")
def found(small):
    return search_layouts(small, time_limit=60)


def test_the_time_bound_is_never_above_the_replayed_step(brute):
    _, rows = brute
    replayed = [(layout, bound, result) for layout, bound, result in rows if not isinstance(result, str)]
    assert len(replayed) > 50  # the rest the schedule generators refuse (e.g. ZB-H2 with too few micro-batches)
    for layout, bound, result in replayed:
        assert bound.time <= result.step * (1 + 1e-9), layout
    assert sum(layout.cp > 1 for layout, _, _ in replayed) > 10  # context parallelism is searched too


def test_the_bound_prices_the_context_parallel_kv_ring(brute):
    """Under CP every layer's F holds the all-gather of K and V and its B the reduce-scatter of
    their gradients (as the replay runs them, blocking): the bound's passes include their
    idle-cluster price, so they are longer than the compute alone."""
    ctx, rows = brute
    layout = next(layout for layout, _, result in rows if layout.cp > 1 and not isinstance(result, str))
    costs = ctx.costs(layout)
    layer = costs.units[1]
    assert layer.cp_forward and layer.cp_backward
    assert costs.passes[1]["F"] > layer.seconds["F"] and costs.passes[1]["B"] > layer.seconds["B"]
    assert costs.passes[1]["W"] == layer.seconds["W"]


def test_the_memory_bound_is_never_above_the_replayed_peak(brute):
    _, rows = brute
    for layout, bound, result in rows:
        if isinstance(result, str):
            continue
        assert bound.memory <= result.memory_peak * (1 + 1e-9), layout


def test_the_search_finds_the_brute_force_optimum_and_its_bound_is_below_it(found, brute):
    _, rows = brute
    optimum = min(result.step for _, _, result in rows if not isinstance(result, str) and not result.note)
    assert found.lower_bound <= optimum * (1 + 1e-9)
    assert found.certified
    assert found.best.result.step <= optimum * (1 + 1e-9)  # the full space also has selective / larger micro-batches
    accounted = found.duplicates + found.pruned_time + found.pruned_memory + len(found.replayed) + found.mip_cuts
    assert accounted >= found.enumerated


def test_the_plan_is_a_layout_the_simulator_accepts(small, found):
    layout = found.best.layout
    check_model(layout, SearchContext(small).shape, Section({}, path="parallel"))
    assert layout.world_size == 4
    again = replay_layout(small, layout)
    assert again.note == "" and again.step == pytest.approx(found.best.result.step)


def test_the_mip_cut_balances_an_uneven_split(small):
    ctx = SearchContext(small)
    layout = Layout(pp=3, dp=1, global_batch_size=6, stage_layers=(2, 1, 1))
    costs = ctx.costs(layout)
    cut = balanced_cut(costs, layout, ctx.capacity)
    assert sum(cut.layers) == 4 and len(cut.layers) == 3
    best = min(max_stage_seconds(costs, c) for c in ((2, 1, 1), (1, 2, 1), (1, 1, 2)))
    assert cut.seconds == pytest.approx(best)


def test_the_time_limit_is_honoured_within_ten_percent():
    doc = copy.deepcopy(SMALL)
    doc["model"].update(layers=8, seq_len=512)
    doc["cluster"]["devices"] = 8
    doc["parallel"] = {"dp": 8, "global_batch_size": 32}
    scenario = scenario_from_dict(doc, "small.yaml")
    started = time.monotonic()
    found = search_layouts(scenario, time_limit=2.0)
    assert time.monotonic() - started <= 2.2
    assert found.best is None or found.best.feasible


def _write(tmp_path, doc) -> str:
    """``doc`` on 2 devices and 2 layers (the command-line tests check wiring, not search)."""
    import yaml
    doc = copy.deepcopy(doc)
    doc["model"]["layers"] = 2
    doc["cluster"]["devices"] = 2
    doc["parallel"] = {"dp": 2, "global_batch_size": 8}
    path = tmp_path / "small.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def capsys_text(capfd) -> str:
    captured = capfd.readouterr()
    return captured.out + captured.err


def test_opplan_plan_prints_megatron_arguments_and_a_parallel_block(tmp_path, capfd):
    from opplan.cli import main
    path = _write(tmp_path, SMALL)
    out = tmp_path / "plan.json"
    assert main(["plan", path, "--time-limit", "20", "-o", str(out)]) == 0
    printed = capsys_text(capfd)
    assert "--tensor-model-parallel-size" in printed and "--global-batch-size 8" in printed
    assert "parallel:" in printed and "certificate" in printed
    import json
    document = json.loads(out.read_text())
    assert document["certified"] and document["deepspeed"]["train_batch_size"] == 8


def test_opplan_compare_plan_adds_the_plan_as_a_row_no_slower_than_the_presets(tmp_path):
    from opplan.cli import main
    path = _write(tmp_path, SMALL)
    out = tmp_path / "rows.json"
    assert main(["compare", path, "--plan", "--time-limit", "20", "--json", str(out)]) == 0
    import json
    rows = {row["name"]: row for row in json.loads(out.read_text())}
    valid = [row["step"] for name, row in rows.items() if not row["note"] and name != "opplan plan"]
    assert rows["opplan plan"]["step"] <= min(valid) * (1 + 1e-9)


def test_dask_workers_find_the_same_plan_as_the_serial_search(tmp_path, found):
    """Replays on an embedded Dask cluster of worker processes (``--workers 1``): same plan, same certificate."""
    path = _write(tmp_path, SMALL)
    scenario = scenario_from_dict(copy.deepcopy(SMALL), path)  # the 4-device model, read by the workers from its file
    (tmp_path / "small.yaml").write_text(__import__("yaml").safe_dump(SMALL))
    distributed = search_layouts(scenario, time_limit=60, workers=1)
    assert distributed.certified
    assert distributed.best.result.step == pytest.approx(found.best.result.step, rel=1e-12)


def test_a_model_that_fits_nowhere_is_refused_in_seconds_with_what_it_would_need(tmp_path, capfd):
    from opplan.cli import main
    doc = copy.deepcopy(SMALL)
    doc["cluster"]["device"]["memory_gb"] = 0.01  # 4 x 10 MB < the model's 56 MB of states and one micro-batch
    del doc["parallel"]  # the scenario's own layout would be refused on loading already
    path = tmp_path / "tight.yaml"
    path.write_text(__import__("yaml").safe_dump(doc))
    started = time.monotonic()
    assert main(["plan", str(path), "--time-limit", "10"]) != 0
    lines = capsys_text(capfd).strip().splitlines()
    assert len(lines) == 1 and "tight.yaml" in lines[0] and "needs at least" in lines[0] and "GPUs" in lines[0]
    assert time.monotonic() - started < 5


def test_only_a_real_opplan_process_counts_its_start_up_against_the_time_limit(monkeypatch):
    import time

    from opplan import startup
    from opplan.commands.plan_hybrid import REPORT_SECONDS, search_budget
    monkeypatch.setitem(startup._STARTUP, "seconds", 0.0)  # main([...]) called in-process: nothing before it counts
    assert search_budget(20.0, time.monotonic()) == pytest.approx(20.0 - REPORT_SECONDS, abs=0.05)
    monkeypatch.setitem(startup._STARTUP, "seconds", 3.0)  # `opplan plan` as the program, 3 s of imports
    assert search_budget(20.0, time.monotonic()) == pytest.approx(17.0 - REPORT_SECONDS, abs=0.05)


@pytest.mark.parametrize("op", ["all_reduce", "reduce_scatter", "all_gather", "all_to_all"])
def test_a_price_curve_is_collective_time_at_every_size(op):
    """The search prices a group once (planner.search.prices) and every size from that: the same
    seconds as simulator.collectives.collective_time, on rail rings across nodes and inside one."""
    from planner.search.prices import price_curve
    from simulator.collectives import Collective, collective_time
    doc = {"name": "two-nodes", "model": {"type": "transformer", "layers": 2, "hidden": 256, "heads": 4, "ffn": 512,
           "vocab": 1024, "seq_len": 128}, "cluster": {"profile": "h800-sxm", "nodes": 2},
           "workload": {"micro_batches": 1}, "objective": {"minimize": "makespan"}}
    cluster = scenario_from_dict(doc, "two-nodes.yaml").problem.cluster
    names = cluster.device_names
    for group in (names, names[:8], names[::2], (names[0], names[9])):
        curve = price_curve(op, group, cluster)
        for size in (1.0, 3.3e5, 2.1e8, 7e9):
            assert curve.seconds(size) == pytest.approx(collective_time(Collective(op, group, size), cluster), rel=1e-12)
