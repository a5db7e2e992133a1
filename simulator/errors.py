"""Domain exceptions.

Every problem a user can cause (bad YAML, unknown device, a cyclic graph, a schedule
that deadlocks) is raised as an :class:`OpplanError` carrying the file and the field it
concerns. Only the command line turns it into a one-line message; library callers get
a normal exception they can catch.
"""

from __future__ import annotations

__all__ = ["OpplanError", "InputError", "ScheduleRejected", "InfeasibleError"]


class OpplanError(Exception):
    """Base class: a problem with what the user gave us, reported in one line."""

    def __init__(self, message: str, *, file: str | None = None, field: str | None = None):
        super().__init__(message)
        self.message = message
        self.file = file
        self.field = field

    def __str__(self) -> str:
        where = ": ".join(part for part in (self.file, self.field) if part)
        return f"{where}: {self.message}" if where else self.message


class InputError(OpplanError):
    """Malformed or inconsistent input (YAML, model, cluster, schedule document)."""


class ScheduleRejected(OpplanError):
    """A schedule broke one or more rules; ``violations`` lists every one found
    (:class:`simulator.violations.Violation` values; the message shows the first)."""

    def __init__(self, violations: list, *, file: str | None = None):
        self.violations = list(violations)
        first = self.violations[0] if self.violations else "unknown violation"
        more = f" (and {len(self.violations) - 1} more)" if len(self.violations) > 1 else ""
        super().__init__(f"schedule rejected: {first}{more}", file=file, field=None)


class InfeasibleError(OpplanError):
    """No plan can satisfy the constraints (e.g. an operator larger than any memory)."""
