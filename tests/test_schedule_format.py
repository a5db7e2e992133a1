"""The schedule document: every entry form parses, round-trips through JSON and YAML,
and every malformed part fails with the file and the field."""

from __future__ import annotations

import pytest

from simulator.errors import InputError
from simulator.problem import Task, parse_task
from simulator.schedule import Entry, Schedule, load_schedule, save_schedule, schedule_from_dict, schedule_to_dict

DOC = {
    "format": "opplan-schedule/1",
    "name": "every form",
    "meta": {"author": "test"},
    "devices": {
        "gpu0": [
            "F:s0:0",
            {"op": "s0", "mb": 1, "kind": "F"},
            {"task": "B:s0:0", "start": 0.25},
            {"fused": ["W:s0:0", "B:s0:1"]},
            {"overlap": ["F:s0:2", "B:s0:2", "W:s0:2"], "start": 1.5},
        ],
        "gpu1": [],
    },
}


def test_every_entry_form_parses():
    schedule = schedule_from_dict(DOC)
    assert schedule.name == "every form" and dict(schedule.meta) == {"author": "test"}
    assert schedule.devices["gpu0"] == (
        Entry((Task("s0", 0, "F"),)),
        Entry((Task("s0", 1, "F"),)),
        Entry((Task("s0", 0, "B"),), start=0.25),
        Entry((Task("s0", 0, "W"), Task("s0", 1, "B"))),
        Entry((Task("s0", 2, "F"), Task("s0", 2, "B"), Task("s0", 2, "W")), start=1.5, overlap=True),
    )
    assert schedule.devices["gpu1"] == ()
    assert len(schedule) == 8


def test_entries_print_as_written_in_schedule_notation():
    assert [str(e) for e in schedule_from_dict(DOC).devices["gpu0"]] == [
        "F:s0:0",
        "F:s0:1",
        "B:s0:0",
        "W:s0:0+B:s0:1",
        "F:s0:2&B:s0:2&W:s0:2",
    ]


def test_to_dict_writes_the_compact_form_and_reads_back_equal():
    doc = schedule_to_dict(schedule_from_dict(DOC))
    assert doc["devices"]["gpu0"][:3] == ["F:s0:0", "F:s0:1", {"task": "B:s0:0", "start": 0.25}]
    assert schedule_from_dict(doc) == schedule_from_dict(DOC)


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_save_and_load_round_trip(tmp_path, suffix):
    path = tmp_path / f"schedule{suffix}"
    save_schedule(schedule_from_dict(DOC), path)
    assert load_schedule(path) == schedule_from_dict(DOC)


def test_operator_names_may_contain_colons():
    assert parse_task("W:layer:3:attn:7") == Task("layer:3:attn", 7, "W")
    assert str(Task("layer:3:attn", 7, "W")) == "W:layer:3:attn:7"


def test_from_lists_turns_a_tuple_into_a_fused_group_and_keeps_entries():
    a, b, c = Task("x", 0, "F"), Task("x", 0, "B"), Task("x", 0, "W")
    schedule = Schedule.from_lists({"gpu0": [a, (b, c)], "gpu1": [Entry((a,), start=2.0)]})
    assert schedule.devices["gpu0"] == (Entry((a,)), Entry((b, c)))
    assert schedule.devices["gpu1"][0].start == 2.0
    assert schedule.placement() == {a: "gpu1", b: "gpu0", c: "gpu0"}


@pytest.mark.parametrize(
    ("tasks", "overlap", "message"),
    [((), False, "at least one task"), ((Task("x", 0, "F"),), True, "at least two tasks")],
)
def test_entries_reject_empty_groups_and_lonely_overlaps(tasks, overlap, message):
    with pytest.raises(ValueError, match=message):
        Entry(tasks, overlap=overlap)


NON_NEGATIVE_START = "start must be a number of seconds in [0, 86400]"


@pytest.mark.parametrize(
    ("doc", "field", "message"),
    [
        (["F:s0:0"], None, "expected a mapping at the top level"),
        ({"format": "other/2", "devices": {"gpu0": []}}, "format", "unsupported format 'other/2' (expected opplan-schedule/1)"),
        ({"devices": {}}, "devices", "expected a non-empty mapping of device -> task list"),
        ({"devices": {"gpu0": "F:s0:0"}}, "devices.gpu0", "expected a list of tasks, got str"),
        ({"devices": {"gpu0": ["F:s0"]}}, "devices.gpu0[0]", "task 'F:s0' is not of the form KIND:op:mb"),
        ({"devices": {"gpu0": ["F:s0:one"]}}, "devices.gpu0[0]", "task 'F:s0:one': micro-batch 'one' is not an integer"),
        ({"devices": {"gpu0": [{"op": "s0", "mb": "1", "kind": "F"}]}}, "devices.gpu0[0].mb", "micro-batch must be an integer, got '1'"),
        ({"devices": {"gpu0": [{"fused": ["B:s0:0"]}]}}, "devices.gpu0[0].fused", "fused takes a list of at least two tasks"),
        ({"devices": {"gpu0": [{"overlap": "F:s0:0"}]}}, "devices.gpu0[0].overlap", "overlap takes a list of at least two tasks"),
        (
            {"devices": {"gpu0": [{"fused": ["B:s0:0", 7]}]}},
            "devices.gpu0[0].fused[1]",
            "expected a task 'KIND:op:mb' or {op, mb, kind}, got 7",
        ),
        ({"devices": {"gpu0": [{"task": "F:s0:0", "start": -1}]}}, "devices.gpu0[0].start", f"{NON_NEGATIVE_START}, got -1"),
        ({"devices": {"gpu0": [{"task": "F:s0:0", "start": True}]}}, "devices.gpu0[0].start", f"{NON_NEGATIVE_START}, got True"),
        ({"devices": {"gpu0": []}, "meta": ["x"]}, "meta", "expected a mapping"),
    ],
)
def test_malformed_documents_name_the_file_and_the_field(doc, field, message):
    with pytest.raises(InputError) as info:
        schedule_from_dict(doc, file="plan.json")
    assert (info.value.file, info.value.field, info.value.message) == ("plan.json", field, message)


def test_a_malformed_file_is_an_input_error(tmp_path):
    path = tmp_path / "s.json"
    path.write_text('{"devices": ')
    with pytest.raises(InputError, match="malformed JSON at line 1"):
        load_schedule(path)
