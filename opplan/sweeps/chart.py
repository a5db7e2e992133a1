"""A sweep's results as a chart: a metric against a swept field, by series and facet."""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Sequence

import pandas as pd
from matplotlib.figure import Figure

from opplan.sweeps.table import TABLE_COLUMNS
from simulator.errors import InputError
from simulator.pictures import palette

__all__ = ["sweep_figure"]


def _require_columns(table: pd.DataFrame, names: Iterable[str | None]) -> None:
    for name in names:
        if name is not None and name not in table.columns:
            raise InputError(f"no column {name!r} in the results (columns: {', '.join(map(str, table.columns))})", field=name)


def _varying(group: pd.DataFrame, fixed: Sequence[str]) -> list[str]:
    """Point fields (columns before the result columns) that still differ inside one plotted point."""
    fields = [c for c in group.columns if c not in TABLE_COLUMNS and c not in fixed]
    return [c for c in fields if group[c].astype(str).nunique() > 1]


def _distinct(values: Iterable) -> list:
    """Distinct values in order of first appearance (the sweep's order)."""
    out: list = []
    for value in values:
        if value not in out:
            out.append(value)
    return out


def _is_numeric(values: Sequence) -> bool:
    return all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in values)


def sweep_figure(
    table: pd.DataFrame,
    *,
    x: str,
    y: str,
    series: str | None = None,
    facet: str | None = None,
    statuses: Sequence[str] = ("ok",),
    title: str | None = None,
) -> Figure:
    """``y`` against ``x`` from a sweep's results: one line per ``series`` value, one panel per ``facet`` value.

    Only rows whose status is in ``statuses`` are drawn. If two rows land on the same
    (facet, series, x) the picture would hide one: that is refused with the fields
    that differ, to be used as ``series`` or ``facet``.
    """
    _require_columns(table, (x, y, series, facet, "status"))
    rows = table[table["status"].isin(list(statuses))]
    if rows.empty:
        raise InputError(f"no rows with status {' or '.join(statuses)} to draw", field="status")
    _refuse_hidden_points(rows, [c for c in (facet, series, x) if c is not None], x)
    facets = [f for f in _distinct(table[facet]) if f in set(rows[facet])] if facet else [None]
    columns = min(len(facets), 3)
    lines = (len(facets) + columns - 1) // columns
    figure = Figure(figsize=(4.6 * columns + 1.6, 3.6 * lines), layout="constrained")
    axes = figure.subplots(lines, columns, squeeze=False, sharey=True)
    xs = _distinct(rows[x])
    categorical = not _is_numeric(xs)
    xs = xs if categorical else sorted(xs)
    names = [n for n in _distinct(table[series]) if n in set(rows[series])] if series else [None]
    colors = dict(zip(names, palette(len(names))))
    for index, value in enumerate(facets):
        ax = axes[index // columns][index % columns]
        part = rows if facet is None else rows[rows[facet] == value]
        for name in names:
            line = part if series is None else part[part[series] == name]
            if line.empty:
                continue
            line = line.assign(_pos=line[x].map(xs.index) if categorical else line[x]).sort_values("_pos")
            ax.plot(line["_pos"], line[y], marker="o", markersize=4, color=colors[name], label=str(name) if series else y)
        _label_panel(ax, x, xs, categorical, f"{facet} = {value}" if facet else "")
    for index in range(len(facets), lines * columns):
        axes[index // columns][index % columns].set_visible(False)
    axes[0][0].set_ylabel(y)
    if series:
        figure.legend(*axes[0][0].get_legend_handles_labels() if len(facets) == 1 else _all_handles(axes), title=series,
                      loc="outside right upper", frameon=False, fontsize=8)
    if title:
        figure.suptitle(title, fontsize=10)
    return figure


def _refuse_hidden_points(rows: pd.DataFrame, keys: list[str], x: str) -> None:
    """Two rows on one (facet, series, x) would hide each other: say which fields tell them apart."""
    for _, group in rows.groupby(keys, dropna=False, sort=False):
        if len(group) > 1:
            differ = _varying(group, keys)
            hint = f"; they differ in {', '.join(differ)}: use it as --series or --facet" if differ else ""
            raise InputError(f"{len(group)} rows share one point of the plot{hint}", field=x)


def _label_panel(ax, x: str, xs: list, categorical: bool, title: str) -> None:
    """Ticks (every category, or every value when there are few), the x label, the panel title, a grid."""
    if categorical:
        ax.set_xticks(range(len(xs)), [str(v) for v in xs])
    elif len(xs) <= 12:
        ax.set_xticks(xs, [f"{v:g}" for v in xs])
    ax.set_xlabel(x)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)


def _all_handles(axes) -> tuple[list, list]:
    handles, labels = [], []
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            if label not in labels:
                handles.append(handle)
                labels.append(label)
    return handles, labels
