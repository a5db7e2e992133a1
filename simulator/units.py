"""Unit-suffixed quantities in YAML (``activation_mb: 120`` or ``memory_gb: 80``).

Decimal units throughout (GB = 1e9 bytes, GB/s = 1e9 bytes/s), because vendor
datasheets quote decimal figures. Internally: bytes, seconds, FLOP/s.
"""

from __future__ import annotations

from simulator.yamlio import Section

__all__ = ["read_bytes", "read_seconds", "read_bandwidth", "BYTE_UNITS", "TIME_UNITS"]

BYTE_UNITS = {"bytes": 1.0, "kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12}
TIME_UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}
BANDWIDTH_UNITS = {"Bps": 1.0, "MBps": 1e6, "GBps": 1e9}


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
    return section.number(f"{base}_{suffix}") * scale


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
