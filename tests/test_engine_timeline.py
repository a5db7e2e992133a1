"""The replay's timeline, pinned to hand-computed answers on tiny clusters.

Times are whole seconds so every start and end is exact; each test states the
timeline it expects as a log of ``(device, entry, start, end)``.
"""

from __future__ import annotations

import pytest

from simulator.cluster import Cluster, Device
from simulator.engine import replay, simulate
from simulator.graph import Operator, OperatorGraph, chain_graph
from simulator.metrics import build_report
from simulator.problem import Problem, Task, Workload
from simulator.schedule import Entry, Schedule
from simulator.violations import Violation


def log(timeline) -> list[tuple[str, str, float, float]]:
    """The executed entries as ``(device, entry, start, end)``, in time order."""
    return sorted(((e.device, str(e.entry), e.start, e.end) for e in timeline.executed), key=lambda r: (r[2], r[0]))


def pipeline(stages: int, micro_batches: int, make_cluster, *, F=1.0, B=1.0, W=1.0) -> Problem:
    graph = chain_graph("p", stages, {"F": F, "B": B, "W": W})
    return Problem(graph, make_cluster(stages), Workload(micro_batches))


class TestPublishedPipelineFormulas:
    """p = 4 stages, m = 8 micro-batches, F = 1, full backward B + W = 2."""

    @pytest.mark.parametrize("order", ["gpipe", "1f1b"])
    def test_makespan_is_m_plus_p_minus_1_times_f_plus_b(self, make_cluster, pipeline_orders, order):
        timeline = simulate(pipeline(4, 8, make_cluster), pipeline_orders[order](4, 8))
        assert timeline.makespan == (8 + 4 - 1) * (1 + 2) == 33

    @pytest.mark.parametrize("order", ["gpipe", "1f1b"])
    def test_every_device_idles_p_minus_1_times_f_plus_b(self, make_cluster, pipeline_orders, order):
        report = build_report(simulate(pipeline(4, 8, make_cluster), pipeline_orders[order](4, 8)))
        assert [d.bubble for d in report.devices] == [(4 - 1) * (1 + 2)] * 4 == [9] * 4
        assert [d.busy for d in report.devices] == [8 * 3] * 4
        assert report.mean_bubble_ratio == pytest.approx(9 / 33)

    def test_gpipe_two_stages_two_micro_batches_exact_timeline(self, make_cluster, pipeline_orders):
        timeline = simulate(pipeline(2, 2, make_cluster), pipeline_orders["gpipe"](2, 2))
        assert log(timeline) == [
            ("gpu0", "F:s0:0", 0, 1),
            ("gpu0", "F:s0:1", 1, 2),
            ("gpu1", "F:s1:0", 1, 2),
            ("gpu1", "F:s1:1", 2, 3),
            ("gpu1", "B:s1:0+W:s1:0", 3, 5),
            # A fused group releases its outputs at its end: s0's backward waits until 5.
            ("gpu0", "B:s0:0+W:s0:0", 5, 7),
            ("gpu1", "B:s1:1+W:s1:1", 5, 7),
            ("gpu0", "B:s0:1+W:s0:1", 7, 9),
        ]

    def test_split_backward_releases_the_input_gradient_before_w(self, make_cluster):
        """B and W as separate entries: the upstream stage can start its B as soon as B ends."""
        schedule = Schedule.from_lists(
            {
                "gpu0": [Task("s0", 0, "F"), Task("s0", 0, "B"), Task("s0", 0, "W")],
                "gpu1": [Task("s1", 0, "F"), Task("s1", 0, "B"), Task("s1", 0, "W")],
            }
        )
        timeline = simulate(pipeline(2, 1, make_cluster), schedule)
        assert log(timeline) == [
            ("gpu0", "F:s0:0", 0, 1),
            ("gpu1", "F:s1:0", 1, 2),
            ("gpu1", "B:s1:0", 2, 3),
            ("gpu0", "B:s0:0", 3, 4),
            ("gpu1", "W:s1:0", 3, 4),
            ("gpu0", "W:s0:0", 4, 5),
        ]


class TestGroups:
    def test_fused_group_takes_the_sum_of_its_tasks(self, make_problem, op):
        problem = make_problem([op("a", F=1, B=2, W=3)], devices=1)
        schedule = Schedule.from_lists({"gpu0": [Task("a", 0, "F"), (Task("a", 0, "B"), Task("a", 0, "W"))]})
        assert log(simulate(problem, schedule)) == [("gpu0", "F:a:0", 0, 1), ("gpu0", "B:a:0+W:a:0", 1, 6)]

    @pytest.mark.parametrize(("fb_overlap", "expected"), [(0.0, 5.0), (0.5, 4.0), (1.0, 3.0)])
    def test_overlapped_f_and_b_take_max_plus_the_unhidden_part_of_min(self, make_problem, op, fb_overlap, expected):
        """DualPipe's F&B chunk: F of micro-batch 1 (2 s) overlapped with B of micro-batch 0 (3 s)."""
        problem = make_problem([op("a", F=2, B=3, W=1)], devices=1, micro_batches=2, fb_overlap=fb_overlap)
        overlapped = Entry((Task("a", 1, "F"), Task("a", 0, "B")), overlap=True)
        schedule = Schedule.from_lists(
            {"gpu0": [Task("a", 0, "F"), overlapped, Task("a", 0, "W"), Task("a", 1, "B"), Task("a", 1, "W")]}
        )
        timeline = simulate(problem, schedule)
        group = next(e for e in timeline.executed if e.entry == overlapped)
        assert (group.start, group.end) == (2.0, 2.0 + expected)

    def test_overlap_of_f_with_b_and_w_counts_b_plus_w_as_the_rest(self, make_problem, op):
        problem = make_problem([op("a", F=2, B=3, W=1)], devices=1, micro_batches=2, fb_overlap=0.5)
        overlapped = Entry((Task("a", 1, "F"), Task("a", 0, "B"), Task("a", 0, "W")), overlap=True)
        schedule = Schedule.from_lists({"gpu0": [Task("a", 0, "F"), overlapped, Task("a", 1, "B"), Task("a", 1, "W")]})
        group = next(e for e in simulate(problem, schedule).executed if e.entry == overlapped)
        assert group.end - group.start == max(2, 4) + 0.5 * min(2, 4) == 5


class TestDeclaredStart:
    def test_a_declared_start_is_a_not_before_time(self, make_problem, op):
        problem = make_problem([op("a"), op("b")], [("a", "b")], devices=1, mode="inference")
        schedule = Schedule.from_lists({"gpu0": [Task("a", 0, "F"), Entry((Task("b", 0, "F"),), start=5.0)]})
        timeline = simulate(problem, schedule)
        assert log(timeline) == [("gpu0", "F:a:0", 0, 1), ("gpu0", "F:b:0", 5, 6)]

    def test_a_start_equal_to_the_ready_time_is_met(self, make_problem, op):
        problem = make_problem([op("a"), op("b")], [("a", "b")], devices=1, mode="inference")
        schedule = Schedule.from_lists({"gpu0": [Entry((Task("a", 0, "F"),), start=0.0), Entry((Task("b", 0, "F"),), start=1.0)]})
        assert replay(problem, schedule).violations == ()

    def test_an_impossible_declared_start_is_reported_and_the_entry_runs_when_ready(self, make_problem, op):
        problem = make_problem([op("a", F=2), op("b")], [("a", "b")], devices=1, mode="inference")
        schedule = Schedule.from_lists({"gpu0": [Task("a", 0, "F"), Entry((Task("b", 0, "F"),), start=0.5)]})
        timeline = replay(problem, schedule)
        assert log(timeline) == [("gpu0", "F:a:0", 0, 2), ("gpu0", "F:b:0", 2, 3)]
        assert timeline.violations == (
            Violation(
                "start",
                "F:b:0 on gpu0 is declared to start at 500 ms but cannot start before 2000 ms (inputs or the stream are not ready)",
                device="gpu0",
                task=Task("b", 0, "F"),
                time=0.5,
                amount=1.5,
            ),
        )


class TestStreamsAndModes:
    def test_inference_runs_forwards_only(self, make_problem, op):
        problem = make_problem([op("a"), op("b")], [("a", "b")], devices=2, mode="inference", micro_batches=2)
        schedule = Schedule.from_lists({"gpu0": [Task("a", 0, "F"), Task("a", 1, "F")], "gpu1": [Task("b", 0, "F"), Task("b", 1, "F")]})
        assert log(simulate(problem, schedule)) == [
            ("gpu0", "F:a:0", 0, 1),
            ("gpu0", "F:a:1", 1, 2),
            ("gpu1", "F:b:0", 1, 2),
            ("gpu1", "F:b:1", 2, 3),
        ]

    def test_a_communication_operator_runs_beside_compute_on_the_same_device(self, make_problem, op):
        """A comm-stream operator has its own SimPy process: it overlaps unrelated compute."""
        problem = make_problem(
            [op("x", F=1), op("send", F=3, stream="comm"), op("y", F=2)], [("x", "send")], devices=1, mode="inference"
        )
        schedule = Schedule.from_lists({"gpu0": [Task("x", 0, "F"), Task("send", 0, "F"), Task("y", 0, "F")]})
        timeline = simulate(problem, schedule)
        assert sorted((e.stream, str(e.entry), e.start, e.end) for e in timeline.executed) == [
            ("comm", "F:send:0", 1, 4),
            ("compute", "F:x:0", 0, 1),
            ("compute", "F:y:0", 1, 3),
        ]
        assert build_report(timeline).devices[0].busy == 3  # compute only
        assert build_report(timeline).devices[0].comm_busy == 3

    def test_an_idle_device_has_the_whole_makespan_as_bubble(self, make_problem, op):
        problem = make_problem([op("a", F=4)], devices=2, mode="inference")
        timeline = simulate(problem, Schedule.from_lists({"gpu0": [Task("a", 0, "F")], "gpu1": []}))
        assert [(d.device, d.busy, d.bubble) for d in build_report(timeline).devices] == [("gpu0", 4, 0), ("gpu1", 0, 4)]

    def test_flop_based_durations_use_achieved_flops(self):
        """Without a measured time, a pass takes FLOPs / (peak x efficiency)."""
        graph = OperatorGraph("g", (Operator("a", flops={"F": 6e12}),))
        cluster = Cluster("c", (Device("gpu0", "t", 1e12, peak_flops=2e12, efficiency=0.5),))
        problem = Problem(graph, cluster, Workload(1, "inference"))
        assert simulate(problem, Schedule.from_lists({"gpu0": [Task("a", 0, "F")]})).makespan == 6.0
