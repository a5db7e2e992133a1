"""Hostile input, as an attacker or a tired user would give it: every case gets exactly one
line on stderr naming the problem, a non-zero exit, no traceback, in a few seconds and
with flat memory; outputs never replace a device, a FIFO or an input.

Each class of the reliability issue has its own cases: what is read (bytes, bombs,
nesting, duplicate keys, huge integers, files that are not files), how big a scenario
may be, finite physical values, output paths, and verdicts.
"""

from __future__ import annotations

import json
import os
import stat
import threading
import time
import tracemalloc
from pathlib import Path

import pytest
import yaml

from opplan.cli import main

#: Generous for a shared 2-core machine; each case takes milliseconds on an idle one.
SECONDS = 10.0

SCENARIO = {
    "name": "tiny",
    "model": {"type": "pipeline", "stages": 2, "F_ms": 1, "B_ms": 1, "W_ms": 1, "activation_gb": 1},
    "cluster": {"devices": 2, "device": {"type": "generic", "memory_gb": 80, "peak_tflops": 100}, "interconnect": "ideal"},
    "workload": {"micro_batches": 2},
}


def run(capsys, *args) -> tuple[int, str, list[str], float]:
    started = time.perf_counter()
    code = main([str(a) for a in args])
    elapsed = time.perf_counter() - started
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and "Traceback" not in captured.out
    return code, captured.out, captured.err.splitlines(), elapsed


def refused(capsys, *args, code: int = 2) -> str:
    """Run the CLI; assert the exit code, one line on stderr, no traceback, seconds; return the line."""
    got, _, err, elapsed = run(capsys, *args)
    assert (got, len(err)) == (code, 1), err
    assert err[0].startswith("opplan: error: ")
    assert elapsed < SECONDS
    return err[0]


def scenario_file(tmp_path: Path, text: str | dict | None = None, name: str = "scenario.yaml") -> Path:
    path = tmp_path / name
    doc = SCENARIO if text is None else text
    path.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc))
    return path


def with_field(path: str, value) -> dict:
    doc = json.loads(json.dumps(SCENARIO))
    *parents, last = path.split(".")
    node = doc
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value
    return doc


# -- what is read ----------------------------------------------------------------------------
BILLION_LAUGHS = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(9)
)


class TestReading:
    def test_alias_bomb_fails_fast_with_flat_memory(self, tmp_path, capsys):
        text = yaml.safe_dump(SCENARIO) + BILLION_LAUGHS.replace("a: &a", "description: &a", 1).replace("*a]", "*a]", 1)
        path = scenario_file(tmp_path, text)
        tracemalloc.start()
        try:
            line = refused(capsys, "describe", path)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert "aliases expand it to more than 1 000 000 values" in line
        assert peak < 50e6

    def test_aliases_within_budget_still_work(self, tmp_path, capsys):
        text = yaml.safe_dump(SCENARIO).replace("device:", "device: &dev", 1) + "extra: null\n"
        path = scenario_file(tmp_path, text.replace("extra: null\n", ""))
        assert run(capsys, "describe", path)[0] == 0

    def test_recursive_alias(self, tmp_path, capsys):
        path = scenario_file(tmp_path, "name: &x [*x]\n")
        assert "recursive document" in refused(capsys, "describe", path)

    def test_five_thousand_digit_integer(self, tmp_path, capsys):
        path = scenario_file(tmp_path, yaml.safe_dump(SCENARIO).replace("micro_batches: 2", "micro_batches: " + "9" * 5000))
        assert refused(capsys, "describe", path).endswith("unreadable value: a number with more than 4300 digits")

    def test_four_thousand_digit_integer_is_sized_not_printed(self, tmp_path, capsys):
        path = scenario_file(tmp_path, yaml.safe_dump(SCENARIO).replace("micro_batches: 2", "micro_batches: " + "9" * 4000))
        line = refused(capsys, "describe", path)
        assert "about 1e+4000 micro-batches" in line and len(line) < 400

    def test_random_bytes(self, tmp_path, capsys):
        path = tmp_path / "scenario.yaml"
        path.write_bytes(bytes(range(256)) * 4)
        assert "not UTF-8 text (byte 0x80 at offset 128" in refused(capsys, "describe", path)

    def test_random_bytes_as_schedule_and_sweep(self, tmp_path, capsys):
        junk = tmp_path / "junk.json"
        junk.write_bytes(b"\xff\xfe\x00garbage")
        assert "not UTF-8" in refused(capsys, "simulate", scenario_file(tmp_path), "--schedule", junk)
        assert "not UTF-8" in refused(capsys, "sweep", junk, "--workers", "0", "--out", tmp_path / "out")

    @pytest.mark.parametrize("suffix", [".yaml", ".json"])
    def test_nesting_depth(self, tmp_path, capsys, suffix):
        path = tmp_path / f"deep{suffix}"
        path.write_text("[" * 100_000 + "]" * 100_000)
        # Our composer says "nested more than 64 levels deep"; PyYAML 6.0.3's libyaml parser stops
        # earlier with its own "exceeded maximum nesting depth". Either way: one line about nesting.
        assert "nest" in refused(capsys, "validate", scenario_file(tmp_path), "--schedule", path)

    @pytest.mark.parametrize(("suffix", "text"), [(".yaml", "name: a\nname: b\n"), (".json", '{"name": "a", "name": "b"}')])
    def test_duplicate_keys_name_the_key(self, tmp_path, capsys, suffix, text):
        path = tmp_path / f"dup{suffix}"
        path.write_text(text)
        assert "duplicate key 'name'" in refused(capsys, "describe", path)

    def test_merge_keys_are_not_duplicates(self, tmp_path, capsys):
        text = yaml.safe_dump(SCENARIO) + "pipeline: {<<: {chunks: 1}, chunks: 2}\n"
        assert run(capsys, "describe", scenario_file(tmp_path, text))[0] == 0

    def test_fifo_and_directory_and_device_are_not_read(self, tmp_path, capsys):
        fifo = tmp_path / "fifo.yaml"
        os.mkfifo(fifo)
        assert "cannot read a FIFO (named pipe) as an input file" in refused(capsys, "describe", fifo)
        folder = tmp_path / "folder.json"
        folder.mkdir()
        assert "folder.json" in refused(capsys, "simulate", scenario_file(tmp_path), "--schedule", folder)
        zero = _device(tmp_path / "zero.yaml", 5)  # /dev/zero's numbers
        assert "cannot read a character device" in refused(capsys, "describe", zero)

    def test_size_cap(self, tmp_path, capsys):
        path = scenario_file(tmp_path, yaml.safe_dump(SCENARIO) + "description: " + "x" * 5000 + "\n")
        line = refused(capsys, "describe", path, "--max-input-mb", "0.001")
        assert "the limit is 1000 bytes (raise it with --max-input-mb)" in line
        assert run(capsys, "describe", path)[0] == 0


def _device(path: Path, minor: int) -> Path:
    """A character device node of our own (1, minor) in a temporary folder: 5 = zero, 7 = full."""
    try:
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, minor))
    except (PermissionError, AttributeError):
        pytest.skip("cannot make a device node here (needs CAP_MKNOD)")
    return path


# -- sizes -------------------------------------------------------------------------------------
class TestSizes:
    @pytest.mark.parametrize("value", [10_000_000, 1e100, 10**100])
    def test_micro_batches(self, tmp_path, capsys, value):
        tracemalloc.start()
        try:
            line = refused(capsys, "describe", scenario_file(tmp_path, with_field("workload.micro_batches", value)))
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert "tasks (2 operators x" in line and "the limit is 5 000 000; raise it with --max-tasks" in line
        assert peak < 50e6

    def test_exact_numbers_in_the_message(self, tmp_path, capsys):
        line = refused(capsys, "simulate", scenario_file(tmp_path, with_field("workload.micro_batches", 10_000_000)))
        assert line.endswith("workload.micro_batches: 60 000 000 tasks (2 operators x 10 000 000 micro-batches x 3 passes);"
                             " the limit is 5 000 000; raise it with --max-tasks")

    @pytest.mark.parametrize(("path", "value", "expected"), [
        ("cluster.devices", 100_000_000, "100 000 000 devices; the limit is 65 536; raise it with --max-devices"),
        ("model.stages", 10_000_000, "60 000 000 tasks (10 000 000 operators x 2 micro-batches x 3 passes)"),
        ("model", {"type": "transformer", "preset": "llama-7b", "layers": 10_000_000}, "120 000 012 tasks"),
        ("model", {"type": "moe", "experts": 10_000_000, "top_k": 1}, "tasks"),
    ])
    def test_devices_layers_stages(self, tmp_path, capsys, path, value, expected):
        assert expected in refused(capsys, "describe", scenario_file(tmp_path, with_field(path, value)))

    def test_nodes_of_a_profile(self, tmp_path, capsys):
        doc = with_field("cluster", {"profile": "h100-sxm", "nodes": 10_000_000})
        assert "80 000 000 devices" in refused(capsys, "describe", scenario_file(tmp_path, doc))

    def test_limits_can_be_raised(self, tmp_path, capsys):
        path = scenario_file(tmp_path, with_field("workload.micro_batches", 40))
        assert "240 tasks" in refused(capsys, "describe", path, "--max-tasks", "100")
        assert run(capsys, "describe", path, "--max-tasks", "1000")[0] == 0

    def test_sweep_grid_of_nine_million_points(self, tmp_path, capsys):
        scenario_file(tmp_path)
        values = ", ".join(str(i) for i in range(1, 3001))
        sweep = tmp_path / "sweep.yaml"
        sweep.write_text(f"scenario: scenario.yaml\ngrid:\n  workload.micro_batches: [{values}]\n  model.stages: [{values}]\n")
        line = refused(capsys, "sweep", sweep, "--workers", "0", "--out", tmp_path / "out")
        assert line.endswith("grid: 9 000 000 points; the limit is 100 000; raise it with --max-points")
        assert not (tmp_path / "out").exists()


# -- finite, physical values -------------------------------------------------------------------
class TestFiniteValues:
    @pytest.mark.parametrize(("path", "value", "message"), [
        ("model.F_ms", float("inf"), "model.F_ms: expected a finite number, got inf"),
        ("model.F_ms", 1e308, "model.F_ms: must be between 0 and 8.64e+07 (ms, a physical range), got 1e+308"),
        ("model.activation_gb", float("nan"), "model.activation_gb: expected a finite number, got nan"),
        ("cluster.device.memory_gb", 1e308, "cluster.device.memory_gb: must be between 0.001 and 1e+06, got 1e+308"),
        ("cluster.device.peak_tflops", 1e-300, "cluster.device.peak_tflops: must be between 0.001 and 1e+06, got 1e-300"),
        ("cluster.interconnect", {"bandwidth_GBps": 1e308}, "must be between 1e-06 and 1e+06 (GBps, a physical range)"),
        ("model.F_ms", 10**400, "model.F_ms: number too large (401 digits)"),
    ])
    def test_scenario_numbers(self, tmp_path, capsys, path, value, message):
        assert message in refused(capsys, "simulate", scenario_file(tmp_path, with_field(path, value)), "--builtin", "1f1b")

    @pytest.mark.parametrize("start", ["NaN", "Infinity", "-Infinity", "1e400"])
    def test_schedule_start(self, tmp_path, capsys, start):
        schedule = tmp_path / "s.json"
        schedule.write_text('{"devices": {"gpu0": [{"task": "F:s0:0", "start": START}]}}'.replace("START", start))
        assert "start must be a number of seconds in [0, 86400]" in refused(
            capsys, "validate", scenario_file(tmp_path), "--schedule", schedule)

    @pytest.mark.parametrize("option", ["--time-limit", "--memory-limit"])
    @pytest.mark.parametrize("value", ["nan", "inf"])
    def test_planner_limits(self, tmp_path, capsys, option, value):
        line = refused(capsys, "plan", scenario_file(tmp_path), option, value)
        assert f"Invalid value for '{option}'" in line

    @pytest.mark.parametrize("group", [["a", "b"], 3])
    def test_operator_group_must_be_text(self, tmp_path, capsys, group):
        model = {"type": "graph", "operators": [{"name": "a", "time_ms": {"F": 1, "B": 1, "W": 1}, "group": group}]}
        line = refused(capsys, "describe", scenario_file(tmp_path, with_field("model", model)))
        assert "model.operators[0].group: expected a non-empty string" in line

    def test_yaml_1_1_float_is_a_number(self, tmp_path, capsys):
        text = yaml.safe_dump(SCENARIO).replace("memory_gb: 80", "memory_gb: 8e1").replace("micro_batches: 2", "micro_batches: 2e0")
        assert run(capsys, "simulate", scenario_file(tmp_path, text), "--builtin", "gpipe")[0] == 0

    def test_quoted_number_is_explained(self, tmp_path, capsys):
        text = yaml.safe_dump(SCENARIO).replace("F_ms: 1", "F_ms: '1e-3'")
        assert "model.F_ms: expected a number, got '1e-3' (a quoted number? write it unquoted" in refused(
            capsys, "describe", scenario_file(tmp_path, text))


# -- outputs -----------------------------------------------------------------------------------
class TestOutputs:
    def test_parent_is_a_file_or_missing_or_name_too_long(self, tmp_path, capsys):
        path = scenario_file(tmp_path)
        assert f"{path} is not a folder" in refused(capsys, "simulate", path, "--builtin", "1f1b", "--json", path / "r.json")
        assert "does not exist" in refused(capsys, "simulate", path, "--builtin", "1f1b", "--json", tmp_path / "no" / "r.json")
        assert "this file system allows" in refused(capsys, "simulate", path, "--builtin", "1f1b", "--json", tmp_path / ("x" * 300))

    def test_checked_before_the_work(self, tmp_path, capsys):
        code, out, err, _ = run(capsys, "simulate", scenario_file(tmp_path), "--builtin", "1f1b", "--json", tmp_path)
        assert (code, out, len(err)) == (2, "", 1)  # nothing replayed or printed
        assert "is a directory" in err[0]

    def test_two_outputs_one_file(self, tmp_path, capsys):
        line = refused(capsys, "simulate", scenario_file(tmp_path), "--builtin", "1f1b", "--json", tmp_path / "x", "--trace",
                       tmp_path / "x")
        assert "--json and --trace name the same file" in line
        assert not (tmp_path / "x").exists()

    def test_device_node_is_written_in_place_never_replaced(self, tmp_path, capsys):
        full = _device(tmp_path / "full", 7)
        line = refused(capsys, "simulate", scenario_file(tmp_path), "--builtin", "1f1b", "--json", full)
        assert line.endswith("--json: cannot write (No space left on device)")
        assert stat.S_ISCHR(os.lstat(full).st_mode)

    def test_fifo_is_written_in_place(self, tmp_path, capsys):
        fifo = tmp_path / "report.fifo"
        os.mkfifo(fifo)
        received: list[bytes] = []
        reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()), daemon=True)
        reader.start()
        code, out, err, _ = run(capsys, "simulate", scenario_file(tmp_path), "--builtin", "1f1b", "--json", fifo)
        reader.join(SECONDS)
        assert (code, err) == (0, [])
        assert json.loads(received[0])["makespan"] > 0 and stat.S_ISFIFO(os.lstat(fifo).st_mode)
        assert f"wrote {fifo}" in out

    def test_symlink_is_kept_and_its_target_replaced(self, tmp_path, capsys):
        target, link = tmp_path / "target.json", tmp_path / "link.json"
        target.write_text("old")
        link.symlink_to(target)
        assert run(capsys, "simulate", scenario_file(tmp_path), "--builtin", "1f1b", "--json", link)[0] == 0
        assert link.is_symlink() and json.loads(target.read_text())["makespan"] > 0

    def test_stdout(self, tmp_path, capsys):
        code, out, err, _ = run(capsys, "schedule", "gpipe", scenario_file(tmp_path), "-o", "-")
        assert (code, err) == (0, [])
        assert "format: opplan-schedule/1" in out

    def test_sweep_name_never_leaves_the_output_folder(self, tmp_path, capsys, monkeypatch):
        scenario_file(tmp_path)
        monkeypatch.chdir(tmp_path)
        for name in ("../../escape", "/tmp/escape", ".."):
            sweep = tmp_path / "sweep.yaml"
            sweep.write_text(json.dumps({"name": name, "scenario": "scenario.yaml"}))
            assert "a sweep name is a plain folder name" in refused(capsys, "sweep", sweep, "--workers", "0")
        assert not (tmp_path / "out").exists()


# -- verdicts and paper cuts --------------------------------------------------------------------
#: gpu1 waits for F:s0:1 first, which gpu0 runs only after B:s0:0, which needs gpu1's B:s1:0: a cycle across devices.
DEADLOCKED = {"devices": {"gpu0": ["F:s0:0", {"fused": ["B:s0:0", "W:s0:0"]}, "F:s0:1", {"fused": ["B:s0:1", "W:s0:1"]}],
                          "gpu1": ["F:s1:1", "F:s1:0", {"fused": ["B:s1:0", "W:s1:0"]}, {"fused": ["B:s1:1", "W:s1:1"]}]}}


class TestVerdicts:
    def test_deadlocked_schedule_is_never_the_reference(self, tmp_path, capsys):
        from planner.schedules.compare import comparison_rows
        from simulator.scenario import load_scenario
        from simulator.schedule import schedule_from_dict

        scenario = load_scenario(scenario_file(tmp_path))
        rows = {r.name: r for r in comparison_rows(scenario, {"x": schedule_from_dict(DEADLOCKED)})}
        assert not rows["x"].valid and rows["x"].makespan < rows["gpipe"].makespan
        assert min(r.makespan_vs_best for r in rows.values() if r.valid) == pytest.approx(1.0)
        deadlocked = tmp_path / "deadlocked.json"
        deadlocked.write_text(json.dumps(DEADLOCKED))
        code, out, _, _ = run(capsys, "compare", scenario_file(tmp_path), "--with", f"x={deadlocked}")
        assert code == 0 and "x (invalid)" in out

    def test_options_that_do_nothing_are_refused(self, tmp_path, capsys):
        line = refused(capsys, "compare", scenario_file(tmp_path), "--plan-memory-like", "1f1b")
        assert line == "opplan: error: --plan-memory-like: --plan-memory-like only applies with --plan (it would do nothing here)"

    def test_sweep_where_every_point_failed_exits_non_zero(self, tmp_path, capsys):
        scenario_file(tmp_path)
        sweep = tmp_path / "sweep.yaml"
        sweep.write_text("scenario: scenario.yaml\ngrid: {workload.micro_batchs: [1, 2], schedule: 1f1b}\n")
        code, out, err, _ = run(capsys, "sweep", sweep, "--workers", "0", "--out", tmp_path / "out")
        assert code == 2 and err[-1].startswith(f"opplan: error: {sweep}: all 2 points failed; the first: ")
        assert f"wrote {tmp_path / 'out' / 'results.csv'}" in out

    def test_simulate_builtin_and_mfu_dash(self, tmp_path, capsys):
        code, out, err, _ = run(capsys, "simulate", scenario_file(tmp_path), "--builtin", "1f1b", "--json", tmp_path / "r.json")
        assert (code, err) == (0, [])
        assert "│     - │" in out  # MFU: the scenario gives times, not FLOPs
        assert f"wrote {tmp_path / 'r.json'}" in out
        assert "inf" not in out and "nan" not in out


def test_no_output_overwrites_a_file_the_scenario_read(tmp_path, capsys):
    """The graph file is named inside the scenario, not on the command line; it is an input all the same."""
    graph = tmp_path / "graph.yaml"
    graph.write_text(yaml.safe_dump({"operators": [{"name": f"s{i}", "time_ms": {"F": 1, "B": 1, "W": 1}} for i in range(2)],
                                     "edges": [{"src": "s0", "dst": "s1"}]}))
    before = graph.read_text()
    path = scenario_file(tmp_path, with_field("model", {"type": "graph", "file": "graph.yaml"}))
    line = refused(capsys, "simulate", path, "--builtin", "gpipe", "--json", graph)
    assert line == f"opplan: error: --json: refusing to overwrite input file {graph}"
    assert graph.read_text() == before


def test_dev_stdout_is_the_open_stream(tmp_path, capsys):
    """``--json /dev/stdout`` goes after the report on the same stream, never replaces or rewinds it."""
    code, out, err, _ = run(capsys, "simulate", scenario_file(tmp_path), "--builtin", "1f1b", "--json", "/dev/stdout")
    assert (code, err) == (0, [])
    assert out.index("makespan") < out.index('"makespan"') and "wrote" not in out
