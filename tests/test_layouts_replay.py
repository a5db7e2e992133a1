"""Replaying hybrid-parallel layouts (planner.layouts): exact timelines on tiny clusters.

A two-layer transformer small enough to compute by hand on 2 devices behind a switch of
100 GB/s and 2 µs per hop (a transfer between two GPUs crosses two links: 4 µs, 100 GB/s).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from opplan.cli import main
from planner.layouts.build import build_layout_run
from planner.layouts.step import simulate_layout
from simulator.engine import replay
from simulator.memory_model import rank_memory
from simulator.problem import Task
from simulator.scenario import scenario_from_dict

TINY = {
    "name": "tiny",
    "model": {"type": "transformer", "layers": 2, "hidden": 256, "heads": 4, "ffn": 512, "vocab": 1024,
              "seq_len": 128, "micro_batch_size": 1},
    "cluster": {"devices": 2, "device": {"type": "generic", "memory_gb": 80, "peak_tflops": 100},
                "interconnect": {"bandwidth_GBps": 100, "latency_us": 2}},
    "workload": {"micro_batches": 2},
}


def _scenario(model: dict | None = None, **parallel):
    doc = copy.deepcopy(TINY)
    doc["model"].update(model or {})
    if parallel:
        doc["parallel"] = parallel
    return scenario_from_dict(doc, "tiny.yaml")


def _executed(timeline, device):
    return [e for e in timeline.executed if e.device == device]


def test_tp2_forward_is_half_the_flops_then_an_alpha_beta_all_reduce():
    """TP 2: each rank runs half of L0's forward FLOPs, then all-reduces the s·b·h stream:
    a ring of 2 takes 2(n−1)·α + 2(n−1)/n · S/B = 2α + S/B."""
    scenario = _scenario(tp=2, global_batch_size=2)
    run = build_layout_run(scenario, scenario.parallel)
    assert run.tp_mode == "replay"
    timeline = replay(run.problem, run.schedule)
    assert timeline.ok
    graph_flops = sum(op.flops["F"] for op in scenario.problem.graph.operators if op.group == "layer0")
    device = scenario.problem.cluster.devices[0]
    done = _executed(timeline, "gpu0")
    index = next(i for i, e in enumerate(done) if e.entry.tasks and e.entry.first.op == "L0@0.0.0" and e.entry.first.mb == 0
                 and e.entry.first.kind == "F")
    forward = done[index]
    assert forward.end - forward.start == pytest.approx(graph_flops / 2 / device.effective_flops, rel=1e-12)
    reduce = [e for e in done[index + 1:index + 3]]
    assert all(e.entry.collective.collective.op == "all_reduce" for e in reduce)  # attention and MLP blocks
    size = 128 * 256 * 2  # s b h bytes, bf16
    assert reduce[0].start == pytest.approx(forward.end)
    route = scenario.problem.cluster.route("gpu0", "gpu1")
    assert (route.latency, route.bandwidth) == (pytest.approx(2e-6), pytest.approx(100e9))
    assert reduce[0].end - reduce[0].start == pytest.approx(2 * route.latency + size / route.bandwidth, rel=1e-9)


def test_ddp_gradient_all_reduce_overlaps_the_backward():
    """DP 2, layers of 134 MB of gradients (over DDP's 25 MiB cap): the first bucket runs on the
    comm stream while the compute stream is still in the backward of earlier layers."""
    scenario = _scenario({"hidden": 2048, "heads": 16, "ffn": 8192}, dp=2, global_batch_size=4)
    run = build_layout_run(scenario, scenario.parallel)
    timeline = replay(run.problem, run.schedule)
    done = _executed(timeline, "gpu0")
    buckets = [e for e in done if e.entry.collective is not None and e.entry.collective.name.startswith("dp.grads")]
    compute = [e for e in done if e.entry.collective is None]
    assert buckets and all(e.entry.collective.collective.op == "all_reduce" for e in buckets)
    assert buckets[0].start < max(e.end for e in compute)
    assert any(c.start < buckets[0].end and buckets[0].start < c.end for c in compute)  # really overlapping


def test_zero3_gathers_each_units_weights_before_its_forward_and_backward():
    scenario = _scenario(dp=2, zero=3, global_batch_size=4)
    run = build_layout_run(scenario, scenario.parallel)
    timeline = replay(run.problem, run.schedule)
    done = _executed(timeline, "gpu0")
    gathers = {e.entry.collective.name.split("@")[0]: e for e in done if e.entry.collective is not None
               and e.entry.collective.collective.op == "all_gather"}
    tasks = [e for e in done if e.entry.collective is None and e.entry.first.kind in ("F", "B")]
    for task in tasks:
        first = task.entry.first
        gather = gathers[f"ag.{first.kind}.{first.op.split('@')[0]}.{first.mb}"]
        assert gather.end <= task.start + 1e-15
    reduces = [e for e in done if e.entry.collective is not None and e.entry.collective.collective.op == "reduce_scatter"]
    # one per unit (embedding, two layers, head) and micro-batch: FSDP's per-module reduce-scatter,
    # every micro-batch since ZeRO-3 keeps only its shard of the gradients
    assert len(reduces) == 4 * 2


@pytest.mark.parametrize("parallel", [{"dp": 2, "zero": 3, "global_batch_size": 4}, {"pp": 2, "global_batch_size": 4},
                                      {"tp": 2, "zero": 1, "global_batch_size": 2}])
def test_static_memory_per_rank_equals_the_memory_model(parallel):
    scenario = _scenario(**parallel)
    run = build_layout_run(scenario, scenario.parallel)
    timeline = replay(run.problem, run.schedule)
    from planner.layouts.build import shape_of
    for rank, device in enumerate(("gpu0", "gpu1")):
        memory = rank_memory(shape_of(scenario), scenario.parallel, rank)
        assert timeline.static_memory[device] == pytest.approx(memory.total - memory.activations, rel=1e-12)


def test_a_step_adds_the_memory_bound_optimizer_after_the_replay():
    scenario = _scenario(dp=2, zero=1, global_batch_size=4)
    result = simulate_layout(scenario, scenario.parallel)
    params = sum(op.params for op in scenario.problem.graph.operators)
    assert result.optimizer_step == pytest.approx(28 * params / 2 / 3.35e12, rel=1e-9)
    assert result.comm_exposed + result.comm_hidden == pytest.approx(result.comm)


def test_compare_lists_the_presets_for_a_transformer(tmp_path: Path, capsys):
    import yaml
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    assert main(["compare", str(path), "--json", str(tmp_path / "rows.json")]) == 0
    out = capsys.readouterr().out
    for name in ("ddp", "zero1", "fsdp", "megatron", "1f1b", "zb-h1"):
        assert f"│ {name} " in out
    rows = json.loads((tmp_path / "rows.json").read_text())
    assert [r["name"] for r in rows][:4] == ["ddp", "zero1", "fsdp", "megatron"]
    assert min(r["step_vs_best"] for r in rows if r["valid"]) == 1.0
    assert "megatron-moe: megatron-moe needs a mixture-of-experts model" in out


def test_a_bad_layout_is_one_line(tmp_path: Path, capsys):
    import yaml
    doc = copy.deepcopy(TINY)
    doc["parallel"] = {"tp": 2, "dp": 2}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(doc))
    assert main(["compare", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "parallel.dp" in err


def test_priced_tp_gives_the_replayed_tp_step_when_nothing_else_shares_its_links(monkeypatch):
    """The scale reduction (one TP rank standing for its group, TP collectives priced into its
    task times) is exact when the TP links carry nothing else: same step, same comm."""
    import planner.layouts.build as build
    scenario = _scenario(tp=2, pp=1, sequence_parallel=True, global_batch_size=4)
    replayed = simulate_layout(scenario, scenario.parallel)
    monkeypatch.setattr(build, "TP_REPLAY_TRANSFERS", 0)
    priced = simulate_layout(scenario, scenario.parallel)
    assert "TP priced" in priced.simulated and "TP priced" not in replayed.simulated
    assert priced.step == pytest.approx(replayed.step, rel=1e-9)
    assert priced.comm_exposed == pytest.approx(replayed.comm_exposed, rel=1e-9)


def test_a_reduced_replica_joins_its_dp_collectives_from_the_other_replicas(monkeypatch):
    """Above FULL_REPLAY_DEVICES one replica is replayed; the other joins only its gradient
    all-reduces, which still run on the real links: the step matches the full replay."""
    import planner.layouts.build as build
    scenario = _scenario({"hidden": 2048, "heads": 16, "ffn": 8192}, dp=2, global_batch_size=4)
    full = simulate_layout(scenario, scenario.parallel)
    monkeypatch.setattr(build, "FULL_REPLAY_DEVICES", 1)
    reduced = simulate_layout(scenario, scenario.parallel)
    assert reduced.simulated == "1/2 +1 in coll." and full.simulated == "2/2"
    assert reduced.step == pytest.approx(full.step, rel=1e-9)


def test_context_parallel_halves_the_work_and_rings_the_keys_and_values():
    """CP 2: each rank runs half of a layer's F, then all-gathers K and V over the CP group:
    2 (K, V) x s x h x 2 bytes gathered, on a ring of 2 one step of half of it: α + (S/2)/B."""
    scenario = _scenario(cp=2, global_batch_size=2)
    run = build_layout_run(scenario, scenario.parallel)
    timeline = replay(run.problem, run.schedule)
    assert timeline.ok
    done = _executed(timeline, "gpu1")
    index = next(i for i, e in enumerate(done) if e.entry.tasks and e.entry.first == Task("L1@0.0.1", 0, "F"))
    graph_flops = sum(op.flops["F"] for op in scenario.problem.graph.operators if op.group == "layer1")
    assert done[index].end - done[index].start == pytest.approx(graph_flops / 2 / scenario.problem.cluster.devices[0].effective_flops)
    ring = done[index + 1]
    size = 2 * 128 * 256 * 2
    assert ring.entry.collective.collective.op == "all_gather" and ring.entry.collective.collective.bytes == size
    route = scenario.problem.cluster.route("gpu1", "gpu0")
    assert ring.end - ring.start == pytest.approx(route.latency + size / 2 / route.bandwidth, rel=1e-9)


def test_a_layout_too_large_to_replay_is_refused_in_one_line():
    from simulator.errors import InputError
    scenario = _scenario(dp=2, global_batch_size=4_000_000)
    with pytest.raises(InputError, match=r"tasks to replay \(at most 2,000,000\)") as exc:
        build_layout_run(scenario, scenario.parallel)
    assert exc.value.field == "parallel"


def test_expert_parallel_all_to_alls_move_the_dispatch_bytes_over_the_ep_group():
    """EP 2 within DP 2 (MoE, 4 experts, top-2): each MoE layer's F runs a dispatch and a
    combine all-to-all over the EP group, each rank sending tokens x top-k x hidden x 2 bytes
    (the graph's dispatch operator's share), half to each rank; B runs the two transposes."""
    doc = copy.deepcopy(TINY)
    doc["model"] = {"type": "moe", "layers": 2, "dense_layers": 1, "hidden": 256, "heads": 4, "ffn": 512, "experts": 4,
                    "shared_experts": 0, "top_k": 2, "expert_ffn": 256, "vocab": 1024, "seq_len": 128, "micro_batch_size": 1}
    doc["parallel"] = {"dp": 2, "ep": 2, "global_batch_size": 2}
    scenario = scenario_from_dict(doc, "moe.yaml")
    run = build_layout_run(scenario, scenario.parallel)
    timeline = replay(run.problem, run.schedule)
    assert timeline.ok
    calls = [c for c in run.schedule.collectives.values() if c.collective.op == "all_to_all"]
    assert sorted(c.name.split("@")[0] for c in calls) == ["ep.L1.B0.0", "ep.L1.B1.0", "ep.L1.F0.0", "ep.L1.F1.0"]
    assert {c.collective.bytes for c in calls} == {128 * 2 * 256 * 2}
    assert all(c.collective.group == ("gpu0", "gpu1") for c in calls)
    executed = [e for e in _executed(timeline, "gpu0") if e.entry.collective in calls]
    route = scenario.problem.cluster.route("gpu0", "gpu1")
    assert executed[0].end - executed[0].start == pytest.approx(route.latency + 128 * 2 * 256 * 2 / 2 / route.bandwidth)


def test_zero3_issues_the_next_gather_before_the_current_units_reduce_scatter():
    """FSDP's backward prefetch: the gather for B of L0 is issued when B of L1 starts, so on
    the comm stream it runs before L1's reduce-scatter (which waits for L1's W), not after."""
    scenario = _scenario({"hidden": 2048, "heads": 16, "ffn": 8192}, dp=2, zero=3, global_batch_size=4)
    run = build_layout_run(scenario, scenario.parallel)
    timeline = replay(run.problem, run.schedule)
    comm = [e for e in _executed(timeline, "gpu0") if e.entry.collective is not None]
    names = [e.entry.collective.name.split("@")[0] for e in comm]
    for mb in (0, 1):
        gather = names.index(f"ag.B.L0.{mb}")
        reduce = next(i for i, e in enumerate(comm) if e.entry.collective.collective.op == "reduce_scatter"
                      and Task("L1@0.0.0", mb, "W") in e.entry.collective.after)
        assert gather < reduce and comm[gather].start < comm[reduce].start


def test_simulate_replays_the_scenarios_own_layout_when_no_schedule_is_given(tmp_path: Path, capsys):
    import yaml
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({**TINY, "parallel": {"dp": 2, "zero": 3}}))
    assert main(["simulate", str(path), "--json", str(tmp_path / "report.json")]) == 0
    out = capsys.readouterr().out
    expected = simulate_layout(_scenario(dp=2, zero=3), _scenario(dp=2, zero=3).parallel, "scenario")
    assert "│ scenario │ dp2 zero3 │" in out
    assert f"{expected.step * 1e3:.1f}" in out
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["makespan"] <= expected.step


def test_plan_sends_an_inference_workload_to_the_pipeline_planner_not_the_layout_search(tmp_path: Path, capsys):
    import yaml
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({**TINY, "workload": {"mode": "inference", "micro_batches": 2}}))
    assert main(["plan", str(path), "--space", "hybrid"]) == 2
    assert "workload.mode: the hybrid search plans training steps" in capsys.readouterr().err
    assert main(["plan", str(path), "--time-limit", "5"]) == 0
    assert "plan: makespan" in capsys.readouterr().out
