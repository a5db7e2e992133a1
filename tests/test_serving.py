"""Serving: the analytic step formulas, exact timelines of tiny engines, KV admission, and
LLaMA-2-70B fitting on 8 x H100 (weights only) but refused on one."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from opplan.cli import main
from planner.serving import engine_arguments, plan_serving
from simulator.collectives import Collective, collective_time
from simulator.errors import InputError
from simulator.model_shapes import model_shape
from simulator.models import build_model
from simulator.problem import Problem, Task, Workload
from simulator.profiles import build_cluster
from simulator.scenario import scenario_from_dict
from simulator.serving.hbm import HBM_EFFICIENCY
from simulator.serving.kv import kv_shape
from simulator.serving.run import serving_setup, simulate_serving
from simulator.serving.step import step_model
from simulator.serving.workload import BatchPolicy, Request, ServingOptions, ServingWorkload
from simulator.yamlio import Section

LLAMA70B = {"type": "transformer", "preset": "llama-70b", "seq_len": 4096}
H100_BW = 3.35e12


def _section(model: dict) -> Section:
    return Section(dict(model), "m.yaml", "model")


def _cluster(nodes: int = 1, devices: int | None = None):
    spec = {"profile": "h100-sxm", "nodes": nodes} if devices is None else {"profile": "h100-sxm", "gpus_per_node": devices}
    return build_cluster(Section(spec, "c.yaml", "cluster"))


def _step(model: dict, cluster, tp: int, pp: int = 1, **options):
    m = _section(model)
    return step_model(m, model_shape(model["type"], m), kv_shape(m), cluster, cluster.device_names[: tp * pp], tp=tp, pp=pp,
                      options=ServingOptions(**options), max_tokens=8192)


# -- KV bytes per token -------------------------------------------------------------------------
def test_kv_bytes_per_token_is_2_layers_kv_heads_head_dim_bytes():
    kv = kv_shape(_section(LLAMA70B))
    assert kv.bytes_per_token(2) == 2 * 80 * 8 * 128 * 2 == 327_680  # GQA: 8 KV heads, not 64
    assert kv.bytes_per_token(2, tp=8) == 2 * 80 * 1 * 128 * 2
    assert kv.bytes_per_token(1, layers=40, tp=4) == 2 * 40 * 2 * 128 * 1  # fp8 KV, one of two stages


def test_mla_caches_the_compressed_latent_not_heads():
    """DeepSeek-V2/V3 MLA: (kv_lora_rank + qk_rope_dim) per token per layer, replicated across TP."""
    kv = kv_shape(_section({"type": "moe", "preset": "deepseek-v3", "layers": 4, "experts": 16, "dense_layers": 1}))
    assert kv.kind == "mla"
    assert kv.bytes_per_token(2, tp=8) == kv.bytes_per_token(2) == 4 * (512 + 64) * 2


# -- step times ---------------------------------------------------------------------------------
def test_single_sequence_decode_is_weights_plus_kv_over_hbm_plus_tp_all_reduces():
    cluster = _cluster()
    step = _step(LLAMA70B, cluster, tp=8)
    stage, context = step.stages[0], 1000
    weights = 2 * model_shape("transformer", _section(LLAMA70B)).params / 8  # bf16, split 8 ways (norms replicated: tiny)
    assert stage.weight_bytes == pytest.approx(weights, rel=1e-3)
    memory = (stage.weight_bytes + context * 327_680 / 8) / (H100_BW * HBM_EFFICIENCY)
    all_reduce = collective_time(Collective("all_reduce", cluster.device_names, 8192 * 2), cluster)
    assert step.stage_time(0, (), 1, context) == pytest.approx(memory + 2 * 80 * all_reduce, rel=1e-12)
    assert 6e-3 < step.stage_time(0, (), 1, context) < 7e-3  # 17.2 GB / 2.68 TB/s = 6.4 ms + 160 small all-reduces


def test_prefill_is_the_training_forward_of_that_many_tokens():
    cluster, n = _cluster(), 2048
    step = _step(LLAMA70B, cluster, tp=8)
    problem = Problem(build_model(_section({**LLAMA70B, "seq_len": n}), Path(".")), cluster, Workload(1, "training"))
    forward = sum(problem.duration(Task(op.name, 0, "F"), cluster.devices[0]) for op in problem.graph.operators)
    all_reduce = collective_time(Collective("all_reduce", cluster.device_names, n * 8192 * 2), cluster)
    assert step.stage_time(0, ((0, n),), 0, 0) == pytest.approx(forward / 8 + 2 * 80 * all_reduce, rel=1e-12)


def test_pipeline_stages_split_layers_and_send_activations():
    cluster = _cluster()
    step = _step(LLAMA70B, cluster, tp=4, pp=2)
    assert [s.layers for s in step.stages] == [40, 40]
    assert step.stages[0].parts[0] == "embed" and step.stages[1].parts[-1] == "head"
    send = collective_time(Collective("send_recv", (step.stages[0].devices[0], step.stages[1].devices[0]), 8192 * 2), cluster)
    assert step.stage_time(0, (), 1, 0) - step.stage_time(1, (), 1, 0) == pytest.approx(
        send + (step.stages[0].weight_bytes - step.stages[1].weight_bytes) / step.hbm, rel=1e-9)


def test_fp8_weights_halve_the_bytes_read():
    cluster = _cluster()
    assert _step(LLAMA70B, cluster, tp=8, weight_bytes=1).stages[0].weight_bytes * 2 == pytest.approx(
        _step(LLAMA70B, cluster, tp=8).stages[0].weight_bytes)


# -- fits on 8 x H100, refused on one ------------------------------------------------------------
def _scenario(devices: int, **workload) -> dict:
    return {"name": "s", "model": dict(LLAMA70B), "cluster": {"profile": "h100-sxm", "gpus_per_node": devices},
            "workload": {"mode": "inference", "requests": {"count": 4, "seed": 1, "prompt": 128, "output": 8}, **workload}}


def test_inference_holds_weights_only_and_llama70b_fits_8xh100():
    scenario = scenario_from_dict({**_scenario(8), "parallel": {"tp": 8}}, "s.yaml")
    op = scenario.problem.graph.by_name["L0.attn"]
    assert op.static_bytes == 2 * op.params  # not 16 bytes per parameter
    report = simulate_serving(serving_setup(_section(LLAMA70B), scenario.problem.cluster, scenario.serving), tp=8)
    assert report.completed == 4 and report.rejected == 0


def test_llama70b_refused_on_one_h100_in_one_line(tmp_path, capsys):
    path = tmp_path / "one.yaml"
    path.write_text(yaml.safe_dump(_scenario(1)))
    assert main(["serve", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "weights 138.0 GB per device at tp 1 x pp 1" in err and "needs more devices" in err


# -- the timeline -------------------------------------------------------------------------------
def _setup(requests, *, devices: int = 8, **options):
    cluster = _cluster(devices=devices)
    return serving_setup(_section(LLAMA70B), cluster, ServingWorkload(tuple(requests), BatchPolicy(), ServingOptions(**options)))


def test_one_request_exact_timeline():
    """Prefill step gives the first token; each decode step one more, attending to the growing context."""
    setup = _setup([Request(0, 0.5, 100, 3)])
    step = _step(LLAMA70B, setup.cluster, tp=8)
    report = simulate_serving(setup, tp=8)
    prefill, d1, d2 = step.stage_time(0, ((0, 100),), 0, 0), step.stage_time(0, (), 1, 101), step.stage_time(0, (), 1, 102)
    assert report.ttft_ms[50] == pytest.approx(prefill * 1e3, rel=1e-12)
    assert report.tpot_ms[50] == pytest.approx((d1 + d2) / 2 * 1e3, rel=1e-12)
    assert report.makespan_s == pytest.approx(prefill + d1 + d2, rel=1e-12) and report.steps == 3


def test_continuous_admits_mid_flight_static_waits_for_the_batch():
    requests = [Request(0, 0.0, 64, 50), Request(1, 0.01, 64, 2)]
    continuous = simulate_serving(_setup(requests), tp=8)
    static = simulate_serving(_setup(requests), tp=8, policy=BatchPolicy("static", 256, 8192))
    assert continuous.ttft_ms[99] < 100 < static.ttft_ms[99]  # the second waits ~50 decode steps under static batching


def test_kv_admission_queues_and_rejects():
    long = Request(0, 0.0, 3000, 1000)  # 4000 tokens: fits the context
    too_long = Request(1, 0.0, 4000, 200)  # beyond the 4096 context: rejected
    stage = _step(LLAMA70B, _cluster(), tp=8).stages[0]
    room_for_6000 = (stage.weight_bytes + stage.activation_reserve + 6000 * stage.kv_bytes_per_token) / 80e9
    setup = _setup([long, too_long, Request(2, 0.0, 3000, 1000)], gpu_memory_utilization=room_for_6000)
    report = simulate_serving(setup, tp=8)
    assert report.kv_capacity_tokens == 6000
    assert report.rejected == 1 and "context 4096" in report.first_rejection
    assert report.queued_for_memory == 1 and report.completed == 2
    assert report.kv_peak <= 1.0


def test_disaggregated_prefill_ships_kv_to_decode():
    requests = [Request(i, 0.01 * i, 256, 16) for i in range(6)]
    setup = _setup(requests)
    from dataclasses import replace

    from simulator.serving.workload import Disaggregation
    split = replace(setup, workload=replace(setup.workload, disaggregation=Disaggregation(4, 4, 4)))
    report = simulate_serving(split, tp=4)
    assert report.completed == 6 and report.tpot_ms[50] > 0


# -- planning -----------------------------------------------------------------------------------
def test_planner_enumerates_and_respects_the_slo():
    setup = _setup([Request(i, 0.05 * i, 200, 20) for i in range(8)])
    plan = plan_serving(setup, "latency", {"tpot_p99_ms": 10}, max_num_seqs=(8,), max_tokens=(4096,))
    assert {(e.candidate.tp, e.candidate.pp) for e in plan.evaluated} >= {(8, 1), (4, 2), (4, 1)}
    assert plan.best is not None and plan.best.report.tpot_ms[99] <= 10
    assert plan.best.candidate.tp == 8  # the widest TP reads the fewest bytes per GPU per token
    vllm, trt = engine_arguments(plan.best.candidate, 8)
    assert "--tensor-parallel-size 8 --pipeline-parallel-size 1 --max-num-seqs 8" in vllm and "--tp_size 8" in trt


def test_the_grid_is_replayed_widest_tp_first_and_a_deadline_stops_it_and_says_so():
    import time

    from planner.serving import candidates

    setup = _setup([Request(i, 0.05 * i, 200, 20) for i in range(8)])
    grid = candidates(setup, max_num_seqs=(8, 16), max_tokens=(4096,))
    assert [(c.tp, c.pp) for c in grid[:4]] == [(8, 1), (8, 1), (4, 1), (4, 1)]  # fewest stages, widest TP first
    past = plan_serving(setup, "throughput", max_num_seqs=(8, 16), max_tokens=(4096,), deadline=time.monotonic())
    assert past.evaluated == () and past.grid == len(grid) and not past.complete and past.best is None
    began = time.monotonic()
    first = plan_serving(setup, "throughput", max_num_seqs=(8, 16), max_tokens=(4096,), deadline=began + 0.005)
    assert time.monotonic() - began < 0.5  # the running candidate is cut short, the rest never start
    assert len(first.evaluated) < len(grid) and [e.candidate for e in first.evaluated] == grid[:len(first.evaluated)]
    full = plan_serving(setup, "throughput", max_num_seqs=(8, 16), max_tokens=(4096,), deadline=time.monotonic() + 600)
    assert full.complete and len(full.evaluated) == len(grid)


def test_trace_file_errors_are_one_line(tmp_path):
    (tmp_path / "t.csv").write_text("arrival_s,prompt,output\n0.0,100,10\n0.5,abc,3\n")
    doc = _scenario(8)
    doc["workload"]["requests"] = {"trace": "t.csv"}
    with pytest.raises(InputError, match=r"t.csv: row 2: arrival_s must be a number"):
        scenario_from_dict(doc, tmp_path / "s.yaml")


def test_a_sweep_point_of_a_serving_scenario_reports_serving_metrics():
    from opplan.sweeps.point import PointJob, run_point

    doc = {**_scenario(8), "parallel": {"tp": 8}}
    row = run_point(PointJob("k", (("workload.batching.max_num_seqs", 2),), doc, "s.yaml", "."))
    assert row["status"] == "ok", row["error"]
    assert row["completed"] == 4 and row["output_tokens_per_s"] > 0 and row["ttft_p99_ms"] > 0


def test_serve_command_compares_layouts_plans_and_writes_json(tmp_path, capsys):
    import json

    path, out = tmp_path / "s.yaml", tmp_path / "out.json"
    doc = _scenario(8)
    doc["objective"] = {"serving": "latency", "slo": {"ttft_p99_ms": 500}}
    path.write_text(yaml.safe_dump(doc))
    picture = tmp_path / "kv.png"
    assert main(["serve", str(path), "--layout", "8x1", "--layout", "4x2", "--plan", "--json", str(out), "--kv-plot", str(picture)]) == 0
    assert picture.read_bytes()[:4] == b"\x89PNG"
    text = capsys.readouterr().out
    assert "enumerated" in text and "starting point" in text and "--tensor-parallel-size" in text
    results = json.loads(out.read_text())
    assert [(r["tp"], r["pp"]) for r in results["layouts"]] == [(8, 1), (4, 2)]
    assert results["layouts"][0]["ttft_ms"]["p99"] > 0 and results["layouts"][0]["kv_timeline"]
    assert results["plan"]["objective"] == "latency" and results["plan"]["enumerated"] >= 8


def test_opplan_plan_on_a_serving_scenario_is_the_serving_planner(tmp_path, capsys):
    import json

    path, out = tmp_path / "s.yaml", tmp_path / "plan.json"
    doc = _scenario(8)
    doc["objective"] = {"serving": "throughput"}
    path.write_text(yaml.safe_dump(doc))
    assert main(["plan", str(path), "--json", str(out)]) == 0
    assert "starting point (enumerated, not measured on hardware)" in capsys.readouterr().out
    plan = json.loads(out.read_text())["plan"]
    assert plan["objective"] == "throughput" and plan["enumerated"] >= 8
    assert main(["plan", str(path), "--trace", str(tmp_path / "t.json")]) == 2
    assert "--trace applies to training plans" in capsys.readouterr().err


@pytest.mark.parametrize("layout, message", [("8", "expected TPxPP"), ("3x1", "tp x pp = 3 does not divide the 8 devices"),
                                             ("4x1", None)])
def test_serve_layout_errors_are_one_line(tmp_path, capsys, layout, message):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(_scenario(8)))
    code = main(["serve", str(path), "--layout", layout])
    err = capsys.readouterr().err.strip()
    if message is None:
        assert code == 0 and err == ""  # 4 devices per engine: two replicas
    else:
        assert code == 2 and len(err.splitlines()) == 1 and message in err


def test_moe_decode_reads_only_the_experts_its_tokens_activate():
    """One token reads top_k of E routed experts; many tokens read 1 - (1 - k/E)^t of them."""
    model = {"type": "moe", "preset": "deepseek-v3", "layers": 4, "experts": 64, "dense_layers": 1, "seq_len": 4096}
    step = _step(model, _cluster(), tp=8)
    stage = step.stages[0]
    dense = stage.weight_bytes - stage.expert_bytes
    assert step.top_k == 8 and stage.expert_bytes > 0
    assert step.memory(stage, 0, 1) * step.hbm == pytest.approx(dense + stage.expert_bytes * 8 / 64, rel=1e-12)
    assert step.memory(stage, 0, 4) * step.hbm == pytest.approx(dense + stage.expert_bytes * (1 - (56 / 64) ** 4), rel=1e-12)
    setup = serving_setup(_section(model), _cluster(), ServingWorkload((Request(0, 0.0, 64, 4), Request(1, 0.0, 32, 4))))
    assert simulate_serving(setup, tp=8).completed == 2


_requests = st.lists(st.tuples(st.floats(0, 2), st.integers(1, 2500), st.integers(1, 400)), min_size=1, max_size=12)


@settings(max_examples=15, deadline=None)
@given(_requests, st.sampled_from(["continuous", "static"]), st.integers(1, 8), st.sampled_from([(8, 1), (4, 2), (2, 4)]))
def test_property_every_request_is_served_or_rejected_and_kv_stays_within_capacity(rows, policy, max_seqs, layout):
    """Invariants of the timeline: each request either completes (first token after its arrival and
    at least one step, finish after the first token) or is rejected with a reason; reserved KV never
    exceeds the pool and returns to zero."""
    requests = [Request(i, a, p, o) for i, (a, p, o) in enumerate(rows)]
    report = simulate_serving(_setup(requests, gpu_memory_utilization=0.5), tp=layout[0], pp=layout[1],
                              policy=BatchPolicy(policy, max_seqs, 4096))
    too_long = sum(1 for r in requests if r.prompt + r.output > 4096 or r.prompt > 4096)
    assert report.rejected == too_long and report.completed + report.rejected == len(requests)
    assert all(0.0 <= v <= 1.0 for _, v in report.kv_timeline) and report.kv_timeline[-1][1] == 0.0
    if report.completed:
        assert report.ttft_ms[50] > 0 and report.makespan_s > 0


def test_chunked_prefill_cuts_a_long_prompt_and_costs_what_it_costs_whole():
    """A 3000-token prompt under a 1024-token budget: three chunks (1024, 1024, 952); their forward
    sums to the whole prompt's; each later chunk reads the KV of the chunks before it."""
    setup = _setup([Request(0, 0.0, 3000, 2)])
    step = _step(LLAMA70B, setup.cluster, tp=8)
    stage = step.stages[0]
    chunks = ((0, 1024), (1024, 1024), (2048, 952))
    assert sum(step.chunk(stage, o, n) for o, n in chunks) == pytest.approx(step.chunk(stage, 0, 3000), rel=1e-12)
    report = simulate_serving(setup, tp=8, policy=BatchPolicy("continuous", 8, 1024, chunked_prefill=True))
    expected = sum(step.stage_time(0, (c,), 0, 0) for c in chunks)
    assert report.steps == 4 and report.ttft_ms[50] == pytest.approx(expected * 1e3, rel=1e-12)
    unchunked = simulate_serving(setup, tp=8, policy=BatchPolicy("continuous", 8, 1024))
    assert unchunked.rejected == 1 and "max_num_batched_tokens 1024" in unchunked.first_rejection


def test_fp8_weights_fit_llama70b_on_one_h100_where_bf16_does_not(tmp_path, capsys):
    """69 GB of fp8 weights leave ~2.5 GB for KV in 72 GB (80 x 0.9); bf16 (138 GB) is refused."""
    doc = {**_scenario(1), "parallel": {"tp": 1}}
    doc["workload"]["serving"] = {"weights": "fp8"}
    fp8 = scenario_from_dict(doc, "s.yaml")
    report = simulate_serving(serving_setup(_section(LLAMA70B), fp8.problem.cluster, fp8.serving), tp=1)
    assert report.completed == 4 and report.kv_capacity_tokens < 10_000
    doc["workload"]["serving"] = {"weights": "bf16"}
    path = tmp_path / "bf16.yaml"
    path.write_text(yaml.safe_dump(doc))
    assert main(["serve", str(path)]) == 2 and "weights 138.0 GB per device at tp 1" in capsys.readouterr().err
