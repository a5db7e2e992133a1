"""Writing binary outputs (Parquet tables, PNG pictures) the way text outputs are written.

:func:`planner.output.write_output` writes text; pictures and Parquet files are
bytes. Both follow the same two rules: an output that names an input is refused, and
the file appears whole or not at all (temporary file in the same folder, then rename).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from planner.output import write_output
from simulator.errors import InputError

__all__ = ["write_atomically"]


def write_atomically(path: str | Path, data: bytes | str, *, inputs: Iterable[str | Path] = (), option: str = "output") -> Path:
    """Write ``data`` to ``path`` atomically, refusing to overwrite any of ``inputs``.

    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> write_atomically(folder / "a.bin", b"\\x89PNG").read_bytes()
    b'\\x89PNG'
    """
    if isinstance(data, str):
        return write_output(path, data, inputs=inputs, option=option)
    target = Path(path)
    for source in inputs:
        if source and target.exists() and Path(source).exists() and target.resolve() == Path(source).resolve():
            raise InputError(f"refusing to overwrite input file {source}", field=option)
    if not target.parent.exists():
        raise InputError(f"folder {target.parent} does not exist", file=str(target), field=option)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; outputs get the permissions of an ordinary new file
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return target
