"""The MoE builder: DeepSeek-V3 counts, router -> experts -> combine branches, all-to-all operators."""

from __future__ import annotations

from pathlib import Path

import networkx as nx
import pytest

from simulator.coarsen import coarsen
from simulator.errors import InputError
from simulator.graph import OperatorGraph
from simulator.models.moe import config_from_section, moe_graph
from simulator.problem import Task
from simulator.scenario import load_scenario, scenario_from_dict
from simulator.yamlio import Section

SCENARIOS = Path(__file__).resolve().parent.parent / "scenarios"


def build(**fields) -> OperatorGraph:
    section = Section({"type": "moe", **fields}, path="model")
    return moe_graph(config_from_section(section), "test", section)


@pytest.fixture(scope="module")
def deepseek_v3() -> OperatorGraph:
    return build(preset="deepseek-v3", seq_len=256)


def test_deepseek_v3_has_671e9_parameters_and_37e9_activated(deepseek_v3):
    total, activated = config_from_section(Section({"preset": "deepseek-v3"})).counts()
    assert total == pytest.approx(671e9, rel=0.01)  # DeepSeek-V3 report: 671B total
    assert activated == pytest.approx(37e9, rel=0.03)  # ... 37B activated per token
    assert deepseek_v3.total("params") == total


def test_deepseek_v3_training_flops_per_token_are_6_times_activated_parameters(deepseek_v3):
    _, activated = config_from_section(Section({"preset": "deepseek-v3"})).counts()
    per_token = sum(sum(op.flops.values()) for op in deepseek_v3.operators) / 256
    assert per_token == pytest.approx(6 * activated, rel=0.02)


def test_default_is_a_reduced_config_small_enough_to_plan():
    graph = build()
    assert len(graph) == 67  # embed, dense layer (2), 3 x (attn, router, dispatch, 16 experts, shared, combine), head
    assert graph.total("params") == config_from_section(Section({})).counts()[0]


def test_a_moe_layer_branches_router_to_experts_to_combine_with_a_shared_expert_beside():
    graph = build(layers=2, dense_layers=1, experts=4, top_k=2)
    succ = {op: {e.dst for e in graph.successors[op]} for op in graph.by_name}
    assert succ["L0.mlp"] == {"L1.attn"}  # the dense layer
    assert succ["L1.attn"] == {"L1.router"}
    assert succ["L1.router"] == {"L1.dispatch", "L1.shared"}
    assert succ["L1.dispatch"] == {f"L1.expert{j}" for j in range(4)}
    assert all(succ[f"L1.expert{j}"] == {"L1.combine"} for j in range(4))
    assert succ["L1.combine"] == succ["L1.shared"] == {"head"}


def test_dispatch_and_combine_are_all_to_all_communication_operators():
    graph = build(layers=2, dense_layers=1, experts=4, top_k=2, hidden=256, heads=4, seq_len=64, micro_batch_size=2)
    routed_copies_bytes = 2 * 64 * 2 * 256 * 2  # b s k h e
    for name in ("L1.dispatch", "L1.combine"):
        op = graph.by_name[name]
        assert (op.stream, op.comm_bytes, dict(op.flops), op.params) == ("comm", routed_copies_bytes, {"F": 0, "B": 0, "W": 0}, 0)
    # the all-to-all carries the traffic, so the expert edges carry none (no double charge)
    assert all(e.bytes == 0 for e in graph.edges if "expert" in e.src or "expert" in e.dst)


def test_routed_experts_share_top_k_of_the_tokens_evenly():
    graph = build(layers=2, dense_layers=1, experts=8, top_k=2, shared_experts=1)
    routed = sum(graph.by_name[f"L1.expert{j}"].flops["F"] for j in range(8))
    # one shared expert sees every token once; the routed ones together see each token top_k times
    assert routed == pytest.approx(2 * graph.by_name["L1.shared"].flops["F"])
    assert len({graph.by_name[f"L1.expert{j}"].flops["F"] for j in range(8)}) == 1


def test_without_shared_experts_the_residual_goes_from_router_to_the_next_layer():
    graph = build(layers=2, dense_layers=1, experts=4, top_k=1, shared_experts=0)
    assert "L1.shared" not in graph.by_name
    assert {e.src for e in graph.predecessors["head"]} == {"L1.combine", "L1.router"}


def test_ordinary_attention_replaces_mla_when_mla_is_null():
    mla, plain = build(), build(mla=None)
    assert mla.by_name["L0.attn"].params != plain.by_name["L0.attn"].params
    assert plain.by_name["L0.attn"].params == 4 * 2048**2 + 2048


def test_comm_operators_take_network_time_on_the_h800_cluster(tmp_path):
    loaded = scenario_from_dict(
        {"model": {"type": "moe"}, "cluster": {"profile": "h800-sxm", "nodes": 2}, "workload": {"micro_batches": 1}}, tmp_path / "m.yaml"
    )
    problem, device = loaded.problem, loaded.problem.cluster.devices[0]
    op = problem.graph.by_name["L1.dispatch"]
    expected = problem.cluster.collective_time(device.name, op.comm_bytes)
    assert expected > 0
    assert problem.duration(Task("L1.dispatch", 0, "F"), device) == expected
    assert problem.duration(Task("L1.dispatch", 0, "B"), device) == expected


def test_default_coarsening_keeps_collectives_in_groups_of_their_own():
    coarse = coarsen(build(layers=2, dense_layers=1, experts=4, top_k=2)).graph
    assert coarse.topological_order == ("embed", "layer0", "layer1", "layer1.dispatch", "layer1.experts", "layer1.combine", "head")
    assert coarse.by_name["layer1.dispatch"].stream == "comm" and coarse.by_name["layer1.experts"].stream == "compute"
    assert nx.is_directed_acyclic_graph(coarse.dag)


@pytest.mark.parametrize(
    ("model", "field", "words"),
    [
        ({"experts": 8, "top_k": 9}, "model.top_k", "cannot exceed"),
        ({"layers": 3, "dense_layers": 3}, "model.dense_layers", "no MoE layer"),
        ({"layers": 0}, "model.layers", "at least 1"),
        ({"expert_ffn": -1}, "model.expert_ffn", "at least 1"),
        ({"mla": None, "heads": 6}, "model.heads", "must divide"),
        ({"mla": {"kv_lora_rank": 0}}, "model.mla.kv_lora_rank", "at least 1"),
        ({"preset": "deepseek-v4"}, "model.preset", "unknown value"),
    ],
)
def test_bad_configs_fail_with_one_input_error_naming_the_field(tmp_path, model, field, words):
    with pytest.raises(InputError) as info:
        scenario_from_dict(
            {"model": {"type": "moe", **model}, "cluster": {"devices": 1}, "workload": {"micro_batches": 1}}, tmp_path / "b.yaml"
        )
    assert (info.value.field, info.value.file) == (field, str(tmp_path / "b.yaml"))
    assert words in info.value.message


def test_the_bundled_moe_scenario_runs_on_two_h800_nodes():
    loaded = load_scenario(SCENARIOS / "deepseek-moe-h800.yaml")
    assert len(loaded.problem.cluster.devices) == 16 and {d.node for d in loaded.problem.cluster.devices} == {0, 1}
    assert len(loaded.problem.graph) <= 200 and loaded.problem.workload.micro_batches <= 8
    assert sum(op.stream == "comm" for op in loaded.problem.graph.operators) == 6
