"""``opplan simulate`` and ``opplan validate``: replay a schedule and report on it."""

from __future__ import annotations

from pathlib import Path

import click

from opplan.commands.common import (
    builtin_option,
    limit_options,
    load_inputs,
    one_schedule_source,
    scenario_argument,
    schedule_for,
    write_reports,
)
from opplan.output import check_outputs
from simulator.engine import replay
from simulator.errors import InputError, ScheduleRejected
from simulator.metrics import build_report
from simulator.report import print_report
from simulator.scenario import load_scenario

_schedule_option = click.option(
    "--schedule", "schedule_path", type=click.Path(dir_okay=False, path_type=Path), help="schedule file (JSON or YAML)"
)


def _replay_naming(scenario, schedule, used: Path | None):
    """Replay; a rejection names the schedule file it came from (the scenario for a built-in)."""
    try:
        return replay(scenario.problem, schedule)
    except ScheduleRejected as exc:
        exc.file = str(used or scenario.file)
        raise


@click.command()
@scenario_argument
@_schedule_option
@builtin_option
@click.option("--trace", "trace_path", type=click.Path(dir_okay=False, path_type=Path), help="write a Perfetto trace ('-': stdout)")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), help="write the report as JSON ('-': stdout)")
@click.option("--collectives", type=click.Choice(["auto", "links", "priced"]), default="auto", show_default=True,
              help="a parallel: layout's collectives: steps on links, priced (alpha-beta), or links up to 300k transfers")
@limit_options
def simulate(scenario: Path, schedule_path: Path | None, builtin: str | None, trace_path: Path | None, json_path: Path | None,
             collectives: str) -> None:
    """Replay a schedule (a file, or --builtin NAME) on the scenario's cluster and print the report.

    A scenario with a ``parallel:`` layout and no schedule replays that layout's training step."""
    check_outputs({"--json": json_path, "--trace": trace_path}, inputs=[scenario, schedule_path])
    one_schedule_source(schedule_path, builtin)
    problem_scenario = load_scenario(scenario)
    if schedule_path is None and builtin is None and problem_scenario.schedule_file is None \
            and problem_scenario.parallel is not None and problem_scenario.serving is None:
        _simulate_layout(problem_scenario, scenario, json_path=json_path, trace_path=trace_path, collectives=collectives)
        return
    if collectives != "auto":
        raise InputError("applies to a scenario's parallel: layout, not to a schedule", field="--collectives")
    schedule, used = schedule_for(problem_scenario, scenario, schedule_path, builtin)
    inputs = [scenario, used]
    check_outputs({"--json": json_path, "--trace": trace_path}, inputs=inputs)
    timeline = _replay_naming(problem_scenario, schedule, used)
    report = build_report(timeline)
    print_report(report, title=f"{problem_scenario.name}: schedule {schedule.name or (used.name if used else builtin)}")
    write_reports(timeline, json_path=json_path, trace_path=trace_path, inputs=inputs)
    if timeline.violations:
        raise ScheduleRejected(list(timeline.violations), file=str(used or scenario))


def _simulate_layout(loaded, scenario: Path, *, json_path: Path | None, trace_path: Path | None, collectives: str) -> None:
    """Replay the scenario's ``parallel:`` layout for one training step (what ``compare`` lists as ``scenario``)."""
    from planner.layouts.build import build_layout_run
    from planner.layouts.compare import render_layout_rows
    from planner.layouts.step import describe_layout, step_result

    run = build_layout_run(loaded, loaded.parallel, "scenario", collectives=collectives)
    timeline = replay(run.problem, run.schedule)
    how = "replayed ranks" + (", collectives priced" if run.collectives == "priced" else "")
    print_report(build_report(timeline), title=f"{loaded.name}: layout {describe_layout(loaded.parallel)} ({how})")
    render_layout_rows([step_result(run, timeline, "scenario")], title=f"{loaded.name}: one training step")
    write_reports(timeline, json_path=json_path, trace_path=trace_path, inputs=[scenario])
    if timeline.violations:
        raise ScheduleRejected(list(timeline.violations), file=str(scenario))


@click.command()
@scenario_argument
@_schedule_option
@builtin_option
@limit_options
def validate(scenario: Path, schedule_path: Path | None, builtin: str | None) -> None:
    """Check a schedule: every dependency, deadlock, missing task and memory limit."""
    problem_scenario, schedule, used = load_inputs(scenario, schedule_path, builtin)
    timeline = _replay_naming(problem_scenario, schedule, used)
    if timeline.violations:
        raise ScheduleRejected(list(timeline.violations), file=str(used or scenario))
    report = build_report(timeline)
    calls = len(schedule.collectives)
    click.echo(
        f"{used or builtin}: valid: {len(schedule)} tasks{f' and {calls} collective' + 's' * (calls > 1) if calls else ''}"
        f" on {len(schedule.devices)} devices,"
        f" makespan {report.makespan * 1e3:.6g} ms, peak memory {report.peak_memory / 1e9:.4g} GB"
    )
