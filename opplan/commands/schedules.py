"""``opplan schedule`` and ``opplan compare``: the built-in pipeline schedules on a scenario.

``opplan schedule NAME SCENARIO -o FILE`` writes one built-in schedule (JSON or YAML
by the suffix) for ``opplan simulate``/``validate`` or for editing by hand.
``opplan compare SCENARIO [--with LABEL=FILE ...]`` replays every applicable
built-in schedule (and the given files) and prints one table; the schedules that do
not apply are listed underneath with the reason.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import click
import yaml

from opplan.commands.common import scenario_argument
from opplan.commands.plan import print_plan, run_planner, verbose_option
from opplan.output import write_output
from planner.schedules import available, generate
from planner.schedules.compare import comparison_rows, render_comparison
from simulator.errors import InputError, ScheduleRejected
from simulator.scenario import load_scenario
from simulator.schedule import Schedule, load_schedule, schedule_to_dict
from simulator.validation import static_violations

_chunks = click.option("--chunks", type=click.IntRange(min=1), default=None,
                       help="chunks per rank for interleaved-1f1b (overrides pipeline.chunks)")
_ranks = click.option("--ranks", type=click.IntRange(min=1), default=None,
                      help="pipeline ranks (overrides pipeline.ranks)")


def schedule_text(schedule: Schedule, path: Path) -> str:
    """The schedule document as JSON (``.json``) or YAML (anything else)."""
    doc = schedule_to_dict(schedule)
    if path.suffix == ".json":
        return json.dumps(doc, indent=1) + "\n"
    return yaml.safe_dump(doc, sort_keys=False, width=120)


@click.command("schedule")
@click.argument("name")
@scenario_argument
@click.option("-o", "--output", "output", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="where to write the schedule (.json, else YAML)")
@_chunks
@_ranks
def schedule_command(name: str, scenario: Path, output: Path, chunks: int | None, ranks: int | None) -> None:
    """Write the built-in schedule NAME (gpipe, 1f1b, interleaved-1f1b, zb-h1, zb-h2, dualpipe, dualpipev)."""
    loaded = load_scenario(scenario)
    schedule = generate(name, loaded, chunks=chunks, ranks=ranks)
    write_output(output, schedule_text(schedule, output), inputs=[scenario], option="--output")
    click.echo(f"{output}: {schedule.name}, {len(schedule)} tasks on {len(schedule.devices)} devices")


def _parse_with(values: tuple[str, ...]) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for value in values:
        label, sep, file = value.partition("=")
        if not sep or not label or not file:
            raise InputError(f"expected LABEL=FILE, got {value!r}", field="--with")
        if label in out:
            raise InputError(f"label {label!r} given twice", field="--with")
        out[label] = Path(file)
    return out


@click.command("compare")
@scenario_argument
@click.option("--with", "extra", multiple=True, metavar="LABEL=FILE", help="also replay this schedule file")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), help="write the rows as JSON")
@click.option("--plan", "with_plan", is_flag=True, help="also run the bi-level MIP planner and add its schedule as a row")
@click.option("--plan-memory-like", default=None, metavar="SCHEDULE",
              help="with --plan: hold the planner to this built-in schedule's peak memory (e.g. dualpipe)")
@click.option("--time-limit", type=click.FloatRange(min=1.0), default=None, help="with --plan: seconds for the planner")
@_chunks
@_ranks
@verbose_option
def compare_command(scenario: Path, extra: tuple[str, ...], json_path: Path | None, with_plan: bool,
                    plan_memory_like: str | None, time_limit: float | None, chunks: int | None, ranks: int | None,
                    verbose: bool) -> None:
    """Replay every built-in schedule that applies to SCENARIO (and the --with files); print one table."""
    began = time.monotonic()
    loaded = load_scenario(scenario)
    files = _parse_with(extra)
    schedules = {label: load_schedule(path) for label, path in files.items()}
    for label, path in files.items():
        violations = static_violations(loaded.problem, schedules[label])
        if violations:
            raise ScheduleRejected(violations, file=str(path))
    if with_plan:
        schedules["opplan plan"] = _planned(loaded, plan_memory_like, time_limit, began=began, verbose=verbose)
    rows = comparison_rows(loaded, schedules, chunks=chunks, ranks=ranks)
    unavailable = {name: reason for name, reason in available(loaded, chunks=chunks, ranks=ranks).items() if reason}
    p = loaded.problem
    render_comparison(rows, unavailable, title=f"{loaded.name}: {len(p.graph)} stages, {p.workload.micro_batches} micro-batches,"
                                               f" {len(p.cluster.devices)} devices")
    if json_path is not None:
        text = json.dumps([row.to_dict() for row in rows], indent=1) + "\n"
        write_output(json_path, text, inputs=[scenario, *files.values()], option="--json")


def _planned(scenario, memory_like_name: str | None, time_limit: float | None, *, began: float, verbose: bool) -> Schedule:
    """The planner's schedule for the comparison (progress goes to the terminal)."""
    from rich.console import Console

    from planner.memory import memory_like

    console = Console(width=max(Console().width, 132))
    limit = memory_like(scenario, memory_like_name) if memory_like_name else None
    if limit is not None:
        console.print(f"planner memory limit: {limit / 1e9:.4g} GB per device (the peak of {memory_like_name})", highlight=False)
    result = run_planner(scenario, console, began=began, time_limit=time_limit, memory_limit_bytes=limit, verbose=verbose)
    print_plan(result, console)
    return result.schedule
