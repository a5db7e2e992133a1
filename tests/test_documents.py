"""The reading path as a specification: what a document may be, and the exact boundaries."""

from __future__ import annotations

import pytest

from simulator.documents import load_document, parse_document
from simulator.errors import InputError
from simulator.limits import current_limits, using_limits
from simulator.sizes import estimate_scenario
from simulator.yamlio import Section


def refused(text: str, *, json_format: bool = False) -> str:
    with pytest.raises(InputError) as info:
        parse_document(text, file="doc", json_format=json_format)
    return info.value.message


class TestYaml:
    def test_yaml_1_2_floats(self):
        assert parse_document("[1e9, 5E-3, 1.5e+2, -2e0, 1e9x, 0x10]", file="doc") == [1e9, 5e-3, 150.0, -2.0, "1e9x", 16]

    def test_depth_boundary(self):
        depth = current_limits().max_depth
        assert parse_document("[" * depth + "]" * depth, file="doc") is not None
        assert refused("[" * (depth + 1) + "]" * (depth + 1)).endswith(f"nested more than {depth} levels deep")

    def test_aliases_count_as_copies(self):
        doc = "a: &a [1, 2, 3]\nb: [*a, *a]\n"
        assert parse_document(doc, file="doc") == {"a": [1, 2, 3], "b": [[1, 2, 3], [1, 2, 3]]}
        with using_limits(max_nodes=12):  # 1 + 2 (key a, its list) + 3 + 2 (key b, its list) + 2 x 4 (each alias) = 16
            assert "aliases expand it to more than 12 values" in refused(doc)
        with using_limits(max_nodes=16):
            assert parse_document(doc, file="doc")["b"][1] == [1, 2, 3]

    def test_duplicate_keys(self):
        assert refused("a: 1\nb: {c: 1, c: 2}\n") == "refused at line 2: duplicate key 'c'"
        assert parse_document("{1: a, '1': b}", file="doc") == {1: "a", "1": "b"}  # different types, different keys
        assert parse_document("base: &b {x: 1, y: 2}\nd: {<<: *b, x: 3}\n", file="doc")["d"] == {"x": 3, "y": 2}

    def test_interpreter_limits(self):
        assert refused("x: " + "1" * 5000) == "unreadable value: a number with more than 4300 digits"
        assert refused("&a [*a]") == "refused at line 1: an alias refers to a node that contains it (a recursive document)"


class TestJson:
    def test_duplicates_and_depth(self):
        assert refused('{"a": 1, "a": 2}', json_format=True) == "refused: duplicate key 'a'"
        assert "nested more than" in refused("[" * 100 + "]" * 100, json_format=True)
        assert refused("[" * 100_000 + "]" * 100_000, json_format=True) == "nested too deeply to read"


class TestFiles:
    def test_bom_and_size(self, tmp_path):
        path = tmp_path / "a.yaml"
        path.write_bytes(b"\xef\xbb\xbfa: 1\n")
        assert load_document(path) == {"a": 1}
        with using_limits(max_input_bytes=4), pytest.raises(InputError, match="file is 8 bytes; the limit is 4 bytes"):
            load_document(path)

    def test_a_folder_is_not_a_file(self, tmp_path):
        with pytest.raises(InputError, match="cannot read a directory as an input file"):
            load_document(tmp_path)


class TestSection:
    @pytest.mark.parametrize(("value", "message"), [
        (float("nan"), "expected a finite number, got nan"),
        (float("inf"), "expected a finite number, got inf"),
        (10**400, "number too large (401 digits)"),
        (1e31, "must be at most 1e+30, got 1e+31"),
        ("5", "expected a number, got '5' (a quoted number? write it unquoted, e.g. 1.0e+9)"),
    ])
    def test_numbers_are_finite(self, value, message):
        with pytest.raises(InputError) as info:
            Section({"x": value}).number("x")
        assert info.value.message == message

    def test_integers(self):
        assert Section({"x": 1e3}).integer("x") == 1000
        with pytest.raises(InputError, match="must be at most 1e\\+15"):
            Section({"x": 10**16}).integer("x")


def test_estimates_follow_the_builders():
    """The up-front counts equal what the builders build, for every bundled scenario that counts up front."""
    from pathlib import Path

    import yaml

    from simulator.scenario import load_scenario

    for path in sorted((Path(__file__).parent.parent / "scenarios").glob("*.yaml")):
        with open(path) as handle:
            estimate = estimate_scenario(yaml.safe_load(handle))
        problem = load_scenario(path).problem
        assert estimate.operators in (None, len(problem.graph.operators)), path
        assert estimate.devices == len(problem.cluster.devices), path
