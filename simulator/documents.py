"""Parsing a YAML or JSON document under the limits of :mod:`simulator.limits`.

:func:`load_document` reads a file through :mod:`simulator.reading` (a regular file,
size-capped, strict UTF-8) and parses it here: YAML with libyaml's parser and PyYAML's
safe constructor, guarded as the document is composed (nesting depth; values counted
with every alias expanded, so a "billion laughs" bomb stops at the first alias past the
budget; an alias to its own ancestor), a key written twice in one mapping refused
(YAML merge keys ``<<`` aside), and ``1e9`` read as the number YAML 1.2 and every user
mean (YAML 1.1 reads it as text). JSON gets the same duplicate-key and depth rules. The
interpreter's own limits (an integer of more than 4300 digits, recursion) are caught
here too: every failure is one :class:`~simulator.errors.InputError` naming the file.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode

from simulator.errors import InputError
from simulator.limits import current_limits, fmt_count
from simulator.reading import read_input_text

__all__ = ["DocumentRefused", "load_document", "parse_document"]

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


def load_document(path: str | Path) -> Any:
    """Read (see :mod:`simulator.reading`) and parse a YAML or JSON file (JSON by the ``.json`` suffix)."""
    path = Path(path)
    text = read_input_text(path)
    return parse_document(text, file=str(path), json_format=path.suffix == ".json")
