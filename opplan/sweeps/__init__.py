"""What-if sweeps: one base scenario, many points, each replayed; results resumable.

>>> from opplan.sweeps import load_sweep, run_sweep   # doctest: +SKIP
>>> outcome = run_sweep(load_sweep("scenarios/sweeps/hardware-x-microbatches.yaml"), "out/hw")  # doctest: +SKIP

Layout: :mod:`~opplan.sweeps.spec` reads the sweep file and expands its points,
:mod:`~opplan.sweeps.overrides` sets dotted fields of a scenario document,
:mod:`~opplan.sweeps.point` runs one point (what Dask workers execute),
:mod:`~opplan.sweeps.store` is the resumable results log,
:mod:`~opplan.sweeps.runner` drives Dask and the progress bar, and
:mod:`~opplan.sweeps.table` turns rows into CSV / Parquet / a terminal summary.

The names below are imported on first use, so a Dask worker that only needs
:func:`run_point` does not pay for pandas, rich and Dask's client side.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOMES = {
    "METRICS": "point",
    "PointJob": "point",
    "run_point": "point",
    "SweepOutcome": "runner",
    "run_sweep": "runner",
    "Point": "spec",
    "PlotSpec": "spec",
    "SweepSpec": "spec",
    "load_sweep": "spec",
    "ResultsLog": "store",
    "read_table": "table",
    "results_table": "table",
    "summary_table": "table",
    "write_tables": "table",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'opplan.sweeps' has no attribute {name!r}")
    return getattr(importlib.import_module(f"opplan.sweeps.{home}"), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_HOMES])
