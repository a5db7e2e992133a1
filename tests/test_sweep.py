"""Sweeps: expanding points, running one point, the resumable log, the tables and the command.

Everything here runs in-process (``workers=0``); Dask is exercised in
``test_sweep_dask.py`` and interruption in ``test_sweep_resume.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from opplan.cli import main
from opplan.sweeps import ResultsLog, load_sweep, run_point, run_sweep
from opplan.sweeps.point import job_for
from simulator.errors import InputError

#: 4 stages, F = B = W = 1 ms, 2 GB of activations per micro-batch, 10 GB static, free links.
BASE = {
    "name": "tiny",
    "model": {"type": "pipeline", "stages": 4, "F_ms": 1, "B_ms": 1, "W_ms": 1, "activation_gb": 2, "static_gb": 10},
    "cluster": {"devices": 4, "device": {"memory_gb": 80}},
    "workload": {"micro_batches": 8},
}


def write_sweep(folder: Path, sweep: dict, base: dict | None = None) -> Path:
    (folder / "base.yaml").write_text(yaml.safe_dump(base or BASE))
    path = folder / "sweep.yaml"
    path.write_text(yaml.safe_dump({"name": "tiny", "scenario": "base.yaml", **sweep}, sort_keys=False))
    return path


def gpipe_file(folder: Path, stages: int, micro_batches: int) -> str:
    """A hand-written GPipe schedule file (all forwards, then all full backwards)."""
    devices = {
        f"gpu{s}": [f"F:s{s}:{m}" for m in range(micro_batches)]
        + [{"fused": [f"B:s{s}:{m}", f"W:s{s}:{m}"]} for m in range(micro_batches)]
        for s in range(stages)
    }
    name = f"gpipe-{stages}x{micro_batches}.json"
    (folder / name).write_text(json.dumps({"format": "opplan-schedule/1", "name": "gpipe by hand", "devices": devices}))
    return name


def one_row(tmp_path: Path, **fields) -> dict:
    spec = load_sweep(write_sweep(tmp_path, {"points": [fields]}))
    return run_point(job_for(spec, spec.points[0]))


# -- expanding the points -------------------------------------------------------------------


def test_grid_is_every_combination_with_the_first_field_outermost(tmp_path):
    spec = load_sweep(write_sweep(tmp_path, {"grid": {"cluster.memory_gb": [80, 40], "workload.micro_batches": [4, 8, 16]}}))
    assert [p.fields for p in spec.points] == [
        (("cluster.memory_gb", memory), ("workload.micro_batches", m)) for memory in (80, 40) for m in (4, 8, 16)
    ]
    assert spec.fields == ("cluster.memory_gb", "workload.micro_batches")
    assert len({p.key for p in spec.points}) == 6


def test_a_scalar_grid_value_is_set_on_every_point_and_schedule_all_means_every_builtin(tmp_path):
    from planner.schedules import SCHEDULES

    spec = load_sweep(write_sweep(tmp_path, {"grid": {"workload.micro_batches": 8, "schedule": "all"}}))
    assert [p.schedule for p in spec.points] == list(SCHEDULES)
    assert all(dict(p.fields)["workload.micro_batches"] == 8 for p in spec.points)


def test_explicit_points_come_after_the_grid_and_repeated_points_run_once(tmp_path):
    spec = load_sweep(write_sweep(tmp_path, {
        "grid": {"schedule": ["gpipe", "1f1b"]},
        "points": [{"schedule": "1f1b"}, {"schedule": "zb-h1", "workload.micro_batches": 12}],
    }))
    assert [p.fields for p in spec.points] == [
        (("schedule", "gpipe"),), (("schedule", "1f1b"),), (("schedule", "zb-h1"), ("workload.micro_batches", 12))
    ]


def test_a_point_key_is_stable_but_changes_with_the_base_scenario(tmp_path):
    path = write_sweep(tmp_path, {"grid": {"workload.micro_batches": [4, 8]}})
    first = [p.key for p in load_sweep(path).points]
    assert [p.key for p in load_sweep(path).points] == first
    changed = {**BASE, "model": {**BASE["model"], "F_ms": 2}}
    write_sweep(tmp_path, {"grid": {"workload.micro_batches": [4, 8]}}, base=changed)
    assert not set(first) & {p.key for p in load_sweep(path).points}


def test_a_misspelt_field_is_refused_when_the_sweep_is_loaded(tmp_path):
    with pytest.raises(InputError, match="unknown scenario field 'clutser'") as caught:
        load_sweep(write_sweep(tmp_path, {"grid": {"clutser.memory_gb": [80]}}))
    assert caught.value.field == "grid.clutser.memory_gb"


# -- running one point ----------------------------------------------------------------------


def test_an_ok_point_carries_the_replayed_metrics(tmp_path):
    row = one_row(tmp_path, schedule=gpipe_file(tmp_path, 4, 8))
    # GPipe, p = 4, m = 8, F = B = W = 1 ms: makespan (m + p - 1)(F + B + W) = 33, bubble (p - 1)(F + B + W) = 9.
    assert row["status"] == "ok" and row["error"] == ""
    assert row["makespan_ms"] == pytest.approx(33.0)
    assert row["bubble_ms"] == pytest.approx(9.0)
    assert row["bubble_ratio"] == pytest.approx(9 / 33)
    assert row["utilization"] == pytest.approx(24 / 33)
    assert row["peak_memory_gb"] == pytest.approx(10 + 8 * 2)  # GPipe holds every micro-batch's activations
    assert (row["devices"], row["tasks"], row["schedule_name"]) == (4, 96, "gpipe by hand")


def test_a_builtin_schedule_is_generated_for_the_point_scenario(tmp_path):
    row = one_row(tmp_path, schedule="1f1b", **{"workload.micro_batches": 12})
    assert row["status"] == "ok"
    assert row["tasks"] == 4 * 12 * 3
    assert row["makespan_ms"] == pytest.approx((12 + 3) * 3)  # 1F1B has GPipe's makespan, (m + p - 1)(F + B + W)


def test_memory_over_capacity_is_an_invalid_point_with_its_metrics(tmp_path):
    row = one_row(tmp_path, schedule=gpipe_file(tmp_path, 4, 8), **{"cluster.memory_gb": 20})
    assert row["status"] == "invalid"
    assert row["error"].startswith("memory over capacity on gpu0")
    assert row["peak_memory_gb"] == pytest.approx(26) and row["violations"] >= 1


def test_a_builtin_that_does_not_fit_is_not_applicable_with_the_reason(tmp_path):
    row = one_row(tmp_path, schedule="dualpipe", **{"model.stages": 3, "cluster.devices": 3})
    assert row["status"] == "not-applicable"
    assert row["error"].startswith("dualpipe does not apply: ")
    assert "makespan_ms" not in row


def test_a_broken_point_is_an_error_naming_the_field(tmp_path):
    row = one_row(tmp_path, schedule="1f1b", **{"workload.micro_batches": 0})
    assert row["status"] == "error"
    assert "workload.micro_batches" in row["error"] and "at least 1" in row["error"]


def test_a_schedule_that_does_not_match_the_point_is_an_error_not_a_crash(tmp_path):
    row = one_row(tmp_path, schedule=gpipe_file(tmp_path, 4, 4), **{"workload.micro_batches": 8})
    assert row["status"] == "error"
    assert row["error"].startswith("schedule rejected: ")


# -- the results log ------------------------------------------------------------------------


def test_a_line_cut_short_by_a_kill_is_skipped_and_the_next_row_starts_on_a_fresh_line(tmp_path):
    log = ResultsLog(tmp_path / "results.jsonl")
    log.path.write_text('{"key": "a", "status": "ok"}\n{"key": "b", "sta')
    assert list(log.read()) == ["a"]
    with log.appending() as append:
        append({"key": "c", "status": "ok"})
    assert list(log.read()) == ["a", "c"]


def test_only_one_sweep_appends_to_a_log_at_a_time(tmp_path):
    log = ResultsLog(tmp_path / "results.jsonl")
    with log.appending():
        with pytest.raises(InputError, match="another sweep is writing"):
            with ResultsLog(log.path).appending():
                pass


# -- whole sweeps ---------------------------------------------------------------------------


def test_a_rerun_computes_nothing_and_writes_the_same_table(tmp_path):
    spec = load_sweep(write_sweep(tmp_path, {"grid": {"workload.micro_batches": [4, 8], "schedule": ["gpipe", "1f1b"]}}))
    first = run_sweep(spec, tmp_path / "out", workers=0)
    again = run_sweep(spec, tmp_path / "out", workers=0)
    assert (first.computed, first.reused) == (4, 0)
    assert (again.computed, again.reused) == (0, 4)
    assert len(ResultsLog(tmp_path / "out" / "results.jsonl").rows()) == 4
    pd.testing.assert_frame_equal(first.table, again.table)


def test_retry_errors_runs_only_the_failed_points_again(tmp_path):
    spec = load_sweep(write_sweep(tmp_path, {"grid": {"workload.micro_batches": [0, 8], "schedule": "1f1b"}}))
    run_sweep(spec, tmp_path / "out", workers=0)
    outcome = run_sweep(spec, tmp_path / "out", workers=0, retry_errors=True)
    assert (outcome.computed, outcome.reused) == (1, 1)
    assert list(outcome.table["status"]) == ["error", "ok"]


def test_csv_and_parquet_hold_the_same_table_in_sweep_order(tmp_path):
    spec = load_sweep(write_sweep(tmp_path, {"grid": {"workload.micro_batches": [8, 4], "schedule": ["zb-h1", "gpipe"]}}))
    outcome = run_sweep(spec, tmp_path / "out", workers=0)
    parquet = pd.read_parquet(tmp_path / "out" / "results.parquet")
    csv = pd.read_csv(tmp_path / "out" / "results.csv")
    assert list(parquet["workload.micro_batches"]) == [8, 8, 4, 4]
    assert list(parquet["schedule"]) == ["zb-h1", "gpipe", "zb-h1", "gpipe"]
    assert list(parquet.columns[:3]) == ["workload.micro_batches", "schedule", "schedule_name"]
    for frame in (parquet, csv):
        assert frame["makespan_ms"].tolist() == pytest.approx(outcome.table["makespan_ms"].tolist())
        assert (frame["bubble_ms"] / frame["makespan_ms"]).tolist() == pytest.approx(frame["bubble_ratio"].tolist())


def test_a_misspelt_plot_column_is_refused_before_any_point_runs(tmp_path):
    spec = load_sweep(write_sweep(tmp_path, {"grid": {"schedule": "1f1b"}, "plots": [{"file": "a.png", "x": "schedule", "y": "bubble"}]}))
    with pytest.raises(InputError, match="no column 'bubble'"):
        run_sweep(spec, tmp_path / "out", workers=0)
    assert not (tmp_path / "out" / "results.jsonl").exists()


# -- the command ----------------------------------------------------------------------------


def test_the_command_writes_tables_plots_and_a_summary(tmp_path, capsys):
    path = write_sweep(tmp_path, {
        "grid": {"workload.micro_batches": [4, 8], "schedule": ["gpipe", "zb-h1"]},
        "plots": [{"file": "bubble.svg", "x": "workload.micro_batches", "y": "bubble_ratio", "series": "schedule"}],
    })
    assert main(["sweep", str(path), "--out", str(tmp_path / "out"), "--workers", "0"]) == 0
    out = capsys.readouterr().out
    assert "4 points computed, 0 reused from earlier runs; 4 ok" in out
    assert "zb-h1" in out
    for name in ("results.csv", "results.parquet", "results.jsonl", "bubble.svg"):
        assert (tmp_path / "out" / name).stat().st_size > 0


def test_the_command_reports_a_bad_sweep_file_in_one_line(tmp_path, capsys):
    path = write_sweep(tmp_path, {"grid": {"workload.micro_batches": []}})
    assert main(["sweep", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"opplan: error: {path}: grid.workload.micro_batches: needs at least one value"]
