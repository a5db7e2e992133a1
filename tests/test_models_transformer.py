"""The dense transformer builder: published parameter counts, 6N FLOPs, memory formulas, errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from simulator.costs import STATIC_BYTES_PER_PARAM
from simulator.errors import InputError
from simulator.graph import OperatorGraph
from simulator.models.transformer import config_from_section, transformer_graph
from simulator.problem import Task
from simulator.scenario import load_scenario, scenario_from_dict
from simulator.yamlio import Section

SCENARIOS = Path(__file__).resolve().parent.parent / "scenarios"

#: Published parameter counts (LLaMA paper / Llama 2 model card: 6.74e9, 13.0e9, 68.98e9).
PUBLISHED = {"llama-7b": 6.74e9, "llama-13b": 13.0e9, "llama-70b": 68.98e9}


def build(**fields) -> OperatorGraph:
    section = Section({"type": "transformer", **fields}, path="model")
    return transformer_graph(config_from_section(section), "test", section)


def scenario(model: dict, cluster: dict | None = None, tmp: Path = Path("/tmp/x.yaml")):
    return scenario_from_dict(
        {"model": {"type": "transformer", **model}, "cluster": cluster or {"devices": 1}, "workload": {"micro_batches": 1}}, tmp
    )


@pytest.mark.parametrize("preset", sorted(PUBLISHED))
def test_preset_parameter_counts_match_the_published_ones_within_1_percent(preset):
    graph = build(preset=preset)
    assert graph.total("params") == pytest.approx(PUBLISHED[preset], rel=0.01)


@pytest.mark.parametrize("preset", sorted(PUBLISHED))
def test_graph_parameters_equal_the_closed_form_count(preset):
    section = Section({"preset": preset})
    assert build(preset=preset).total("params") == config_from_section(section).params


@pytest.mark.parametrize("preset", sorted(PUBLISHED))
def test_training_flops_per_token_are_6n_within_2_percent_at_seq_len_256(preset):
    # At s = 256 attention scores are a small correction and 6N (N = all parameters) holds.
    graph = build(preset=preset, seq_len=256, micro_batch_size=1)
    per_token = sum(sum(op.flops.values()) for op in graph.operators) / 256
    assert per_token == pytest.approx(6 * graph.total("params"), rel=0.02)


def test_the_graph_is_a_chain_embed_layers_head_with_residual_stream_edges():
    graph = build(layers=2, hidden=64, heads=4, ffn=128, vocab=100, seq_len=8, micro_batch_size=2)
    assert graph.topological_order == ("embed", "L0.attn", "L0.mlp", "L1.attn", "L1.mlp", "head")
    assert {e.bytes for e in graph.edges} == {2 * 8 * 64 * 2}  # b s h bytes of bf16
    assert [graph.by_name[n].group for n in graph.topological_order] == ["embed", "layer0", "layer0", "layer1", "layer1", "head"]


def test_linear_layers_cost_the_same_in_f_b_and_w_and_attention_core_has_no_w():
    graph = build(layers=1, hidden=64, heads=4, ffn=128, vocab=100, seq_len=16, flash_attention=False)
    mlp, attn = graph.by_name["L0.mlp"], graph.by_name["L0.attn"]
    assert mlp.flops["F"] == mlp.flops["B"] == mlp.flops["W"] == 2 * 16 * 3 * 64 * 128
    core = 4 * 1 * 16**2 * 64  # 4 b s^2 h: scores and weighted sum
    assert attn.flops["F"] - attn.flops["W"] == core
    assert attn.flops["B"] - attn.flops["W"] == 2 * core


def test_static_memory_is_16_bytes_per_parameter():
    graph = build(preset="llama-7b")
    assert STATIC_BYTES_PER_PARAM == 16
    assert all(op.static_bytes == 16 * op.params for op in graph.operators)


def test_activations_are_what_autograd_keeps_and_w_keeps_inputs_and_output_gradients():
    s, b, h, f, a = 128, 2, 64, 160, 4
    graph = build(layers=1, hidden=h, heads=a, ffn=f, vocab=100, seq_len=s, micro_batch_size=b)
    sbh, sbf, rows = s * b * h, s * b * f, s * b * 4  # bytes of bf16 tensors; an fp32 per token
    attn, mlp = graph.by_name["L0.attn"], graph.by_name["L0.mlp"]
    # fused norm: x + rstd; QKV input; the whole QKV output (v is a view of it); rotated q, k;
    # the core's output (= output projection's input); fp32 log-sum-exp per row and head
    assert attn.activation_bytes == 2 * sbh + rows + 2 * sbh + 6 * sbh + 4 * sbh + 2 * sbh + 4 * b * a * s
    # W: inputs X (QKV in, out-proj in) and output gradients dY (QKV out, out-proj out)
    assert attn.w_retained_bytes == (2 + 2) * sbh + (6 + 2) * sbh
    # norm x + rstd; gate/up input; gate, silu(gate), up; the product (down's input)
    assert mlp.activation_bytes == 2 * sbh + rows + 2 * sbh + 3 * 2 * sbf + 2 * sbf
    assert mlp.w_retained_bytes == (2 * sbh + 2 * sbf) + (4 * sbf + 2 * sbh)


def test_the_math_attention_path_keeps_the_softmax_probabilities():
    kw = dict(layers=1, hidden=64, heads=4, ffn=128, vocab=100, seq_len=32, micro_batch_size=1)
    flash, plain = build(**kw).by_name["L0.attn"], build(**kw, attention_kernel="math").by_name["L0.attn"]
    assert plain.activation_bytes - flash.activation_bytes == 2 * 4 * 32 * 32
    assert build(**kw, flash_attention=False).by_name["L0.attn"] == plain


def test_recompute_keeps_only_layer_inputs_and_reruns_the_forward_in_b():
    kw = dict(layers=2, hidden=64, heads=4, ffn=128, vocab=100, seq_len=16, micro_batch_size=1)
    plain, recomputed = build(**kw), build(**kw, recompute=True)
    for name in ("L0.attn", "L1.mlp"):
        p, r = plain.by_name[name], recomputed.by_name[name]
        assert r.activation_bytes == r.w_retained_bytes == 16 * 64 * 2
        assert r.flops["B"] == p.flops["B"] + p.flops["F"]
        assert (r.flops["F"], r.flops["W"]) == (p.flops["F"], p.flops["W"])
        assert r.workspace_bytes == p.activation_bytes
    assert recomputed.by_name["head"] == plain.by_name["head"]


def test_grouped_query_attention_shrinks_the_key_value_projections():
    graph = build(preset="llama-70b")
    h, kv_width = 8192, 8 * 128
    assert graph.by_name["L0.attn"].params == 2 * h * h + 2 * h * kv_width + h


def test_durations_are_a_roofline_gemms_at_the_gemm_rate_and_the_rest_at_hbm_bandwidth(tmp_path):
    h100 = scenario({"preset": "llama-7b"}, {"profile": "h100-sxm"}, tmp_path / "a.yaml").problem
    device = h100.cluster.devices[0]
    mlp = h100.graph.by_name["L0.mlp"]
    gemm = 2 * 4096 * 3 * 4096 * 11008  # gate, up, down
    hbm = mlp.work["F"]["hbm"]
    # norm (2 passes of T h), silu (2) and product (3) of T ffn, residual (3), bf16
    assert hbm == 2 * 4096 * (2 * 4096 + 5 * 11008 + 3 * 4096)
    expected = gemm / (989.4e12 * 0.74) + hbm / (3350e9 * 0.75) + mlp.work["F"]["launch"] * 10e-6
    assert h100.duration(Task("L0.mlp", 0, "F"), device) == pytest.approx(expected)
    assert h100.duration(Task("L0.mlp", 0, "W"), device) > gemm / (989.4e12 * 0.70)


def test_a_hand_written_device_without_roofline_figures_prices_flops_only(tmp_path):
    cluster = {"devices": 1, "device": {"peak_tflops": 100, "efficiency": 0.5}}
    problem = scenario({"preset": "llama-7b"}, cluster, tmp_path / "c.yaml").problem
    device, op = problem.cluster.devices[0], problem.graph.by_name["L0.mlp"]
    assert problem.duration(Task("L0.mlp", 0, "B"), device) == pytest.approx(op.work["B"]["gemm"] / 50e12)


def test_a_measured_table_overrides_the_flop_estimate_per_device_type(tmp_path):
    problem = scenario(
        {"preset": "llama-7b", "measured": {"L0.attn": {"H100-SXM5": {"F": 2.0, "B": 3.0}}}}, {"profile": "h100-sxm"}, tmp_path / "m.yaml"
    ).problem
    device = problem.cluster.devices[0]
    assert problem.duration(Task("L0.attn", 0, "F"), device) == pytest.approx(2e-3)
    assert problem.duration(Task("L0.attn", 0, "B"), device) == pytest.approx(3e-3)
    assert problem.duration(Task("L0.attn", 0, "W"), device) == device.work_time(problem.graph.by_name["L0.attn"].work["W"])


@pytest.mark.parametrize(
    ("model", "field", "words"),
    [
        ({"preset": "llama-7b", "heads": 30}, "model.heads", "must divide"),
        ({"preset": "llama-70b", "kv_heads": 7}, "model.kv_heads", "must divide"),
        ({"preset": "llama-7b", "layers": 0}, "model.layers", "at least 1"),
        ({"preset": "llama-7b", "hidden": -4096}, "model.hidden", "at least 1"),
        ({"preset": "llama-8b"}, "model.preset", "unknown value"),
        ({"preset": "llama-7b", "precision": "fp8"}, "model.precision", "unknown value"),
        ({"preset": "llama-7b", "hiden": 4096}, "model.hiden", "unknown field"),
        ({"layers": 2, "hidden": 64, "heads": 4}, "model.ffn", "required field is missing"),
        ({"preset": "llama-7b", "measured": {"L99.attn": {"*": {"F": 1}}}}, "model.measured.L99.attn", "no operator"),
    ],
)
def test_bad_configs_fail_with_one_input_error_naming_the_field(tmp_path, model, field, words):
    with pytest.raises(InputError) as info:
        scenario(model, tmp=tmp_path / "bad.yaml")
    assert info.value.field == field
    assert info.value.file == str(tmp_path / "bad.yaml")
    assert words in info.value.message


def test_the_bundled_llama_scenario_is_plannable_size():
    loaded = load_scenario(SCENARIOS / "llama7b-8xh100.yaml")
    assert len(loaded.problem.graph) <= 200 and loaded.problem.workload.micro_batches <= 8
    assert len(loaded.problem.cluster.devices) == 8
    assert loaded.problem.graph.total("params") == pytest.approx(6.74e9, rel=0.01)
