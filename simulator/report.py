"""Terminal rendering of a :class:`~simulator.metrics.Report` (rich tables)."""

from __future__ import annotations

import math

from rich.console import Console
from rich.table import Table

from simulator.metrics import Report

__all__ = ["print_report", "collectives_table", "communication_table", "fmt_bytes", "fmt_mfu", "fmt_ms", "fmt_percent"]


def fmt_ms(seconds: float) -> str:
    """Milliseconds; ``-`` for a figure that is not a finite number (no report prints ``inf`` or ``nan``)."""
    return f"{seconds * 1e3:.4g}" if math.isfinite(seconds) else "-"


def fmt_percent(ratio: float, digits: int = 1) -> str:
    """``ratio`` in percent, ``-`` when not finite.

    >>> fmt_percent(0.25), fmt_percent(float("nan"))
    ('25.0', '-')
    """
    return f"{100 * ratio:.{digits}f}" if math.isfinite(ratio) else "-"


def fmt_mfu(mfu: float) -> str:
    """Model FLOPs utilisation in percent; ``-`` when no FLOPs were counted (a scenario that
    gives measured times instead of FLOPs has no MFU, which is not the same as 0 %)."""
    return fmt_percent(mfu) if mfu > 0 else "-"


def fmt_bytes(size: float) -> str:
    if not math.isfinite(size):
        return "-"
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if abs(size) >= scale:
            return f"{size / scale:.3g} {unit}"
    return f"{size:.3g} B"


def print_report(report: Report, console: Console | None = None, *, title: str = "") -> None:
    console = console or Console(width=max(Console().width, 132))
    table = Table(title=title or f"schedule {report.schedule!r}: makespan {fmt_ms(report.makespan)} ms")
    for header in ("device", "tasks", "busy ms", "bubble ms", "bubble %", "util %", "MFU %", "peak mem", "at ms", "activ. peak"):
        table.add_column(header, justify="right")
    for d in report.devices:
        table.add_row(
            d.device,
            str(d.tasks),
            fmt_ms(d.busy),
            fmt_ms(d.bubble),
            fmt_percent(d.bubble_ratio),
            fmt_percent(d.utilization),
            fmt_mfu(d.mfu),
            fmt_bytes(d.peak_memory),
            fmt_ms(d.peak_time),
            fmt_bytes(d.activation_peak),
        )
    console.print(table)
    console.print(
        f"makespan {fmt_ms(report.makespan)} ms | bubble total {fmt_ms(report.total_bubble)} ms,"
        f" max {fmt_ms(report.max_bubble)} ms, mean ratio {fmt_percent(report.mean_bubble_ratio, 2)}%"
        f" | utilization {fmt_percent(report.mean_utilization)}% | peak memory {fmt_bytes(report.peak_memory)}"
        f" | transferred {fmt_bytes(report.transfer_bytes)}"
    )
    if report.links:
        links = Table(title="links")
        for header in ("link", "transfers", "bytes", "busy ms"):
            links.add_column(header, justify="right")
        for link in report.links:
            links.add_row(link.link, str(link.transfers), fmt_bytes(link.bytes), fmt_ms(link.busy))
        console.print(links)
    if report.collectives:
        console.print(collectives_table(report))
    if any(d.comm_time for d in report.devices):
        console.print(communication_table(report))


def communication_table(report: Report) -> Table:
    """Per device: time spent communicating, and how much of it compute did not hide."""
    table = Table(title="communication")
    for header in ("device", "comm ms", "hidden ms", "exposed ms"):
        table.add_column(header, justify="right")
    for d in report.devices:
        table.add_row(d.device, fmt_ms(d.comm_time), fmt_ms(d.comm_hidden), fmt_ms(d.comm_exposed))
    return table


def collectives_table(report: Report) -> Table:
    """Collectives summed per (op, algorithm, ranks): time against the idle-cluster time
    (slowdown > 1: contention on shared links) and nccl-tests' bus bandwidth."""
    rows: dict[tuple[str, str, int], list[float]] = {}
    for c in report.collectives:
        row = rows.setdefault((c.op, c.algorithm, c.ranks), [0, 0.0, 0.0, 0.0, 0.0])
        row[0] += 1
        row[1] += c.bytes
        row[2] += c.duration
        row[3] += c.idle
        row[4] += c.bus_bandwidth * c.duration  # time-weighted mean below
    table = Table(title="collectives")
    for header in ("collective", "algorithm", "ranks", "calls", "bytes", "time ms", "alone ms", "slowdown", "busbw GB/s"):
        table.add_column(header, justify="right")
    for (op, algorithm, ranks), (calls, size, took, idle, bus) in sorted(rows.items()):
        table.add_row(op, algorithm, str(ranks), str(int(calls)), fmt_bytes(size), fmt_ms(took), fmt_ms(idle),
                      f"{took / idle:.2f}" if idle else "-", f"{bus / took / 1e9:.1f}" if took else "-")
    return table
