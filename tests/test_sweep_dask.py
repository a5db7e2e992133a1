"""A sweep on a real Dask cluster gives exactly the rows of the same sweep run in-process."""

from __future__ import annotations

import logging

import pandas as pd
import yaml
from distributed import LocalCluster

from opplan.sweeps import load_sweep, run_sweep

BASE = {
    "name": "tiny",
    "model": {"type": "pipeline", "stages": 4, "F_ms": 1, "B_ms": 2, "W_ms": 1, "activation_gb": 2, "static_gb": 10},
    "cluster": {"devices": 4, "device": {"memory_gb": 80}},
    "workload": {"micro_batches": 8},
}
SWEEP = {
    "name": "tiny-dask",
    "scenario": "base.yaml",
    "grid": {"cluster.memory_gb": [80, 20], "workload.micro_batches": [6, 12], "schedule": ["gpipe", "1f1b", "zb-h2", "dualpipe"]},
}


def test_a_local_cluster_with_two_workers_gives_the_serial_results(tmp_path):
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(BASE))
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(SWEEP))
    spec = load_sweep(tmp_path / "sweep.yaml")
    serial = run_sweep(spec, tmp_path / "serial", workers=0)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, silence_logs=logging.ERROR) as cluster:
        assert len(cluster.workers) == 2
        distributed = run_sweep(spec, tmp_path / "dask", scheduler=cluster.scheduler_address)
    assert distributed.computed == serial.computed == len(spec.points) == 16
    # Every status shows up, so the comparison covers ok, invalid and not-applicable rows alike.
    assert set(serial.table["status"]) == {"ok", "invalid", "not-applicable"}
    timing = ["elapsed_s"]
    pd.testing.assert_frame_equal(distributed.table.drop(columns=timing), serial.table.drop(columns=timing))
