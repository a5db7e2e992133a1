"""The planner as the application shows it: a progress line while the solver runs, the
candidates and the certificate when it is done, and the one way the app asks for a
planned schedule (``opplan compare --plan``, sweep points with ``schedule: planner``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import click
from rich.console import Console
from rich.table import Table

from planner.capacity import check_memory_fits
from planner.memory import memory_limits
from simulator.report import fmt_bytes, fmt_ms
from simulator.scenario import Scenario
from simulator.schedule import Schedule

__all__ = ["planned_schedule", "print_plan", "progress_printer", "run_planner", "verbose_option"]


def run_planner(scenario: Scenario, *, time_limit: float | None = None, memory_limit_bytes: float | None = None,
                console: Console | None = None, began: float | None = None, verbose: bool = False, **options):
    """The bi-level planner on ``scenario`` within ``time_limit`` seconds (None: the
    scenario's ``objective.time_limit_s``) counted from ``began`` (default: now), so a
    command's own reading of the scenario counts against the promise.

    A model that cannot fit is refused by the memory lower bound before the planner (and
    CVXPY) is even loaded. Solver messages go to :mod:`logging`; ``verbose`` shows them
    (and HiGHS's own log) on the terminal."""
    began = time.monotonic() if began is None else began
    seconds = time_limit if time_limit is not None else scenario.objective.time_limit_s
    check_memory_fits(scenario, memory_limits(scenario, memory_limit_bytes))
    if verbose:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    from planner.bilevel import plan  # loads CVXPY: only when a plan is asked for

    progress = progress_printer(console) if console is not None else None
    left = max(seconds - (time.monotonic() - began), 0.0)
    return plan(scenario, time_limit=left, memory_limit_bytes=memory_limit_bytes, progress=progress, verbose=verbose,
                nominal_time_limit=seconds, **options)


def planned_schedule(scenario: Scenario, *, time_limit: float | None = None, memory_limit_bytes: float | None = None,
                     console: Console | None = None, began: float | None = None, verbose: bool = False) -> Schedule:
    """The bi-level planner's schedule for ``scenario`` (:func:`run_planner`); with a
    ``console``, its progress and result are printed there."""
    result = run_planner(scenario, time_limit=time_limit, memory_limit_bytes=memory_limit_bytes, console=console,
                         began=began, verbose=verbose)
    if console is not None:
        print_plan(result, console)
    return result.schedule


#: ``--verbose`` for the commands that plan.
verbose_option = click.option("--verbose", is_flag=True, help="show the solvers' own log (HiGHS, CP-SAT) on the terminal")


def progress_printer(console: Console, unit: float = 1e3) -> Callable:
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
