"""The sweep's results as a table: one row per point, in sweep order.

Leading columns are the point's fields under their dotted names
(``cluster.profile``, ``workload.micro_batches``, ``schedule``), then ``status`` and
``error``, then the metrics (:data:`opplan.sweeps.point.METRICS`), the seconds the
point took and its key. The same table is written as CSV (to read) and Parquet (to
load in pandas with its types), and summarised on the terminal.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
from rich.table import Table

from opplan.output import write_output
from opplan.sweeps.point import METRICS, SERVING_METRICS
from opplan.sweeps.spec import SweepSpec
from simulator.errors import InputError
from simulator.reading import read_input_bytes

__all__ = ["TABLE_COLUMNS", "results_table", "write_tables", "read_table", "summary_table"]

#: Columns after the point's fields.
TABLE_COLUMNS = ("schedule_name", "status", "error", *METRICS, *SERVING_METRICS, "elapsed_s", "key")
_TAIL = TABLE_COLUMNS


def _cell(value: Any) -> Any:
    return json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else value


def results_table(spec: SweepSpec, rows: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """The table of every point of ``spec`` that has a row (keyed by point key), in sweep order."""
    records = []
    for point in spec.points:
        row = rows.get(point.key)
        if row is None:
            continue
        fields = dict(point.fields)
        record = {path: _cell(fields.get(path)) for path in spec.fields}
        record.update({column: row.get(column) for column in _TAIL})
        records.append(record)
    table = pd.DataFrame.from_records(records, columns=[*spec.fields, *_TAIL])
    for column in ("devices", "tasks", "violations"):  # counts stay integers next to the empty cells of failed points
        table[column] = table[column].astype("Int64")
    for column in spec.fields:  # a field swept over numbers and strings becomes text (Parquet needs one type)
        kinds = {type(v) for v in table[column] if v is not None and not (isinstance(v, float) and pd.isna(v))}
        if len(kinds) > 1 and not kinds <= {int, float}:
            table[column] = table[column].map(lambda v: None if v is None else str(v))
    return table


def write_tables(table: pd.DataFrame, folder: Path, *, inputs: tuple[Path, ...] = ()) -> tuple[Path, Path]:
    """Write ``results.csv`` and ``results.parquet`` into ``folder`` (atomically)."""
    csv = write_output(folder / "results.csv", table.to_csv(index=False), inputs=inputs, option="--out")
    buffer = io.BytesIO()
    table.to_parquet(buffer, index=False)
    parquet = write_output(folder / "results.parquet", buffer.getvalue(), inputs=inputs, option="--out")
    return csv, parquet


def read_table(path: str | Path) -> pd.DataFrame:
    """Load a results table written by a sweep (``.csv`` or ``.parquet``), through the one
    reading path (:func:`simulator.reading.read_input_bytes`: a regular file, size-capped)."""
    path = Path(path)
    if path.suffix not in (".csv", ".parquet"):
        raise InputError("expected a .csv or .parquet results table", file=str(path))
    data = io.BytesIO(read_input_bytes(path))
    try:
        if path.suffix == ".parquet":
            return pd.read_parquet(data)
        return pd.read_csv(data, encoding="utf-8")
    except (ValueError, OSError, UnicodeDecodeError, RecursionError) as exc:  # pyarrow's errors are ValueErrors
        reason = " ".join(str(exc).split())[:120] or type(exc).__name__
        raise InputError(f"cannot read the table ({reason})", file=str(path)) from None


def _fmt(value: Any, scale: float = 1.0, digits: str = ".4g") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return format(value * scale, digits)


def summary_table(table: pd.DataFrame, fields: tuple[str, ...], *, title: str = "", limit: int = 100) -> Table:
    """A rich table of the first ``limit`` rows: fields, status, and the headline metrics."""
    out = Table(title=title, caption=f"{len(table) - limit} more rows in the results table" if len(table) > limit else None)
    for column in fields:
        out.add_column(column, no_wrap=True, min_width=len(column))
    serving = "output_tokens_per_s" in table and table["output_tokens_per_s"].notna().any()
    headline = _SERVING_HEADLINE if serving else _HEADLINE
    for header in ("status", *(h for h, _, _, _ in headline)):
        status = header == "status"
        out.add_column(header, justify="left" if status else "right", no_wrap=True, min_width=14 if status else len(header))
    out.add_column("note", no_wrap=True, overflow="ellipsis")
    for record in table.head(limit).to_dict("records"):
        note = str(record.get("error") or "")
        out.add_row(
            *(str(record[column]) for column in fields),
            str(record["status"]),
            *(_fmt(record.get(column), scale, digits) for _, column, scale, digits in headline),
            note if len(note) <= 50 else note[:49] + "…",
        )
    return out


#: (header, column, scale, format) of the summary's metric columns: replay points, serving points.
_HEADLINE = (("makespan ms", "makespan_ms", 1, ".4g"), ("bubble %", "bubble_ratio", 100, ".1f"), ("util %", "utilization", 100, ".1f"),
             ("peak GB", "peak_memory_gb", 1, ".4g"))
_SERVING_HEADLINE = (("TTFT p99 ms", "ttft_p99_ms", 1, ".4g"), ("TPOT p99 ms", "tpot_p99_ms", 1, ".4g"),
                     ("out tok/s", "output_tokens_per_s", 1, ".5g"), ("KV peak %", "kv_peak", 100, ".1f"))
