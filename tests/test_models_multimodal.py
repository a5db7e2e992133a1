"""The two-tower builder: CLIP ViT-L/14 size, two parallel towers joined by cross-attention."""

from __future__ import annotations

from pathlib import Path

import networkx as nx
import pytest

from simulator.errors import InputError
from simulator.graph import OperatorGraph
from simulator.models.multimodal import config_from_section, two_tower_graph
from simulator.scenario import load_scenario, scenario_from_dict
from simulator.yamlio import Section

SCENARIOS = Path(__file__).resolve().parent.parent / "scenarios"


def build(**fields) -> OperatorGraph:
    section = Section({"type": "two_tower", **fields}, path="model")
    return two_tower_graph(config_from_section(section), "test", section)


def test_the_vision_tower_is_clip_vit_l_14_with_304e6_parameters():
    graph = build()
    vision = sum(op.params for op in graph.operators if op.name.startswith("vision."))
    assert vision == pytest.approx(304e6, rel=0.01)  # CLIP ViT-L/14 image encoder (biases not counted)
    assert config_from_section(Section({})).vision.tokens == 257  # 16 x 16 patches + class token


def test_the_towers_are_independent_until_the_first_fusion_layer():
    dag = build(text={"layers": 2}, fusion_layers=2).dag
    assert not nx.has_path(dag, "vision.L0.attn", "text.L1.mlp")
    assert not nx.has_path(dag, "text.embed", "vision.proj")
    assert {e for e in dag.successors("vision.proj")} == {"fusion.L0.xattn", "fusion.L1.xattn"}
    assert list(dag.predecessors("fusion.L0.attn")) == ["text.L1.mlp"]
    assert list(dag.successors("fusion.L1.mlp")) == ["head"]


def test_cross_attention_reads_every_image_token_for_every_text_token():
    graph = build(seq_len=16, micro_batch_size=2, text={"layers": 0, "hidden": 64, "heads": 4, "ffn": 128, "vocab": 100}, fusion_layers=1)
    xattn = graph.by_name["fusion.L0.xattn"]
    b, s_t, s_v, h = 2, 16, 257, 64
    core = 4 * b * s_t * s_v * h  # scores + weighted sum
    projections = 2 * b * s_t * h * h * 2 + 2 * b * s_v * h * 2 * h  # Q and output on text, K and V on image tokens
    assert xattn.flops["F"] == core + projections
    assert xattn.flops["W"] == projections
    edge = next(e for e in graph.edges if e.src == "vision.proj")
    assert edge.bytes == b * s_v * h * 2


def test_recompute_keeps_the_image_tokens_for_cross_attention():
    graph = build(recompute=True, seq_len=16, micro_batch_size=2, text={"hidden": 64, "heads": 4, "ffn": 128})
    assert graph.by_name["fusion.L0.xattn"].activation_bytes == 2 * 16 * 64 * 2 + 2 * 257 * 64 * 2
    assert graph.by_name["text.L0.mlp"].activation_bytes == 2 * 16 * 64 * 2


def test_groups_are_per_layer_and_per_tower():
    groups = {op.group for op in build().operators}
    assert {"vision.embed", "vision.layer23", "vision.proj", "text.embed", "text.layer5", "fusion.layer5", "head"} <= groups
    assert len(groups) == 1 + 24 + 1 + 1 + 6 + 6 + 1


@pytest.mark.parametrize(
    ("model", "field", "words"),
    [
        ({"vision": {"patch_size": 15}}, "model.vision.patch_size", "must divide"),
        ({"vision": {"preset": "vit-h-14"}}, "model.vision.preset", "unknown value"),
        ({"vision": {"heads": 7}}, "model.vision.heads", "must divide"),
        ({"text": {"heads": 5}}, "model.text.heads", "must divide"),
        ({"fusion_layers": 0}, "model.fusion_layers", "at least 1"),
        ({"text": {"vocab": -1}}, "model.text.vocab", "at least 1"),
    ],
)
def test_bad_configs_fail_with_one_input_error_naming_the_field(tmp_path, model, field, words):
    with pytest.raises(InputError) as info:
        scenario_from_dict(
            {"model": {"type": "two_tower", **model}, "cluster": {"devices": 1}, "workload": {"micro_batches": 1}}, tmp_path / "t.yaml"
        )
    assert (info.value.field, info.value.file) == (field, str(tmp_path / "t.yaml"))
    assert words in info.value.message


def test_the_bundled_two_tower_scenario_is_plannable_size():
    loaded = load_scenario(SCENARIOS / "two-tower-h100.yaml")
    assert len(loaded.problem.graph) <= 200 and loaded.problem.workload.micro_batches <= 8
    assert loaded.problem.cluster.devices[0].type == "H100-SXM5"
