"""``opplan schedules`` (see planner.cli)."""

from __future__ import annotations

from planner.cli import cli  # noqa: F401
