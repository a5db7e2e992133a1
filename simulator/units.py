"""Unit-suffixed quantities in YAML (``activation_mb: 120`` or ``memory_gb: 80``).

Decimal units throughout (GB = 1e9 bytes, GB/s = 1e9 bytes/s), because vendor
datasheets quote decimal figures. Internally: bytes, seconds, FLOP/s.

Every quantity is held to a physical range (:data:`PHYSICAL_RANGES`), and the message
says which: a size is at most 1 PB (a thousand times any GPU's memory today), a time at
most a day, a bandwidth between 1 KB/s and 1 PB/s (NVLink 5 is 0.9 TB/s per GPU). An
absurd value such as ``1e308`` or ``.inf`` would otherwise come out as ``makespan inf``.
"""

from __future__ import annotations

import math

from simulator.yamlio import Section

__all__ = ["read_bytes", "read_seconds", "read_bandwidth", "BYTE_UNITS", "TIME_UNITS"]

BYTE_UNITS = {"bytes": 1.0, "kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12}
TIME_UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}
BANDWIDTH_UNITS = {"Bps": 1.0, "MBps": 1e6, "GBps": 1e9}


#: ``(least, most)`` in base units (bytes, seconds, bytes/s) of each kind of quantity.
PHYSICAL_RANGES = {"bytes": (0.0, 1e15), "seconds": (0.0, 86_400.0), "bandwidth": (1e3, 1e15)}
_KIND = {id(BYTE_UNITS): "bytes", id(TIME_UNITS): "seconds", id(BANDWIDTH_UNITS): "bandwidth"}


def _in_range(section: Section, key: str, scale: float, kind: str) -> float:
    least, most = PHYSICAL_RANGES[kind]
    value = section.number(key, minimum=None, maximum=math.inf)  # the physical range below, with its unit
    if not least / scale <= value <= most / scale:
        unit = key.rsplit("_", 1)[1]
        raise section.error(f"must be between {least / scale:g} and {most / scale:g} ({unit}, a physical range), got {value:g}", key)
    return value * scale


def _read_suffixed(section: Section, base: str, units: dict[str, float], default: float | None) -> float:
    found = [(suffix, scale) for suffix, scale in units.items() if f"{base}_{suffix}" in section]
    if len(found) > 1:
        keys = ", ".join(f"{base}_{s}" for s, _ in found)
        raise section.error(f"give only one of {keys}", f"{base}_{found[1][0]}")
    if not found:
        if default is None:
            options = " or ".join(f"{base}_{s}" for s in units)
            raise section.error(f"required field is missing (give {options})", base)
        return default
    suffix, scale = found[0]
    return _in_range(section, f"{base}_{suffix}", scale, _KIND[id(units)])


def read_bytes(section: Section, base: str, default: float | None = 0.0) -> float:
    """Read ``base_bytes`` / ``base_kb`` / ``base_mb`` / ``base_gb`` / ``base_tb`` as bytes."""
    return _read_suffixed(section, base, BYTE_UNITS, default)


def read_seconds(section: Section, base: str, default: float | None = 0.0) -> float:
    """Read ``base_s`` / ``base_ms`` / ``base_us`` / ``base_ns`` as seconds."""
    return _read_suffixed(section, base, TIME_UNITS, default)


def read_bandwidth(section: Section, base: str, default: float | None = None) -> float:
    """Read ``base_GBps`` etc. as bytes per second."""
    return _read_suffixed(section, base, BANDWIDTH_UNITS, default)


def unit_keys(base: str, units: dict[str, float]) -> set[str]:
    return {f"{base}_{suffix}" for suffix in units}
