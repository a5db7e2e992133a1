"""``opplan sweep SWEEP.yaml``: run a what-if sweep (on Dask), resumable, with a results table."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import click
from rich.console import Console

from opplan.commands.common import limit_callback, limit_options, wrote
from simulator.errors import InputError
from simulator.limits import Limits


def _default_workers() -> int:
    return max(1, min(2, os.cpu_count() or 1))


def _check_folder(spec, folder: Path) -> None:
    """The output folder and every file the sweep will write in it, before any point runs."""
    from opplan.output import check_outputs

    if folder.exists() and not folder.is_dir():
        raise InputError("exists and is not a folder", file=str(folder), field="--out")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create the output folder ({exc.strerror})", file=str(folder), field="--out") from None
    log = folder / "results.jsonl"
    if (log.exists() and not log.is_file()) or log.is_symlink():
        raise InputError("the results log must be a regular file (it is appended to and locked)", file=str(log), field="--out")
    names = ["results.csv", "results.parquet", *(plot.file for plot in spec.plots)]
    check_outputs({f"--out ({name})": folder / name for name in names}, inputs=[spec.file, spec.base_file])


def _verdict(table, sweep_file: Path) -> None:
    """A sweep in which every point failed is a failed command (exit 2), not a table of errors."""
    statuses = list(table["status"])
    if statuses and all(status == "error" for status in statuses):
        first = str(table["error"].iloc[0])
        raise InputError(f"all {len(statuses)} points failed; the first: {first[:200]}", file=str(sweep_file))


@click.command()
@click.argument("sweep_file", metavar="SWEEP.yaml", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), help="output folder (default: out/<sweep name>)")
@click.option("--scheduler", metavar="ADDRESS", help="run on an existing Dask cluster (e.g. tcp://10.0.0.5:8786)")
@click.option("--workers", type=click.IntRange(min=0), default=None,
              help="worker processes of the embedded Dask cluster (default: min(2, cores)); 0 runs in this process")
@click.option("--retry-errors", is_flag=True, help="run points that failed last time again")
@click.option("--max-points", type=click.IntRange(min=1), default=None, expose_value=False, is_eager=True,
              callback=limit_callback("max_points"), help=f"refuse sweeps of more points [default: {Limits().max_points}]")
@limit_options
def sweep(sweep_file: Path, out: Path | None, scheduler: str | None, workers: int | None, retry_errors: bool) -> None:
    """Replay a scenario at every point of a grid; skip points already done; write CSV, Parquet and plots."""
    from opplan.sweeps import ResultsLog, load_sweep, run_sweep, summary_table
    from opplan.sweeps.runner import LOG_NAME

    if scheduler and workers is not None:
        raise InputError("--workers sizes the embedded Dask cluster; with --scheduler it would do nothing", field="--workers")
    spec = load_sweep(sweep_file)
    folder = out or Path("out") / spec.name
    _check_folder(spec, folder)
    where = f"Dask scheduler {scheduler}" if scheduler else "this process" if workers == 0 else "a local Dask cluster"
    click.echo(f"{spec.name}: {len(spec.points)} points on {where}, results in {folder}/")
    try:
        outcome = run_sweep(spec, folder, workers=_default_workers() if workers is None else workers, scheduler=scheduler,
                            retry_errors=retry_errors, console=Console(stderr=True))
    except KeyboardInterrupt:
        saved = len({point.key for point in spec.points} & set(ResultsLog(folder / LOG_NAME).read()))
        click.echo(f"opplan: {saved} of {len(spec.points)} points are saved in {folder / LOG_NAME};"
                   " run the same command again to finish the rest", err=True)
        raise
    Console(width=max(Console().width, 160)).print(summary_table(outcome.table, spec.fields, title=spec.name))
    counts = Counter(outcome.table["status"])
    click.echo(f"{outcome.computed} points computed, {outcome.reused} reused from earlier runs;"
               f" {', '.join(f'{n} {status}' for status, n in sorted(counts.items()))}")
    for path in outcome.files:
        wrote(path)
    _verdict(outcome.table, sweep_file)
