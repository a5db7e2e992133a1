"""``opplan schedule`` and the generators' preconditions: files out, one-line errors, round trips."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from opplan.cli import main
from planner.schedules import SCHEDULES, available, generate
from planner.schedules.examples import example_scenario
from simulator.errors import InputError
from simulator.scenario import load_scenario, scenario_from_dict

SCENARIOS = Path(__file__).resolve().parent.parent / "scenarios"


def write_scenario(tmp_path: Path, *, stages=4, micro_batches=8, devices=None, pipeline=None, mode="training",
                   name="case") -> Path:
    doc = {
        "name": name,
        "model": {"type": "pipeline", "stages": stages, "F_ms": 1, "B_ms": 1.5, "W_ms": 0.5,
                  "activation_gb": 1, "w_retained_gb": 0.5, "static_gb": 10},
        "cluster": {"devices": devices or stages, "interconnect": "ideal"},
        "workload": {"micro_batches": micro_batches, "mode": mode},
    }
    if pipeline:
        doc["pipeline"] = pipeline
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


# -- preconditions: InputError naming the field --------------------------------------------
PRECONDITIONS = [
    # (schedule, scenario settings, field named, words in the message)
    ("dualpipe", {"stages": 5, "micro_batches": 10}, "model.stages", "even"),
    ("dualpipe", {"stages": 4, "micro_batches": 9}, "workload.micro_batches", "even"),
    ("dualpipe", {"stages": 4, "micro_batches": 6}, "workload.micro_batches", "at least 2p = 8"),
    ("dualpipev", {"stages": 5, "micro_batches": 10}, "model.stages", "even"),
    ("dualpipev", {"stages": 8, "micro_batches": 7}, "workload.micro_batches", "at least 2p = 8"),
    ("interleaved-1f1b", {"stages": 5, "micro_batches": 8}, "model.stages", "multiple of 2 chunks"),
    ("interleaved-1f1b", {"stages": 8, "micro_batches": 6}, "workload.micro_batches", "not a multiple of 4"),
    ("interleaved-1f1b", {"stages": 4, "micro_batches": 8, "pipeline": {"chunks": 1}}, "pipeline.chunks", "at least 2"),
    ("interleaved-1f1b", {"stages": 6, "micro_batches": 8, "pipeline": {"ranks": 4}}, "model.stages", "do not divide"),
    ("zb-h1", {"stages": 4, "micro_batches": 2}, "workload.micro_batches", "at least 3"),
    ("zb-h2", {"stages": 4, "micro_batches": 5}, "workload.micro_batches", "at least 6"),
    ("1f1b", {"stages": 4, "devices": 2}, "cluster.devices", "the cluster has 2"),
    ("gpipe", {"stages": 4, "pipeline": {"ranks": 2}}, "pipeline.ranks", "pipeline.ranks = 2"),
    ("gpipe", {"stages": 4, "mode": "inference"}, "workload.mode", "training"),
]


@pytest.mark.parametrize("name, settings, field, words", PRECONDITIONS)
def test_violated_precondition_raises_input_error_naming_the_field(tmp_path, name, settings, field, words):
    scenario = load_scenario(write_scenario(tmp_path, **settings))
    with pytest.raises(InputError) as caught:
        generate(name, scenario)
    assert caught.value.field == field
    assert words in caught.value.message
    assert caught.value.file == str(tmp_path / "case.yaml")
    assert available(scenario)[name] == f"{field}: {caught.value.message}"


@pytest.mark.parametrize("name, settings, field, words", PRECONDITIONS)
def test_violated_precondition_is_one_line_on_the_command_line(tmp_path, capsys, name, settings, field, words):
    scenario = write_scenario(tmp_path, **settings)
    out = tmp_path / "out.json"
    assert main(["schedule", name, str(scenario), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"opplan: error: {scenario}: {field}: ")
    assert "Traceback" not in err
    assert not out.exists()


def test_a_branching_graph_is_not_a_pipeline(tmp_path):
    doc = {
        "model": {"type": "graph", "operators": [{"name": n, "time_ms": {"F": 1, "B": 1, "W": 1}} for n in "abc"],
                  "edges": [{"src": "a", "dst": "b"}, {"src": "a", "dst": "c"}]},
        "cluster": {"devices": 3}, "workload": {"micro_batches": 4},
    }
    scenario = scenario_from_dict(doc, tmp_path / "branch.yaml")
    assert all(reason and reason.startswith("model: ") and "branches" in reason for reason in available(scenario).values())


def test_unknown_schedule_and_unknown_option_are_input_errors():
    scenario = example_scenario()
    with pytest.raises(InputError, match="unknown schedule 'zb-h3'"):
        generate("zb-h3", scenario)
    with pytest.raises(InputError, match="unknown schedule option 'stages'"):
        generate("1f1b", scenario, stages=3)


def test_options_override_the_scenario_pipeline_settings():
    scenario = example_scenario(stages=6, micro_batches=6, pipeline={"chunks": 2})
    assert len(generate("interleaved-1f1b", scenario).devices) == 3
    assert len(generate("interleaved-1f1b", scenario, chunks=3).devices) == 2


def test_schedules_use_the_first_ranks_of_a_larger_cluster():
    scenario = example_scenario(stages=4, micro_batches=8, devices=6)
    assert list(generate("1f1b", scenario).devices) == ["gpu0", "gpu1", "gpu2", "gpu3"]
    assert list(generate("dualpipev", scenario).devices) == ["gpu0", "gpu1"]


# -- files out, and back in ------------------------------------------------------------------
@pytest.mark.parametrize("name", list(SCHEDULES))
@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_every_schedule_round_trips_through_a_file_and_validates(tmp_path, capsys, name, suffix):
    scenario = write_scenario(tmp_path, stages=4, micro_batches=8)
    out = tmp_path / f"{name}{suffix}"
    assert main(["schedule", name, str(scenario), "-o", str(out)]) == 0
    assert main(["validate", str(scenario), "--schedule", str(out)]) == 0
    assert f"{out}: valid: 96 tasks on" in capsys.readouterr().out


def _swap_first_dependent_pair(doc: dict) -> None:
    """Swap, on gpu0, the first entry holding an F with the later entry holding its B."""
    entries = doc["devices"]["gpu0"]

    def tasks(entry):
        if isinstance(entry, str):
            return [entry]
        return entry.get("fused") or entry.get("overlap") or [entry["task"]]

    for i, entry in enumerate(entries):
        forwards = [t for t in tasks(entry) if t.startswith("F:")]
        if forwards:
            backward = "B:" + forwards[0][2:]
            j = next(k for k, later in enumerate(entries) if backward in tasks(later))
            entries[i], entries[j] = entries[j], entries[i]
            return
    raise AssertionError("no forward on gpu0")


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_swapping_two_dependent_entries_is_rejected(tmp_path, capsys, name):
    scenario = write_scenario(tmp_path, stages=4, micro_batches=8)
    out = tmp_path / "good.json"
    assert main(["schedule", name, str(scenario), "-o", str(out)]) == 0
    doc = json.loads(out.read_text())
    _swap_first_dependent_pair(doc)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(doc))
    capsys.readouterr()
    assert main(["validate", str(scenario), "--schedule", str(bad)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"opplan: error: {bad}: schedule rejected") and "dependency violated" in err


def test_schedule_never_overwrites_its_input(tmp_path, capsys):
    scenario = write_scenario(tmp_path)
    before = scenario.read_text()
    assert main(["schedule", "1f1b", str(scenario), "-o", str(scenario)]) == 2
    assert "refusing to overwrite input file" in capsys.readouterr().err
    assert scenario.read_text() == before


def test_schedule_writes_the_generator_into_meta(tmp_path):
    scenario = write_scenario(tmp_path, stages=8, micro_batches=16)
    out = tmp_path / "il.yaml"
    assert main(["schedule", "interleaved-1f1b", str(scenario), "-o", str(out), "--chunks", "4"]) == 0
    doc = yaml.safe_load(out.read_text())
    assert doc["meta"] == {"generator": "planner.schedules.interleaved-1f1b", "ranks": 2, "chunks": 4}
    assert list(doc["devices"]) == ["gpu0", "gpu1"]


@pytest.mark.parametrize("file", ["dualpipe-8x20.yaml", "pipeline-8x24-uneven.yaml"])
def test_bundled_scenarios_accept_every_schedule(file):
    assert available(load_scenario(SCENARIOS / file)) == dict.fromkeys(SCHEDULES)
