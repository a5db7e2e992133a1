"""Writing output files without ever clobbering what the user wrote, or what the system needs.

Every output path is checked before a command does its work (:func:`check_outputs`):
its folder exists and is a folder, its name fits the file system, it is not one of the
command's inputs, and no two outputs of one command name the same file. Then
:func:`write_output` writes

- a regular file (or a new one) atomically: to a temporary name in the same folder,
  renamed into place, so a failure midway never leaves a half-written file where a good
  one was; a symbolic link is followed and its target replaced, the link kept;
- a character device or a FIFO (``/dev/null``, a named pipe) in place, opened for
  writing without creating, truncating or replacing anything: renaming a temporary
  file over ``/dev/full`` would replace the device node itself;
- ``-`` to standard output.

A failure to write is one line (:class:`OutputError`), never a traceback.
"""

from __future__ import annotations

import io
import os
import stat
import sys
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

from matplotlib.figure import Figure

from simulator.errors import InputError
from simulator.reading import inputs_read

__all__ = ["FORMATS", "STDOUT", "OutputError", "check_output", "check_outputs", "is_stdout", "save_figure", "write_output"]

#: The output path meaning standard output.
STDOUT = "-"
#: Paths under these are never replaced, whatever they resolve to.
_SYSTEM = ("/dev/", "/proc/")


class OutputError(InputError):
    """An output file that cannot or must not be written."""


def _name_max(folder: str) -> int:
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):  # pragma: no cover - no pathconf
        return 255


def _check_folder(path: Path, option: str) -> None:
    folder = str(path.parent) or "."
    if not os.path.exists(folder):
        raise OutputError(f"folder {folder} does not exist", file=str(path), field=option)
    if not os.path.isdir(folder):
        raise OutputError(f"{folder} is not a folder", file=str(path), field=option)
    size, limit = len(os.fsencode(path.name)), _name_max(folder)
    if size > limit:
        raise OutputError(f"the file name is {size} bytes; this file system allows {limit}", file=str(path)[:80] + "…", field=option)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.realpath(a) == os.path.realpath(b) or (a.exists() and b.exists() and os.path.samefile(a, b))
    except OSError:
        return False


def is_stdout(path: str | Path) -> bool:
    """``-`` or a name of standard output: written to the open stream (reopening ``/dev/stdout``
    when it is redirected to a file would write over that file from its start)."""
    return str(path) == STDOUT or os.path.abspath(path) in ("/dev/stdout", "/dev/fd/1", "/proc/self/fd/1")


def check_output(path: str | Path, *, option: str = "output", inputs: Iterable[str | Path] = ()) -> str:
    """Check one output path; returns its kind: ``"stdout"``, ``"special"`` or ``"regular"``."""
    if is_stdout(path):
        return "stdout"
    path = Path(path)
    _check_folder(path, option)
    for source in [*inputs, *sorted(inputs_read())]:  # the files named, and every file read so far
        if source and str(source) != STDOUT and _same_file(path, Path(source)):
            raise OutputError(f"refusing to overwrite input file {source}", field=option)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        if os.path.abspath(path).startswith(_SYSTEM) or os.path.realpath(path).startswith(_SYSTEM):
            raise OutputError("refusing to create a file among the system's devices", file=str(path), field=option) from None
        return "regular"  # a new file (or a dangling link: its target is created)
    except OSError as exc:
        raise OutputError(f"cannot write here ({exc.strerror})", file=str(path), field=option) from None
    if stat.S_ISDIR(mode):
        raise OutputError("is a directory; give a file name", file=str(path), field=option)
    if stat.S_ISCHR(mode) or stat.S_ISFIFO(mode) or os.path.abspath(path).startswith(_SYSTEM):
        return "special"  # /dev/stdout redirected to a file resolves to that file: still written in place
    if not stat.S_ISREG(mode):
        raise OutputError("is neither a regular file, a character device nor a FIFO", file=str(path), field=option)
    return "regular"


def check_outputs(outputs: Mapping[str, str | Path | None], *, inputs: Iterable[str | Path] = ()) -> None:
    """Check every output of a command before it starts work: each one, and no two the same."""
    inputs = [p for p in inputs if p is not None]
    seen: dict[str, str] = {}
    for option, path in outputs.items():
        if path is None:
            continue
        kind = check_output(path, option=option, inputs=inputs)
        key = STDOUT if kind == "stdout" else os.path.realpath(path)
        if key in seen and kind != "special":
            raise OutputError(f"{seen[key]} and {option} name the same file; one would overwrite the other", file=str(path),
                              field=option)
        seen[key] = option


def _write_in_place(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)  # no O_CREAT, no O_TRUNC: a device or a FIFO stays what it is
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def _write_atomically(path: Path, data: bytes) -> None:
    target = Path(os.path.realpath(path))  # through a symbolic link: replace its target, keep the link
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name[:100]}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; outputs are ordinary files
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _write_stdout(data: bytes) -> None:
    stream = getattr(sys.stdout, "buffer", None)
    sys.stdout.flush()
    if stream is None:  # a text-only stand-in for stdout (some test runners)
        sys.stdout.write(data.decode("utf-8", "replace"))
    else:
        stream.write(data)
        stream.flush()


def write_output(path: str | Path, text: str | bytes, *, inputs: Iterable[str | Path] = (), option: str = "output") -> Path:
    """Write ``text`` (or bytes: Parquet tables, pictures) to ``path`` whole or not at all (see the module docstring).

    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> write_output(folder / "a.bin", b"\\x89PNG").read_bytes()
    b'\\x89PNG'
    """
    kind = check_output(path, option=option, inputs=inputs)
    data = text.encode() if isinstance(text, str) else text
    try:
        if kind == "stdout":
            _write_stdout(data)
        elif kind == "special":
            _write_in_place(Path(path), data)
        else:
            _write_atomically(Path(path), data)
    except OSError as exc:
        raise OutputError(f"cannot write ({exc.strerror or exc})", file=str(path), field=option) from None
    return Path(path)


#: Picture formats :func:`save_figure` writes, by suffix.
FORMATS = (".png", ".svg", ".pdf")


def picture_format(path: str | Path, option: str = "--output") -> str:
    """The picture format a path's suffix names (refused before any drawing if unknown)."""
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise OutputError(f"unknown picture format {suffix or '(none)'!r} (use {', '.join(FORMATS)})", file=str(path), field=option)
    return suffix[1:]


def save_figure(figure: Figure, path: str | Path, *, inputs: Iterable[str | Path] = (), option: str = "--output") -> Path:
    """Write ``figure`` to ``path`` (format from the suffix: .png, .svg, .pdf), atomically."""
    fmt = picture_format(path, option)
    buffer = io.BytesIO()
    metadata = {"Date": None} if fmt in ("svg", "pdf") else {}
    figure.savefig(buffer, format=fmt, dpi=150, metadata=metadata)
    return write_output(path, buffer.getvalue(), inputs=inputs, option=option)
