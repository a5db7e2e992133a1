"""Cut a long computation short at a wall-clock deadline.

A replay (SimPy) or a serving simulation cannot be asked to stop half-way, and a planner's
``--time-limit`` is a promise, so the last candidate it starts must not run past it.
:func:`time_boxed` raises :class:`OutOfTime` inside the computation after ``seconds`` by
SIGALRM — only in the main thread of a Unix process; elsewhere (Dask workers, threads) the
computation runs to its end and callers must leave room for it.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["OutOfTime", "can_interrupt", "time_boxed"]


class OutOfTime(Exception):
    """Raised inside a :func:`time_boxed` block when its seconds are up."""


def can_interrupt() -> bool:
    """Whether :func:`time_boxed` can interrupt here (main thread, a system with timers)."""
    return threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer")


def _raise(signum, frame) -> None:
    raise OutOfTime


@contextmanager
def time_boxed(seconds: float | None) -> Iterator[None]:
    """Interrupt the block after ``seconds`` with :class:`OutOfTime` (where :func:`can_interrupt`;
    ``None``: no limit)."""
    if seconds is None or not can_interrupt():
        yield
        return
    previous = signal.signal(signal.SIGALRM, _raise)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 1e-3))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
