"""Figures of merit computed from a replayed :class:`~simulator.engine.Timeline`.

Definitions (the ones the published pipeline formulas use):

- *busy* time of a device: the time its compute stream runs tasks;
- *bubble* of a device: ``makespan - busy`` (its idle time over the iteration);
- *bubble ratio*: ``bubble / makespan``; *utilization*: ``busy / makespan``;
- *MFU*: FLOPs the device executed / (peak FLOP/s x makespan);
- *activation peak*: the memory peak minus the device's static memory (weights,
  gradients, optimizer state);
- *communication* of a device: the time any of its entries communicates (a collective
  on either stream, or a communication operator); *exposed* the part of it during
  which no compute task runs on the device, *hidden* the rest (overlapped with compute).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from simulator.collectives import bus_bandwidth_factor
from simulator.engine import Timeline
from simulator.violations import Violation

__all__ = ["CollectiveStats", "DeviceStats", "LinkStats", "Report", "build_report", "communication_exposure"]


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
    #: Seconds the device communicates, and how much of that no compute task overlaps.
    comm_time: float = 0.0
    comm_exposed: float = 0.0

    @property
    def comm_hidden(self) -> float:
        return self.comm_time - self.comm_exposed


@dataclass(frozen=True)
class LinkStats:
    link: str
    transfers: int
    bytes: float
    busy: float


@dataclass(frozen=True)
class CollectiveStats:
    """One collective as it ran: ``duration`` against ``idle`` (alone on the idle cluster),
    and nccl-tests' bus bandwidth ``bytes / duration × factor`` (2(n−1)/n for all-reduce)."""

    name: str
    op: str
    algorithm: str
    ranks: int
    bytes: float
    start: float
    duration: float
    idle: float
    bus_bandwidth: float

    @property
    def slowdown(self) -> float:
        """How much longer than alone: 1.0 when nothing it shares a link with ran meanwhile."""
        return self.duration / self.idle if self.idle else 1.0


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
    collectives: tuple[CollectiveStats, ...] = ()

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
        transfer_bytes=sum(t.bytes for t in timeline.transfers) + sum(t.bytes for t in timeline.collective_transfers),
        violations=timeline.violations,
        collectives=_collective_stats(timeline),
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
    exposure = communication_exposure(timeline)
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
                comm_time=exposure[device][0],
                comm_exposed=exposure[device][1],
            )
        )
    return tuple(stats)


def communication_exposure(timeline: Timeline) -> dict[str, tuple[float, float]]:
    """Per device: ``(communication seconds, exposed seconds)``.

    Communication is the union of the device's collective entries (either stream) and
    communication-stream entries; exposed is the part of it when no compute task runs.

    >>> merge([(0, 2), (1, 3), (5, 6)]), overlap([(0, 3), (5, 6)], [(2, 5.5)])
    ([(0, 3), (5, 6)], 1.5)
    """
    comm: dict[str, list[tuple[float, float]]] = {d: [] for d in timeline.schedule.devices}
    compute: dict[str, list[tuple[float, float]]] = {d: [] for d in timeline.schedule.devices}
    for item in timeline.executed:
        talking = item.stream == "comm" or item.entry.collective is not None
        (comm if talking else compute)[item.device].append((item.start, item.end))
    out = {}
    for device in comm:
        talk, work = merge(comm[device]), merge(compute[device])
        total = sum(end - start for start, end in talk)
        out[device] = (total, total - overlap(talk, work))
    return out


def merge(intervals: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The union of ``intervals`` as sorted, disjoint intervals."""
    out: list[tuple[float, float]] = []
    for start, end in sorted(intervals):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


def overlap(a: list[tuple[float, float]], b: list[tuple[float, float]]) -> float:
    """Total length of the intersection of two sorted, disjoint interval lists."""
    i = j = 0
    total = 0.0
    while i < len(a) and j < len(b):
        total += max(0.0, min(a[i][1], b[j][1]) - max(a[i][0], b[j][0]))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return total


def _collective_stats(timeline: Timeline) -> tuple[CollectiveStats, ...]:
    """Every collective in the order it started."""
    out = []
    for r in sorted(timeline.collectives, key=lambda r: (r.start, r.name)):
        duration = r.end - r.start
        bus = r.bytes / duration * bus_bandwidth_factor(r.op, len(r.group)) if duration > 0 else 0.0
        out.append(CollectiveStats(r.name, r.op, r.algorithm, len(r.group), r.bytes, r.start, duration, r.idle, bus))
    return tuple(out)


def _link_stats(timeline: Timeline) -> tuple[LinkStats, ...]:
    """Transfers, bytes and busy time of every link that carried something, by name."""
    links: dict[str, list[float]] = {}
    for transfer in (*timeline.transfers, *timeline.collective_transfers):
        for name in transfer.links:
            entry = links.setdefault(name, [0, 0.0, 0.0])
            entry[0] += 1
            entry[1] += transfer.bytes
            entry[2] += transfer.end - transfer.start
    return tuple(LinkStats(name, int(v[0]), v[1], v[2]) for name, v in sorted(links.items()))
