"""Writing output files without ever clobbering what the user wrote.

An output path that names one of the command's inputs is refused, and files are
written to a temporary name first and renamed into place, so a failure midway never
leaves a half-written file where a good one was.
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from matplotlib.figure import Figure

from simulator.errors import InputError

__all__ = ["FORMATS", "save_figure", "write_output"]


def write_output(path: str | Path, text: str | bytes, *, inputs: Iterable[str | Path] = (), option: str = "output") -> Path:
    """Write ``text`` (or bytes: Parquet tables, pictures) to ``path`` whole or not at all.

    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> write_output(folder / "a.bin", b"\\x89PNG").read_bytes()
    b'\\x89PNG'
    """
    target = Path(path)
    for source in inputs:
        if source and target.exists() and Path(source).exists() and target.resolve() == Path(source).resolve():
            raise InputError(f"refusing to overwrite input file {source}", field=option)
    if target.parent and not target.parent.exists():
        raise InputError(f"folder {target.parent} does not exist", file=str(target), field=option)
    fd, tmp = tempfile.mkstemp(dir=target.parent or ".", prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb" if isinstance(text, bytes) else "w") as handle:
            handle.write(text)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; outputs are ordinary files
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return target


#: Picture formats :func:`save_figure` writes, by suffix.
FORMATS = (".png", ".svg", ".pdf")


def save_figure(figure: Figure, path: str | Path, *, inputs: Iterable[str | Path] = (), option: str = "--output") -> Path:
    """Write ``figure`` to ``path`` (format from the suffix: .png, .svg, .pdf), atomically."""
    path = Path(path)
    if path.suffix.lower() not in FORMATS:
        raise InputError(f"unknown picture format {path.suffix or '(none)'!r} (use {', '.join(FORMATS)})", file=str(path), field=option)
    fmt = path.suffix.lower()[1:]
    buffer = io.BytesIO()
    metadata = {"Date": None} if fmt in ("svg", "pdf") else {}
    figure.savefig(buffer, format=fmt, dpi=150, metadata=metadata)
    return write_output(path, buffer.getvalue(), inputs=inputs, option=option)
