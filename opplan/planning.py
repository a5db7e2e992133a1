"""The planner as the application shows it: a progress line while the solver runs, the
candidates and the certificate when it is done, and the one way the app asks for a
planned schedule (``opplan compare --plan``, sweep points with ``schedule: planner``).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from rich.console import Console
from rich.table import Table

from simulator.report import fmt_bytes, fmt_ms
from simulator.scenario import Scenario
from simulator.schedule import Schedule

__all__ = ["planned_schedule", "print_plan", "progress_printer"]


def planned_schedule(scenario: Scenario, *, time_limit: float | None = None, memory_limit_bytes: float | None = None,
                     console: Console | None = None) -> Schedule:
    """The bi-level planner's schedule for ``scenario`` (``time_limit`` None: the scenario's
    ``objective.time_limit_s``); with a ``console``, its progress and result are printed there."""
    from planner.bilevel import plan  # loads CVXPY: only when a plan is asked for

    progress = progress_printer(console) if console is not None else None
    result = plan(scenario, time_limit=time_limit, memory_limit_bytes=memory_limit_bytes, progress=progress)
    if console is not None:
        print_plan(result, console)
    return result.schedule


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
    console.print(
        f"plan: makespan {fmt_ms(result.makespan)} ms (simulated) | MIP timing {fmt_ms(lower.makespan)} ms |"
        f" lower bound {fmt_ms(lower.lower_bound)} ms | gap {100 * lower.gap:.2f}% | placement {result.placement}"
        f" | memory limit {fmt_bytes(max(result.memory_limit.values()))}",
        highlight=False,
    )
    for note in result.notes:
        console.print(f"note: {note}", highlight=False)
