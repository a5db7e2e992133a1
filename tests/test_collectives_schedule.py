"""Collectives in the schedule document: the syntax, the checks that name a hang before
replaying it, and exact timelines of collectives between tasks."""

from __future__ import annotations

import json

import pytest
import yaml

from opplan.cli import main
from simulator.collectives import Collective, collective_time
from simulator.engine import replay, simulate
from simulator.errors import InputError, ScheduleRejected
from simulator.problem import Task
from simulator.schedule import CollectiveCall, Entry, Schedule, load_schedule, save_schedule, schedule_from_dict
from simulator.validation import static_violations

#: Two data-parallel replicas ``s0`` / ``s1`` of one operator (1 ms per pass), one per GPU.
SCENARIO = {
    "name": "dp2",
    "model": {"type": "graph", "operators": [{"name": f"s{i}", "time_ms": {"F": 1, "B": 1, "W": 1}} for i in range(2)]},
    "cluster": {"devices": 2, "device": {"type": "generic", "memory_gb": 80, "peak_tflops": 100},
                "interconnect": {"bandwidth_GBps": 100, "latency_us": 2}},
    "workload": {"micro_batches": 1},
}


def document(**changes) -> dict:
    """Each GPU runs its stage, then both all-reduce 1 GB of gradients."""
    doc = {
        "format": "opplan-schedule/1",
        "collectives": {"grads": {"op": "AllReduce", "group": ["gpu0", "gpu1"], "bytes": 1e9, "after": ["W:s0:0"]}},
        "devices": {
            "gpu0": ["F:s0:0", "B:s0:0", "W:s0:0", {"collective": "grads"}],
            "gpu1": ["F:s1:0", "B:s1:0", "W:s1:0", {"collective": "grads"}],
        },
    }
    for key, value in changes.items():
        doc["collectives"]["grads"][key] = value
    return doc


class TestFormat:
    def test_parses_one_call_shared_by_its_members(self):
        schedule = schedule_from_dict(document())
        call = schedule.collectives["grads"]
        assert call.collective == Collective("all_reduce", ("gpu0", "gpu1"), 1e9)
        assert call.after == (Task("s0", 0, "W"),) and call.stream == "comm"
        assert [str(e) for e in schedule.devices["gpu1"]][-1] == "all_reduce:grads"
        assert len(schedule) == 6  # tasks only

    @pytest.mark.parametrize("suffix", [".json", ".yaml"])
    def test_round_trips_through_a_file(self, tmp_path, suffix):
        schedule = schedule_from_dict(document(matrix=None, before=[], stream="compute"))
        path = tmp_path / f"s{suffix}"
        save_schedule(schedule, path)
        assert load_schedule(path) == schedule

    def test_matrix_root_and_chunks_round_trip(self, tmp_path):
        doc = document()
        doc["collectives"]["a2a"] = {"op": "all_to_all", "group": ["gpu0", "gpu1"], "matrix": [[0, 5e6], [3e6, 0]]}
        doc["collectives"]["bcast"] = {"op": "Broadcast", "group": ["gpu0", "gpu1"], "bytes": 8e6, "root": 1, "chunks": 4}
        for device in ("gpu0", "gpu1"):
            doc["devices"][device] += [{"collective": "a2a"}, {"collective": "bcast"}]
        schedule = schedule_from_dict(doc)
        assert schedule.collectives["a2a"].collective.matrix == ((0.0, 5e6), (3e6, 0.0))
        assert (schedule.collectives["bcast"].collective.root, schedule.collectives["bcast"].collective.chunks) == (1, 4)
        save_schedule(schedule, tmp_path / "s.yaml")
        assert load_schedule(tmp_path / "s.yaml") == schedule

    @pytest.mark.parametrize(
        "change,field,message",
        [
            ({"op": "scan"}, "collectives.grads.op", "unknown collective op 'scan'"),
            ({"group": "gpu0"}, "collectives.grads.group", "expected a list of device names"),
            ({"group": ["gpu0", "gpu0"]}, "collectives.grads.group", "at least two distinct devices"),
            ({"algorithm": "tree"}, "collectives.grads.algorithm", "unknown algorithm 'tree'"),
            ({"bytes": "1GB"}, "collectives.grads.bytes", "expected a number"),
            ({"after": ["W:s0"]}, "collectives.grads.after[0]", "not of the form KIND:op:mb"),
            ({"matrix": [[0, 1]]}, "collectives.grads.matrix", "all_to_all only"),
            ({"stream": "nccl"}, "collectives.grads.stream", "unknown stream 'nccl'"),
            ({"size": 3}, "collectives.grads.size", "unknown key 'size'"),
            ({"op": "all_to_all", "matrix": [[0, "x"], [1, 0]]}, "collectives.grads.matrix", "list of rows of bytes"),
            ({"op": "all_to_all", "matrix": [[0, 1, 2], [1, 0, 2]]}, "collectives.grads.matrix", "must be 2×2"),
            ({"root": 5, "op": "broadcast"}, "collectives.grads.root", "root must index the group"),
        ],
    )
    def test_bad_definitions_name_the_field(self, change, field, message):
        with pytest.raises(InputError, match=message) as info:
            schedule_from_dict(document(**change), file="s.json")
        assert (info.value.file, info.value.field) == ("s.json", field)

    def test_a_definition_no_device_lists(self):
        doc = document()
        doc["collectives"]["spare"] = {"op": "all_gather", "group": ["gpu0", "gpu1"], "bytes": 1}
        with pytest.raises(InputError, match="collective 'spare' is defined but no device lists it") as info:
            schedule_from_dict(doc)
        assert info.value.field == "collectives.spare"

    def test_an_entry_naming_an_undefined_collective(self):
        doc = document()
        doc["devices"]["gpu1"][-1] = {"collective": "grad"}
        with pytest.raises(InputError, match="unknown collective 'grad' \\(defined under collectives: grads\\)") as info:
            schedule_from_dict(doc)
        assert info.value.field == "devices.gpu1[3].collective"


@pytest.fixture
def problem(tmp_path):
    from simulator.scenario import load_scenario

    path = tmp_path / "dp2.yaml"
    path.write_text(yaml.safe_dump(SCENARIO))
    return load_scenario(path).problem


def found(problem, doc) -> list[tuple]:
    """``(kind, device, message)`` of every static violation of the schedule document ``doc``."""
    return [(v.kind, v.device, v.message) for v in static_violations(problem, schedule_from_dict(doc))]


class TestChecks:
    def test_a_valid_schedule_has_no_violations(self, problem):
        assert static_violations(problem, schedule_from_dict(document())) == []

    def test_a_member_that_never_calls_it_is_a_named_deadlock(self, problem):
        doc = document()
        doc["devices"]["gpu1"].pop()
        assert found(problem, doc) == [(
            "deadlock", "gpu1",
            "deadlock: collective 'grads' never runs on gpu1, a member of its group ['gpu0', 'gpu1']:"
            " the other members would wait for it forever",
        )]

    def test_unknown_group_device_and_a_non_member(self, problem):
        doc = document(group=["gpu0", "gpu7"])
        assert found(problem, doc) == [
            ("collective", "gpu7", "collective 'grads': group device 'gpu7' is not in the cluster"),
            ("collective", "gpu1", "gpu1 runs collective 'grads' but is not in its group ['gpu0', 'gpu7']"),
        ]

    def test_conflicting_orders_are_the_nccl_hang(self, problem):
        doc = document()
        doc["collectives"]["other"] = {"op": "all_gather", "group": ["gpu0", "gpu1"], "bytes": 1e6}
        doc["devices"]["gpu0"].append({"collective": "other"})
        doc["devices"]["gpu1"].insert(3, {"collective": "other"})
        ((kind, _, message),) = found(problem, doc)
        assert kind == "deadlock"
        assert message.startswith("deadlock: collectives called in conflicting orders: ")
        assert "gpu0 runs 'grads' before 'other'" in message and "gpu1 runs 'other' before 'grads'" in message

    def test_waiting_for_a_task_listed_later_on_the_same_stream(self, problem):
        doc = document(after=["W:s1:0"], stream="compute")
        doc["devices"]["gpu1"] = ["F:s1:0", {"collective": "grads"}, "B:s1:0", "W:s1:0"]
        assert found(problem, doc) == [(
            "deadlock", "gpu1",
            "deadlock: gpu1[1] runs collective 'grads', which waits for W:s1:0, listed after it on the same stream (gpu1[3])",
        )]

    def test_the_replay_names_a_cycle_through_a_collective(self, problem):
        """gpu1's comm stream waits in the all-reduce for W:s1:0, which waits (before) for it."""
        doc = document(after=["W:s1:0"], before=["W:s1:0"])
        timeline = replay(problem, schedule_from_dict(doc))
        assert not timeline.completed
        (violation,) = timeline.violations
        assert (violation.kind, violation.device, violation.task) == ("deadlock", "gpu1", Task("s1", 0, "W"))
        assert violation.message == "deadlock: gpu1 waits at W:s1:0 for collective 'grads' (W:s1:0 not yet run)"

    def test_validate_command_names_the_file_and_the_deadlock(self, tmp_path, capsys):
        scenario, schedule = tmp_path / "dp2.yaml", tmp_path / "s.json"
        scenario.write_text(yaml.safe_dump(SCENARIO))
        doc = document()
        doc["devices"]["gpu1"].pop()
        schedule.write_text(json.dumps(doc))
        assert main(["validate", str(scenario), "--schedule", str(schedule)]) != 0
        assert capsys.readouterr().err.splitlines() == [
            f"opplan: error: {schedule}: schedule rejected",
            "  - deadlock: collective 'grads' never runs on gpu1, a member of its group ['gpu0', 'gpu1']:"
            " the other members would wait for it forever",
        ]


class TestTimeline:
    """1 ms per task; 100 GB/s, 2 us links through a switch (route latency 2 us)."""

    def test_the_all_reduce_starts_when_the_last_member_and_input_are_ready(self, problem):
        timeline = simulate(problem, schedule_from_dict(document()))
        (record,) = timeline.collectives
        ring = 1e9 / 100e9 + 2 * 2e-6  # 2(n−1)/n·S/B + 2(n−1)α with n = 2
        assert (record.start, record.end) == pytest.approx((3e-3, 3e-3 + ring), rel=1e-12)
        assert timeline.makespan == pytest.approx(3e-3 + ring, rel=1e-12)

    def test_before_holds_a_task_until_the_collective_ends(self, problem):
        """A ZeRO-3-style all-gather of 2 GB before gpu1's forward; gpu0 computes meanwhile."""
        gather = CollectiveCall("params", Collective("all_gather", ("gpu0", "gpu1"), 2e9), before=(Task("s1", 0, "F"),))
        schedule = Schedule.from_lists({
            "gpu0": [gather, Task("s0", 0, "F"), Task("s0", 0, "B"), Task("s0", 0, "W")],
            "gpu1": [gather, Task("s1", 0, "F"), Task("s1", 0, "B"), Task("s1", 0, "W")],
        })
        timeline = simulate(problem, schedule)
        took = collective_time(gather.collective, problem.cluster)
        assert took == pytest.approx(1e9 / 100e9 + 2e-6, rel=1e-12)
        starts = {str(e.entry): e.start for e in timeline.executed}
        assert starts["F:s0:0"] == 0  # not gated: the collective runs on the comm stream
        assert starts["F:s1:0"] == pytest.approx(took, rel=1e-12)

    def test_reports_and_traces_count_the_collective_traffic(self, problem):
        from simulator.metrics import build_report
        from simulator.trace import trace_events

        timeline = simulate(problem, schedule_from_dict(document()))
        report = build_report(timeline)
        # Ring all-reduce on 2 ranks: 2 steps, each rank sends S/2 per step.
        assert report.transfer_bytes == 2 * 2 * 1e9 / 2
        assert {link.link: link.bytes for link in report.links} == {
            "gpu0.intra.out": 1e9, "gpu0.intra.in": 1e9, "gpu1.intra.out": 1e9, "gpu1.intra.in": 1e9}
        (stats,) = report.collectives
        ring = 1e9 / 100e9 + 2 * 2e-6
        assert (stats.name, stats.op, stats.ranks, stats.start) == ("grads", "all_reduce", 2, pytest.approx(3e-3))
        assert (stats.duration, stats.idle, stats.slowdown) == pytest.approx((ring, ring, 1.0), rel=1e-12)
        assert stats.bus_bandwidth == pytest.approx(1e9 / ring * 2 * (2 - 1) / 2, rel=1e-12)
        events = trace_events(timeline)["traceEvents"]
        assert sum(e.get("name") == "grads[1] gpu1->gpu0" for e in events) == 2  # on both links of its route
        assert [e["cat"] for e in events if e.get("name") == "all_reduce:grads"] == ["collective"] * 2

    def test_a_rejected_schedule_raises_with_every_violation(self, problem):
        doc = document(group=["gpu0", "gpu9"])
        with pytest.raises(ScheduleRejected) as info:
            simulate(problem, schedule_from_dict(doc))
        assert len(info.value.violations) == 2


class TestWithOtherTraffic:
    """Direct 1 GB/s links, no latency; operators take 1 s per pass."""

    def test_a_collective_holds_the_link_an_activation_needs(self, make_problem, op):
        problem = make_problem([op("s0"), op("s1")], [("s0", "s1", 1e9)], devices=2, bandwidth=1e9, mode="inference")
        send = CollectiveCall("p2p", Collective("send_recv", ("gpu0", "gpu1"), 2e9))
        alone = Schedule.from_lists({"gpu0": [Task("s0", 0, "F")], "gpu1": [Task("s1", 0, "F")]})
        both = Schedule.from_lists({"gpu0": [send, Task("s0", 0, "F")], "gpu1": [send, Task("s1", 0, "F")]})
        assert {str(e.entry): e.start for e in simulate(problem, alone).executed}["F:s1:0"] == 2  # 1 s + 1 GB / 1 GB/s
        timeline = simulate(problem, both)
        # The send holds gpu0->gpu1 for [0, 2]; the activation ready at 1 waits for the link.
        assert {str(e.entry): e.start for e in timeline.executed}["F:s1:0"] == 3
        assert [(t.start, t.end) for t in timeline.transfers] == [(2, 3)]

    def test_on_an_ideal_interconnect_a_collective_only_synchronises(self, make_problem, op):
        problem = make_problem([op("s0"), op("s1")], devices=2, mode="inference")
        sync = CollectiveCall("barrier", Collective("all_reduce", ("gpu0", "gpu1"), 1e9), stream="compute")
        schedule = Schedule.from_lists({"gpu0": [Task("s0", 0, "F"), sync], "gpu1": [sync, Task("s1", 0, "F")]})
        timeline = simulate(problem, schedule)
        assert sorted((e.device, str(e.entry), e.start, e.end) for e in timeline.executed) == [
            ("gpu0", "F:s0:0", 0, 1), ("gpu0", "all_reduce:barrier", 1, 1),
            ("gpu1", "F:s1:0", 1, 2), ("gpu1", "all_reduce:barrier", 1, 1),
        ]

    def test_simulate_prints_the_collectives_table(self, tmp_path, capsys):
        scenario, schedule = tmp_path / "dp2.yaml", tmp_path / "s.json"
        scenario.write_text(yaml.safe_dump(SCENARIO))
        schedule.write_text(json.dumps(document()))
        assert main(["simulate", str(scenario), "--schedule", str(schedule)]) == 0
        out = capsys.readouterr().out
        assert "collectives" in out and "all_reduce" in out and "slowdown" in out

    def test_communication_hidden_behind_compute_and_exposed(self, make_problem, op):
        """Each GPU computes [0, 1] while its comm stream all-reduces [0, 2]: 1 s of the
        all-reduce is hidden behind compute, 1 s exposed."""
        from simulator.metrics import build_report

        problem = make_problem([op("s0"), op("s1")], devices=2, bandwidth=1e9, mode="inference")
        grads = CollectiveCall("grads", Collective("all_reduce", ("gpu0", "gpu1"), 2e9))  # 2·(1/2)·2 GB / 1 GB/s
        schedule = Schedule.from_lists({"gpu0": [Task("s0", 0, "F"), grads], "gpu1": [grads, Task("s1", 0, "F")]})
        report = build_report(simulate(problem, schedule))
        assert [(d.comm_time, d.comm_hidden, d.comm_exposed) for d in report.devices] == [(2, 1, 1), (2, 1, 1)]

    def test_pictures_draw_a_collective_as_communication(self, problem):
        from simulator.pictures import category, gantt_figure

        timeline = simulate(problem, schedule_from_dict(document(stream="compute")))
        assert {category(e) for e in timeline.executed if e.entry.collective} == {"comm"}
        assert len(gantt_figure(timeline).axes) == 1


def test_the_bundled_tp2_dp2_scenario_hides_one_bucket_behind_the_backward():
    """scenarios/tp2-dp2-collectives.yaml: the numbers its comment promises."""
    from pathlib import Path

    from simulator.metrics import build_report
    from simulator.scenario import load_scenario

    scenario = load_scenario(Path(__file__).resolve().parent.parent / "scenarios" / "tp2-dp2-collectives.yaml")
    timeline = simulate(scenario.problem, load_schedule(scenario.schedule_file))
    cluster = scenario.problem.cluster
    tp = collective_time(Collective("all_reduce", ("gpu0", "gpu1"), 3.36e7), cluster)
    dp = collective_time(Collective("reduce_scatter", ("gpu0", "gpu2"), 1e8), cluster)
    assert (tp, dp) == pytest.approx((3.36e7 / 292.5e9 + 2 * 25e-9, 0.5e-6 + 0.5e8 / 45e9), rel=1e-12)
    ms = 1e-3
    ran = {r.name: (r.start, r.end) for r in timeline.collectives}
    assert ran["dp0.l1"] == pytest.approx((4 * ms + tp, 4 * ms + tp + dp), rel=1e-12)  # after both replicas' W of layer 1
    assert ran["dp0.l0"] == pytest.approx((6 * ms + 2 * tp, 6 * ms + 2 * tp + dp), rel=1e-12)
    assert timeline.makespan == pytest.approx(6 * ms + 2 * tp + dp, rel=1e-12)
    hidden = {d.device: d.comm_hidden for d in build_report(timeline).devices}
    assert hidden == pytest.approx(dict.fromkeys(["gpu0", "gpu1", "gpu2", "gpu3"], 1 * ms), rel=1e-9)  # B of layer 0


def test_a_collective_is_the_next_slot_for_a_send_held_after_next(make_problem, op):
    """gpu0 holds F:s0's send until its next slot ends: here a barrier at t = 1, not s2 at t = 2."""
    problem = make_problem([op("s0"), op("s1"), op("s2")], [("s0", "s1", 1e9)], devices=2, bandwidth=1e9, mode="inference")
    barrier = CollectiveCall("barrier", Collective("all_reduce", ("gpu0", "gpu1"), 0.0), stream="compute")
    schedule = Schedule.from_lists({
        "gpu0": [Entry((Task("s0", 0, "F"),), send_after_next=True), barrier, Task("s2", 0, "F")],
        "gpu1": [barrier, Task("s1", 0, "F")],
    })
    starts = {(e.device, str(e.entry)): e.start for e in simulate(problem, schedule).executed}
    assert starts[("gpu0", "all_reduce:barrier")] == 1
    assert starts[("gpu1", "F:s1:0")] == 2  # sent at 1, 1 GB at 1 GB/s
