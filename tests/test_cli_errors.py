"""Bad input at the command line: one line naming the file and the field, a non-zero
exit, never a traceback; a rejected schedule lists every violation; no input file is
ever overwritten."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from opplan.cli import main

#: A valid two-stage pipeline scenario, and a valid GPipe schedule for it.
SCENARIO = {
    "name": "tiny",
    "model": {"type": "pipeline", "stages": 2, "F_ms": 1, "B_ms": 1, "W_ms": 1, "activation_gb": 1},
    "cluster": {"devices": 2, "device": {"type": "generic", "memory_gb": 80, "peak_tflops": 100}, "interconnect": "ideal"},
    "workload": {"micro_batches": 2},
}
SCHEDULE = {
    "format": "opplan-schedule/1",
    "name": "gpipe",
    "devices": {
        f"gpu{s}": [f"F:s{s}:0", f"F:s{s}:1", {"fused": [f"B:s{s}:0", f"W:s{s}:0"]}, {"fused": [f"B:s{s}:1", f"W:s{s}:1"]}]
        for s in range(2)
    },
}


@pytest.fixture
def files(tmp_path):
    """Write a scenario (and a schedule) into ``tmp_path``; returns their paths."""

    def write(scenario: dict | str | None = None, schedule: dict | str | None = None) -> tuple[Path, Path]:
        scenario_path, schedule_path = tmp_path / "scenario.yaml", tmp_path / "schedule.json"
        scenario = SCENARIO if scenario is None else scenario
        schedule = SCHEDULE if schedule is None else schedule
        scenario_path.write_text(scenario if isinstance(scenario, str) else yaml.safe_dump(scenario))
        schedule_path.write_text(schedule if isinstance(schedule, str) else json.dumps(schedule))
        return scenario_path, schedule_path

    return write


def run(capsys, *args) -> tuple[int, list[str]]:
    code = main([str(a) for a in args])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err.splitlines()


def changed(path: str, value) -> dict:
    """SCENARIO with the dotted ``path`` set to ``value``."""
    doc = copy.deepcopy(SCENARIO)
    *parents, last = path.split(".")
    target = doc
    for key in parents:
        target = target[key]
    target[last] = value
    return doc


def test_the_valid_inputs_simulate(files, capsys):
    scenario, schedule = files()
    code, err = run(capsys, "simulate", scenario, "--schedule", schedule)
    assert (code, err) == (0, [])


class TestOneLineErrors:
    def test_malformed_yaml(self, files, capsys):
        scenario, _ = files("name: x\nmodel: {type: pipeline, stages: 2\n")
        assert run(capsys, "simulate", scenario) == (
            2,
            [f"opplan: error: {scenario}: malformed YAML at line 3: did not find expected ',' or '}}'"],  # libyaml's wording
        )

    def test_malformed_schedule_json(self, files, capsys):
        scenario, schedule = files(schedule='{"devices": {"gpu0": [}')
        code, err = run(capsys, "simulate", scenario, "--schedule", schedule)
        assert (code, err) == (2, [f"opplan: error: {schedule}: malformed JSON at line 1: Expecting value"])

    def test_missing_file(self, tmp_path, capsys):
        missing = tmp_path / "nope.yaml"
        assert run(capsys, "simulate", missing) == (2, [f"opplan: error: {missing}: file not found"])

    def test_unknown_profile(self, files, capsys):
        scenario, _ = files(changed("cluster", {"profile": "h200"}))
        assert run(capsys, "simulate", scenario) == (
            2,
            [f"opplan: error: {scenario}: cluster.profile: unknown hardware profile 'h200' (bundled: a100-80gb, h100-sxm, h800-sxm)"],
        )

    def test_cycle_in_a_graph(self, files, capsys):
        ops = [{"name": n, "time_ms": {"F": 1, "B": 1, "W": 1}} for n in ("a", "b", "c")]
        edges = [{"src": "a", "dst": "b"}, {"src": "b", "dst": "c"}, {"src": "c", "dst": "a"}]
        scenario, _ = files(changed("model", {"type": "graph", "operators": ops, "edges": edges}))
        assert run(capsys, "simulate", scenario) == (
            2,
            [f"opplan: error: {scenario}: model.edges: the operator graph has a cycle: a -> b -> c -> a"],
        )

    @pytest.mark.parametrize(
        ("path", "value", "where", "message"),
        [
            ("model.activation_gb", -2, "model.activation_gb", "must be between 0 and 1e+06 (gb, a physical range), got -2"),
            ("cluster.device.memory_gb", -80, "cluster.device.memory_gb", "must be between 0.001 and 1e+06, got -80"),
            ("workload.micro_batches", 0, "workload.micro_batches", "must be at least 1, got 0"),
            ("model.stages", "four", "model.stages", "expected an integer, got 'four'"),
        ],
    )
    def test_negative_or_mistyped_sizes(self, files, capsys, path, value, where, message):
        scenario, _ = files(changed(path, value))
        assert run(capsys, "simulate", scenario) == (2, [f"opplan: error: {scenario}: {where}: {message}"])

    def test_negative_tensor_size_in_a_graph(self, files, capsys):
        ops = [{"name": n, "time_ms": {"F": 1, "B": 1, "W": 1}} for n in ("a", "b")]
        scenario, _ = files(changed("model", {"type": "graph", "operators": ops, "edges": [{"src": "a", "dst": "b", "size_mb": -1}]}))
        assert run(capsys, "simulate", scenario) == (
            2,
            [f"opplan: error: {scenario}: model.edges[0].size_mb: must be between 0 and 1e+09 (mb, a physical range), got -1"],
        )

    def test_misspelt_field(self, files, capsys):
        scenario, _ = files(changed("workload", {"micro_batch": 2}))
        assert run(capsys, "simulate", scenario) == (
            2,
            [f"opplan: error: {scenario}: workload.micro_batch: unknown field (allowed: fb_overlap, micro_batches, mode)"],
        )

    def test_bad_task_string_in_a_schedule(self, files, capsys):
        scenario, schedule = files(schedule={"devices": {"gpu0": ["F-s0-0"]}})
        code, err = run(capsys, "simulate", scenario, "--schedule", schedule)
        assert (code, err) == (2, [f"opplan: error: {schedule}: devices.gpu0[0]: task 'F-s0-0' is not of the form KIND:op:mb"])


class TestRejectedSchedules:
    """A rejected schedule exits 1: a headline naming the file, then one line per violation."""

    def with_devices(self, **devices) -> dict:
        return {**SCHEDULE, "devices": {**SCHEDULE["devices"], **devices}}

    def test_unknown_device(self, files, capsys):
        devices = {"gpu0": SCHEDULE["devices"]["gpu0"], "gpu5": SCHEDULE["devices"]["gpu1"]}
        scenario, schedule = files(schedule={**SCHEDULE, "devices": devices})
        assert run(capsys, "validate", scenario, "--schedule", schedule) == (
            1,
            [
                f"opplan: error: {schedule}: schedule rejected",
                "  - device 'gpu5' is not in the cluster (devices: gpu0, gpu1)",
                *(f"  - task {kind}:s1:{mb} is not scheduled on any device" for mb in (0, 1) for kind in "FBW"),
            ],
        )

    def test_unknown_task(self, files, capsys):
        scenario, schedule = files(schedule=self.with_devices(gpu1=SCHEDULE["devices"]["gpu1"] + ["F:s7:0"]))
        assert run(capsys, "validate", scenario, "--schedule", schedule) == (
            1,
            [f"opplan: error: {schedule}: schedule rejected", "  - gpu1[4]: task F:s7:0 does not exist in this problem (no operator 's7')"],
        )

    def test_deadlocking_order(self, files, capsys):
        """gpu0 runs micro-batch 0's backward before micro-batch 1's forward; gpu1 the reverse."""
        gpu0 = SCHEDULE["devices"]["gpu0"]
        scenario, schedule = files(schedule=self.with_devices(gpu0=[gpu0[0], gpu0[2], gpu0[1], gpu0[3]]))
        assert run(capsys, "validate", scenario, "--schedule", schedule) == (
            1,
            [
                f"opplan: error: {schedule}: schedule rejected",
                "  - deadlock: gpu0 waits at B:s0:0 for B:s1:0 (on gpu1, not yet run);"
                " gpu1 waits at F:s1:1 for F:s0:1 (on gpu0, not yet run)",
            ],
        )

    def test_memory_over_capacity(self, files, capsys):
        scenario, schedule = files(changed("cluster.device.memory_gb", 1.5))
        assert run(capsys, "validate", scenario, "--schedule", schedule) == (
            1,
            [
                f"opplan: error: {schedule}: schedule rejected",
                "  - memory over capacity on gpu0: 2 GB in use at 1 ms, 0.5 GB over its 1.5 GB",
                "  - memory over capacity on gpu1: 2 GB in use at 2 ms, 0.5 GB over its 1.5 GB",
            ],
        )


class TestOutputsNeverClobberInputs:
    @pytest.mark.parametrize("option", ["--json", "--trace"])
    def test_an_output_naming_the_input_schedule_is_refused_and_the_schedule_untouched(self, files, capsys, option):
        scenario, schedule = files()
        before = schedule.read_bytes()
        code, err = run(capsys, "simulate", scenario, "--schedule", schedule, option, schedule)
        assert (code, err) == (2, [f"opplan: error: {option}: refusing to overwrite input file {schedule}"])
        assert schedule.read_bytes() == before

    def test_an_output_naming_the_scenario_is_refused(self, files, capsys):
        scenario, schedule = files()
        before = scenario.read_bytes()
        code, err = run(capsys, "simulate", scenario, "--schedule", schedule, "--json", scenario)
        assert (code, err) == (2, [f"opplan: error: --json: refusing to overwrite input file {scenario}"])
        assert scenario.read_bytes() == before

    def test_a_new_output_file_is_written(self, files, capsys, tmp_path):
        scenario, schedule = files()
        code, _ = run(capsys, "simulate", scenario, "--schedule", schedule, "--json", tmp_path / "report.json")
        assert code == 0
        assert json.loads((tmp_path / "report.json").read_text())["makespan"] == pytest.approx(9e-3)


@pytest.mark.parametrize(
    ("scenario", "schedule", "code", "first_line"),
    [
        ("name: x\nmodel: [\n", None, 2, "malformed YAML at line 3"),
        (None, {"devices": {"gpu0": ["F:s0:0"], "gpu1": []}}, 1, "schedule rejected"),
    ],
    ids=["bad-yaml", "rejected"],
)
def test_a_real_process_prints_no_traceback(files, scenario, schedule, code, first_line):
    scenario_path, schedule_path = files(scenario, schedule)
    done = subprocess.run(
        # What the ``opplan`` console script runs.
        [sys.executable, "-c", "import sys; from opplan.cli import main; sys.exit(main())"]
        + ["validate", str(scenario_path), "--schedule", str(schedule_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == code
    assert done.stderr.startswith("opplan: error: ") and first_line in done.stderr.splitlines()[0]
    assert "Traceback" not in done.stderr
