"""``opplan plot gantt|memory|sweep``: pictures of a replay or of a sweep's results."""

from __future__ import annotations

from pathlib import Path

import click

from opplan.commands.common import builtin_option, limit_options, load_inputs, scenario_argument
from simulator.engine import Timeline, replay
from simulator.errors import InputError, ScheduleRejected

_output = click.option("-o", "--output", "output", required=True, type=click.Path(dir_okay=False, path_type=Path),
                       help="picture to write: .png, .svg or .pdf")
_schedule = click.option("--schedule", "schedule_path", type=click.Path(dir_okay=False, path_type=Path),
                         help="schedule file (default: the scenario's schedule:)")
_builtin = builtin_option
_title = click.option("--title", help="title (default: schedule name, makespan, bubble, peak memory)")


@click.group()
def plot() -> None:
    """Draw a replay (Gantt chart, memory over time) or a sweep's results."""


def _replayed(scenario_path: Path, schedule_path: Path | None, builtin: str | None, output: Path) -> tuple[Timeline, list[Path]]:
    check_picture(output, [scenario_path, schedule_path])
    scenario, schedule, used = load_inputs(scenario_path, schedule_path, builtin)
    check_picture(output, [scenario_path, used])
    try:
        timeline = replay(scenario.problem, schedule)
    except ScheduleRejected as exc:
        exc.file = str(used or scenario_path)
        raise
    if timeline.violations:
        click.echo(f"opplan: warning: the replay has {len(timeline.violations)} violations; drawn as it ran"
                   f" (first: {timeline.violations[0].message})", err=True)
    return timeline, [p for p in (scenario_path, used) if p is not None]


def check_picture(output: Path, inputs: list[Path | None]) -> None:
    """The picture's path and format, checked before anything is loaded or drawn."""
    from opplan.output import check_outputs, picture_format

    picture_format(output)
    check_outputs({"--output": output}, inputs=inputs)


@plot.command()
@scenario_argument
@_schedule
@_builtin
@_output
@_title
@limit_options
def gantt(scenario: Path, schedule_path: Path | None, builtin: str | None, output: Path, title: str | None) -> None:
    """Gantt chart: one row per device, one bar per task or group, idle time visible."""
    from opplan.output import save_figure
    from simulator.pictures import gantt_figure

    timeline, inputs = _replayed(scenario, schedule_path, builtin, output)
    path = save_figure(gantt_figure(timeline, title=title), output, inputs=inputs)
    click.echo(f"wrote {path} ({len(timeline.executed)} entries on {len(timeline.schedule.devices)} devices)")


@plot.command()
@scenario_argument
@_schedule
@_builtin
@_output
@_title
@limit_options
def memory(scenario: Path, schedule_path: Path | None, builtin: str | None, output: Path, title: str | None) -> None:
    """Memory in use over time on every device, with the capacity."""
    from opplan.output import save_figure
    from simulator.pictures import memory_figure

    timeline, inputs = _replayed(scenario, schedule_path, builtin, output)
    path = save_figure(memory_figure(timeline, title=title), output, inputs=inputs)
    click.echo(f"wrote {path}")


@plot.command("sweep")
@click.argument("results", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--x", "x", required=True, help="column on the x axis (a swept field, e.g. workload.micro_batches)")
@click.option("--y", "y", required=True, help="metric column (e.g. bubble_ratio, makespan_ms, peak_memory_gb)")
@click.option("--series", help="one line per value of this column (e.g. schedule)")
@click.option("--facet", help="one panel per value of this column (e.g. cluster.profile)")
@click.option("--status", "statuses", multiple=True, default=("ok",), show_default=True,
              help="draw rows with this status (repeatable: ok, invalid, ...)")
@_output
@_title
@limit_options
def sweep_plot(results: Path, x: str, y: str, series: str | None, facet: str | None, statuses: tuple[str, ...],
               output: Path, title: str | None) -> None:
    """Chart a sweep's results table (results.csv or results.parquet)."""
    from opplan.output import save_figure
    from opplan.sweeps.chart import sweep_figure
    from opplan.sweeps.table import read_table

    check_picture(output, [results])
    table = read_table(results)
    try:
        figure = sweep_figure(table, x=x, y=y, series=series, facet=facet, statuses=statuses, title=title)
    except InputError as exc:
        exc.file = str(results)
        raise
    path = save_figure(figure, output, inputs=[results])
    click.echo(f"wrote {path}")
