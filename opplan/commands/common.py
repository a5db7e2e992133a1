"""Helpers the sub-commands share: loading the scenario and the schedule to use, the
limits options, finite numbers on the command line, and writing the reports."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from opplan.output import is_stdout, write_output
from simulator.engine import Timeline
from simulator.errors import InputError
from simulator.limits import Limits, using_limits
from simulator.metrics import build_report
from simulator.scenario import Scenario, load_scenario
from simulator.schedule import Schedule, load_schedule
from simulator.trace import trace_events

__all__ = ["FiniteFloat", "builtin_option", "limit_callback", "limit_options", "scenario_argument", "load_inputs",
           "one_schedule_source", "schedule_for", "wrote", "write_reports"]

scenario_argument = click.argument("scenario", type=click.Path(dir_okay=False, path_type=Path))
builtin_option = click.option("--builtin", "builtin", metavar="NAME",
                              help="a built-in schedule instead of a file (e.g. 1f1b, dualpipe)")


class FiniteFloat(click.FloatRange):
    """:class:`click.FloatRange` that also refuses ``nan`` and ``inf`` (comparisons with NaN are
    false, so a plain ``FloatRange(min=1)`` lets ``--time-limit nan`` through)."""

    name = "finite float"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


def limit_callback(name: str, scale: float = 1) -> Callable:
    """A click callback that raises limit ``name`` to the option's value (times ``scale``) for this run."""

    def callback(ctx: click.Context, param: click.Parameter, value: float | None) -> None:
        if value is not None:
            ctx.with_resource(using_limits(**{name: int(value * scale)}))

    return callback


def limit_options(command: Callable) -> Callable:
    """``--max-tasks``, ``--max-devices``, ``--max-input-mb``: raise the limits of :mod:`simulator.limits` for this run."""
    defaults = Limits()
    options = (
        ("--max-tasks", "max_tasks", click.IntRange(min=1), 1, f"refuse scenarios of more tasks [default: {defaults.max_tasks}]"),
        ("--max-devices", "max_devices", click.IntRange(min=1), 1, f"refuse clusters of more devices [default: {defaults.max_devices}]"),
        ("--max-input-mb", "max_input_bytes", FiniteFloat(min=0, min_open=True, max=1e6), 1e6,
         f"refuse input files larger than this [default: {defaults.max_input_bytes / 1e6:g}]"),
    )
    for flag, name, kind, scale, text in reversed(options):
        command = click.option(flag, type=kind, default=None, expose_value=False, is_eager=True, callback=limit_callback(name, scale),
                               help=text)(command)
    return command


def wrote(path: Path | str, detail: str = "") -> None:
    """The ``wrote FILE`` line every written output gets (none for standard output)."""
    if not is_stdout(path):
        click.echo(f"wrote {path}" + (f" ({detail})" if detail else ""))


def load_inputs(scenario_path: Path, schedule_path: Path | None, builtin: str | None = None) -> tuple[Scenario, Schedule, Path | None]:
    """The scenario, and the schedule to replay: ``--builtin NAME``, ``--schedule FILE``, or the
    scenario's ``schedule:``. The path returned is the schedule file's (``None`` for a built-in)."""
    one_schedule_source(schedule_path, builtin)
    scenario = load_scenario(scenario_path)
    return (scenario, *schedule_for(scenario, scenario_path, schedule_path, builtin))


def one_schedule_source(schedule_path: Path | None, builtin: str | None) -> None:
    """``--schedule FILE`` and ``--builtin NAME`` exclude each other (checked before anything is read)."""
    if schedule_path is not None and builtin is not None:
        raise InputError("give --schedule FILE or --builtin NAME, not both", field="--builtin")


def schedule_for(scenario: Scenario, scenario_path: Path, schedule_path: Path | None,
                 builtin: str | None) -> tuple[Schedule, Path | None]:
    """The schedule to replay on a loaded scenario, and its file (``None`` for a built-in)."""
    if builtin is not None:
        from planner.schedules import builtin_schedule

        return builtin_schedule(builtin, scenario), None
    path = schedule_path or scenario.schedule_file
    if path is None and scenario.serving is not None:
        raise InputError(f"a serving workload (workload.requests) has no schedule to replay: run opplan serve {scenario_path}",
                         file=str(scenario_path), field="workload.requests")
    if path is None:
        raise InputError("no schedule given: pass --schedule FILE, --builtin NAME (e.g. 1f1b), or set schedule: in the scenario",
                         file=str(scenario_path), field="schedule")
    return load_schedule(path), path


def write_reports(timeline: Timeline, *, json_path: Path | None, trace_path: Path | None, inputs: list[Path]) -> None:
    if json_path is not None:
        report = build_report(timeline)
        wrote(write_output(json_path, json.dumps(report.to_dict(), indent=1) + "\n", inputs=inputs, option="--json"))
    if trace_path is not None:
        wrote(write_output(trace_path, json.dumps(trace_events(timeline)), inputs=inputs, option="--trace"))
