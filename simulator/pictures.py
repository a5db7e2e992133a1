"""Pictures of a replay, drawn with matplotlib (no display needed).

Every drawing function takes a :class:`~simulator.engine.Timeline` (anything replayed
can be drawn) and returns a :class:`matplotlib.figure.Figure`; writing it to a file is
the application's job (``opplan.output.save_figure``). Figures are built without
``pyplot``, so nothing here touches global state or needs a display.

- :func:`gantt_figure`: one row per device, one bar per executed entry, coloured by
  kind (F, B, W, a fused ``B+W``, an overlapped ``F&B``, communication); idle time is
  the grey background between bars; micro-batch numbers are written in bars wide
  enough to hold them.
- :func:`memory_figure`: bytes in use over time on each device, with the capacity.
"""

from __future__ import annotations

from matplotlib.figure import Figure
from matplotlib.patches import Patch

from simulator.engine import Executed, Timeline
from simulator.metrics import build_report

__all__ = ["COLORS", "category", "entry_label", "gantt_figure", "memory_figure", "palette"]

#: Fill colour per entry category (colour-blind-safe Okabe-Ito palette).
COLORS = {
    "F": "#0072B2",
    "B": "#E69F00",
    "W": "#009E73",
    "B+W": "#D55E00",
    "overlap": "#CC79A7",
    "comm": "#999999",
    "other": "#56B4E9",
}
_IDLE = "#eeeeee"
_LABEL_POINTS = 6.5


def category(item: Executed) -> str:
    """Colour category of an executed entry: its kind, ``B+W`` (fused), ``overlap`` or ``comm``.

    >>> from simulator.schedule import Entry
    >>> from simulator.problem import Task
    >>> category(Executed("gpu0", "compute", Entry((Task("s0", 0, "B"), Task("s0", 0, "W"))), 0.0, 1.0))
    'B+W'
    """
    entry = item.entry
    if item.stream == "comm" or entry.collective is not None:  # a collective on either stream
        return "comm"
    if entry.overlap:
        return "overlap"
    name = "+".join(task.kind for task in entry.tasks)
    return name if name in COLORS else "other"


def entry_label(item: Executed) -> str:
    """Micro-batch number(s) of an entry: ``3``; ``5&2`` when overlapped; ``3+4`` when fused over two.

    >>> from simulator.schedule import Entry
    >>> from simulator.problem import Task
    >>> entry_label(Executed("gpu0", "compute", Entry((Task("s0", 5, "F"), Task("s7", 2, "B")), overlap=True), 0.0, 1.0))
    '5&2'
    """
    numbers: list[str] = []
    for task in item.entry.tasks:
        if str(task.mb) not in numbers:
            numbers.append(str(task.mb))
    return ("&" if item.entry.overlap else "+").join(numbers)


def _devices(timeline: Timeline) -> list[str]:
    return list(timeline.schedule.devices)


def gantt_figure(timeline: Timeline, *, title: str | None = None, width_in: float = 13.0) -> Figure:
    """One row per device, one bar per executed entry (``gid`` ``entry-<i>``), idle time visible.

    When any communication-stream entries ran, each row has a thinner lane for them
    under the compute lane.
    """
    devices = _devices(timeline)
    has_comm = any(item.stream == "comm" for item in timeline.executed)
    figure = Figure(figsize=(width_in, 1.3 + 0.42 * len(devices)), layout="constrained")
    ax = figure.add_subplot()
    span_ms = max(timeline.makespan * 1e3, 1e-12)
    row = {device: index for index, device in enumerate(devices)}
    lanes = {"compute": (-0.38, 0.5 if has_comm else 0.76), "comm": (0.16, 0.22)}
    for index in range(len(devices)):
        ax.axhspan(index - 0.4, index + 0.4, color=_IDLE, zorder=0, linewidth=0)
    # Points available per millisecond of bar, to decide which labels fit.
    axes_points = width_in * 72 * 0.86
    points_per_ms = axes_points / span_ms
    seen: list[str] = []
    ys, lefts, widths, heights, colors = [], [], [], [], []
    for item in timeline.executed:
        kind = category(item)
        if kind not in seen:
            seen.append(kind)
        offset, height = lanes["comm" if item.stream == "comm" else "compute"]
        start, length = item.start * 1e3, (item.end - item.start) * 1e3
        ys.append(row[item.device] + offset + height / 2)
        lefts.append(start)
        widths.append(length)
        heights.append(height)
        colors.append(COLORS[kind])
        label = entry_label(item)
        if item.stream == "compute" and length * points_per_ms >= 0.62 * _LABEL_POINTS * len(label) + 2:
            ax.text(start + length / 2, ys[-1], label, ha="center", va="center", fontsize=_LABEL_POINTS, color="white", zorder=3)
    bars = ax.barh(ys, widths, left=lefts, height=heights, color=colors, edgecolor="white", linewidth=0.4, zorder=2)
    for number, patch in enumerate(bars.patches):
        patch.set_gid(f"entry-{number}")
    ax.set_yticks(range(len(devices)), devices)
    ax.set_ylim(len(devices) - 0.5, -0.5)
    ax.set_xlim(0, span_ms)
    ax.set_xlabel("time (ms)")
    ax.tick_params(axis="y", length=0)
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    handles = [Patch(color=COLORS[kind], label=_LEGEND.get(kind, kind)) for kind in COLORS if kind in seen]
    handles.append(Patch(color=_IDLE, label="idle"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False, fontsize=8)
    ax.set_title(title or _headline(timeline), fontsize=10, loc="left")
    return figure


_LEGEND = {"F": "F (forward)", "B": "B (backward, inputs)", "W": "W (backward, weights)", "B+W": "B+W (full backward)",
           "overlap": "F&B (overlapped)", "comm": "communication"}


def _headline(timeline: Timeline) -> str:
    report = build_report(timeline)
    name = timeline.schedule.name or "schedule"
    text = (f"{name}: makespan {report.makespan * 1e3:.4g} ms, mean bubble {100 * report.mean_bubble_ratio:.1f}%,"
            f" peak memory {report.peak_memory / 1e9:.3g} GB")
    if timeline.violations:
        text += f" ({len(timeline.violations)} violations)"
    return text


def memory_figure(timeline: Timeline, *, title: str | None = None) -> Figure:
    """Memory in use (GB) over time (ms) on every device, and each distinct capacity as a dashed line."""
    devices = _devices(timeline)
    figure = Figure(figsize=(11, 4.8), layout="constrained")
    ax = figure.add_subplot()
    colors = palette(len(devices))
    end = timeline.makespan * 1e3
    for device, color in zip(devices, colors):
        samples = list(timeline.memory[device])
        times = [t * 1e3 for t, _ in samples] + [end]
        used = [b / 1e9 for _, b in samples] + [samples[-1][1] / 1e9]
        ax.step(times, used, where="post", color=color, linewidth=1.2, label=device)
    capacities = sorted({timeline.problem.cluster.by_name[d].memory_bytes for d in devices})
    for capacity in capacities:
        ax.axhline(capacity / 1e9, color="black", linestyle="--", linewidth=1.2, label=f"capacity {capacity / 1e9:.4g} GB")
    ax.set_xlim(0, max(end, 1e-12))
    ax.set_ylim(0, None)
    ax.set_xlabel("time (ms)")
    ax.set_ylabel("memory in use (GB)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False, fontsize=8)
    ax.set_title(title or f"memory: {_headline(timeline)}", fontsize=10, loc="left")
    return figure


def palette(count: int) -> list:
    """``count`` distinct line colours (tab10, or tab20 beyond ten)."""
    from matplotlib import colormaps

    cmap = colormaps["tab10" if count <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(count)]
