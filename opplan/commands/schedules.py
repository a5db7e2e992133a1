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
from rich.console import Console

from opplan.commands.common import FiniteFloat, limit_options, scenario_argument, wrote
from opplan.commands.plan_hybrid import searched_row
from opplan.output import check_outputs, write_output
from opplan.planning import planned_schedule, verbose_option
from planner.layouts.compare import layout_rows, render_layout_rows, rows_to_dicts
from planner.memory import memory_like
from planner.schedules import available, generate
from planner.schedules.compare import comparison_rows, render_comparison
from simulator.errors import InputError, ScheduleRejected
from simulator.model_shapes import SHAPES
from simulator.scenario import load_scenario
from simulator.schedule import load_schedule, schedule_text
from simulator.validation import static_violations

_chunks = click.option("--chunks", type=click.IntRange(min=1), default=None,
                       help="chunks per rank for interleaved-1f1b (overrides pipeline.chunks)")
_ranks = click.option("--ranks", type=click.IntRange(min=1), default=None,
                      help="pipeline ranks (overrides pipeline.ranks)")


@click.command("schedule")
@click.argument("name")
@scenario_argument
@click.option("-o", "--output", "output", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="where to write the schedule (.json, else YAML)")
@_chunks
@_ranks
@limit_options
def schedule_command(name: str, scenario: Path, output: Path, chunks: int | None, ranks: int | None) -> None:
    """Write the built-in schedule NAME (gpipe, 1f1b, interleaved-1f1b, zb-h1, zb-h2, dualpipe, dualpipev)."""
    check_outputs({"--output": output}, inputs=[scenario])
    loaded = load_scenario(scenario)
    schedule = generate(name, loaded, chunks=chunks, ranks=ranks)
    write_output(output, schedule_text(schedule, output), inputs=[scenario], option="--output")
    wrote(output, f"{schedule.name}, {len(schedule)} tasks on {len(schedule.devices)} devices")


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
@click.option("--time-limit", type=FiniteFloat(min=1.0), default=None, help="with --plan: seconds for the planner")
@_chunks
@_ranks
@limit_options
@verbose_option
def compare_command(scenario: Path, extra: tuple[str, ...], json_path: Path | None, with_plan: bool,
                    plan_memory_like: str | None, time_limit: float | None, chunks: int | None, ranks: int | None,
                    verbose: bool) -> None:
    """Replay every built-in schedule that applies to SCENARIO (and the --with files); print one table.

    A schedule whose replay has violations is marked invalid and is never the "x best" reference.
    For transformer, moe and two_tower models (without --with / --plan) each row is a layout
    (the scenario's, the presets, the built-in schedules on cost-balanced stages) replayed
    for one training step."""
    began = time.monotonic()
    for given, flag in ((plan_memory_like, "--plan-memory-like"), (time_limit, "--time-limit"), (verbose or None, "--verbose")):
        if given is not None and not with_plan:
            raise InputError(f"{flag} only applies with --plan (it would do nothing here)", field=flag)
    files = _parse_with(extra)
    check_outputs({"--json": json_path}, inputs=[scenario, *files.values()])
    loaded = load_scenario(scenario)
    if str(loaded.model_config.get("type", "")) in SHAPES and not extra:
        if plan_memory_like is not None:
            raise InputError("--plan-memory-like applies to pipeline graphs; layouts are held to the device memory",
                             field="--plan-memory-like")
        _compare_layouts(loaded, scenario, json_path, plan_time=time_limit or loaded.objective.time_limit_s if with_plan else None)
        return
    schedules = {label: load_schedule(path) for label, path in files.items()}
    for label, path in files.items():
        violations = static_violations(loaded.problem, schedules[label])
        if violations:
            raise ScheduleRejected(violations, file=str(path))
    if with_plan:
        console = Console(width=max(Console().width, 132))
        limit = memory_like(loaded, plan_memory_like) if plan_memory_like else None
        if limit is not None:
            console.print(f"planner memory limit: {limit / 1e9:.4g} GB per device (the peak of {plan_memory_like})",
                          highlight=False)
        schedules["opplan plan"] = planned_schedule(loaded, time_limit=time_limit, memory_limit_bytes=limit, console=console,
                                                    began=began, verbose=verbose)
    rows = comparison_rows(loaded, schedules, chunks=chunks, ranks=ranks)
    unavailable = {name: reason for name, reason in available(loaded, chunks=chunks, ranks=ranks).items() if reason}
    p = loaded.problem
    render_comparison(rows, unavailable, title=f"{loaded.name}: {len(p.graph)} stages, {p.workload.micro_batches} micro-batches,"
                                               f" {len(p.cluster.devices)} devices")
    if json_path is not None:
        text = json.dumps([row.to_dict() for row in rows], indent=1) + "\n"
        wrote(write_output(json_path, text, inputs=[scenario, *files.values()], option="--json"))


def _compare_layouts(loaded, scenario: Path, json_path: Path | None, plan_time: float | None = None) -> None:
    """Models with layers: the scenario's layout, the practitioner presets and the built-in
    pipeline schedules, each replayed as a layout for one training step (planner.layouts);
    with ``plan_time``, also the hybrid-space search's plan (planner.search) as a row."""
    rows, unavailable = layout_rows(loaded)
    if plan_time is not None:
        rows.append(searched_row(loaded, plan_time, Console(width=max(Console().width, 200))))
    p = loaded.problem
    render_layout_rows(rows, unavailable, title=f"{loaded.name}: one training step per layout, {len(p.cluster.devices)} devices")
    if json_path is not None:
        text = json.dumps(rows_to_dicts(rows), indent=1) + "\n"
        wrote(write_output(json_path, text, inputs=[scenario], option="--json"))
