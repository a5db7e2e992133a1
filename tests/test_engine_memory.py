"""Memory accounting of the replay: what is held when, the peak and when it happens.

Rules under test: static bytes of every operator a device runs are held from t = 0;
``F`` allocates activations + workspace at its start and frees the workspace at its
end; ``B`` frees activations except ``w_retained``; ``W`` frees ``w_retained``.
"""

from __future__ import annotations

import pytest

from simulator.engine import replay, simulate
from simulator.graph import chain_graph
from simulator.metrics import build_report
from simulator.problem import Problem, Task, Workload
from simulator.schedule import Schedule
from simulator.violations import Violation

GB = 1e9


@pytest.fixture
def one_op(make_problem, op):
    """One operator on one device: static 10 GB, activations 4 GB (1 GB kept for W), workspace 2 GB."""

    def build(memory: float = 1000 * GB, devices: int = 1, **workload) -> Problem:
        operator = op("a", static_bytes=10 * GB, activation_bytes=4 * GB, w_retained_bytes=1 * GB, workspace_bytes=2 * GB)
        return make_problem([operator], devices=devices, memory=memory, **workload)

    return build


ORDER = [Task("a", 0, "F"), Task("a", 1, "F"), Task("a", 0, "B"), Task("a", 0, "W"), Task("a", 1, "B"), Task("a", 1, "W")]


def test_memory_samples_follow_every_allocation_and_release(one_op):
    timeline = simulate(one_op(micro_batches=2), Schedule.from_lists({"gpu0": ORDER}))
    assert [(t, level / GB) for t, level in timeline.memory["gpu0"]] == [
        (0, 0),
        (0, 10),  # static
        (0, 16),  # F0 starts: activations 4 + workspace 2
        (1, 14),  # F0 ends: workspace released
        (1, 20),  # F1 starts
        (2, 18),
        (2, 20),  # B0 starts: workspace
        (3, 15),  # B0 ends: workspace + 3 GB of activations (1 GB stays for W)
        (3, 17),  # W0 starts
        (4, 14),  # W0 ends: workspace + the retained 1 GB
        (4, 16),
        (5, 11),
        (5, 13),
        (6, 10),  # back to static only
    ]
    assert timeline.static_memory["gpu0"] == 10 * GB


def test_report_gives_the_first_time_the_peak_is_reached(one_op):
    device = build_report(simulate(one_op(micro_batches=2), Schedule.from_lists({"gpu0": ORDER}))).devices[0]
    assert (device.peak_memory, device.peak_time, device.activation_peak) == (20 * GB, 1.0, 10 * GB)


def test_inference_frees_activations_when_the_forward_ends(one_op):
    timeline = simulate(one_op(mode="inference"), Schedule.from_lists({"gpu0": [Task("a", 0, "F")]}))
    assert [(t, level / GB) for t, level in timeline.memory["gpu0"]] == [(0, 0), (0, 10), (0, 16), (1, 10)]


def test_fused_group_allocates_for_all_its_tasks_at_its_start_and_frees_at_its_end(one_op):
    schedule = Schedule.from_lists({"gpu0": [Task("a", 0, "F"), (Task("a", 0, "B"), Task("a", 0, "W"))]})
    timeline = simulate(one_op(), schedule)
    # B's and W's workspaces at 1 (one sample each), everything but static back at 3.
    assert [(t, level / GB) for t, level in timeline.memory["gpu0"]] == [(0, 0), (0, 10), (0, 16), (1, 14), (1, 16), (1, 18), (3, 10)]


def test_memory_over_capacity_names_device_time_and_amount(one_op):
    timeline = replay(one_op(memory=18 * GB, micro_batches=2), Schedule.from_lists({"gpu0": ORDER}))
    assert timeline.violations == (
        Violation(
            "memory", "memory over capacity on gpu0: 20 GB in use at 1000 ms, 2 GB over its 18 GB", device="gpu0", time=1.0, amount=2 * GB
        ),
    )
    assert timeline.completed  # the replay still runs to the end, so every problem is found at once


def test_exactly_at_capacity_is_allowed(one_op):
    assert replay(one_op(memory=20 * GB, micro_batches=2), Schedule.from_lists({"gpu0": ORDER})).violations == ()


def test_an_operator_split_over_two_devices_holds_its_static_memory_on_both(one_op):
    """Replicas (micro-batch 0 on gpu0, micro-batch 1 on gpu1) cost their weights twice."""
    problem = one_op(micro_batches=2, devices=2)
    schedule = Schedule.from_lists({"gpu0": ORDER[0:1] + ORDER[2:4], "gpu1": ORDER[1:2] + ORDER[4:6]})
    assert dict(simulate(problem, schedule).static_memory) == {"gpu0": 10 * GB, "gpu1": 10 * GB}


@pytest.mark.parametrize(("order", "expected"), [("gpipe", [8, 8, 8, 8]), ("1f1b", [4, 3, 2, 1])])
def test_activation_peak_gpipe_holds_m_micro_batches_1f1b_holds_p_minus_s(make_cluster, pipeline_orders, order, expected):
    """The reason 1F1B exists: stage s keeps at most p - s micro-batches in flight, GPipe all m."""
    graph = chain_graph("p", 4, {"F": 1.0, "B": 1.0, "W": 1.0}, activation_bytes=1 * GB, static_bytes=5 * GB)
    report = build_report(simulate(Problem(graph, make_cluster(4), Workload(8)), pipeline_orders[order](4, 8)))
    assert [d.activation_peak / GB for d in report.devices] == expected
    assert [d.static_memory / GB for d in report.devices] == [5] * 4
