"""Property: whatever bytes or mutated scenario the command line is given, it either exits 0
with a report or prints a single-line error (a rejected schedule: that line plus its
list of violations), never a traceback, never more than a few seconds.

The inputs are random byte strings and random mutations of the bundled scenarios
(``scenarios/*.yaml``): a field replaced by a hostile value (NaN, infinity, 1e308, a
4000-digit integer, a list where a number goes, an empty string...), a field deleted,
an unknown field added, or the YAML text itself cut, duplicated or sprinkled with bytes.
Runs are held to small ``--max-tasks`` so a mutation that asks for a big but legal
scenario is refused quickly instead of replayed for minutes.
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
import time
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from opplan.cli import main
from simulator.errors import InputError
from simulator.yamlio import load_document

BUNDLED = Path(__file__).parent.parent / "scenarios"
SCENARIOS = sorted(BUNDLED.glob("*.yaml"))
DOCS = {path.name: yaml.safe_load(path.read_text()) for path in SCENARIOS}
#: Bundled schedule files and the scenario each belongs to.
SCHEDULES = {"pipeline-4x8.gpipe.json": "pipeline-4x8.yaml", "moe-layer-4gpu.schedule.json": "moe-layer-4gpu.yaml"}
HOSTILE = [None, True, -1, 0, 0.5, 1, 2, 8, 3.5, 4096, 2**64, 10**4000, 1e308, -1e308, float("inf"), float("nan"), "", "x", "1e9",
           [], [1, 2], {}, {"a": 1}, "../../etc/passwd"]
SECONDS = 10.0
#: ``OPPLAN_HOSTILE_EXAMPLES=5000`` for a long hunt; 40 keeps the default run at about a second.
PROPERTY = settings(max_examples=int(os.environ.get("OPPLAN_HOSTILE_EXAMPLES", "40")), deadline=None,
                    suppress_health_check=list(HealthCheck), database=None)
FOLDER = Path(tempfile.mkdtemp(prefix="opplan-hostile-"))


def _paths(node, prefix=()):
    """Every (path, value) in a document, mappings and lists alike."""
    yield prefix, node
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        yield from _paths(value, (*prefix, key))


def _mutate(doc, path, action, value):
    out = copy.deepcopy(doc)
    if not path:
        return value if action == "replace" else out
    parent = out
    for key in path[:-1]:
        parent = parent[key]
    last = path[-1]
    if action == "replace":
        parent[last] = copy.deepcopy(value)
    elif action == "delete":
        del parent[last]
    elif action == "wrap":
        parent[last] = [parent[last]]
    elif isinstance(parent, dict):
        parent["unknown_field"] = value
    return out


def _mutations(draw, doc):
    for _ in range(draw(st.integers(1, 3))):
        path, _ = draw(st.sampled_from(list(_paths(doc))))
        doc = _mutate(doc, path, draw(st.sampled_from(["replace", "delete", "wrap", "add"])), draw(st.sampled_from(HOSTILE)))
    return doc


@st.composite
def mutated_schedules(draw) -> tuple[str, str]:
    """(schedule name, mutated schedule document as JSON text)."""
    name = draw(st.sampled_from(sorted(SCHEDULES)))
    doc = _mutations(draw, json.loads((BUNDLED / name).read_text()))
    return name, json.dumps(doc)


@st.composite
def mutated_scenarios(draw) -> str:
    doc = _mutations(draw, DOCS[draw(st.sampled_from(sorted(DOCS)))])
    text = yaml.safe_dump(doc, sort_keys=False)
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 2]))):  # and sometimes the text itself
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(st.sampled_from(["", "\x00", "&a ", "*a", ": ", "\n  - ", "{", "]", "\t", "é"])) + text[at + 3:]
    return text


def _check(capsys, args: list[str]) -> None:
    started = time.perf_counter()
    code = main(args)
    elapsed = time.perf_counter() - started
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert "Traceback" not in out + err
    assert elapsed < SECONDS, (args, elapsed)
    if code == 0:
        assert out.strip()
        return
    assert lines and lines[0].startswith("opplan: error: "), (code, lines)
    if code == 1:  # a rejected schedule: one line, then each violation
        assert lines[0].endswith("schedule rejected") and all(line.startswith("  - ") for line in lines[1:])
    else:
        assert len(lines) == 1, lines


@PROPERTY
@given(data=st.binary(max_size=2000))
def test_random_bytes_as_every_kind_of_file(capsys, data):
    for name in ("scenario.yaml", "schedule.json"):
        (FOLDER / name).write_bytes(data)
    for name in ("scenario.yaml", "schedule.json"):
        try:
            load_document(FOLDER / name)  # any document at all, or an InputError; nothing else escapes
        except InputError:
            pass
    _check(capsys, ["describe", str(FOLDER / "scenario.yaml")])
    _check(capsys, ["validate", str(FOLDER / "scenario.yaml"), "--schedule", str(FOLDER / "schedule.json")])
    _check(capsys, ["sweep", str(FOLDER / "scenario.yaml"), "--workers", "0", "--out", str(FOLDER / "out")])


@PROPERTY
@given(text=mutated_scenarios())
def test_mutated_bundled_scenarios(capsys, text):
    path = FOLDER / "mutated.yaml"
    path.write_text(text)
    _check(capsys, ["describe", str(path), "--max-tasks", "50000"])
    _check(capsys, ["validate", str(path), "--builtin", "1f1b", "--max-tasks", "20000"])
    _check(capsys, ["simulate", str(path), "--builtin", "gpipe", "--max-tasks", "20000", "--json", str(FOLDER / "r.json")])


@PROPERTY
@given(case=mutated_schedules())
def test_mutated_bundled_schedules(capsys, case):
    name, text = case
    path = FOLDER / "mutated.json"
    path.write_text(text)
    _check(capsys, ["validate", str(BUNDLED / SCHEDULES[name]), "--schedule", str(path)])


#: Command lines built from these: the bundled 4-stage scenario, paths in a scratch folder, hostile values.
COMMANDS = [["simulate"], ["validate"], ["describe"], ["compare"], ["schedule", "gpipe"], ["schedule", "nosuch"], ["plot", "gantt"]]
OPTIONS = ["--builtin", "--schedule", "--json", "--trace", "-o", "--max-tasks", "--max-input-mb", "--time-limit",
           "--plan-memory-like", "--with", "--chunks"]
VALUES = ["nan", "inf", "-1", "0", "", "1f1b", "dualpipe", "nosuch", "x=", "a=b.json", "-", "out.json", "out.png", ".",
          "scenario.yaml", "1e308", "99999999999999999999"]


@PROPERTY
@given(command=st.sampled_from(COMMANDS), options=st.lists(st.tuples(st.sampled_from(OPTIONS), st.sampled_from(VALUES)), max_size=4))
def test_random_command_lines(capsys, command, options):
    (FOLDER / "scenario.yaml").write_text((BUNDLED / "pipeline-4x8.yaml").read_text())
    before = (FOLDER / "scenario.yaml").read_text()
    args = [*command, "scenario.yaml", *(part for pair in options for part in pair)]
    cwd = os.getcwd()
    os.chdir(FOLDER)
    try:
        _check(capsys, args)
    finally:
        os.chdir(cwd)
    assert (FOLDER / "scenario.yaml").read_text() == before  # no input is ever overwritten
