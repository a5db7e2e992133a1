"""Per-rank memory pinned to the published formulas.

- ZeRO (Rajbhandari et al. SC'20): model states ``(2 + 2 + K) Psi`` with K = 12 and the
  ``N_d`` divisions of stages 1, 2, 3; Figure 1's 7.5e9 parameters on 64 GPUs.
- Korthikanti et al. 2022, Table 2: activation bytes of a GPT layer with and without
  tensor / sequence parallelism and with selective / full recomputation, on GPT-3 175B's
  layer (s = 2048, b = 1, h = 12288, a = 96, t = 8), to the byte.
- Pipeline in-flight micro-batches: 1F1B (p on the first stage), Megatron's interleaved
  penalty ``1 + (p - 1) / (p v)``, zero-bubble's per-worker formulas.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from simulator.layout import Layout, RecomputeRange
from simulator.memory_model import (
    GRAD_BYTES,
    OPTIMIZER_BYTES,
    WEIGHT_BYTES,
    in_flight,
    korthikanti_layer,
    layer_activations,
    layout_memory,
    rank_memory,
    zero_model_states,
)
from simulator.model_shapes import model_shape
from simulator.shapes import gpt_layer, gpt_model
from simulator.yamlio import Section

# -- ZeRO -----------------------------------------------------------------------------------


def test_zero_paper_figure_1_7_5b_on_64_gpus():
    """Figure 1: 120 GB baseline, 31.4 GB (P_os), 16.6 GB (P_os+g), 1.9 GB (P_os+g+p)."""
    totals = [zero_model_states(7.5e9, 64, stage).total for stage in (0, 1, 2, 3)]
    assert totals == [120e9, 31.40625e9, 16.640625e9, 1.875e9]
    assert [round(t / 1e9, 1) for t in totals] == [120.0, 31.4, 16.6, 1.9]


@pytest.mark.parametrize(
    ("stage", "weights", "grads", "optimizer"),
    [
        (0, 2 * 8_000_000, 2 * 8_000_000, 12 * 8_000_000),
        (1, 2 * 8_000_000, 2 * 8_000_000, 12 * 8_000_000 // 8),
        (2, 2 * 8_000_000, 2 * 8_000_000 // 8, 12 * 8_000_000 // 8),
        (3, 2 * 8_000_000 // 8, 2 * 8_000_000 // 8, 12 * 8_000_000 // 8),
    ],
)
def test_zero_stages_partition_over_n_d(stage, weights, grads, optimizer):
    states = zero_model_states(8_000_000, 8, stage)
    assert (states.weights, states.grads, states.optimizer) == (weights, grads, optimizer)
    assert (WEIGHT_BYTES, GRAD_BYTES, OPTIMIZER_BYTES) == (2, 2, 12)


# -- Korthikanti et al. 2022, GPT-3 175B layer ------------------------------------------------
S, B, H, A, T = 2048, 1, 12288, 96, 8
TABLE_2 = [
    # (t, sequence parallel, recompute, bytes per layer)
    (1, False, "none", 2_868_903_936),  # sbh (34 + 5as/h)
    (T, False, "none", 578_813_952),  # sbh (10 + 24/t + 5as/(ht))
    (T, True, "none", 358_612_992),  # sbh (34 + 5as/h) / t
    (T, False, "selective", 327_155_712),  # sbh (10 + 24/t)
    (T, True, "selective", 106_954_752),  # 34 sbh / t
    (1, False, "full", 50_331_648),  # 2 sbh
    (T, True, "full", 6_291_456),  # 2 sbh / t: the input kept sequence-sharded
]


@pytest.mark.parametrize(("t", "sp", "recompute", "expected"), TABLE_2)
def test_korthikanti_table_2_closed_form(t, sp, recompute, expected):
    assert korthikanti_layer(S, B, H, A, t=t, sequence_parallel=sp, recompute=recompute) == expected


@pytest.mark.parametrize(("t", "sp", "recompute", "expected"), TABLE_2)
def test_layer_split_reproduces_korthikanti(t, sp, recompute, expected):
    """The outside / inside / score split of a GPT layer gives the table's bytes, also for b = 4."""
    layer = gpt_layer(S, H, A)
    assert layer_activations(layer, B, tp=t, sequence_parallel=sp, recompute=recompute) == expected
    assert layer_activations(layer, 4, tp=t, sequence_parallel=sp, recompute=recompute) == 4 * expected


def test_context_parallel_divides_the_tokens():
    layer = gpt_layer(S, H, A)
    assert layer_activations(layer, 1, tp=T, cp=2, sequence_parallel=True) == 358_612_992 / 2


def test_llama_layer_constants():
    """LLaMA-2 7B as autograd keeps it (fused RMSNorm, fused QKV, SwiGLU, fused attention; the
    H100 measurement in shared/reference): 8 sh outside; inside 12 sh (the whole QKV output,
    which v keeps alive, and rotated q, k) + 8 sf (gate, silu(gate), up, product) + 8 s (two
    fp32 rstd) + 4 a s (log-sum-exp)."""
    shape = model_shape("transformer", Section({"type": "transformer", "preset": "llama-7b", "seq_len": 4096}))
    s, h, f, a = 4096, 4096, 11008, 32
    layer = shape.layers[0]
    inside = 12 * s * h + 8 * s * f + 8 * s + 4 * a * s
    assert (layer.outside, layer.inside, layer.score, layer.input) == (8 * s * h, inside, 0, 2 * s * h)
    assert (layer.tp_params, layer.replicated_params) == (4 * h * h + 3 * h * f, 2 * h)


# -- pipeline in-flight micro-batches ----------------------------------------------------------


@given(p=st.integers(1, 16), m=st.integers(1, 64))
def test_1f1b_keeps_p_minus_r(p, m):
    assert [in_flight("1f1b", p, r, m)[0] for r in range(p)] == [min(p - r, m) for r in range(p)]


@pytest.mark.parametrize(("p", "v"), [(2, 2), (4, 2), (4, 5), (8, 3), (16, 4)])
def test_interleaved_first_rank_matches_megatrons_penalty(p, v):
    """Megatron's theoretical memory: activations x (1 + (p - 1)/(p v)) on the first rank,
    i.e. p v (1 + (p - 1)/(p v)) chunks of 1/v stage."""
    chunks, _ = in_flight("interleaved-1f1b", p, 0, micro_batches=10 * p, vpp=v)
    assert chunks == pytest.approx(p * v * (1 + (p - 1) / (p * v)))


@pytest.mark.parametrize("p", [2, 4, 8])
def test_zero_bubble_per_worker(p):
    """Qi et al. 2024: ZB-H1 (p - i + 1) M_B + (i - 1) M_W, ZB-H2 (2p - 2i + 1) M_B + (2i - 2) M_W (i 1-based)."""
    for i in range(1, p + 1):
        assert in_flight("zb-h1", p, i - 1, 100) == (p - i + 1, i - 1)
        assert in_flight("zb-h2", p, i - 1, 100) == (2 * p - 2 * i + 1, 2 * i - 2)


# -- per-rank breakdown ----------------------------------------------------------------------
LLAMA7B = Section({"type": "transformer", "preset": "llama-7b", "seq_len": 4096})


def test_fsdp_rank_matches_zero_3_of_the_whole_model():
    shape = model_shape("transformer", LLAMA7B)
    memory = rank_memory(shape, Layout(dp=8, zero=3, global_batch_size=64), 5)
    expected = zero_model_states(shape.params, 8, 3)
    assert (memory.weights, memory.grads, memory.optimizer) == (expected.weights, expected.grads, expected.optimizer)
    per_sample = sum(layer.activations for layer in shape.layers) + shape.pre.activations + shape.post.activations
    assert memory.activations == per_sample
    biggest_layer = max(layer.params for layer in shape.layers + (shape.pre, shape.post))
    assert memory.buffers == 2 * WEIGHT_BYTES * biggest_layer  # the gathered layer and the prefetched one


def test_tensor_and_pipeline_split_parameters_as_megatron():
    """Each stage holds its layers' TP shards plus the replicated norms; embedding on the
    first stage, final norm + head on the last; the stages add up to the model."""
    shape = model_shape("transformer", Section({"type": "transformer", "preset": "llama-70b", "seq_len": 4096}))
    layout = Layout(tp=8, pp=4, sequence_parallel=True, recompute="selective", global_batch_size=128)
    memories = layout_memory(shape, layout)
    assert len(memories) == 32
    first, last = memories[0], memories[24]
    layer = shape.layers[0]
    per_layer = layer.tp_params / 8 + layer.replicated_params
    assert first.params == pytest.approx(20 * per_layer + shape.pre.tp_params / 8)
    assert last.params == pytest.approx(20 * per_layer + shape.post.tp_params / 8 + shape.post.replicated_params)
    # 8 TP ranks per stage: the TP shards add up, the replicated norms are held 8 times.
    held = sum(m.params for m in memories[::8]) * 8
    assert held - 7 * (80 * layer.replicated_params + shape.post.replicated_params) == pytest.approx(shape.params)
    assert [m.pp_rank for m in memories[::8]] == [0, 1, 2, 3]
    assert [m.in_flight for m in memories[::8]] == [4, 3, 2, 1]


def test_experts_split_over_ep_and_shard_over_expert_dp():
    shape = model_shape("moe", Section({"type": "moe"}))
    layout = Layout(dp=16, ep=8, zero=1, global_batch_size=128)
    memory = rank_memory(shape, layout, 0)
    dense = sum(x.tp_params + x.replicated_params for x in shape.layers + (shape.pre, shape.post))
    expert = sum(x.expert_params for x in shape.layers)
    assert memory.params == pytest.approx(dense + expert / 8)
    assert memory.optimizer == pytest.approx(12 * dense / 16 + 12 * (expert / 8) / layout.expert_dp)
    assert layout.expert_dp == 2


def test_dualpipe_holds_two_stages_and_p_plus_1_chunks():
    """DualPipe README: 2x parameters and p + 1 micro-batches' activations per device."""
    shape = model_shape("transformer", LLAMA7B)
    one = rank_memory(shape, Layout(pp=4, global_batch_size=8), 1)
    dual = rank_memory(shape, Layout(pp=4, schedule="dualpipe", global_batch_size=8), 1)
    assert dual.stages == (1, 2) and dual.layers == 2 * one.layers
    assert dual.params == pytest.approx(2 * one.params)
    assert dual.in_flight == 5 and dual.activations == pytest.approx(5 * one.activations / one.in_flight)


def test_inference_needs_weights_only():
    shape = model_shape("transformer", LLAMA7B)
    memory = rank_memory(shape, Layout(tp=2, dp=4, zero=3, global_batch_size=4), 0, training=False)
    assert memory.components() == {"weights": pytest.approx(2 * memory.params), "grads": 0, "optimizer": 0, "activations": 0, "buffers": 0}


def test_full_recompute_keeps_layer_inputs_and_rebuilds_one_layer():
    shape = model_shape("transformer", LLAMA7B)
    memory = rank_memory(shape, Layout(pp=8, recompute="full", global_batch_size=8), 0)
    layer = shape.layers[0]
    stage = 4 * layer.input + shape.pre.activations
    assert memory.activations == 8 * stage
    assert memory.buffers == layer.activations


def test_recompute_per_layer_range():
    shape = model_shape("transformer", LLAMA7B)
    keep_all = Layout(dp=8, global_batch_size=8)
    first_half_full = Layout(dp=8, global_batch_size=8, recompute_ranges=(RecomputeRange(0, 16, "full"),))
    assert [first_half_full.recompute_mode(i) for i in (0, 15, 16, 31)] == ["full", "full", "none", "none"]
    layer = shape.layers[0]
    saved = rank_memory(shape, keep_all, 0).activations - rank_memory(shape, first_half_full, 0).activations
    assert saved == 16 * (layer.activations - layer.input)


# -- Megatron-LM's theoretical memory report, GPT-3 175B ------------------------------------
def megatron_activations(s, b, h, ffn, vocab, layers, t, p, m, v=None):
    """``compute_activation_memory`` (sequence parallel + selective recompute), first stage,
    without its final 5% allowance: Korthikanti's per-layer bytes on all L layers, the
    embedding's ids and dropout mask for p micro-batches, the interleaved penalty, the
    output layer when p = 1, all divided by t."""
    act = s * b * h * (18 + 4 * ffn / h) * layers + 8 * s * b * p + s * b * h * p
    if v is not None:
        act *= 1 + (p - 1) / (p * v)
    elif p > 1:
        act *= min(1, m / p)
    if p == 1:
        act += s * b * h * 4 * (1 + vocab / h)
    return act / t


@pytest.mark.parametrize(
    ("t", "p", "v", "m", "b"),
    [(8, 16, None, 64, 1), (8, 8, None, 4, 1), (8, 4, 3, 64, 1), (8, 8, 2, 16, 2), (8, 1, None, 8, 1), (4, 1, None, 8, 2)],
)
def test_first_stage_activations_match_megatrons_report(t, p, v, m, b):
    shape = gpt_model(96, 2048, 12288, 96, 51200, micro_batch_size=b)
    schedule = {"schedule": "interleaved", "vpp": v} if v else {}
    layout = Layout(tp=t, pp=p, sequence_parallel=True, recompute="selective", micro_batch_size=b, global_batch_size=m * b, **schedule)
    expected = megatron_activations(2048, b, 12288, 4 * 12288, 51200, 96, t, p, m, v)
    assert rank_memory(shape, layout, 0, training=True).activations == pytest.approx(expected, rel=1e-12)


def test_first_stage_parameters_are_megatrons_most_loaded_shard_plus_biases():
    """Megatron counts ``(L/p) 12 h^2 / t + V h / t + (L/p) 4 h`` on the first stage (no linear
    biases); the GPT layer here also has 7h of split and 2h of replicated biases."""
    h, layers, t, p, vocab = 12288, 96, 8, 16, 51200
    shape = gpt_model(layers, 2048, h, 96, vocab)
    memory = rank_memory(shape, Layout(tp=t, pp=p, global_batch_size=p), 0)
    megatron = (layers / p) * 12 * h * h / t + vocab * h / t + (layers / p) * 4 * h
    assert memory.params == pytest.approx(megatron + (layers / p) * (7 * h / t + 2 * h), rel=1e-12)


@given(params=st.integers(1, 10**12), dp=st.integers(1, 1024))
def test_zero_stages_only_shrink_and_shards_add_up(params, dp):
    stages = [zero_model_states(params, dp, z) for z in (0, 1, 2, 3)]
    assert all(a.total >= b.total for a, b in zip(stages, stages[1:]))
    assert stages[3].total * dp == pytest.approx(stages[0].total)


def test_model_recompute_flag_is_the_layouts_default():
    from simulator.scenario import scenario_from_dict

    doc = {
        "model": {"type": "transformer", "layers": 2, "hidden": 256, "heads": 4, "ffn": 1024, "seq_len": 128, "recompute": True},
        "cluster": {"devices": 2, "device": {"memory_gb": 80, "peak_tflops": 100}, "interconnect": "ideal"},
        "workload": {"micro_batches": 2},
        "parallel": {"dp": 2},
    }
    assert scenario_from_dict(doc, "r.yaml").parallel.recompute == "full"


@pytest.mark.parametrize("name", ["llama7b-8xh100.yaml", "deepseek-moe-h800.yaml", "two-tower-h100.yaml"])
def test_shapes_agree_with_the_operator_graph(name):
    """Per-rank memory and the replay's graph count the same parameters and activations."""
    from pathlib import Path

    from simulator.scenario import load_scenario

    loaded = load_scenario(Path(__file__).resolve().parent.parent / "scenarios" / name)
    shape = model_shape(loaded.model_config["type"], Section(dict(loaded.model_config)))
    graph = loaded.problem.graph
    per_sample = sum(layer.activations for layer in (*shape.layers, shape.pre, shape.post))
    assert shape.params == graph.total("params")
    assert per_sample * shape.micro_batch_size == pytest.approx(graph.total("activation_bytes"), rel=1e-12)
