"""The cluster: devices (the *machines*), and directed links between endpoints.

Endpoints are devices and switches. A transfer from one device to another follows the
route (the lowest-latency path of links) and holds every link on it while it runs, so
transfers that share a link contend. A transfer of ``S`` bytes over a route with total
latency ``L`` and bottleneck bandwidth ``W`` takes ``L + S / W``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from types import MappingProxyType

import networkx as nx

from simulator.errors import InputError

__all__ = ["Device", "Link", "Cluster", "Route"]


@dataclass(frozen=True)
class Device:
    """One accelerator. ``peak_flops`` is dense peak; ``efficiency`` the achieved fraction."""

    name: str
    type: str
    memory_bytes: float
    peak_flops: float
    efficiency: float = 1.0
    node: int = 0
    #: Achieved rates of work classes other than ``gemm`` (which is ``effective_flops``):
    #: ``hbm`` in bytes/s, ``attention.<kernel>`` in FLOP/s (see :mod:`simulator.costs`).
    rates: Mapping[str, float] = field(default_factory=dict, hash=False, compare=False)

    def __post_init__(self) -> None:
        if self.memory_bytes <= 0:
            raise InputError(f"memory must be positive, got {self.memory_bytes:g}", field=f"devices.{self.name}.memory")
        if self.peak_flops <= 0:
            raise InputError(f"peak FLOP/s must be positive, got {self.peak_flops:g}", field=f"devices.{self.name}.peak")
        if not 0 < self.efficiency <= 1:
            raise InputError(f"efficiency must be in (0, 1], got {self.efficiency:g}", field=f"devices.{self.name}.efficiency")

    @property
    def effective_flops(self) -> float:
        return self.peak_flops * self.efficiency

    def work_time(self, work: Mapping[str, float]) -> float:
        """Seconds for one pass's work: each class's amount over this device's rate, summed.

        A roofline per part: each piece was put in the class that bounds it. ``gemm`` and an
        ``attention.*`` class the device has no figure for run at ``effective_flops``; a
        device without an ``hbm`` figure (a hand-written ``device:``) does memory-bound work
        for free, as the FLOP-only model did.

        >>> d = Device("g", "x", 1e9, peak_flops=100.0, efficiency=0.5, rates={"hbm": 10.0})
        >>> d.work_time({"gemm": 100.0, "hbm": 20.0, "attention.cudnn": 50.0})
        5.0
        """
        total = 0.0
        for name, amount in work.items():
            rate = self.rates.get(name)
            if rate is None:
                if name in ("hbm", "launch"):
                    continue
                rate = self.effective_flops
            total += amount / rate
        return total


@dataclass(frozen=True)
class Link:
    """A directed link between two endpoints: bandwidth in bytes/s, latency in seconds."""

    name: str
    src: str
    dst: str
    bandwidth: float
    latency: float = 0.0

    def __post_init__(self) -> None:
        if self.bandwidth <= 0:
            raise InputError(f"bandwidth must be positive, got {self.bandwidth:g}", field=f"links.{self.name}.bandwidth")
        if self.latency < 0:
            raise InputError(f"latency must not be negative, got {self.latency:g}", field=f"links.{self.name}.latency")


@dataclass(frozen=True)
class Route:
    """The links a transfer holds; ``latency`` summed, ``bandwidth`` the bottleneck."""

    links: tuple[str, ...]
    latency: float
    bandwidth: float

    def transfer_time(self, size: float) -> float:
        """``L + S / W``; zero for an empty route (same device) or an ideal interconnect."""
        if not self.links:
            return 0.0
        return self.latency + (size / self.bandwidth if size else 0.0)


LOCAL = Route(links=(), latency=0.0, bandwidth=float("inf"))


def _switch_graph(switches: Mapping[str, Mapping[str, float]]) -> nx.DiGraph:
    graph = nx.DiGraph()
    graph.add_nodes_from(switches)
    graph.add_weighted_edges_from((s, t, w) for s, out in switches.items() for t, w in out.items())
    return graph


@dataclass(frozen=True)
class Cluster:
    """Devices and links. ``ideal_interconnect`` makes every transfer free (textbook setting)."""

    name: str
    devices: tuple[Device, ...]
    links: tuple[Link, ...] = ()
    ideal_interconnect: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "devices", tuple(self.devices))
        object.__setattr__(self, "links", tuple(self.links))
        if not self.devices:
            raise InputError("a cluster needs at least one device", field="cluster.devices")
        names = [d.name for d in self.devices]
        if len(set(names)) != len(names):
            raise InputError("duplicate device names", field="cluster.devices")
        link_names = [link.name for link in self.links]
        if len(set(link_names)) != len(link_names):
            raise InputError("duplicate link names", field="cluster.links")

    @cached_property
    def by_name(self) -> Mapping[str, Device]:
        return MappingProxyType({d.name: d for d in self.devices})

    @cached_property
    def link_by_name(self) -> Mapping[str, Link]:
        return MappingProxyType({link.name: link for link in self.links})

    @cached_property
    def _topology(self) -> nx.DiGraph:
        graph = nx.DiGraph()
        graph.add_nodes_from(d.name for d in self.devices)
        for link in self.links:
            # Weight by latency, with a tiny per-hop term so ties prefer fewer hops.
            graph.add_edge(link.src, link.dst, name=link.name, weight=link.latency + 1e-12)
        return graph

    @cached_property
    def _routes(self) -> dict[tuple[str, str], Route]:
        return {}

    @cached_property
    def _hops(self) -> tuple[dict, dict, nx.DiGraph] | None:
        """The topology's edges as plain dicts, ``succ[u][v]`` and ``pred[v][u]`` = (weight,
        link name) for the edge the graph keeps per pair, and the switch graph: switch ->
        switch -> the lightest weight of a direct link or of a hop through one device.
        None when two devices are linked directly (then :meth:`_short_route` does not apply)."""
        graph = self._topology
        devices = self.by_name
        succ = {u: {v: (data["weight"], data["name"]) for v, data in graph.succ[u].items()} for u in graph}
        pred: dict[str, dict] = {u: {} for u in graph}
        switches: dict[str, dict[str, float]] = {u: {} for u in graph if u not in devices}
        for u, out in succ.items():
            for v, (weight, name) in out.items():
                pred[v][u] = (weight, name)
                if u in devices and v in devices:
                    return None
                if u not in devices and v not in devices:
                    switches[u][v] = min(weight, switches[u].get(v, float("inf")))
        for d in devices:
            for s, (w_in, _) in pred[d].items():
                for t, (w_out, _) in succ[d].items():
                    if s != t:
                        switches[s][t] = min(w_in + w_out, switches[s].get(t, float("inf")))
        return succ, pred, _switch_graph(switches)

    @cached_property
    def _switch_distances(self) -> dict[str, dict[str, float]]:
        return {}

    def _short_route(self, src: str, dst: str) -> tuple[str, ...] | None:
        """The link names of the lightest route from device to device when it passes through
        one switch and is provably the only lightest one, without a search over every
        endpoint (None: ask networkx).

        With no device-to-device links, every route leaves ``src`` to a switch ``a``,
        travels between switches (directly or through devices) and enters ``dst`` from a
        switch ``b``: its weight is ``w(src, a) + d(a, b) + w(b, dst)`` with ``d`` the
        distance in the small graph of switches. The minimum over ``a`` and ``b`` is the
        shortest route's weight; when ``a = b`` attains it alone, that two-link route is the
        one Dijkstra returns. A 2048-GPU switched cluster's routes then cost a few dict
        lookups each instead of a shortest-path search over 2,300 endpoints.
        """
        hops = self._hops
        if hops is None:
            return None
        succ, pred, switches = hops
        best, runner_up, names = float("inf"), float("inf"), None
        for a, (w1, first) in succ.get(src, {}).items():
            distances = self._switch_distances.get(a)
            if distances is None:
                distances = self._switch_distances[a] = nx.single_source_dijkstra_path_length(switches, a)
            for b, (w2, last) in pred.get(dst, {}).items():
                cost = w1 + distances.get(b, float("inf")) + w2 if a != b else w1 + w2
                if cost < best:
                    best, runner_up, names = cost, best, ((first, last) if a == b else None)
                else:
                    runner_up = min(runner_up, cost)
        return names if names is not None and best < runner_up else None

    def route(self, src: str, dst: str) -> Route:
        """The route from device ``src`` to device ``dst`` (cached).

        Raises :class:`InputError` when the devices are unknown or not connected.
        """
        if src == dst or self.ideal_interconnect:
            if src not in self.by_name or dst not in self.by_name:
                raise InputError(f"unknown device {src if src not in self.by_name else dst!r}", field="cluster.devices")
            return LOCAL
        key = (src, dst)
        cached = self._routes.get(key)
        if cached is not None:
            return cached
        for end in key:
            if end not in self.by_name:
                raise InputError(f"unknown device {end!r}", field="cluster.devices")
        names = self._short_route(src, dst)
        if names is None:
            try:
                path = nx.shortest_path(self._topology, src, dst, weight="weight")
            except nx.NetworkXNoPath:
                raise InputError(f"no route from {src} to {dst}", field="cluster.links") from None
            names = tuple(self._topology.edges[u, v]["name"] for u, v in zip(path, path[1:]))
        links = [self.link_by_name[n] for n in names]
        route = Route(
            links=names,
            latency=sum(link.latency for link in links),
            bandwidth=min(link.bandwidth for link in links),
        )
        self._routes[key] = route
        return route

    def collective_time(self, device: str, size: float) -> float:
        """Time for ``device`` to push ``size`` bytes through its slowest outgoing link.

        Used for communication operators (all-to-all dispatch/combine, all-reduce
        shares) that are modelled as tasks on the device's communication stream.
        """
        if self.ideal_interconnect or size == 0:
            return 0.0
        out = [link for link in self.links if link.src == device]
        if not out:
            return 0.0
        slowest = min(out, key=lambda link: link.bandwidth)
        # A collective crosses the network both ways: one hop out, one hop in.
        return 2 * slowest.latency + size / slowest.bandwidth

    def transfer_time(self, src: str, dst: str, size: float) -> float:
        return self.route(src, dst).transfer_time(size)

    @property
    def device_names(self) -> tuple[str, ...]:
        return tuple(d.name for d in self.devices)
