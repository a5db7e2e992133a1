"""What-if sweeps: one base scenario, many points, each replayed; results resumable.

>>> from planner.sweeps import load_sweep, run_sweep   # doctest: +SKIP
>>> outcome = run_sweep(load_sweep("scenarios/sweeps/hardware-x-microbatches.yaml"), "out/hw")  # doctest: +SKIP

Layout: :mod:`~planner.sweeps.spec` reads the sweep file and expands its points,
:mod:`~planner.sweeps.overrides` sets dotted fields of a scenario document,
:mod:`~planner.sweeps.point` runs one point (what Dask workers execute),
:mod:`~planner.sweeps.store` is the resumable results log,
:mod:`~planner.sweeps.runner` drives Dask and the progress bar, and
:mod:`~planner.sweeps.table` turns rows into CSV / Parquet / a terminal summary.
"""

from planner.sweeps.point import METRICS, STATUSES, PointJob, run_point
from planner.sweeps.runner import SweepOutcome, run_sweep
from planner.sweeps.spec import Point, PlotSpec, SweepSpec, load_sweep
from planner.sweeps.store import ResultsLog
from planner.sweeps.table import read_table, results_table, summary_table, write_tables

__all__ = [
    "METRICS",
    "STATUSES",
    "Point",
    "PlotSpec",
    "PointJob",
    "ResultsLog",
    "SweepOutcome",
    "SweepSpec",
    "load_sweep",
    "read_table",
    "results_table",
    "run_point",
    "run_sweep",
    "summary_table",
    "write_tables",
]
