"""``opplan describe``: a summary of every bundled model scenario, and one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from opplan.cli import main
from simulator.paths import critical_path, operator_kind
from simulator.problem import Task
from simulator.scenario import load_scenario

SCENARIOS = Path(__file__).resolve().parent.parent / "scenarios"


@pytest.mark.parametrize(
    ("scenario", "expected"),
    [
        ("llama7b-8xh100.yaml", ["llama-7b", "6.738e9", "66 / 65", "34 groups", "critical path", "H100-SXM5", "tokens per micro-batch"]),
        ("deepseek-moe-h800.yaml", ["activated parameters", "dispatch", "comm", "layer1.experts", "H800-SXM"]),
        ("two-tower-h100.yaml", ["vit-l-14", "fusion.xattn", "vision.layer23", "2464 text"]),
        ("pipeline-4x8.yaml", ["operators by kind", "4 groups"]),
    ],
)
def test_describe_summarises_each_bundled_scenario(capsys, scenario, expected):
    assert main(["describe", str(SCENARIOS / scenario)]) == 0
    out = capsys.readouterr().out
    for text in expected:
        assert text in out


def test_the_critical_path_of_a_chain_is_every_operator_back_to_back():
    problem = load_scenario(SCENARIOS / "llama7b-8xh100.yaml").problem
    device = problem.cluster.devices[0]
    path = critical_path(problem)
    assert path.operators == problem.graph.topological_order
    total = sum(problem.duration(Task(op, 0, kind), device) for op in problem.graph.by_name for kind in "FBW")
    assert path.seconds == pytest.approx(total)
    assert path.device_type == "H100-SXM5"


def test_the_critical_path_of_the_two_tower_model_runs_through_the_longer_vision_tower():
    problem = load_scenario(SCENARIOS / "two-tower-h100.yaml").problem
    path = critical_path(problem).operators
    assert path[0] == "vision.patch_embed" and "vision.proj" in path and path[-1] == "head"
    assert not any(op.startswith("text.") for op in path)


@pytest.mark.parametrize(
    ("name", "kind"), [("L12.mlp", "mlp"), ("L3.expert15", "expert"), ("fusion.L0.xattn", "fusion.xattn"), ("embed", "embed")]
)
def test_operator_kinds_drop_layer_and_expert_numbers(name, kind):
    assert operator_kind(name) == kind


def test_a_bad_model_is_one_line_naming_file_and_field(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {type: transformer, preset: llama-7b, heads: 30}\ncluster: {devices: 1}\nworkload: {micro_batches: 1}\n")
    assert main(["describe", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith(f"opplan: error: {bad}: model.heads: heads (30) must divide hidden (4096)")
