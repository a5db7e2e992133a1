"""The ``measured:`` file ``opplan profile`` writes, and the checks before it is written.

Layout (the scenario includes it with ``measured: FILE.yaml``)::

    meta: {tool: opplan profile, device: ..., torch: ..., method: ...}
    measured:
      "L*.attn":
        H100-SXM5: {F: 1.51, B: 2.31, W: 0.85}   # milliseconds
        memory: {activation_MiB: 256.5}
      ...
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import yaml

__all__ = ["measured_document", "render"]


def measured_document(rows: Mapping[str, Mapping[str, float]], device_type: str, meta: Mapping[str, Any]) -> dict:
    """``rows``: pattern -> ``{F, B, W}`` ms (or ``{F, backward}``) and optionally ``activation_MiB``."""
    table: dict[str, dict] = {}
    for pattern, row in rows.items():
        times = {k: round(float(v), 6) for k, v in row.items() if k in ("F", "B", "W", "backward")}
        entry: dict[str, Any] = {device_type: times}
        if "activation_MiB" in row:
            entry["memory"] = {"activation_MiB": round(float(row["activation_MiB"]), 6)}
        table[pattern] = entry
    return {"meta": dict(meta), "measured": table}


def render(document: dict) -> str:
    """YAML text with a header saying what the file is."""
    head = "# Written by `opplan profile`; include it from a scenario with `measured: THIS_FILE`.\n"
    return head + yaml.safe_dump(document, sort_keys=False, width=120)
