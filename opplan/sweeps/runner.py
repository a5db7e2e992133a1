"""Running a sweep's points on Dask (or in-process), logging each row as it lands.

Points are independent, so they are submitted all at once and collected in
completion order; the driver alone writes the results log, so workers need no shared
file system for results (they do need to read the scenario and schedule files).
By default an embedded ``distributed.LocalCluster`` of worker *processes* runs them
(the replay is pure Python, so threads would share one core); ``scheduler=`` uses a
running Dask cluster instead, and ``workers=0`` runs everything in this process.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from opplan.sweeps.point import PointJob, job_for, run_point
from opplan.sweeps.spec import SweepSpec
from opplan.sweeps.store import ResultsLog
from opplan.sweeps.table import TABLE_COLUMNS, results_table, write_tables
from simulator.errors import InputError

__all__ = ["SweepOutcome", "LOG_NAME", "execute", "run_sweep"]

LOG_NAME = "results.jsonl"


@dataclass(frozen=True)
class SweepOutcome:
    """What a finished sweep produced: the table, the files, and how much was (re)computed."""

    table: pd.DataFrame
    folder: Path
    computed: int
    reused: int
    files: tuple[Path, ...]


def _failed_row(job: PointJob, exc: BaseException) -> dict[str, Any]:
    """A point whose worker died (or whose result could not come back) is a failed point too."""
    return {"key": job.key, "fields": dict(job.fields), "status": "error", "error": f"worker failed: {type(exc).__name__}: {exc}",
            "schedule_name": "", "elapsed_s": None}


def _serial(jobs: list[PointJob]) -> Iterator[dict[str, Any]]:
    for job in jobs:
        yield run_point(job)


def _dask(jobs: list[PointJob], workers: int, scheduler: str | None) -> Iterator[dict[str, Any]]:
    from distributed import Client, LocalCluster, as_completed

    with ExitStack() as stack:
        if scheduler:
            try:
                client = stack.enter_context(Client(scheduler, timeout="20s"))
            except (OSError, TimeoutError) as exc:
                raise InputError(f"cannot reach the Dask scheduler at {scheduler} ({exc})", field="--scheduler") from None
        else:
            cluster = stack.enter_context(
                LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None, silence_logs=logging.ERROR)
            )
            client = stack.enter_context(Client(cluster))
        futures = client.map(run_point, jobs, key=[f"opplan-point-{job.key}" for job in jobs], pure=False)
        job_of = {future.key: job for future, job in zip(futures, jobs)}
        for future in as_completed(futures):
            try:
                row = future.result()
            except Exception as exc:  # noqa: BLE001 - a dead worker fails its point, not the sweep
                row = _failed_row(job_of[future.key], exc)
            future.release()
            yield row


def execute(jobs: list[PointJob], *, workers: int = 2, scheduler: str | None = None) -> Iterator[dict[str, Any]]:
    """Rows of ``jobs`` in completion order: on a Dask cluster, or in-process when ``workers == 0``."""
    if not jobs:
        return iter(())
    if workers == 0 and not scheduler:
        return _serial(jobs)
    return _dask(jobs, max(1, workers), scheduler)


@contextmanager
def _progress(console: Console | None, total: int, done: int, label: str) -> Iterator[Callable[[dict[str, Any]], None]]:
    if console is None:
        yield lambda row: None
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[note]}"), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        earlier = [f"{done} from earlier runs"] if done else []
        task = progress.add_task(label, total=total, completed=done, note=", ".join(earlier))
        failed = 0

        def advance(row: dict[str, Any]) -> None:
            nonlocal failed
            failed += row.get("status") == "error"
            progress.update(task, advance=1, note=", ".join([*earlier, f"{failed} failed"] if failed else earlier))

        yield advance


def run_sweep(
    spec: SweepSpec,
    folder: str | Path,
    *,
    workers: int = 2,
    scheduler: str | None = None,
    retry_errors: bool = False,
    console: Console | None = None,
) -> SweepOutcome:
    """Run every point of ``spec`` not already in ``folder``'s results log, then write the tables and plots.

    Rows are appended to ``folder/results.jsonl`` as points finish; an interrupted
    sweep (``KeyboardInterrupt``) keeps them, and the next call computes only the
    rest. ``retry_errors`` runs failed points again. Progress goes to ``console``.
    """
    folder = Path(folder)
    _check_plots(spec)
    log = ResultsLog(folder / LOG_NAME)
    computed = 0
    with log.appending() as append:
        known = log.read()
        done = {key for key, row in known.items() if not (retry_errors and row.get("status") == "error")}
        todo = [point for point in spec.points if point.key not in done]
        reused = len(spec.points) - len(todo)
        with _progress(console, len(spec.points), reused, spec.name) as advance:
            for row in execute([job_for(spec, point) for point in todo], workers=workers, scheduler=scheduler):
                append(row)
                computed += 1
                advance(row)
    table = results_table(spec, log.read())
    inputs = (spec.file, spec.base_file)
    files = list(write_tables(table, folder, inputs=inputs))
    if spec.plots:
        files.extend(_draw(spec, table, folder, inputs))
    return SweepOutcome(table=table, folder=folder, computed=computed, reused=reused, files=tuple(files))


def _check_plots(spec: SweepSpec) -> None:
    """Catch a misspelt plot column before the sweep runs, not after."""
    columns = (*spec.fields, *TABLE_COLUMNS)
    for index, plot in enumerate(spec.plots):
        for role in ("x", "y", "series", "facet"):
            name = getattr(plot, role)
            if name is not None and name not in columns:
                raise InputError(f"no column {name!r} in the results (columns: {', '.join(columns)})", file=str(spec.file),
                                 field=f"plots[{index}].{role}")


def _draw(spec: SweepSpec, table: pd.DataFrame, folder: Path, inputs: Iterable[Path]) -> list[Path]:
    from opplan.output import save_figure
    from opplan.sweeps.chart import sweep_figure

    out = []
    for plot in spec.plots:
        figure = sweep_figure(table, x=plot.x, y=plot.y, series=plot.series, facet=plot.facet, title=f"{spec.name}: {plot.y}")
        out.append(save_figure(figure, folder / plot.file, inputs=inputs))
    return out
