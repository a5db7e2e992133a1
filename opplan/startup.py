"""The interpreter's start-up before the command ran: a ``--time-limit`` is a promise for the whole
``opplan`` process, imports included, but only when ``opplan`` is the program. A call of
``opplan.cli.main([...])`` inside a longer-lived process (tests, notebooks) has no start-up to count."""

from __future__ import annotations

import time

__all__ = ["note_process_start", "startup_seconds"]

_STARTUP = {"seconds": 0.0}


def note_process_start() -> None:
    """Record how long this process ran before now (call it first thing in the program's entry point)."""
    import psutil  # a dependency of dask.distributed

    _STARTUP["seconds"] = max(0.0, time.time() - psutil.Process().create_time())


def startup_seconds() -> float:
    """Seconds the process spent before the command began (0 unless :func:`note_process_start` ran)."""
    return _STARTUP["seconds"]
