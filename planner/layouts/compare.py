"""``opplan compare`` for models with layers: every practitioner preset and built-in pipeline
schedule as a layout, replayed for one training step and printed side by side."""

from __future__ import annotations

from collections.abc import Mapping

from rich.console import Console
from rich.table import Table

from planner.layouts.presets import pipeline_layouts, preset_layouts
from planner.layouts.step import StepResult, simulate_layout
from simulator.errors import InputError
from simulator.layout import Layout
from simulator.scenario import Scenario

__all__ = ["layout_candidates", "layout_rows", "render_layout_rows", "rows_to_dicts"]


def layout_candidates(scenario: Scenario) -> tuple[dict[str, Layout], dict[str, str]]:
    """The scenario's own ``parallel:`` layout, the presets, then the built-in pipeline schedules."""
    layouts: dict[str, Layout] = {}
    if scenario.parallel is not None:
        layouts["scenario"] = scenario.parallel
    presets, why = preset_layouts(scenario)
    pipelines, why_not = pipeline_layouts(scenario)
    layouts.update(presets)
    layouts.update(pipelines)
    return layouts, {**why, **why_not}


def layout_rows(scenario: Scenario) -> tuple[list[StepResult], dict[str, str]]:
    """One replayed step per applicable layout (ratios in ``note`` left to the table)."""
    layouts, unavailable = layout_candidates(scenario)
    rows = []
    for name, layout in layouts.items():
        try:
            rows.append(simulate_layout(scenario, layout, name))
        except InputError as exc:
            unavailable[name] = exc.message
    return rows, unavailable


def _gb(value: float) -> str:
    return f"{value / 1e9:.1f}"


def render_layout_rows(rows: list[StepResult], unavailable: Mapping[str, str] | None = None, *, title: str = "",
                       console: Console | None = None) -> None:
    """Print the rows as one table (step time over the best valid row's; a row whose replay broke
    a rule, e.g. over memory, is marked invalid), then what does not apply."""
    console = console or Console(width=max(Console().width, 200))
    best = _best(rows)
    table = Table(title=title or None)
    headers = ("layout", "degrees", "step ms", "x best", "tokens/s", "MFU %", "peak GB", "weights", "grads", "optim",
               "activ.", "buffers", "comm ms", "exposed", "hidden", "replayed", "note")
    for header in headers:
        table.add_column(header, justify="left" if header in ("layout", "degrees", "replayed", "note") else "right")
    for row in rows:
        table.add_row(row.name if not row.note else f"{row.name} (invalid)", row.layout, f"{row.step * 1e3:.1f}",
                      f"{row.step / best:.3g}x" if best else "-",
                      f"{row.tokens_per_s:,.0f}", f"{100 * row.mfu:.1f}", _gb(row.memory_peak), _gb(row.weights),
                      _gb(row.grads), _gb(row.optimizer), _gb(row.activations), _gb(row.buffers), f"{row.comm * 1e3:.1f}",
                      f"{row.comm_exposed * 1e3:.1f}", f"{row.comm_hidden * 1e3:.1f}", row.simulated, row.note)
    console.print(table)
    if unavailable:
        console.print("not applicable:")
        for name, reason in unavailable.items():
            console.print(f"  {name}: {reason}", highlight=False)


def _best(rows: list[StepResult]) -> float:
    """The fastest valid step: a row whose replay broke a rule (over memory) is never the reference."""
    return min((r.step for r in rows if not r.note), default=0.0)


def rows_to_dicts(rows: list[StepResult]) -> list[dict]:
    """The rows for ``--json``, each with its step time over the best valid row's (None without one)."""
    best = _best(rows)
    return [{**r.to_dict(), "valid": not r.note, "step_vs_best": r.step / best if best else None} for r in rows]
