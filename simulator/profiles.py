"""Hardware profiles (``hardware_profiles/*.yaml``) and building a cluster from them.

Every figure in a profile is ``{value: ..., source: "..."}``: a number nobody can
trace is not allowed in. A profile describes one node type; a scenario asks for a
number of nodes (and may override memory or bandwidth for what-if studies).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from types import MappingProxyType

from simulator.cluster import Cluster, Device, Link
from simulator.costs import ATTENTION_KERNELS
from simulator.errors import InputError
from simulator.units import read_bandwidth, read_seconds
from simulator.yamlio import Section, read_section

__all__ = ["HardwareProfile", "load_profile", "profile_names", "build_cluster", "profile_dir"]

_FIGURES = {
    "device": ("memory_gb", "peak_tflops", "efficiency"),
    # Optional roofline figures (see :mod:`simulator.costs`): without them memory-bound
    # work is free and every FLOP runs at ``efficiency``.
    "roofline": ("weight_gemm_efficiency", "memory_bandwidth_GBps", "hbm_efficiency", "kernel_overhead_us"),
    "node": (
        "gpus_per_node",
        "intra_bandwidth_GBps",
        "intra_efficiency",
        "intra_latency_us",
        "inter_bandwidth_GBps",
        "inter_efficiency",
        "inter_latency_us",
    ),
}


@dataclass(frozen=True)
class HardwareProfile:
    """A node type: one GPU model, how many per node, and its links."""

    name: str
    description: str
    device_type: str
    memory_bytes: float
    peak_flops: float
    efficiency: float
    gpus_per_node: int
    intra_bandwidth: float  # bytes/s per direction, peak
    intra_efficiency: float
    intra_latency: float  # seconds, end to end
    inter_bandwidth: float
    inter_efficiency: float
    inter_latency: float
    sources: Mapping[str, str]
    file: str = ""
    #: Achieved rates of the non-GEMM work classes (:attr:`simulator.cluster.Device.rates`).
    rates: Mapping[str, float] = field(default_factory=dict)


def profile_dir() -> Path:
    """The bundled ``hardware_profiles`` folder (works installed or from a checkout).

    ``hardware_profiles`` is a namespace package (data only). Under an editable
    install its ``__path__`` also holds setuptools' finder hook, which is not a
    folder, and ``importlib.resources.files`` then fails; so the first entry that
    is a real folder is used.
    """
    package = importlib.import_module("hardware_profiles")
    for entry in package.__path__:
        if Path(entry).is_dir():
            return Path(entry)
    return Path(str(resources.files("hardware_profiles")))


def profile_names() -> list[str]:
    return sorted(p.stem for p in profile_dir().glob("*.yaml"))


def _figure(section: Section, key: str) -> float:
    figure = section.section(key)
    figure.check_keys({"value", "source", "note"})
    if "source" not in figure or not str(figure.raw("source")).strip():
        raise figure.error("every hardware figure needs a source: note", "source")
    return figure.number("value", strictly_positive=True, minimum=1e-3, maximum=1e6)  # physical range, see simulator.units


def load_profile(name_or_path: str, *, base_dir: Path | None = None) -> HardwareProfile:
    """Load a profile by bundled name (``h100-sxm``) or by path to a YAML file."""
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml"):
        path = candidate if candidate.is_absolute() or base_dir is None else base_dir / candidate
    else:
        path = profile_dir() / f"{name_or_path}.yaml"
        if not path.exists():
            raise InputError(
                f"unknown hardware profile {name_or_path!r} (bundled: {', '.join(profile_names())})",
                field="cluster.profile",
            )
    doc = read_section(path)
    doc.check_keys({"name", "description", "device", "node"})
    device, node = doc.section("device"), doc.section("node")
    device.check_keys({"type", *_FIGURES["device"], *_FIGURES["roofline"], "attention_efficiency"})
    node.check_keys(set(_FIGURES["node"]))
    sources = {
        f"{part}.{key}": str(sec.section(key).raw("source"))
        for part, sec in (("device", device), ("node", node))
        for key in _FIGURES[part]
    }
    values = {f"{part}.{key}": _figure(sec, key) for part, sec in (("device", device), ("node", node)) for key in _FIGURES[part]}
    for key in ("device.efficiency", "node.intra_efficiency", "node.inter_efficiency"):
        if values[key] > 1:
            raise InputError(f"an efficiency must be at most 1, got {values[key]:g}", file=str(path), field=f"{key}.value")
    return HardwareProfile(
        name=doc.str("name"),
        description=doc.str("description", ""),
        device_type=device.str("type"),
        memory_bytes=values["device.memory_gb"] * 1e9,
        peak_flops=values["device.peak_tflops"] * 1e12,
        efficiency=values["device.efficiency"],
        gpus_per_node=int(values["node.gpus_per_node"]),
        intra_bandwidth=values["node.intra_bandwidth_GBps"] * 1e9,
        intra_efficiency=values["node.intra_efficiency"],
        intra_latency=values["node.intra_latency_us"] * 1e-6,
        inter_bandwidth=values["node.inter_bandwidth_GBps"] * 1e9,
        inter_efficiency=values["node.inter_efficiency"],
        inter_latency=values["node.inter_latency_us"] * 1e-6,
        sources=MappingProxyType(sources),
        file=str(path),
        rates=MappingProxyType(_roofline_rates(device, values["device.peak_tflops"] * 1e12, values["device.efficiency"], path)),
    )


def _roofline_rates(device: Section, peak: float, efficiency: float, path: Path) -> dict[str, float]:
    """Work-class rates from the optional roofline figures of a profile's ``device:``.

    ``gemm.weight`` (the weight-gradient GEMMs, ``dW = X^T dY``), ``hbm`` (bytes/s),
    ``launch`` (kernels/s: one over the per-kernel overhead) and ``attention.<kernel>``
    (the fused attention kernel's forward FLOP/s) for each ``attention_efficiency`` entry.
    """
    rates: dict[str, float] = {}
    present = {key: _figure(device, key) for key in _FIGURES["roofline"] if key in device}
    fractions = {f"device.{key}": present[key] for key in ("weight_gemm_efficiency", "hbm_efficiency") if key in present}
    if "attention_efficiency" in device:
        kernels = device.section("attention_efficiency")
        kernels.check_keys(set(ATTENTION_KERNELS))
        for name in kernels.keys():
            fractions[f"device.attention_efficiency.{name}"] = _figure(kernels, name)
            rates[f"attention.{ATTENTION_KERNELS[name].name}"] = peak * fractions[f"device.attention_efficiency.{name}"]
    for key, value in fractions.items():
        if value > 1:
            raise InputError(f"an efficiency must be at most 1, got {value:g}", file=str(path), field=f"{key}.value")
    rates["gemm.weight"] = peak * present.get("weight_gemm_efficiency", efficiency)
    if "memory_bandwidth_GBps" in present:
        rates["hbm"] = present["memory_bandwidth_GBps"] * 1e9 * present.get("hbm_efficiency", 1.0)
    if "kernel_overhead_us" in present:
        rates["launch"] = 1.0 / (present["kernel_overhead_us"] * 1e-6)
    return rates


def _switched_cluster(
    name: str,
    devices: list[Device],
    gpus_per_node: int,
    intra_bandwidth: float,
    intra_latency: float,
    inter_bandwidth: float,
    inter_latency: float,
) -> Cluster:
    """GPUs hang off a per-node switch (NVSwitch) and a shared fabric (InfiniBand).

    Each GPU has its own port in each direction on both, so a GPU that sends two
    tensors at once contends with itself, but two disjoint GPU pairs do not.
    """
    links: list[Link] = []
    nodes = sorted({d.node for d in devices})
    multi_node = len(nodes) > 1
    for d in devices:
        switch = f"node{d.node}.switch"
        links.append(Link(f"{d.name}.intra.out", d.name, switch, intra_bandwidth, intra_latency / 2))
        links.append(Link(f"{d.name}.intra.in", switch, d.name, intra_bandwidth, intra_latency / 2))
        if multi_node:
            links.append(Link(f"{d.name}.inter.out", d.name, "fabric", inter_bandwidth, inter_latency / 2))
            links.append(Link(f"{d.name}.inter.in", "fabric", d.name, inter_bandwidth, inter_latency / 2))
    del gpus_per_node
    return Cluster(name=name, devices=tuple(devices), links=tuple(links))


_CLUSTER_KEYS = {
    "profile",
    "nodes",
    "gpus_per_node",
    "devices",
    "device",
    "interconnect",
    "links",
    "memory_gb",
    "memory_limit_gb",
    "bandwidth_scale",
    "name",
}


def build_cluster(section: Section, *, base_dir: Path | None = None) -> Cluster:
    """Build a :class:`Cluster` from a scenario's ``cluster:`` section.

    Either ``profile:`` (+ ``nodes``, optional ``gpus_per_node``), or a custom cluster:
    ``devices: N`` with ``device: {type, memory_gb, peak_tflops, efficiency}`` and
    ``interconnect: ideal`` (free transfers, the textbook setting) or
    ``interconnect: {bandwidth_GBps, latency_us}`` (a switch like NVSwitch), or an
    explicit ``links:`` list between ``gpu<i>`` endpoints.
    ``memory_gb`` / ``memory_limit_gb`` and ``bandwidth_scale`` override for what-ifs.
    """
    section.check_keys(_CLUSTER_KEYS)
    scale = section.number("bandwidth_scale", 1.0, minimum=1e-3, maximum=1e3)
    memory_override = None
    for key in ("memory_gb", "memory_limit_gb"):
        if key in section:
            memory_override = section.number(key, minimum=1e-3, maximum=1e6) * 1e9
    if "profile" in section:
        return _profile_cluster(section, scale, memory_override, base_dir)
    return _custom_cluster(section, scale, memory_override)


def _profile_cluster(section: Section, scale: float, memory_override: float | None, base_dir: Path | None) -> Cluster:
    """``nodes`` nodes of a hardware profile, switched within and across nodes."""
    try:
        profile = load_profile(section.str("profile"), base_dir=base_dir)
    except InputError as exc:
        if exc.file is None:
            exc.file = section.file
            exc.field = section.where("profile")
        raise
    nodes, per_node = _profile_shape(section, profile.gpus_per_node, profile.name)
    devices = [
        Device(
            name=f"gpu{i}",
            type=profile.device_type,
            memory_bytes=memory_override or profile.memory_bytes,
            peak_flops=profile.peak_flops,
            efficiency=profile.efficiency,
            node=i // per_node,
            rates=profile.rates,
        )
        for i in range(nodes * per_node)
    ]
    return _switched_cluster(
        section.raw("name", f"{nodes}x{per_node} {profile.name}"),
        devices,
        per_node,
        profile.intra_bandwidth * profile.intra_efficiency * scale,
        profile.intra_latency,
        profile.inter_bandwidth * profile.inter_efficiency * scale,
        profile.inter_latency,
    )


def _profile_shape(section: Section, gpus_per_node: int, profile: str) -> tuple[int, int]:
    """``(nodes, GPUs per node)`` of a profile cluster.

    ``devices: N`` counts GPUs (one partial node when ``N`` fits in a node, else whole
    nodes), so ``{profile: h100-sxm, devices: 1}`` is one GPU rather than a silently
    ignored key and a full node.
    """
    if "devices" in section:
        if "nodes" in section or "gpus_per_node" in section:
            raise section.error("give either devices: or nodes:/gpus_per_node: with a profile, not both", "devices")
        count = section.integer("devices", minimum=1)
        if count <= gpus_per_node:
            return 1, count
        if count % gpus_per_node:
            raise section.error(f"devices: {count} is not a whole number of {profile} nodes of {gpus_per_node} GPUs "
                                f"(use {count // gpus_per_node * gpus_per_node} or {(count // gpus_per_node + 1) * gpus_per_node}, "
                                "or nodes: + gpus_per_node:)", "devices")
        return count // gpus_per_node, gpus_per_node
    nodes = section.integer("nodes", 1, minimum=1)
    per_node = section.integer("gpus_per_node", gpus_per_node, minimum=1)
    if per_node > gpus_per_node:
        raise section.error(f"profile {profile} has {gpus_per_node} GPUs per node", "gpus_per_node")
    return nodes, per_node


def _custom_cluster(section: Section, scale: float, memory_override: float | None) -> Cluster:
    """``devices: N`` alike devices on an ideal interconnect, a switch, or explicit ``links:``."""
    count = section.integer("devices", minimum=1)
    spec = section.section("device", {})
    spec.check_keys({"type", "memory_gb", "peak_tflops", "efficiency"})
    per_node = section.integer("gpus_per_node", count, minimum=1)
    devices = [
        Device(
            name=f"gpu{i}",
            type=spec.str("type", "generic"),
            memory_bytes=memory_override or spec.number("memory_gb", 80.0, minimum=1e-3, maximum=1e6) * 1e9,
            peak_flops=spec.number("peak_tflops", 1000.0, minimum=1e-3, maximum=1e6) * 1e12,
            efficiency=spec.number("efficiency", 1.0, minimum=1e-3, maximum=1.0),
            node=i // per_node,
        )
        for i in range(count)
    ]
    name = section.raw("name", f"{count} devices")
    if "links" in section:
        return Cluster(name=name, devices=tuple(devices), links=_explicit_links(section, devices, scale))
    interconnect = section.raw("interconnect", "ideal")
    if interconnect == "ideal":
        return Cluster(name=name, devices=tuple(devices), ideal_interconnect=True)
    link_spec = section.section("interconnect")
    link_spec.check_keys({"bandwidth_GBps", "bandwidth_MBps", "bandwidth_Bps", "latency_s", "latency_ms",
                          "latency_us", "latency_ns"})
    bandwidth = read_bandwidth(link_spec, "bandwidth") * scale
    latency = read_seconds(link_spec, "latency", 0.0)
    return _switched_cluster(name, devices, per_node, bandwidth, latency, bandwidth, latency)


def _explicit_links(section: Section, devices: list[Device], scale: float) -> tuple[Link, ...]:
    """The ``links:`` list; each link is bidirectional (a ``.rev`` twin) unless it says not."""
    links = []
    names = {d.name for d in devices}
    for item in section.sections("links"):
        item.check_keys({"src", "dst", "bandwidth_GBps", "bandwidth_MBps", "bandwidth_Bps", "latency_s",
                         "latency_ms", "latency_us", "latency_ns", "bidirectional", "name"})
        src, dst = item.str("src"), item.str("dst")
        bandwidth = read_bandwidth(item, "bandwidth") * scale
        latency = read_seconds(item, "latency", 0.0)
        for end, key in ((src, "src"), (dst, "dst")):
            if end.startswith("gpu") and end not in names:
                raise item.error(f"unknown device {end!r}", key)
        base = item.raw("name", f"{src}->{dst}")
        links.append(Link(base, src, dst, bandwidth, latency))
        if item.bool("bidirectional", True):
            links.append(Link(f"{base}.rev", dst, src, bandwidth, latency))
    return tuple(links)

