"""The ``parallel:`` layout: Megatron's rank groups, and bad layouts as one-line errors.

Rank groups are pinned to the worked examples in Megatron-core's
``megatron/core/parallel_state.py`` (the docstrings of ``initialize_model_parallel`` and
``generate_masked_orthogonal_rank_groups``); a property test checks that every token's
groups partition the ranks and agree with :meth:`Layout.coordinate`.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from opplan.cli import main
from simulator.errors import InputError
from simulator.layout import AXES, Layout, rank_groups
from simulator.scenario import load_scenario, scenario_from_dict

SCENARIOS = Path(__file__).resolve().parent.parent / "scenarios"

# -- rank groups: Megatron's worked examples ------------------------------------------------


def test_initialize_model_parallel_docstring_16_gpus_tp2_pp4():
    """16 GPUs, tp 2, pp 4 (so dp 2): Megatron's docstring lists these groups."""
    layout = Layout(tp=2, pp=4, dp=2, global_batch_size=2)
    assert layout.groups("dp") == ((0, 2), (1, 3), (4, 6), (5, 7), (8, 10), (9, 11), (12, 14), (13, 15))
    assert layout.groups("tp") == ((0, 1), (2, 3), (4, 5), (6, 7), (8, 9), (10, 11), (12, 13), (14, 15))
    assert layout.groups("pp") == ((0, 4, 8, 12), (1, 5, 9, 13), (2, 6, 10, 14), (3, 7, 11, 15))


def test_masked_orthogonal_groups_docstring():
    """``parallel_size = [tp, dp, pp] = [2, 3, 4]``, mask on dp: groups 0, 1 and 7."""
    groups = rank_groups({"tp": 2, "dp": 3, "pp": 4}, ["tp", "dp", "pp"], "dp")
    assert len(groups) == 8
    assert (groups[0], groups[1], groups[7]) == ([0, 2, 4], [1, 3, 5], [19, 21, 23])
    assert rank_groups({"tp": 2, "pp": 2, "dp": 2}, ["tp", "pp", "dp"], "dp") == [[0, 4], [1, 5], [2, 6], [3, 7]]


def test_context_parallel_docstring_8_gpus_tp4_cp2():
    """``context_parallel_size`` docstring: tp 4, cp 2 on 8 GPUs gives CP groups [g0, g4] ... [g3, g7]."""
    layout = Layout(tp=4, cp=2, global_batch_size=1)
    assert layout.groups("cp") == ((0, 4), (1, 5), (2, 6), (3, 7))
    assert layout.groups("dp-cp") == ((0, 4), (1, 5), (2, 6), (3, 7))


def test_expert_groups_come_from_the_expert_generator():
    """EP sits next to TP in ``tp-cp-ep-dp-pp``; the expert data-parallel group is what is left."""
    layout = Layout(tp=2, dp=4, ep=2, global_batch_size=4)
    assert layout.expert_dp == 2
    assert layout.groups("ep") == ((0, 2), (1, 3), (4, 6), (5, 7))
    assert layout.groups("expert-dp") == ((0, 4), (1, 5), (2, 6), (3, 7))
    assert layout.groups("dp") == ((0, 2, 4, 6), (1, 3, 5, 7))
    moe = Layout(dp=16, ep=8, global_batch_size=16)
    assert moe.groups("ep") == (tuple(range(8)), tuple(range(8, 16)))
    assert moe.groups("expert-dp")[0] == (0, 8)


@given(
    sizes=st.fixed_dictionaries({a: st.integers(1, 3) for a in ("tp", "cp", "dp", "pp")}),
    order=st.permutations(AXES),
)
def test_groups_partition_the_ranks_and_match_coordinates(sizes, order):
    assume(order[-1] == "pp" or sizes["pp"] == 1 or sizes["cp"] == 1)  # Megatron: else dense dp != expert dp
    layout = Layout(**sizes, order="-".join(order), global_batch_size=sizes["dp"])
    ranks = set(range(layout.world_size))
    for axis in ("tp", "cp", "dp", "pp"):
        groups = layout.groups(axis)
        assert sorted(r for g in groups for r in g) == sorted(ranks)
        assert all(len(g) == sizes[axis] for g in groups)
        for group in groups:
            assert [layout.coordinate(r, axis) for r in group] == list(range(sizes[axis]))
    for rank in ranks:
        assert layout.rank_of(**{a: layout.coordinate(rank, a) for a in ("tp", "cp", "dp", "pp")}) == rank


def test_interleaved_and_dualpipe_stages():
    """Megatron's virtual stages (GPU 0: layers 1-2 and 9-10 of 16 on pp 4, vpp 2); DualPipe pairs r and p - 1 - r."""
    interleaved = Layout(pp=4, vpp=2, schedule="interleaved", global_batch_size=8)
    assert interleaved.stages_of(0) == (0, 4)
    assert [interleaved.stage_layer_ranges(16)[s] for s in interleaved.stages_of(0)] == [range(0, 2), range(8, 10)]
    assert Layout(pp=4, schedule="dualpipe", global_batch_size=8).stages_of(1) == (1, 2)
    assert Layout(pp=4, schedule="dualpipev", global_batch_size=8).stages_of(1) == (1, 6)


# -- bad layouts: one line naming the file and the field --------------------------------------
SMALL = {
    "name": "small",
    "model": {"type": "transformer", "layers": 8, "hidden": 512, "heads": 8, "ffn": 2048, "vocab": 1000, "seq_len": 256},
    "cluster": {"devices": 8, "device": {"type": "generic", "memory_gb": 80, "peak_tflops": 100}, "interconnect": "ideal"},
    "workload": {"micro_batches": 2},
}


def scenario(parallel: dict, model: dict | None = None, devices: int = 8) -> dict:
    doc = copy.deepcopy(SMALL)
    doc["model"].update(model or {})
    doc["cluster"]["devices"] = devices
    doc["parallel"] = parallel
    return doc


BAD = [
    ({"dp": 2, "tp": 2}, None, 8, "parallel.dp", "dp x tp x pp x cp = 2 x 2 x 1 x 1 = 4, but the cluster has 8 devices"),
    ({"tp": 3}, None, 8, "parallel.tp", "tp x pp x cp = 3 does not divide the cluster's 8 devices"),
    ({"tp": 8}, {"hidden": 768, "heads": 12}, 8, "parallel.tp", "tp (8) must divide attention heads (12)"),
    ({"tp": 8}, {"heads": 16, "kv_heads": 4}, 8, "parallel.tp", "tp (8) must divide KV heads (4)"),
    ({"tp": 8}, {"ffn": 2052}, 8, "parallel.tp", "tp (8) must divide ffn (2052)"),
    ({"pp": 4}, {"layers": 6}, 8, "parallel.pp", "pp (4) must divide the model's 6 layers (or list stage_layers)"),
    ({"pp": 4, "stage_layers": [2, 2, 2]}, {"layers": 6}, 8, "parallel.stage_layers", "expected 4 counts summing to"),
    ({"dp": 8, "global_batch_size": 12}, None, 8, "parallel.global_batch_size", "must be a multiple of dp x micro_batch_size (8 x 1 = 8)"),
    ({"ep": 2}, None, 8, "parallel.ep", "ep (2) > 1 needs a mixture-of-experts model"),
    ({"dp": 4, "ep": 8}, None, 4, "parallel.ep", "ep (8) must divide dp x cp (4 x 1)"),
    ({"pp": 2, "vpp": 2}, None, 8, "parallel.vpp", "vpp (2) > 1 needs schedule: interleaved"),
    ({"zero": 4}, None, 8, "parallel.zero", "must be 0, 1, 2 or 3"),
    ({"schedule": "2f2b"}, None, 8, "parallel.schedule", "unknown schedule '2f2b'"),
    ({"micro_batch_size": 2}, None, 8, "parallel.micro_batch_size", "differs from model.micro_batch_size (1)"),
    ({"tensor_parallel": 2}, None, 8, "parallel.tensor_parallel", "unknown field"),
    ({"sequence_parallel": True}, None, 8, "parallel.sequence_parallel", "needs tp > 1"),
    ({"recompute": [{"layers": [4, 12], "mode": "full"}]}, None, 8, "parallel.recompute", "beyond the model's 8 layers"),
    ({"recompute": [{"layers": [0, 4], "mode": "full"}, {"layers": [3, 8], "mode": "selective"}]}, None, 8,
     "parallel.recompute[1].layers", "overlaps an earlier one"),
]


@pytest.mark.parametrize(("parallel", "model", "devices", "field", "message"), BAD)
def test_bad_layout_names_the_field(parallel, model, devices, field, message):
    with pytest.raises(InputError) as caught:
        scenario_from_dict(scenario(parallel, model, devices), "bad.yaml")
    assert (caught.value.file, caught.value.field) == ("bad.yaml", field)
    assert message in caught.value.message
    assert "\n" not in str(caught.value)


def test_experts_must_divide_over_ep():
    doc = scenario({"dp": 6, "ep": 3, "global_batch_size": 6}, devices=6)
    doc["model"] = {"type": "moe", "layers": 2, "experts": 16, "seq_len": 256}
    with pytest.raises(InputError, match=r"ep \(3\) must divide the routed experts \(16\)"):
        scenario_from_dict(doc, "moe.yaml")


def test_zero_accepts_fsdp_as_stage_3():
    assert scenario_from_dict(scenario({"zero": "fsdp"}), "ok.yaml").parallel.zero == 3


def test_uneven_stages_are_accepted_when_listed():
    loaded = scenario_from_dict(scenario({"pp": 4, "stage_layers": [1, 2, 2, 1]}, {"layers": 6}), "ok.yaml")
    assert loaded.parallel.layers_per_stage(6) == (1, 2, 2, 1)
    assert loaded.parallel.dp == 2


def test_layout_over_capacity_names_rank_amount_and_biggest_component(tmp_path, capsys):
    """LLaMA-2 7B with plain DDP on 80 GB GPUs: 16 bytes per parameter do not fit."""
    path = tmp_path / "ddp.yaml"
    text = (SCENARIOS / "llama7b-8xh100.yaml").read_text().replace("zero: 3 ", "zero: 0 ")
    path.write_text(text)
    with pytest.raises(InputError) as caught:
        load_scenario(path)
    assert caught.value.field == "parallel"
    assert caught.value.message.startswith("rank 0 (pipeline stage 0) needs 130.7 GB > 80.0 GB; biggest: optimizer 80.9 GB")
    assert main(["describe", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"opplan: error: {path}: parallel: rank 0")


# -- the bundled realistic scenarios -------------------------------------------------------------
LAYOUTS = {
    "llama7b-8xh100.yaml": {"dp": 8, "tp": 1, "pp": 1, "zero": 3, "global_batch_size": 64},
    "llama70b-32xh100.yaml": {"dp": 1, "tp": 8, "pp": 4, "sequence_parallel": True, "global_batch_size": 128},
    "deepseek-moe-h800.yaml": {"dp": 16, "ep": 8, "zero": 1, "global_batch_size": 128},
    "two-tower-h100.yaml": {"dp": 8, "zero": 0, "micro_batch_size": 32, "global_batch_size": 2048},
}


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_bundled_layouts_load_and_keep_tp_and_ep_in_a_node(name):
    loaded = load_scenario(SCENARIOS / name)
    layout = loaded.parallel
    assert {k: getattr(layout, k) for k in LAYOUTS[name]} == LAYOUTS[name]
    node = {i: d.node for i, d in enumerate(loaded.problem.cluster.devices)}
    for token in ("tp", "ep"):
        assert all(len({node[r] for r in group}) == 1 for group in layout.groups(token))


def test_describe_prints_the_per_rank_memory(capsys):
    assert main(["describe", str(SCENARIOS / "llama70b-32xh100.yaml")]) == 0
    out = capsys.readouterr().out
    assert "per-rank memory (training): dp 1 x tp 8 + SP x pp 4" in out
    assert "largest: rank 0, 49.1 GB of 80 GB, biggest component optimizer 26.1 GB" in out
