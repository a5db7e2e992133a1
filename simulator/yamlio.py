"""Reading YAML/JSON documents with errors that name the file and the field.

A :class:`Section` wraps one mapping of a document and remembers where it came from,
so every accessor can raise ``InputError("file: a.b.c: expected ...")`` instead of a
``KeyError`` traceback.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode

from simulator.errors import InputError
from simulator.limits import current_limits, fmt_count
from simulator.reading import read_input_text

__all__ = ["Section", "load_document", "parse_document", "read_section", "show"]

_MISSING = object()
#: No figure in a scenario is anywhere near this (a whole training step is ~1e18 FLOPs);
#: past it, sums over millions of tasks could overflow to ``inf``.
ABSURD = 1e30
#: Largest whole number a field takes (a width, a length, a count): a product of four is still a float.
MAX_INTEGER = 10**15
_MERGE = "tag:yaml.org,2002:merge"


class DocumentRefused(Exception):
    """Raised inside parsing for what the limits or the rules refuse; becomes an :class:`InputError`."""

    def __init__(self, message: str, line: int | None = None, field: str | None = None):
        super().__init__(message)
        self.message, self.line, self.field = message, line, field


class _Composer(yaml.composer.Composer):
    """PyYAML's composer with two guards, checked as the document is composed: nesting depth,
    and the number of values once aliases are expanded (a "billion laughs" document is a few
    hundred bytes that expand to 10^9 values; it is refused at the first alias past the limit,
    before anything is constructed or copied)."""

    _depth = 0
    _count = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        limits = current_limits()
        self._depth += 1
        try:
            if self._depth > limits.max_depth:
                raise DocumentRefused(f"nested more than {limits.max_depth} levels deep", self._line())
            sizes = self.__dict__.setdefault("_sizes", {})
            if self.check_event(yaml.AliasEvent):
                line = self._line()
                node = super().compose_node(parent, index)
                if id(node) not in sizes:
                    raise DocumentRefused("an alias refers to a node that contains it (a recursive document)", line)
                self._grow(sizes[id(node)], limits.max_nodes, line)
                return node
            before = self._count
            self._grow(1, limits.max_nodes, None)
            node = super().compose_node(parent, index)
            sizes[id(node)] = self._count - before
            return node
        finally:
            self._depth -= 1

    def _line(self) -> int:
        return self.peek_event().start_mark.line + 1

    def _grow(self, values: int, limit: int, line: int | None) -> None:
        self._count += values
        if self._count > limit:
            hint = "aliases expand it to" if line is not None else "it has"
            raise DocumentRefused(f"{hint} more than {fmt_count(limit)} values (the limit for one document)", line or self._line())


class _Constructor(yaml.constructor.SafeConstructor):
    """Safe construction that refuses a key written twice in one mapping (merge keys ``<<`` aside)."""

    def construct_mapping(self, node: Node, deep: bool = False) -> dict:
        if isinstance(node, MappingNode) and id(node) not in self.__dict__.setdefault("_checked", set()):
            self._checked.add(id(node))
            seen: set[tuple[str, str]] = set()
            for key_node, _ in node.value:
                if isinstance(key_node, ScalarNode) and key_node.tag != _MERGE:
                    if (key_node.tag, key_node.value) in seen:
                        raise DocumentRefused(f"duplicate key {key_node.value[:60]!r}", key_node.start_mark.line + 1,
                                              key_node.value[:60])
                    seen.add((key_node.tag, key_node.value))
        return super().construct_mapping(node, deep)


try:
    from yaml.cyaml import CParser as _Parser
except ImportError:  # pragma: no cover - PyYAML built without libyaml
    _Parser = None


class _Loader(_Composer, *((_Parser,) if _Parser else (yaml.reader.Reader, yaml.scanner.Scanner, yaml.parser.Parser)),
              _Constructor, yaml.resolver.Resolver):
    """libyaml's parser (fast) when present, with the guarded composer and constructor above."""

    def __init__(self, stream: str):
        if _Parser is not None:
            _Parser.__init__(self, stream)
        else:  # pragma: no cover - PyYAML without libyaml
            yaml.reader.Reader.__init__(self, stream)
            yaml.scanner.Scanner.__init__(self)
            yaml.parser.Parser.__init__(self)
        _Composer.__init__(self)
        _Constructor.__init__(self)
        yaml.resolver.Resolver.__init__(self)


# YAML 1.1 reads ``1e9`` (no dot, no exponent sign) as a string; YAML 1.2 and every user read a number.
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789")
)


def _json_object(pairs: list[tuple[str, Any]]) -> dict:
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise DocumentRefused(f"duplicate key {key[:60]!r}", None, key[:60])
        out[key] = value
    return out


def _check_depth(data: Any, limit: int) -> None:
    """Iteratively (no recursion) refuse a JSON document nested deeper than ``limit``."""
    stack = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, (dict, list)):
            if depth > limit:
                raise DocumentRefused(f"nested more than {limit} levels deep")
            stack.extend((item, depth + 1) for item in (value.values() if isinstance(value, dict) else value))


def parse_document(text: str, *, file: str, json_format: bool = False) -> Any:
    """Parse YAML (or JSON) text under the limits; any failure is a one-line :class:`InputError`."""
    try:
        if json_format:
            data = json.loads(text, object_pairs_hook=_json_object)
            _check_depth(data, current_limits().max_depth)
            return data
        loader = _Loader(text)
        try:
            return loader.get_single_data()
        finally:
            loader.dispose()
    except DocumentRefused as exc:
        where = f" at line {exc.line}" if exc.line else ""
        raise InputError(f"refused{where}: {exc.message}", file=file, field=exc.field) from None
    except json.JSONDecodeError as exc:
        raise InputError(f"malformed JSON at line {exc.lineno}: {exc.msg}", file=file) from None
    except yaml.YAMLError as exc:
        raise InputError(_yaml_message(exc), file=file) from None
    except RecursionError:
        raise InputError("nested too deeply to read", file=file) from None
    except ValueError as exc:  # e.g. an integer of more than 4300 digits (Python's int-string limit)
        text = str(exc)
        reason = "a number with more than 4300 digits" if "digits" in text else text.splitlines()[0][:120]
        raise InputError(f"unreadable value: {reason}", file=file) from None


def _yaml_message(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}" if mark is not None else ""
    problem = getattr(exc, "problem", None) or getattr(exc, "reason", None) or "syntax error"
    return f"malformed YAML{where}: {' '.join(str(problem).split())}"


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


def load_document(path: str | Path) -> Any:
    """Read (see :mod:`simulator.reading`) and parse a YAML or JSON file (JSON by the ``.json`` suffix)."""
    path = Path(path)
    text = read_input_text(path)
    return parse_document(text, file=str(path), json_format=path.suffix == ".json")


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
