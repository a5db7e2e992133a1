"""Every rule a schedule can break is reported, with where and why, and all at once.

Static violations (seen without running) make :func:`replay` raise
:class:`ScheduleRejected`; run-time ones (deadlock, memory, declared start) come back in
``Timeline.violations``, and :func:`simulate` raises on either.
"""

from __future__ import annotations

import pytest

from simulator.engine import replay, simulate
from simulator.errors import ScheduleRejected
from simulator.problem import Task
from simulator.schedule import Entry, Schedule
from simulator.violations import Violation


def F(op, mb=0):
    return Task(op, mb, "F")


def B(op, mb=0):
    return Task(op, mb, "B")


def W(op, mb=0):
    return Task(op, mb, "W")


def full(op, mb=0):
    return [F(op, mb), B(op, mb), W(op, mb)]


#: A valid order for the chain a -> b on one device.
VALID = [F("a"), F("b"), B("b"), W("b"), B("a"), W("a")]


def rejected(problem, lists) -> list[Violation]:
    with pytest.raises(ScheduleRejected) as info:
        replay(problem, Schedule.from_lists(lists))
    return info.value.violations


def said(violations) -> list[str]:
    return [v.message for v in violations]


@pytest.fixture
def chain(make_problem, op):
    """a -> b, training, one micro-batch, two devices."""
    return make_problem([op("a"), op("b")], [("a", "b")])


class TestStaticViolations:
    def test_unknown_device(self, chain):
        violations = rejected(chain, {"gpu0": VALID, "gpu7": []})
        assert violations == [Violation("device", "device 'gpu7' is not in the cluster (devices: gpu0, gpu1)", device="gpu7")]

    @pytest.mark.parametrize(
        ("task", "why"),
        [
            (Task("zz", 0, "F"), "no operator 'zz'"),
            (Task("a", 3, "F"), "micro-batch 3 outside 0..0"),
            (Task("a", 0, "X"), "kind 'X' not in F/B/W"),
        ],
    )
    def test_unknown_task(self, chain, task, why):
        violations = rejected(chain, {"gpu0": VALID + [task]})
        assert said(violations) == [f"gpu0[6]: task {task} does not exist in this problem ({why})"]
        assert [(v.kind, v.device, v.task) for v in violations] == [("unknown", "gpu0", task)]

    def test_missing_task(self, chain):
        violations = rejected(chain, {"gpu0": VALID[:3] + VALID[4:]})
        assert violations == [Violation("missing", "task W:b:0 is not scheduled on any device", task=W("b"))]

    def test_duplicate_task(self, chain):
        violations = rejected(chain, {"gpu0": VALID, "gpu1": [F("a")]})
        assert said(violations) == ["task F:a:0 is listed twice (gpu0[0] and gpu1[0])"]
        assert [(v.kind, v.device, v.task) for v in violations] == [("duplicate", "gpu1", F("a"))]

    def test_backward_away_from_its_forward(self, chain):
        violations = rejected(chain, {"gpu0": [F("a")] + full("b") + [W("a")], "gpu1": [B("a")]})
        assert [(v.kind, v.device, v.task) for v in violations] == [("placement", "gpu0", W("a")), ("placement", "gpu1", B("a"))]
        assert said(violations) == [
            "W:a:0 runs on gpu0 but its activations from B:a:0 live on gpu1 (B and W must run where their F ran)",
            "B:a:0 runs on gpu1 but its activations from F:a:0 live on gpu0 (B and W must run where their F ran)",
        ]

    def test_task_listed_before_its_input_on_the_same_device(self, chain):
        violations = rejected(chain, {"gpu0": [F("b"), F("a"), B("b"), W("b"), B("a"), W("a")]})
        assert [(v.kind, v.device, v.task) for v in violations] == [("dependency", "gpu0", F("b"))]
        assert said(violations) == ["dependency violated: F:b:0 is listed at gpu0[0] before its input F:a:0 at gpu0[1]"]

    def test_grouped_tasks_on_different_streams(self, make_problem, op):
        problem = make_problem([op("a"), op("send", stream="comm")], devices=1, mode="inference")
        violations = rejected(problem, {"gpu0": [(F("a"), F("send"))]})
        assert [(v.kind, v.device, v.task) for v in violations] == [("group", "gpu0", F("a"))]
        assert said(violations) == ["gpu0[0]: grouped tasks F:a:0+F:send:0 run on different streams"]

    def test_overlapped_tasks_that_depend_on_each_other(self, chain):
        lists = {"gpu0": [Entry((F("b"), B("b")), overlap=True), F("a"), B("a"), W("a"), W("b")]}
        assert said(rejected(chain, lists)) == [
            "gpu0[0]: overlapped F:b:0 depends on (or feeds) B:b:0",
            "dependency violated: F:b:0 is listed at gpu0[0] before its input F:a:0 at gpu0[1]",
        ]

    def test_several_violations_are_all_reported(self, chain):
        lists = {"gpu0": [F("b"), F("a"), F("a"), Task("c", 0, "F")], "gpu9": [B("a")]}
        # Grouped by kind, kinds in the order first met.
        violations = rejected(chain, lists)
        assert [v.kind for v in violations] == ["duplicate", "unknown", "device"] + ["missing"] * 4 + ["dependency"]
        assert said(violations) == [
            "task F:a:0 is listed twice (gpu0[1] and gpu0[2])",
            "gpu0[3]: task F:c:0 does not exist in this problem (no operator 'c')",
            "device 'gpu9' is not in the cluster (devices: gpu0, gpu1)",
            "task B:a:0 is not scheduled on any device",
            "task B:b:0 is not scheduled on any device",
            "task W:a:0 is not scheduled on any device",
            "task W:b:0 is not scheduled on any device",
            "dependency violated: F:b:0 is listed at gpu0[0] before its input F:a:0 at gpu0[1]",
        ]

    def test_a_long_list_of_one_kind_is_cut_with_a_count(self, make_problem, op):
        problem = make_problem([op("a")], devices=1, micro_batches=30, mode="inference")
        violations = rejected(problem, {"gpu0": []})
        assert len(violations) == 21
        assert violations[-1] == Violation("omitted", "... and 10 more missing violations", amount=10)
        assert {v.kind for v in violations[:-1]} == {"missing"}

    def test_the_exception_summarises_the_first_violation_and_the_count(self, chain):
        with pytest.raises(ScheduleRejected, match=r"^schedule rejected: task B:a:0 is not scheduled on any device \(and 3 more\)$"):
            replay(chain, Schedule.from_lists({"gpu0": [F("a"), F("b")]}))


class TestRunTimeViolations:
    @pytest.fixture
    def three(self, make_problem, op):
        """a -> b -> c, inference."""
        return make_problem([op("a"), op("b"), op("c")], [("a", "b"), ("b", "c")], mode="inference")

    def test_cross_device_deadlock_names_the_cycle(self, three):
        """gpu0 runs c before a, but c needs b, which needs a: neither device can move."""
        timeline = replay(three, Schedule.from_lists({"gpu0": [F("c"), F("a")], "gpu1": [F("b")]}))
        assert not timeline.completed
        assert timeline.violations == (
            Violation(
                "deadlock",
                "deadlock: gpu0 waits at F:c:0 for F:b:0 (on gpu1, not yet run);"
                " gpu1 waits at F:b:0 for F:a:0 (on gpu0, not yet run)",
                device="gpu0",
                task=F("c"),
            ),
        )
        assert timeline.executed == ()

    def test_strict_simulate_raises_on_run_time_violations(self, three):
        with pytest.raises(ScheduleRejected, match="deadlock: gpu0 waits at F:c:0"):
            simulate(three, Schedule.from_lists({"gpu0": [F("c"), F("a")], "gpu1": [F("b")]}))

    def test_deadlock_memory_and_declared_start_reported_together(self, make_problem, op):
        """Three problems in one schedule; the replay runs as far as it can and lists all."""
        problem = make_problem(
            [op("a"), op("b"), op("c"), op("x", F=2, activation_bytes=6e9), op("y")],
            [("a", "b"), ("b", "c"), ("x", "y")],
            mode="inference",
            devices=3,
            memory=5e9,
        )
        schedule = Schedule.from_lists(
            {
                "gpu0": [F("c"), F("a")],
                "gpu1": [F("b")],
                "gpu2": [F("x"), Entry((F("y"),), start=1.0)],
            }
        )
        timeline = replay(problem, schedule)
        assert [(v.kind, v.device, v.task) for v in timeline.violations] == [
            ("deadlock", "gpu0", F("c")), ("start", "gpu2", F("y")), ("memory", "gpu2", None)
        ]
        assert [(v.time, v.amount) for v in timeline.violations[1:]] == [(1.0, 1.0), (0.0, 1e9)]
        assert said(timeline.violations) == [
            "deadlock: gpu0 waits at F:c:0 for F:b:0 (on gpu1, not yet run); gpu1 waits at F:b:0 for F:a:0 (on gpu0, not yet run)",
            "F:y:0 on gpu2 is declared to start at 1000 ms but cannot start before 2000 ms (inputs or the stream are not ready)",
            "memory over capacity on gpu2: 6 GB in use at 0 ms, 1 GB over its 5 GB",
        ]
        assert [str(e.entry) for e in timeline.executed] == ["F:x:0", "F:y:0"]
