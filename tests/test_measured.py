"""``measured:``: patterns, a full backward split by the model's ratio, memory overrides, and typos refused."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from simulator.errors import InputError
from simulator.problem import Task
from simulator.scenario import scenario_from_dict

SMALL = {"type": "transformer", "layers": 2, "hidden": 64, "heads": 4, "ffn": 128, "vocab": 100, "seq_len": 16}


def load(measured: dict, tmp_path, cluster: dict | None = None):
    data = {
        "model": {**SMALL, "measured": measured},
        "cluster": cluster or {"profile": "h100-sxm"},
        "workload": {"micro_batches": 1},
    }
    return scenario_from_dict(data, tmp_path / "s.yaml").problem


def test_a_pattern_sets_every_matching_operator_and_later_entries_win(tmp_path):
    problem = load({"L*.attn": {"*": {"F": 1.0}}, "L1.attn": {"*": {"F": 2.0}}}, tmp_path)
    device = problem.cluster.devices[0]
    assert problem.duration(Task("L0.attn", 0, "F"), device) == pytest.approx(1e-3)
    assert problem.duration(Task("L1.attn", 0, "F"), device) == pytest.approx(2e-3)
    assert problem.graph.by_name["L0.mlp"].measured == {}


def test_a_full_backward_is_split_by_the_models_own_b_to_w_ratio_on_that_device(tmp_path):
    problem = load({"*.mlp": {"H100-SXM5": {"backward": 3.0}}}, tmp_path)
    device = problem.cluster.devices[0]
    op = problem.graph.by_name["L0.mlp"]
    model_b, model_w = (device.work_time(op.work[k]) for k in "BW")
    b, w = (problem.duration(Task("L0.mlp", 0, k), device) for k in "BW")
    assert b + w == pytest.approx(3e-3)
    assert b / w == pytest.approx(model_b / model_w)


def test_memory_overrides_replace_the_estimated_activation_bytes(tmp_path):
    problem = load({"head": {"memory": {"activation_MiB": 2, "retained_MiB": 1}}}, tmp_path)
    head = problem.graph.by_name["head"]
    assert (head.activation_bytes, head.w_retained_bytes) == (2 * 2**20, 2**20)


@pytest.mark.parametrize(
    ("measured", "field", "words"),
    [
        ({"L9.attn": {"*": {"F": 1}}}, "model.measured.L9.attn", "matches no operator"),
        ({"*.mlp": {"H100": {"F": 1}}}, "model.measured.*.mlp.H100", "no device of type 'H100'"),
        ({"head": {"*": {"backward": 1, "B": 1}}}, "model.measured.head.*.backward", "not both"),
        ({"head": {"*": {"F": -1}}}, "model.measured.head.*.F", ""),
    ],
)
def test_a_typo_is_an_error_naming_the_file_and_the_field(tmp_path, measured, field, words):
    with pytest.raises(InputError) as info:
        load(measured, tmp_path)
    assert info.value.file == str(tmp_path / "s.yaml")
    assert info.value.field == field
    assert words in info.value.message


def test_the_cli_says_it_in_one_line(tmp_path):
    path = tmp_path / "s.yaml"
    model = {**SMALL, "measured": {"L0.attn": {"H100": {"F": 1}}}}
    data = {"model": model, "cluster": {"profile": "h100-sxm"}, "workload": {"micro_batches": 1}}
    path.write_text(yaml.safe_dump(data))
    run = subprocess.run([sys.executable, "-m", "opplan", "describe", str(path)], capture_output=True, text=True, timeout=60)
    assert run.returncode != 0
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "H100" in lines[0] and "measured" in lines[0] and "Traceback" not in run.stderr


def test_a_measured_file_is_read_relative_to_the_scenario(tmp_path):
    (tmp_path / "h100.measured.yaml").write_text(yaml.safe_dump({"meta": {"by": "test"}, "measured": {"L*.attn": {"*": {"F": 4.0}}}}))
    data = {"model": {**SMALL, "measured": "h100.measured.yaml"}, "cluster": {"profile": "h100-sxm"}, "workload": {"micro_batches": 1}}
    problem = scenario_from_dict(data, tmp_path / "s.yaml").problem
    assert problem.duration(Task("L1.attn", 0, "F"), problem.cluster.devices[0]) == pytest.approx(4e-3)
    data["model"]["measured"] = "missing.yaml"
    with pytest.raises(InputError) as info:
        scenario_from_dict(data, tmp_path / "s.yaml")
    assert info.value.field == "model.measured" and "does not exist" in info.value.message
