"""Tensors between devices: a transfer of S bytes over latency L and bandwidth W takes
L + S / W, holds every link of its route, and contends with others on the same link."""

from __future__ import annotations

import pytest

from simulator.cluster import Cluster, Device, Link
from simulator.engine import simulate
from simulator.metrics import build_report
from simulator.problem import Task
from simulator.scenario import scenario_from_dict
from simulator.schedule import Schedule

GB = 1e9


def transfers(timeline) -> list[tuple[str, str, float, float, tuple[str, ...]]]:
    return [(str(t.pred), str(t.consumer), t.start, t.end, t.links) for t in timeline.transfers]


def forward_only(**placement: str) -> Schedule:
    """Inference schedule: ``op=device`` for micro-batch 0, in the order given."""
    lists: dict[str, list] = {}
    for op_name, device in placement.items():
        lists.setdefault(device, []).append(Task(op_name, 0, "F"))
    return Schedule.from_lists(lists)


class TestTransferTime:
    def test_one_tensor_takes_latency_plus_size_over_bandwidth(self, make_problem, op):
        problem = make_problem([op("a"), op("b")], [("a", "b", 4 * GB)], mode="inference", bandwidth=2 * GB, latency=0.5)
        timeline = simulate(problem, forward_only(a="gpu0", b="gpu1"))
        assert transfers(timeline) == [("F:a:0", "F:b:0", 1.0, 1.0 + 0.5 + 4 / 2, ("gpu0->gpu1",))]
        assert timeline.makespan == 3.5 + 1  # b starts when the tensor has arrived

    def test_an_empty_tensor_still_pays_the_latency(self, make_problem, op):
        problem = make_problem([op("a"), op("b")], [("a", "b", 0.0)], mode="inference", bandwidth=2 * GB, latency=0.25)
        assert transfers(simulate(problem, forward_only(a="gpu0", b="gpu1")))[0][2:4] == (1.0, 1.25)

    def test_on_one_device_nothing_travels(self, make_problem, op):
        problem = make_problem([op("a"), op("b")], [("a", "b", 4 * GB)], mode="inference", bandwidth=2 * GB, latency=0.5)
        timeline = simulate(problem, forward_only(a="gpu0", b="gpu0"))
        assert (timeline.transfers, timeline.makespan) == ((), 2.0)

    def test_an_ideal_interconnect_moves_tensors_for_free(self, make_problem, op):
        problem = make_problem([op("a"), op("b")], [("a", "b", 4 * GB)], mode="inference")
        timeline = simulate(problem, forward_only(a="gpu0", b="gpu1"))
        assert (timeline.transfers, timeline.makespan) == ((), 2.0)

    def test_the_gradient_travels_back_with_the_same_size(self, make_problem, op):
        problem = make_problem([op("a"), op("b")], [("a", "b", 2 * GB)], bandwidth=2 * GB, latency=0.0)
        schedule = Schedule.from_lists({device: [Task(name, 0, kind) for kind in "FBW"] for device, name in (("gpu0", "a"), ("gpu1", "b"))})
        timeline = simulate(problem, schedule)
        assert transfers(timeline) == [
            ("F:a:0", "F:b:0", 1.0, 2.0, ("gpu0->gpu1",)),
            ("B:b:0", "B:a:0", 4.0, 5.0, ("gpu1->gpu0",)),
        ]
        assert timeline.makespan == 7.0  # B:a 5..6, W:a 6..7

    def test_a_multi_hop_route_sums_latencies_and_moves_at_the_bottleneck(self, make_problem, op):
        gpus = tuple(Device(f"gpu{i}", "t", 1e12, 1e15) for i in range(2))
        cluster = Cluster("hops", gpus, (Link("up", "gpu0", "sw", 4 * GB, 0.25), Link("down", "sw", "gpu1", 2 * GB, 0.5)))
        problem = make_problem([op("a"), op("b")], [("a", "b", 4 * GB)], mode="inference", cluster=cluster)
        assert transfers(simulate(problem, forward_only(a="gpu0", b="gpu1"))) == [("F:a:0", "F:b:0", 1.0, 1.0 + 0.75 + 2.0, ("up", "down"))]


class TestContention:
    def test_two_tensors_on_one_link_take_turns(self, make_problem, op):
        problem = make_problem(
            [op("a"), op("b"), op("c")], [("a", "b", 2 * GB), ("a", "c", 2 * GB)], mode="inference", bandwidth=2 * GB, latency=0.5
        )
        timeline = simulate(problem, forward_only(a="gpu0", b="gpu1", c="gpu1"))
        one = 0.5 + 2 / 2
        assert transfers(timeline) == [
            ("F:a:0", "F:b:0", 1.0, 1.0 + one, ("gpu0->gpu1",)),
            ("F:a:0", "F:c:0", 1.0 + one, 1.0 + 2 * one, ("gpu0->gpu1",)),
        ]

    def test_two_tensors_on_different_links_move_at_once(self, make_problem, op):
        problem = make_problem(
            [op("a"), op("b"), op("c")], [("a", "b", 2 * GB), ("a", "c", 2 * GB)], mode="inference", devices=3, bandwidth=2 * GB
        )
        timeline = simulate(problem, forward_only(a="gpu0", b="gpu1", c="gpu2"))
        assert [(t[2], t[3]) for t in transfers(timeline)] == [(1.0, 2.0), (1.0, 2.0)]

    def test_report_counts_bytes_transfers_and_busy_time_per_link(self, make_problem, op):
        problem = make_problem(
            [op("a"), op("b"), op("c")], [("a", "b", 2 * GB), ("a", "c", 2 * GB)], mode="inference", bandwidth=2 * GB, latency=0.5
        )
        report = build_report(simulate(problem, forward_only(a="gpu0", b="gpu1", c="gpu1")))
        assert [(s.link, s.transfers, s.bytes, s.busy) for s in report.links] == [("gpu0->gpu1", 2, 4 * GB, 3.0)]
        assert report.transfer_bytes == 4 * GB


def scenario(cluster: dict, edges: list[dict], devices: int = 4):
    """A scenario document with a graph model of 1 ms operators a, b, c, d."""
    doc = {
        "model": {
            "type": "graph",
            "operators": [{"name": n, "time_ms": {"F": 1, "B": 1, "W": 1}} for n in "abcd"],
            "edges": edges,
        },
        "cluster": {"devices": devices, **cluster},
        "workload": {"micro_batches": 1, "mode": "inference"},
    }
    return scenario_from_dict(doc, "inline.yaml").problem


class TestClustersFromYaml:
    def test_interconnect_is_a_switch_with_the_given_bandwidth_and_latency(self):
        problem = scenario({"interconnect": {"bandwidth_GBps": 200, "latency_us": 2}}, [{"src": "a", "dst": "b", "size_mb": 64}])
        timeline = simulate(problem, forward_only(a="gpu0", b="gpu1", c="gpu2", d="gpu3"))
        [moved] = timeline.transfers
        assert moved.end - moved.start == pytest.approx(2e-6 + 64e6 / 200e9)
        assert moved.links == ("gpu0.intra.out", "gpu1.intra.in")

    def test_disjoint_pairs_on_a_switch_do_not_contend_but_a_shared_port_does(self):
        edges = [{"src": "a", "dst": "b", "size_mb": 200}, {"src": "c", "dst": "d", "size_mb": 200}]
        problem = scenario({"interconnect": {"bandwidth_GBps": 100, "latency_us": 0}}, edges)
        disjoint = simulate(problem, forward_only(a="gpu0", b="gpu1", c="gpu2", d="gpu3"))
        assert [t.end - t.start for t in disjoint.transfers] == pytest.approx([2e-3, 2e-3])
        shared = simulate(problem, forward_only(a="gpu0", c="gpu0", b="gpu1", d="gpu2"))
        # c's tensor leaves gpu0 through the same port a's used: it waits for it.
        spans = sorted((t.start, t.end) for t in shared.transfers)
        assert [time for span in spans for time in span] == pytest.approx([1e-3, 3e-3, 3e-3, 5e-3])

    def test_explicit_links_are_bidirectional_unless_told_otherwise(self):
        links = [{"src": "gpu0", "dst": "gpu1", "bandwidth_GBps": 1, "latency_ms": 1}]
        problem = scenario({"links": links}, [{"src": "a", "dst": "b", "size_mb": 1000}], devices=2)
        assert problem.cluster.transfer_time("gpu1", "gpu0", 1e9) == pytest.approx(1.001)
        timeline = simulate(problem, forward_only(a="gpu1", c="gpu1", b="gpu0", d="gpu0"))
        assert [(t.links, t.start, t.end) for t in timeline.transfers] == [(("gpu0->gpu1.rev",), 1e-3, pytest.approx(1.002))]
