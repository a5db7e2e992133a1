"""``send: after-next``: a slot's outputs leave when the next slot on its device ends (DualPipe's reference send points)."""

from __future__ import annotations

import pytest

from simulator.engine import simulate
from simulator.scenario import scenario_from_dict
from simulator.schedule import schedule_from_dict, schedule_to_dict

SCENARIO = {
    "model": {"type": "pipeline", "stages": 2, "F_ms": 1, "B_ms": 1, "W_ms": 1},
    "cluster": {"devices": 2, "interconnect": "ideal"},
    "workload": {"micro_batches": 2},
}


def schedule(first: object) -> dict:
    backward = [{"fused": [f"B:s{s}:{m}", f"W:s{s}:{m}"]} for s in (0, 1) for m in (0, 1)]
    return {"devices": {"gpu0": [first, "F:s0:1", *backward[:2]], "gpu1": ["F:s1:0", "F:s1:1", *backward[2:]]}}


def starts(doc: dict, tmp_path) -> dict[str, float]:
    problem = scenario_from_dict(SCENARIO, tmp_path / "s.yaml").problem
    timeline = simulate(problem, schedule_from_dict(doc))
    return {str(item.entry): round(item.start * 1e3, 9) for item in timeline.executed}


def test_the_next_stage_waits_until_the_following_slot_ends(tmp_path):
    assert starts(schedule("F:s0:0"), tmp_path)["F:s1:0"] == 1.0
    assert starts(schedule({"task": "F:s0:0", "send": "after-next"}), tmp_path)["F:s1:0"] == 2.0


def test_the_same_device_gets_the_activations_at_once(tmp_path):
    # The last stage's B needs its own F's saved activations: a deferred send never holds those.
    backward = [{"fused": [f"B:s{s}:{m}", f"W:s{s}:{m}"]} for s in (0, 1) for m in (0, 1)]
    gpu1 = [{"task": "F:s1:0", "send": "after-next"}, backward[2], "F:s1:1", backward[3]]
    doc = {"devices": {"gpu0": ["F:s0:0", "F:s0:1", *backward[:2]], "gpu1": gpu1}}
    assert starts(doc, tmp_path)["B:s1:0+W:s1:0"] == 2.0


def test_the_mark_survives_a_round_trip_and_bad_values_name_the_field():
    doc = schedule({"task": "F:s0:0", "send": "after-next"})
    again = schedule_to_dict(schedule_from_dict(doc))
    assert again["devices"]["gpu0"][0] == {"task": "F:s0:0", "send": "after-next"}
    from simulator.errors import InputError

    with pytest.raises(InputError) as info:
        schedule_from_dict(schedule({"task": "F:s0:0", "send": "later"}))
    assert info.value.field == "devices.gpu0[0].send"


def test_two_deferred_slots_in_a_row_each_send_when_the_next_slot_ends(tmp_path):
    backward = [{"fused": [f"B:s{s}:{m}", f"W:s{s}:{m}"]} for s in (0, 1) for m in (0, 1)]
    gpu0 = [{"task": "F:s0:0", "send": "after-next"}, {"task": "F:s0:1", "send": "after-next"}, *backward[:2]]
    gpu1 = ["F:s1:0", backward[2], "F:s1:1", backward[3]]
    timeline = starts({"devices": {"gpu0": gpu0, "gpu1": gpu1}}, tmp_path)
    # F:s0:0 leaves when F:s0:1 ends (2 ms), although F:s0:1 defers its own send;
    assert timeline["F:s1:0"] == 2.0
    # F:s0:1 leaves when B:s0:0+W:s0:0 ends: that starts at 5 (s1's gradient) and takes 2.
    assert (timeline["B:s0:0+W:s0:0"], timeline["F:s1:1"]) == (5.0, 7.0)


def test_a_prefetch_waits_for_a_later_tasks_input_from_another_device(tmp_path):
    backward = [{"fused": [f"B:s{s}:{m}", f"W:s{s}:{m}"]} for s in (0, 1) for m in (0, 1)]
    gpu1 = [{"task": "F:s1:0", "prefetch": ["F:s1:1"]}, "F:s1:1", *backward[2:]]
    doc = {"devices": {"gpu0": ["F:s0:0", "F:s0:1", *backward[:2]], "gpu1": gpu1}}
    assert starts(doc, tmp_path)["F:s1:0"] == 2.0  # F:s0:1's output arrives at 2 ms
    assert schedule_to_dict(schedule_from_dict(doc))["devices"]["gpu1"][0] == {"task": "F:s1:0", "prefetch": ["F:s1:1"]}
