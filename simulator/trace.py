"""Chrome / Perfetto trace export of a replayed timeline.

One process per device with a track per stream, one process for the links with a
track per link, and a memory counter per device. Timestamps in microseconds, complete
events (``ph: "X"``), as https://ui.perfetto.dev and chrome://tracing expect.
"""

from __future__ import annotations

from simulator.engine import Timeline

__all__ = ["trace_events"]

_STREAM_TID = {"compute": 0, "comm": 1}


def trace_events(timeline: Timeline) -> dict:
    devices = list(timeline.schedule.devices)
    pid = {device: index for index, device in enumerate(devices)}
    link_pid = len(devices)
    events: list[dict] = []
    for device, index in pid.items():
        events.append({"ph": "M", "name": "process_name", "pid": index, "args": {"name": device}})
        for stream, tid in _STREAM_TID.items():
            events.append({"ph": "M", "name": "thread_name", "pid": index, "tid": tid, "args": {"name": stream}})
    for item in timeline.executed:
        kinds = "".join(t.kind for t in item.entry.tasks) or "collective"
        events.append(
            {
                "ph": "X",
                "name": str(item.entry),
                "cat": kinds,
                "pid": pid[item.device],
                "tid": _STREAM_TID[item.stream],
                "ts": item.start * 1e6,
                "dur": (item.end - item.start) * 1e6,
                "args": {"tasks": [str(t) for t in item.entry.tasks]},
            }
        )
    events += _link_events(timeline, link_pid)
    for device, samples in timeline.memory.items():
        for when, level in samples:
            events.append(
                {"ph": "C", "name": "memory", "pid": pid[device], "ts": when * 1e6, "args": {"GB": level / 1e9}}
            )
    return {"traceEvents": events, "displayTimeUnit": "ms"}


def _link_events(timeline: Timeline, link_pid: int) -> list[dict]:
    """One lane per link: every tensor transfer and every collective step's transfer on it."""
    moves = [(f"{t.pred}->{t.consumer}", t) for t in timeline.transfers]
    moves += [(f"{t.collective}[{t.step}] {t.src}->{t.dst}", t) for t in timeline.collective_transfers]
    events: list[dict] = []
    link_tid: dict[str, int] = {}
    if moves:
        events.append({"ph": "M", "name": "process_name", "pid": link_pid, "args": {"name": "links"}})
    for name, transfer in moves:
        for link in transfer.links:
            if link not in link_tid:
                link_tid[link] = len(link_tid)
                events.append(
                    {"ph": "M", "name": "thread_name", "pid": link_pid, "tid": link_tid[link], "args": {"name": link}}
                )
            events.append(
                {
                    "ph": "X",
                    "name": name,
                    "cat": "comm",
                    "pid": link_pid,
                    "tid": link_tid[link],
                    "ts": transfer.start * 1e6,
                    "dur": (transfer.end - transfer.start) * 1e6,
                    "args": {"bytes": transfer.bytes, "src": transfer.src, "dst": transfer.dst},
                }
            )
    return events

