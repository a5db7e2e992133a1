"""The results log: one JSON line per finished point, appended as points finish.

The log is what makes a sweep resumable. A row is written (and flushed to disk) the
moment its point finishes, so Ctrl-C or a killed process loses nothing finished; a
line cut short by a kill is ignored on the next read, and the next append starts on
a fresh line. Only one sweep may append to a log at a time (an advisory lock).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from simulator.errors import InputError

try:  # POSIX advisory locks; elsewhere the lock is skipped.
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

__all__ = ["ResultsLog"]


class ResultsLog:
    """Append-only JSON-lines file of rows keyed by ``row["key"]``.

    >>> import tempfile, pathlib
    >>> log = ResultsLog(pathlib.Path(tempfile.mkdtemp()) / "results.jsonl")
    >>> with log.appending() as append:
    ...     append({"key": "a1", "status": "ok"})
    >>> log.read()
    {'a1': {'key': 'a1', 'status': 'ok'}}
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def rows(self) -> list[dict[str, Any]]:
        """Every complete row in file order (a truncated or garbled line is skipped)."""
        if not self.path.exists():
            return []
        if not self.path.is_file():
            raise InputError("the results log is not a regular file", file=str(self.path))
        out = []
        with self.path.open(encoding="utf-8", errors="replace") as handle:
            for line in handle:
                try:
                    row = json.loads(line)
                except (ValueError, RecursionError):  # a garbled line (or one cut short by a kill)
                    continue
                if isinstance(row, dict) and isinstance(row.get("key"), str):
                    out.append(row)
        return out

    def read(self) -> dict[str, dict[str, Any]]:
        """The latest row of each key."""
        return {row["key"]: row for row in self.rows()}

    @contextmanager
    def appending(self) -> Iterator:
        """Hold the log's lock and yield ``append(row)``, which writes and syncs one line."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a+") as handle:
            self._lock(handle)
            self._end_line(handle)

            def append(row: dict[str, Any]) -> None:
                handle.write(json.dumps(row, separators=(",", ":"), default=str) + "\n")
                handle.flush()
                os.fsync(handle.fileno())

            yield append

    def _lock(self, handle: IO[str]) -> None:
        if fcntl is None:  # pragma: no cover
            return
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            message = "another sweep is writing to this results log; wait for it or use another --out"
            raise InputError(message, file=str(self.path)) from None

    @staticmethod
    def _end_line(handle: IO[str]) -> None:
        """After a kill mid-write the file may end inside a line: finish it so the next row is whole."""
        size = handle.seek(0, os.SEEK_END)
        if size:
            handle.seek(size - 1)
            if handle.read(1) != "\n":
                handle.write("\n")
