"""Stopping a sweep midway loses nothing finished, and the next run computes only the rest.

The sweep runs as a real ``opplan sweep`` process; its points are made slow enough
(8 stages x ~400 micro-batches, several hundredths of a second each) to stop it while
some are done and others are not. Both run in-process (``--workers 0``): the results
log, not the executor, is what makes a sweep resumable, and Dask would only add its
start-up time (``test_sweep_dask.py`` runs the same rows on a real LocalCluster).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import yaml

from opplan.cli import main

POINTS = 24
RUN = [sys.executable, "-c", "import sys; from opplan.cli import main; sys.exit(main(sys.argv[1:]))", "sweep"]


def slow_sweep(folder: Path) -> Path:
    base = {"model": {"type": "pipeline", "stages": 8, "F_ms": 1, "B_ms": 1, "W_ms": 1}, "cluster": {"devices": 8},
            "workload": {"micro_batches": 8}}
    (folder / "base.yaml").write_text(yaml.safe_dump(base))
    sweep = {"name": "slow", "scenario": "base.yaml",
             "grid": {"workload.micro_batches": list(range(400, 400 + POINTS // 2)), "schedule": ["gpipe", "1f1b"]}}
    (folder / "sweep.yaml").write_text(yaml.safe_dump(sweep))
    return folder / "sweep.yaml"


def log_lines(out: Path) -> list[str]:
    path = out / "results.jsonl"
    return path.read_text().splitlines() if path.exists() else []


def whole_rows(lines: list[str]) -> list[str]:
    """The lines that are complete JSON rows (a kill may cut the last one short)."""
    out = []
    for line in lines:
        try:
            json.loads(line)
        except json.JSONDecodeError:
            continue
        out.append(line)
    return out


def start_and_stop(argv: list[str], out: Path, how: signal.Signals, *, after_rows: int = 2) -> tuple[int, str]:
    """Start the sweep, wait until ``after_rows`` rows are logged, send ``how``; its exit code and stderr."""
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 120
    while len(log_lines(out)) < after_rows:
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the sweep logged no rows in time"
        time.sleep(0.01)
    if how == signal.SIGKILL:
        os.killpg(process.pid, signal.SIGKILL)  # the sweep and the Dask workers it started, at once
    else:
        process.send_signal(how)  # Ctrl-C reaches the driver
    _, stderr = process.communicate(timeout=60)
    return process.returncode, stderr


def rerun(argv: list[str], capsys) -> str:
    """Run the same command again, in this process (the interrupted run was a real process)."""
    capsys.readouterr()
    assert main(argv[len(RUN) - 1 :]) == 0  # from "sweep" on
    return capsys.readouterr().out


def test_a_killed_sweep_resumes_without_recomputing_finished_points(tmp_path, capsys):
    out = tmp_path / "out"
    argv = [*RUN, str(slow_sweep(tmp_path)), "--out", str(out), "--workers", "0"]
    start_and_stop(argv, out, signal.SIGKILL)
    finished = whole_rows(log_lines(out))
    assert 2 <= len(finished) < POINTS, "the kill must land midway for this test to mean anything"

    stdout = rerun(argv, capsys)

    after = log_lines(out)
    assert after[: len(finished)] == finished  # what was finished is kept as it was
    keys = [json.loads(line)["key"] for line in whole_rows(after)]
    assert len(keys) == len(set(keys)) == POINTS  # every point computed exactly once over both runs
    assert f"{POINTS - len(finished)} points computed, {len(finished)} reused from earlier runs; {POINTS} ok" in stdout
    table = pd.read_csv(out / "results.csv")
    assert len(table) == POINTS and set(table["status"]) == {"ok"}


def test_ctrl_c_keeps_finished_points_and_says_how_to_resume(tmp_path, capsys):
    out = tmp_path / "out"
    argv = [*RUN, str(slow_sweep(tmp_path)), "--out", str(out), "--workers", "0"]
    code, stderr = start_and_stop(argv, out, signal.SIGINT)
    assert code == 130
    saved = len(log_lines(out))
    assert 2 <= saved < POINTS
    assert f"opplan: {saved} of {POINTS} points are saved in {out / 'results.jsonl'}" in stderr
    assert "Traceback" not in stderr
    assert not (out / "results.csv").exists()  # the table is written once every point is in

    stdout = rerun(argv, capsys)
    assert f"{POINTS - saved} points computed, {saved} reused" in stdout
    assert len(pd.read_parquet(out / "results.parquet")) == POINTS
