"""Figures of merit computed from a replayed :class:`~simulator.engine.Timeline`.

Definitions (the ones the published pipeline formulas use):

- *busy* time of a device: the time its compute stream runs tasks;
- *bubble* of a device: ``makespan - busy`` (its idle time over the iteration);
- *bubble ratio*: ``bubble / makespan``; *utilization*: ``busy / makespan``;
- *MFU*: FLOPs the device executed / (peak FLOP/s x makespan);
- *activation peak*: the memory peak minus the device's static memory (weights,
  gradients, optimizer state).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from simulator.engine import Timeline
from simulator.violations import Violation

__all__ = ["DeviceStats", "LinkStats", "Report", "build_report"]


@dataclass(frozen=True)
class DeviceStats:
    device: str
    tasks: int
    busy: float
    comm_busy: float
    bubble: float
    bubble_ratio: float
    utilization: float
    mfu: float
    static_memory: float
    peak_memory: float
    peak_time: float
    activation_peak: float
    capacity: float


@dataclass(frozen=True)
class LinkStats:
    link: str
    transfers: int
    bytes: float
    busy: float


@dataclass(frozen=True)
class Report:
    schedule: str
    makespan: float
    devices: tuple[DeviceStats, ...]
    links: tuple[LinkStats, ...]
    total_bubble: float
    max_bubble: float
    mean_bubble_ratio: float
    mean_utilization: float
    peak_memory: float
    peak_activation: float
    transfer_bytes: float
    violations: tuple[Violation, ...]

    def to_dict(self) -> dict:
        """Plain JSON-ready dict (seconds and bytes; each violation as its message)."""
        out = asdict(self)
        out["violations"] = [v.message for v in self.violations]
        return out


def build_report(timeline: Timeline) -> Report:
    stats = _device_stats(timeline)
    return Report(
        schedule=timeline.schedule.name,
        makespan=timeline.makespan,
        devices=stats,
        links=_link_stats(timeline),
        total_bubble=sum(s.bubble for s in stats),
        max_bubble=max((s.bubble for s in stats), default=0.0),
        mean_bubble_ratio=sum(s.bubble_ratio for s in stats) / len(stats) if stats else 0.0,
        mean_utilization=sum(s.utilization for s in stats) / len(stats) if stats else 0.0,
        peak_memory=max((s.peak_memory for s in stats), default=0.0),
        peak_activation=max((s.activation_peak for s in stats), default=0.0),
        transfer_bytes=sum(t.bytes for t in timeline.transfers),
        violations=timeline.violations,
    )


def _device_stats(timeline: Timeline) -> tuple[DeviceStats, ...]:
    """Busy time, bubble, MFU and memory peak of every device the schedule lists."""
    problem = timeline.problem
    makespan = timeline.makespan
    devices = list(timeline.schedule.devices)
    busy = dict.fromkeys(devices, 0.0)
    comm_busy = dict.fromkeys(devices, 0.0)
    count = dict.fromkeys(devices, 0)
    flops = dict.fromkeys(devices, 0.0)
    by_name = problem.graph.by_name
    for item in timeline.executed:
        duration = item.end - item.start
        if item.stream == "compute":
            busy[item.device] += duration
        else:
            comm_busy[item.device] += duration
        count[item.device] += len(item.entry.tasks)
        for op, _, kind in item.entry.tasks:
            flops[item.device] += by_name[op].flops.get(kind, 0.0)
    peaks = timeline.memory_peaks()
    stats = []
    for device in devices:
        spec = problem.cluster.by_name[device]
        peak_time, peak = peaks[device]
        static = timeline.static_memory.get(device, 0.0)
        bubble = makespan - busy[device]
        stats.append(
            DeviceStats(
                device=device,
                tasks=count[device],
                busy=busy[device],
                comm_busy=comm_busy[device],
                bubble=bubble,
                bubble_ratio=bubble / makespan if makespan else 0.0,
                utilization=busy[device] / makespan if makespan else 0.0,
                mfu=flops[device] / (spec.peak_flops * makespan) if makespan else 0.0,
                static_memory=static,
                peak_memory=peak,
                peak_time=peak_time,
                activation_peak=peak - static,
                capacity=spec.memory_bytes,
            )
        )
    return tuple(stats)


def _link_stats(timeline: Timeline) -> tuple[LinkStats, ...]:
    """Transfers, bytes and busy time of every link that carried something, by name."""
    links: dict[str, list[float]] = {}
    for transfer in timeline.transfers:
        for name in transfer.links:
            entry = links.setdefault(name, [0, 0.0, 0.0])
            entry[0] += 1
            entry[1] += transfer.bytes
            entry[2] += transfer.end - transfer.start
    return tuple(LinkStats(name, int(v[0]), v[1], v[2]) for name, v in sorted(links.items()))
