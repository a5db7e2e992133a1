"""A broken rule, as data: what kind, where, when, by how much, and a sentence saying so.

Static checks (:mod:`simulator.validation`) and the replay (:mod:`simulator.engine`)
both report :class:`Violation` values; the command line prints their ``message``,
programs and tests read the fields.
"""

from __future__ import annotations

from dataclasses import dataclass

from simulator.problem import Task

__all__ = ["Violation", "STATIC_KINDS", "RUN_TIME_KINDS"]

#: Seen without replaying (:func:`simulator.validation.static_violations`): ``device`` not
#: in the cluster, ``unknown`` task, ``duplicate`` task, ``group`` of tasks that cannot
#: share a slot, ``missing`` task, ``placement`` of B/W away from their F, ``dependency``
#: listed before its input on the same stream, a ``collective`` call that is malformed
#: (group device not in the cluster, a non-member calling it, ...), and ``omitted``: the
#: count of further violations of one kind left out of the list. A collective that would
#: hang (a member never calling it, members calling two in opposite orders) is reported
#: statically as a ``deadlock``.
STATIC_KINDS = ("device", "unknown", "duplicate", "group", "missing", "placement", "dependency", "collective", "omitted")
#: Found by the replay: ``deadlock``, a declared ``start`` that cannot be met, ``memory``
#: over capacity.
RUN_TIME_KINDS = ("deadlock", "start", "memory")


@dataclass(frozen=True)
class Violation:
    """One rule a schedule breaks.

    ``device`` and ``task`` say where (the task is the first of its entry for a group);
    ``time`` is when, in seconds (a declared ``start``: the start asked for; ``memory``:
    when the device's worst level was reached); ``amount`` says by how much (``memory``:
    bytes over capacity; ``start``: seconds the entry runs late; ``omitted``: how many
    were left out). Fields that do not apply are None.

    >>> v = Violation("missing", "task F:a:0 is not scheduled on any device", task=Task("a", 0, "F"))
    >>> v.kind, v.task, str(v)
    ('missing', Task(op='a', mb=0, kind='F'), 'task F:a:0 is not scheduled on any device')
    """

    kind: str
    message: str
    device: str | None = None
    task: Task | None = None
    time: float | None = None
    amount: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in STATIC_KINDS + RUN_TIME_KINDS:
            raise ValueError(f"unknown violation kind {self.kind!r}")

    def __str__(self) -> str:
        return self.message
