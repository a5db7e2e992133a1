"""Reading an input file: a regular file, at most a bounded number of bytes, strict UTF-8.

Everything the tool reads (scenarios, schedules, graph files, sweeps, hardware
profiles, results tables) comes through here, so a device node (``/dev/zero``,
``/dev/urandom``), a FIFO or a directory is refused before a byte is read, a file
larger than :attr:`~simulator.limits.Limits.max_input_bytes` is refused after reading
one byte more than the limit (memory stays flat), and bytes that are not UTF-8 get a
one-line error with the offset instead of a ``UnicodeDecodeError`` traceback.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

from simulator.errors import InputError
from simulator.limits import current_limits

__all__ = ["check_input_file", "inputs_read", "read_input_bytes", "read_input_text", "recording_inputs"]

_RECORD: ContextVar[set[str] | None] = ContextVar("opplan_inputs_read", default=None)


@contextmanager
def recording_inputs() -> Iterator[set[str]]:
    """Within the block, remember every file read (resolved), so no output can overwrite one:
    not only the files named on the command line but a graph or profile a scenario names."""
    files: set[str] = set()
    token = _RECORD.set(files)
    try:
        yield files
    finally:
        _RECORD.reset(token)


def inputs_read() -> frozenset[str]:
    """The resolved paths read so far inside :func:`recording_inputs` (empty outside it)."""
    return frozenset(_RECORD.get() or ())


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def check_input_file(path: str | Path) -> os.stat_result:
    """Refuse what is missing or not a regular file (symbolic links are followed)."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise InputError("file not found", file=str(path)) from None
    except OSError as exc:
        raise InputError(f"cannot read file ({exc.strerror})", file=str(path)) from None
    if not stat.S_ISREG(info.st_mode):
        raise InputError(f"cannot read {_kind(info.st_mode)} as an input file", file=str(path))
    record = _RECORD.get()
    if record is not None:
        record.add(os.path.realpath(path))
    limit = current_limits().max_input_bytes
    if info.st_size > limit:
        raise _too_large(path, info.st_size, limit)
    return info


def _size(count: int) -> str:
    return f"{count / 1e6:.3g} MB" if count >= 100_000 else f"{count} bytes"


def _too_large(path: str | Path, size: int | None, limit: int) -> InputError:
    what = _size(size) if size is not None else "larger than that"
    return InputError(f"file is {what}; the limit is {_size(limit)} (raise it with --max-input-mb)", file=str(path))


def read_input_bytes(path: str | Path) -> bytes:
    """The file's bytes; see the module docstring for what is refused."""
    check_input_file(path)
    limit = current_limits().max_input_bytes
    try:
        # O_NONBLOCK: if the path was swapped for a FIFO since the check, opening must not hang.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as handle:
            info = os.fstat(handle.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise InputError("input file changed into something that is not a regular file", file=str(path))
            data = _read_at_most(handle, limit + 1, info.st_size)
    except OSError as exc:
        raise InputError(f"cannot read file ({exc.strerror})", file=str(path)) from None
    if len(data) > limit:
        raise _too_large(path, None, limit)
    return data


def _read_at_most(handle, most: int, expected: int) -> bytes:
    """Up to ``most`` bytes, in a buffer the size of the file (``read(most)`` would allocate
    ``most`` bytes up front, whatever the file's size)."""
    chunks, total, want = [], 0, min(expected, most - 1) + 1
    while total < most:
        chunk = handle.read(min(want, most - total))
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
        want = 1 << 20
    return b"".join(chunks)


def read_input_text(path: str | Path) -> str:
    """The file as text, decoded strictly as UTF-8 (a leading byte-order mark is dropped)."""
    data = read_input_bytes(path)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise InputError(f"not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}, line {line});"
                         " is this the right file?", file=str(path)) from None
