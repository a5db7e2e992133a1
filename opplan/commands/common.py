"""Helpers the sub-commands share: loading the scenario and the schedule to use."""

from __future__ import annotations

import json
from pathlib import Path

import click

from opplan.output import write_output
from simulator.engine import Timeline
from simulator.errors import InputError
from simulator.metrics import build_report
from simulator.scenario import Scenario, load_scenario
from simulator.schedule import Schedule, load_schedule
from simulator.trace import trace_events

__all__ = ["scenario_argument", "load_inputs", "write_reports"]

scenario_argument = click.argument("scenario", type=click.Path(dir_okay=False, path_type=Path))


def load_inputs(scenario_path: Path, schedule_path: Path | None) -> tuple[Scenario, Schedule, Path]:
    """The scenario, and the schedule given with ``--schedule`` or named in the scenario."""
    scenario = load_scenario(scenario_path)
    path = schedule_path or scenario.schedule_file
    if path is None:
        raise InputError(
            "no schedule given: pass --schedule FILE or set schedule: in the scenario", file=str(scenario_path), field="schedule"
        )
    return scenario, load_schedule(path), path


def write_reports(timeline: Timeline, *, json_path: Path | None, trace_path: Path | None, inputs: list[Path]) -> None:
    if json_path is not None:
        report = build_report(timeline)
        write_output(json_path, json.dumps(report.to_dict(), indent=1) + "\n", inputs=inputs, option="--json")
    if trace_path is not None:
        write_output(trace_path, json.dumps(trace_events(timeline)), inputs=inputs, option="--trace")
