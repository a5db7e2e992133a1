"""Reading YAML/JSON documents with errors that name the file and the field.

A :class:`Section` wraps one mapping of a document and remembers where it came from,
so every accessor can raise ``InputError("file: a.b.c: expected ...")`` instead of a
``KeyError`` traceback. Numbers are finite and in range (infinity, NaN, ``1e308`` and
integers past :data:`MAX_INTEGER` are refused whatever the field); long values are cut
short in messages (:func:`show`). Files are read and parsed by
:mod:`simulator.documents`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from simulator.documents import load_document, parse_document
from simulator.errors import InputError

__all__ = ["Section", "load_document", "parse_document", "read_section", "show"]

_MISSING = object()
#: No figure in a scenario is anywhere near this (a whole training step is ~1e18 FLOPs);
#: past it, sums over millions of tasks could overflow to ``inf``.
ABSURD = 1e30
#: Largest whole number a field takes (a width, a length, a count): a product of four is still a float.
MAX_INTEGER = 10**15


def show(value: Any, width: int = 60) -> str:
    """``repr(value)`` cut to ``width`` characters, so an error message stays one short line.

    >>> show(10**100)
    '1000000000000000000000000000000000000000000000000000000000… (101 digits)'
    """
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**width:
        digits = len(str(abs(value)))
        return f"{str(value)[:width - 2]}… ({digits} digits)"
    text = repr(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def _float_hint(value: Any) -> str:
    """YAML 1.1 reads ``1e9`` as text in some tools; say so when a string looks like a number."""
    if isinstance(value, str):
        try:
            float(value)
        except ValueError:
            return ""
        return " (a quoted number? write it unquoted, e.g. 1.0e+9)"
    return ""


def read_section(path: str | Path) -> Section:
    """Load a file whose top level must be a mapping."""
    data = load_document(path)
    if not isinstance(data, dict):
        raise InputError("expected a mapping at the top level", file=str(path))
    return Section(data, file=str(path), path="")


@dataclass(frozen=True)
class Section:
    """A mapping inside a document, with typed accessors that fail with precise messages."""

    data: dict
    file: str | None = None
    path: str = ""

    # -- location helpers ----------------------------------------------------------
    def where(self, key: str | int | None = None) -> str:
        if key is None:
            return self.path or "(top level)"
        if isinstance(key, int):
            return f"{self.path}[{key}]"
        return f"{self.path}.{key}" if self.path else str(key)

    def error(self, message: str, key: str | int | None = None) -> InputError:
        return InputError(message, file=self.file, field=self.where(key))

    # -- raw access ------------------------------------------------------------------
    def __contains__(self, key: str) -> bool:
        return key in self.data

    def keys(self) -> list[str]:
        return list(self.data.keys())

    def raw(self, key: str, default: Any = _MISSING) -> Any:
        if key in self.data:
            return self.data[key]
        if default is _MISSING:
            raise self.error("required field is missing", key)
        return default

    def check_keys(self, allowed: set[str] | frozenset[str]) -> None:
        """Reject typos early: an unknown key is almost always a misspelt known one."""
        for key in self.data:
            if key not in allowed:
                raise self.error(f"unknown field (allowed: {', '.join(sorted(allowed))})", key)

    # -- typed access ------------------------------------------------------------------
    def section(self, key: str, default: Any = _MISSING) -> Section:
        value = self.raw(key, default)
        if value is None and default is not _MISSING:
            value = {}
        if not isinstance(value, dict):
            raise self.error(f"expected a mapping, got {type(value).__name__}", key)
        return Section(value, file=self.file, path=self.where(key))

    def sections(self, key: str, default: Any = _MISSING) -> list[Section]:
        items = self.list(key, default)
        sub = Section({}, file=self.file, path=self.where(key))
        out = []
        for index, item in enumerate(items):
            if not isinstance(item, dict):
                raise sub.error(f"expected a mapping, got {type(item).__name__}", index)
            out.append(Section(item, file=self.file, path=sub.where(index)))
        return out

    def list(self, key: str, default: Any = _MISSING) -> list:
        value = self.raw(key, default)
        if not isinstance(value, list):
            raise self.error(f"expected a list, got {type(value).__name__}", key)
        return value

    def str(self, key: str, default: Any = _MISSING, *, choices: Iterator[str] | None = None) -> str:
        value = self.raw(key, default)
        if not isinstance(value, str) or not value:
            raise self.error(f"expected a non-empty string, got {show(value)}", key)
        if choices is not None:
            options = list(choices)
            if value not in options:
                raise self.error(f"unknown value {show(value)} (expected one of: {', '.join(options)})", key)
        return value

    def bool(self, key: str, default: Any = _MISSING) -> bool:
        value = self.raw(key, default)
        if not isinstance(value, bool):
            raise self.error(f"expected true or false, got {show(value)}", key)
        return value

    def number(
        self,
        key: str,
        default: Any = _MISSING,
        *,
        minimum: float | None = 0.0,
        strictly_positive: bool = False,
        maximum: float | None = None,
    ) -> float:
        """A finite number within ``[minimum, maximum]`` (``> 0`` if ``strictly_positive``).

        Infinity, NaN and numbers too large for a float are refused whatever the range:
        nothing physical is infinite, and one infinite time makes every figure downstream
        ``inf`` or ``nan``.
        """
        value = self.raw(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.error(f"expected a number, got {show(value)}{_float_hint(value)}", key)
        try:
            value = float(value)
        except OverflowError:
            raise self.error(f"number too large ({len(str(abs(value)))} digits)", key) from None
        if not math.isfinite(value):
            raise self.error(f"expected a finite number, got {value}", key)
        if strictly_positive and value <= 0:
            raise self.error(f"must be positive, got {value:g}", key)
        low = minimum if minimum is not None else -ABSURD
        high = maximum if maximum is not None else ABSURD  # an explicit maximum replaces the sanity cap
        if not low <= value <= high:
            if minimum is not None and maximum is not None:
                raise self.error(f"must be between {minimum:g} and {maximum:g}, got {value:g}", key)
            bound = f"at least {low:g}" if value < low else f"at most {high:g}"
            raise self.error(f"must be {bound}, got {value:g}", key)
        return value

    def integer(self, key: str, default: Any = _MISSING, *, minimum: int | None = 0, maximum: int = MAX_INTEGER) -> int:
        """A whole number in ``[minimum, maximum]``; an integral float (``1e3``) counts.

        The default ``maximum`` keeps every count, width and length far from what the cost
        formulas (products of a few of them) could overflow; sizes are checked separately.
        """
        value = self.raw(key, default)
        if isinstance(value, float) and math.isfinite(value) and value.is_integer() and abs(value) <= 2**53:
            value = int(value)  # ``micro_batches: 1e3`` means 1000
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(f"expected an integer, got {show(value)}", key)
        if minimum is not None and value < minimum:
            raise self.error(f"must be at least {minimum}, got {show(value)}", key)
        if value > maximum:
            raise self.error(f"must be at most {maximum:.0e}, got {show(value)}", key)
        return value
