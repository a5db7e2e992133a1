"""Side by side: every built-in schedule that applies to a scenario, replayed and measured.

Each row is one replay by the simulator (never a formula), reduced to the figures the
published comparisons use: makespan, bubble (the largest per-device idle time,
``makespan - busy``), bubble ratio, peak activation memory per rank in bytes and in
*micro-batch-stages* (one stage's activations for one micro-batch), and the parameter
memory multiple (static memory per device over one stage's; DualPipe's 2x). Ratios
are to the best *valid* row: a replay with violations (a deadlock that stops early, a
memory limit broken) is marked invalid and never becomes the reference, since a
deadlocked schedule "finishes" soonest of all. ``extra`` adds schedules from elsewhere
(a file, the planner).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace

from rich.console import Console
from rich.table import Table

from planner.schedules import available, generate
from simulator.engine import replay
from simulator.metrics import build_report
from simulator.report import fmt_bytes, fmt_ms, fmt_percent
from simulator.scenario import Scenario
from simulator.schedule import Schedule

__all__ = ["ComparisonRow", "comparison_rows", "measure", "render_comparison"]


@dataclass(frozen=True)
class ComparisonRow:
    """One schedule's replay, in seconds and bytes; ``None`` where a figure has no unit."""

    name: str
    ranks: int
    makespan: float
    #: Largest per-device idle time over the iteration (``makespan - busy``).
    bubble: float
    #: ``bubble / makespan``.
    bubble_ratio: float
    #: Largest per-rank activation peak (peak memory minus static memory).
    activation_bytes: float
    #: ``activation_bytes`` in micro-batch-stages (one stage's activations of one micro-batch).
    activation_microbatches: float | None
    #: Static memory of the fullest device over one stage's static memory (2.0 for DualPipe).
    param_multiple: float | None
    #: ``None`` when no row is valid (there is no reference).
    makespan_vs_best: float | None = 1.0
    bubble_vs_best: float | None = None
    activation_vs_best: float | None = None
    params_vs_best: float | None = None
    #: e.g. "heuristic", or the first run-time violation (memory over capacity).
    note: str = ""
    #: False when the replay had violations: the row is marked and is never the reference.
    valid: bool = True

    def to_dict(self) -> dict:
        return asdict(self)


def _units(scenario: Scenario) -> tuple[float, float]:
    """One stage's activation bytes and static bytes: the largest stage's, so uniform chains get exact multiples."""
    operators = scenario.problem.graph.operators
    return max(op.activation_bytes for op in operators), max(op.static_bytes for op in operators)


def measure(scenario: Scenario, schedule: Schedule, name: str | None = None) -> ComparisonRow:
    """Replay ``schedule`` on ``scenario`` and reduce it to a row (ratios left at their defaults).

    Static violations raise :class:`~simulator.errors.ScheduleRejected`; run-time ones
    (memory over capacity, a deadlock) become the row's note.

    >>> from planner.schedules.examples import example_scenario
    >>> s = example_scenario(stages=4, micro_batches=8, F=1, B=1, W=1)
    >>> row = measure(s, generate("1f1b", s))
    >>> round(row.makespan * 1e3, 6), round(row.bubble * 1e3, 6), row.activation_microbatches, row.param_multiple
    (33.0, 9.0, 4.0, 1.0)
    """
    timeline = replay(scenario.problem, schedule)
    report = build_report(timeline)
    activation_unit, static_unit = _units(scenario)
    if static_unit > 0:
        params = max(timeline.static_memory.values(), default=0.0) / static_unit
    else:  # no static memory given: count the stages the fullest device holds
        held: dict[str, set[str]] = {}
        for device, entry in schedule.entries():
            held.setdefault(device, set()).update(task.op for task in entry.tasks)
        params = float(max((len(ops) for ops in held.values()), default=0))
    notes = []
    devices = len(scenario.problem.cluster.devices)
    if len(schedule.devices) < devices:
        notes.append(f"{len(schedule.devices)} of {devices} devices")
    if schedule.meta.get("heuristic"):
        notes.append("heuristic")
    if timeline.violations:
        more = len(timeline.violations) - 1
        notes.insert(0, timeline.violations[0].message + (f" (and {more} more)" if more else ""))
    return ComparisonRow(
        name=name or schedule.name,
        ranks=len(schedule.devices),
        makespan=report.makespan,
        bubble=report.max_bubble,
        bubble_ratio=report.max_bubble / report.makespan if report.makespan else 0.0,
        activation_bytes=report.peak_activation,
        activation_microbatches=report.peak_activation / activation_unit if activation_unit > 0 else None,
        param_multiple=params,
        note="; ".join(notes),
        valid=not timeline.violations,
    )


def _ratio(value: float | None, best: float | None) -> float | None:
    if value is None or best is None:
        return None
    if best > 0:
        return value / best
    return 1.0 if math.isclose(value, best, abs_tol=1e-12) else None


def comparison_rows(scenario: Scenario, extra: Mapping[str, Schedule] | None = None, **options) -> list[ComparisonRow]:
    """Rows for every applicable built-in schedule (in ``SCHEDULES`` order), then ``extra``.

    ``extra`` maps a label to a schedule (the planner's, or one read from a file).

    >>> from planner.schedules.examples import example_scenario
    >>> rows = comparison_rows(example_scenario(stages=4, micro_batches=8))
    >>> [(r.name, r.ranks, round(r.makespan * 1e3, 6)) for r in rows if r.makespan_vs_best < 1.1]
    [('zb-h1', 4, 27.0), ('zb-h2', 4, 27.0), ('dualpipe', 4, 26.0), ('dualpipe-per-pass', 4, 26.0)]
    """
    rows = [measure(scenario, generate(name, scenario, **options), name)
            for name, reason in available(scenario, **options).items() if reason is None]
    rows += [measure(scenario, schedule, label) for label, schedule in (extra or {}).items()]
    if not rows:
        return rows

    valid = [r for r in rows if r.valid]  # an invalid row is never the reference

    def best(values: list[float | None]) -> float | None:
        present = [v for v in values if v is not None]
        return min(present) if present else None

    best_makespan = best([r.makespan for r in valid])
    best_bubble = best([r.bubble for r in valid])
    best_activation = best([r.activation_bytes for r in valid])
    best_params = best([r.param_multiple for r in valid])
    return [
        replace(
            row,
            makespan_vs_best=row.makespan / best_makespan if best_makespan else None,
            bubble_vs_best=_ratio(row.bubble, best_bubble),
            activation_vs_best=_ratio(row.activation_bytes, best_activation),
            params_vs_best=_ratio(row.param_multiple, best_params),
        )
        for row in rows
    ]


def _times(value: float | None) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.3g}x"


def render_comparison(rows: list[ComparisonRow], unavailable: Mapping[str, str] | None = None, *,
                      title: str = "", console: Console | None = None) -> None:
    """Print the rows as one table, then the schedules that do not apply and why."""
    console = console or Console(width=max(Console().width, 160))
    table = Table(title=title or None)
    headers = ("schedule", "ranks", "makespan ms", "x best", "bubble ms", "x best", "bubble %",
               "activ. (mb)", "activ. bytes", "x best", "params", "note")
    for header in headers:
        table.add_column(header, justify="left" if header in ("schedule", "note") else "right")
    for row in rows:
        table.add_row(
            row.name if row.valid else f"{row.name} (invalid)",
            str(row.ranks),
            fmt_ms(row.makespan),
            _times(row.makespan_vs_best),
            fmt_ms(row.bubble),
            _times(row.bubble_vs_best),
            fmt_percent(row.bubble_ratio),
            "-" if row.activation_microbatches is None else f"{row.activation_microbatches:.3g}",
            fmt_bytes(row.activation_bytes),
            _times(row.activation_vs_best),
            "-" if row.param_multiple is None else f"{row.param_multiple:.3g}x",
            row.note,
        )
    console.print(table)
    if unavailable:
        console.print("not applicable:")
        for name, reason in unavailable.items():
            console.print(f"  {name}: {reason}", highlight=False)

