"""Reading YAML/JSON documents with errors that name the file and the field.

A :class:`Section` wraps one mapping of a document and remembers where it came from,
so every accessor can raise ``InputError("file: a.b.c: expected ...")`` instead of a
``KeyError`` traceback.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from simulator.errors import InputError

__all__ = ["Section", "load_document", "read_section"]

_MISSING = object()


def load_document(path: str | Path) -> Any:
    """Parse a YAML or JSON file; any failure becomes a one-line :class:`InputError`."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise InputError("file not found", file=str(path)) from None
    except OSError as exc:
        raise InputError(f"cannot read file ({exc.strerror})", file=str(path)) from None
    try:
        if path.suffix == ".json":
            return json.loads(text)
        return yaml.safe_load(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"malformed JSON at line {exc.lineno}: {exc.msg}", file=str(path)) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "syntax error"
        raise InputError(f"malformed YAML{where}: {problem}", file=str(path)) from None


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
            raise self.error(f"expected a non-empty string, got {value!r}", key)
        if choices is not None:
            options = list(choices)
            if value not in options:
                raise self.error(f"unknown value {value!r} (expected one of: {', '.join(options)})", key)
        return value

    def bool(self, key: str, default: Any = _MISSING) -> bool:
        value = self.raw(key, default)
        if not isinstance(value, bool):
            raise self.error(f"expected true or false, got {value!r}", key)
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
        value = self.raw(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
            raise self.error(f"expected a number, got {value!r}", key)
        value = float(value)
        if strictly_positive and value <= 0:
            raise self.error(f"must be positive, got {value:g}", key)
        if minimum is not None and value < minimum:
            raise self.error(f"must be at least {minimum:g}, got {value:g}", key)
        if maximum is not None and value > maximum:
            raise self.error(f"must be at most {maximum:g}, got {value:g}", key)
        return value

    def integer(self, key: str, default: Any = _MISSING, *, minimum: int | None = 0) -> int:
        value = self.raw(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(f"expected an integer, got {value!r}", key)
        if minimum is not None and value < minimum:
            raise self.error(f"must be at least {minimum}, got {value}", key)
        return value
