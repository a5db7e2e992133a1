"""``opplan plan``: the bi-level MIP planner from the command line.

Prints a progress line while the solver runs (incumbent, bound, gap), then the
candidates the upper level weighed, the certificate (lower bound and gap), and the
simulator's report of the planned schedule. ``-o`` writes the schedule document.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from opplan.commands.common import scenario_argument, write_reports
from opplan.output import write_output
from planner.capacity import check_memory_fits
from planner.memory import memory_like, memory_limits
from simulator.errors import InputError
from simulator.metrics import build_report
from simulator.report import fmt_bytes, fmt_ms, print_report
from simulator.scenario import OBJECTIVES, load_scenario
from simulator.schedule import schedule_to_dict

__all__ = ["plan_command", "progress_printer", "print_plan", "run_planner", "verbose_option"]


#: The lower level's formulations (kept literal so ``opplan --help`` does not load CVXPY).
FORMULATIONS = ("tight", "global-m")


def progress_printer(console: Console, unit: float = 1e3) -> callable:
    """A callback printing at most one progress line every two seconds."""
    last = [0.0]

    def show(p) -> None:
        now = time.monotonic()
        if now - last[0] < 2.0:
            return
        last[0] = now
        incumbent = f"{p.incumbent * unit:.6g} ms" if p.incumbent is not None else "none yet"
        bound = f"{p.bound * unit:.6g} ms" if p.bound is not None else "-"
        gap = f"{100 * p.gap:.2f}%" if p.gap is not None else "-"
        console.print(f"  [{p.elapsed:6.1f} s] incumbent {incumbent} | bound {bound} | gap {gap}", highlight=False)

    return show


verbose_option = click.option("--verbose", is_flag=True, help="show the MIP solver's own log (HiGHS) on the terminal")


def run_planner(scenario, console: Console, *, began: float, time_limit: float | None, memory_limit_bytes: float | None,
                verbose: bool = False, **options):
    """The planner on ``scenario`` within ``time_limit`` seconds counted from ``began``.

    A model that cannot fit is refused by the memory lower bound before the planner (and
    CVXPY) is even loaded; solver messages go to :mod:`logging` unless ``verbose``."""
    seconds = time_limit if time_limit is not None else scenario.objective.time_limit_s
    check_memory_fits(scenario, memory_limits(scenario, memory_limit_bytes))
    if verbose:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    from planner.bilevel import plan

    left = max(seconds - (time.monotonic() - began), 0.0)
    return plan(scenario, time_limit=left, memory_limit_bytes=memory_limit_bytes, progress=progress_printer(console),
                verbose=verbose, **options)


def print_plan(result, console: Console) -> None:
    table = Table(title="upper level: candidate placements (best order found for each)")
    for header in ("placement", "makespan ms", "order from"):
        table.add_column(header)
    for name, span, source in result.candidates:
        table.add_row(name, fmt_ms(span), source)
    console.print(table)
    lower = result.lower
    console.print(
        f"lower level: {lower.binaries} order binaries ({lower.fixed_pairs} pairs fixed by precedence, symmetry and"
        f" time windows), {lower.neighbourhoods} neighbourhood sub-MIPs ({lower.improvements} improvements),"
        f" status {lower.status}, {lower.solve_seconds:.1f} s"
    )
    console.print(f"incumbent found by: {lower.source} (warm start: {result.warm_start})", highlight=False)
    console.print(
        f"plan: makespan {fmt_ms(result.makespan)} ms (simulated) | MIP timing {fmt_ms(lower.makespan)} ms |"
        f" lower bound {fmt_ms(lower.lower_bound)} ms | gap {100 * lower.gap:.2f}% | placement {result.placement}"
        f" | memory limit {fmt_bytes(max(result.memory_limit.values()))}",
        highlight=False,
    )
    for note in result.notes:
        console.print(f"note: {note}", highlight=False)


@click.command("plan")
@scenario_argument
@click.option("--objective", type=click.Choice(OBJECTIVES), default=None, help="what to minimise (default: the scenario's)")
@click.option("--time-limit", type=click.FloatRange(min=1.0), default=None, help="seconds for the whole plan")
@click.option("--memory-limit", "memory_limit_gb", type=click.FloatRange(min=0.0, min_open=True), default=None,
              help="per-device memory limit in GB (decimal, as datasheets)")
@click.option("--memory-like", "like_schedule", default=None, metavar="SCHEDULE",
              help="limit memory to the peak of this built-in schedule (e.g. dualpipe)")
@click.option("--formulation", type=click.Choice(FORMULATIONS), default="tight", show_default=True)
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None, help="write the schedule")
@click.option("--trace", "trace_path", type=click.Path(dir_okay=False, path_type=Path), help="write a Perfetto trace")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), help="write the report as JSON")
@verbose_option
def plan_command(
    scenario: Path,
    objective: str | None,
    time_limit: float | None,
    memory_limit_gb: float | None,
    like_schedule: str | None,
    formulation: str,
    output: Path | None,
    trace_path: Path | None,
    json_path: Path | None,
    verbose: bool,
) -> None:
    """Plan SCENARIO with the bi-level MIP; print the certificate and the simulated report.

    The time limit counts from the start of the command (reading the scenario included)."""
    began = time.monotonic()
    loaded = load_scenario(scenario)
    if memory_limit_gb is not None and like_schedule is not None:
        raise InputError("give --memory-limit or --memory-like, not both", field="--memory-like")
    limit = memory_limit_gb * 1e9 if memory_limit_gb is not None else None
    console = Console(width=max(Console().width, 132))
    if like_schedule is not None:
        limit = memory_like(loaded, like_schedule)
        console.print(f"memory limit: {fmt_bytes(limit)} per device (the peak of {like_schedule})", highlight=False)
    result = run_planner(loaded, console, began=began, time_limit=time_limit, memory_limit_bytes=limit, objective=objective,
                         formulation=formulation, verbose=verbose, log=lambda line: console.print(line, highlight=False))
    print_plan(result, console)
    print_report(build_report(result.timeline), console, title=f"{loaded.name}: planned schedule")
    if output is not None:
        write_output(output, json.dumps(schedule_to_dict(result.schedule), indent=1) + "\n", inputs=[scenario], option="--output")
        console.print(f"wrote {output}")
    write_reports(result.timeline, json_path=json_path, trace_path=trace_path, inputs=[scenario])
