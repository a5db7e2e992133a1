"""Collectives, pinned to the α–β formulas and replayed on real links.

The formulas are the textbook ring costs (Thakur, Rabenseifner & Gropp 2005; the
table in shared/reference/parallelism.md): on an idle ring of ``n`` ranks with latency
α and bandwidth ``B`` per hop, all-reduce ``2(n−1)α + 2(n−1)/n · S/B``, reduce-scatter
and all-gather ``(n−1)α + (n−1)/n · S/B``. The hierarchical all-reduce is Horovod's
(reduce-scatter in the node, all-reduce across, all-gather in the node).
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simulator.cluster import Cluster, Device, Link
from simulator.collectives import Collective, collective_steps, collective_time, expert_dispatch_matrix
from simulator.engine import simulate
from simulator.graph import OperatorGraph
from simulator.problem import Problem, Workload
from simulator.profiles import build_cluster
from simulator.schedule import CollectiveCall, Schedule
from simulator.yamlio import Section

REL = 1e-12
S = 1.2e9  # bytes
B, ALPHA = 100e9, 2e-6  # a hop of the test rings
# H100 SXM profile: NVLink 450 GB/s × 0.65 achieved, 25 ns; NDR IB 50 GB/s × 0.9, 0.5 us.
NV_B, NV_A = 450e9 * 0.65, 25e-9
IB_B, IB_A = 50e9 * 0.9, 0.5e-6


def ring(n: int) -> Cluster:
    """``n`` GPUs on a unidirectional ring of direct links: ``g{i} -> g{i+1}``."""
    gpus = tuple(Device(f"g{i}", "t", 80e9, 1e15) for i in range(n))
    return Cluster("ring", gpus, tuple(Link(f"g{i}>g{(i + 1) % n}", f"g{i}", f"g{(i + 1) % n}", B, ALPHA) for i in range(n)))


def full(n: int) -> Cluster:
    """``n`` GPUs, a direct link for every ordered pair."""
    gpus = tuple(Device(f"g{i}", "t", 80e9, 1e15) for i in range(n))
    links = tuple(Link(f"g{i}>g{j}", f"g{i}", f"g{j}", B, ALPHA) for i in range(n) for j in range(n) if i != j)
    return Cluster("full", gpus, links)


def h100(nodes: int, per_node: int = 8) -> Cluster:
    return build_cluster(Section({"profile": "h100-sxm", "nodes": nodes, "gpus_per_node": per_node}))


def names(cluster: Cluster, count: int | None = None) -> tuple[str, ...]:
    return cluster.device_names[:count]


def replay_alone(cluster: Cluster, *calls: CollectiveCall):
    """Replay a schedule in which every device runs only the given calls, in order."""
    lists: dict[str, list] = {}
    for call in calls:
        for device in call.collective.group:
            lists.setdefault(device, []).append(call)
    problem = Problem(OperatorGraph("none", ()), cluster, Workload(1))
    return simulate(problem, Schedule.from_lists(lists))


class TestRingFormulas:
    @pytest.mark.parametrize("n", [2, 3, 4, 8])
    def test_all_reduce_is_2_n_minus_1_over_n_s_over_b_plus_2_n_minus_1_alpha(self, n):
        c = Collective("all_reduce", names(ring(n)), S)
        assert collective_time(c, ring(n)) == pytest.approx(2 * (n - 1) / n * S / B + 2 * (n - 1) * ALPHA, rel=REL)

    @pytest.mark.parametrize("op", ["reduce_scatter", "all_gather"])
    @pytest.mark.parametrize("n", [2, 3, 4, 8])
    def test_reduce_scatter_and_all_gather_are_n_minus_1_over_n(self, op, n):
        c = Collective(op, names(ring(n)), S)
        assert collective_time(c, ring(n)) == pytest.approx((n - 1) / n * S / B + (n - 1) * ALPHA, rel=REL)

    @pytest.mark.parametrize("n", [2, 4, 8])
    def test_uniform_all_to_all_is_n_minus_1_pairwise_steps(self, n):
        c = Collective("all_to_all", names(full(n)), S)
        assert collective_time(c, full(n)) == pytest.approx((n - 1) / n * S / B + (n - 1) * ALPHA, rel=REL)

    def test_across_nodes_the_all_to_all_overlaps_nvlink_and_infiniband(self):
        """2 nodes × 8: 7 NVLink steps alongside the first of 8 InfiniBand steps."""
        cluster, k, m, n = h100(2), 8, 2, 16
        nvlink, infiniband = NV_A + S / (n * NV_B), IB_A + S / (n * IB_B)
        expected = (k - 1) * max(nvlink, infiniband) + ((m - 1) * k - (k - 1)) * infiniband
        assert collective_time(Collective("all_to_all", names(cluster), S), cluster) == pytest.approx(expected, rel=REL)

    @pytest.mark.parametrize("chunks", [1, 4, 64])
    def test_broadcast_pipelines_c_chunks_down_the_chain(self, chunks):
        n = 4
        c = Collective("broadcast", names(ring(n)), S, root=2, chunks=chunks)
        assert collective_time(c, ring(n)) == pytest.approx((chunks + n - 2) * (ALPHA + S / chunks / B), rel=REL)

    def test_send_recv_is_alpha_plus_s_over_b(self):
        assert collective_time(Collective("send_recv", ("g0", "g1"), S), ring(3)) == pytest.approx(ALPHA + S / B, rel=REL)

    def test_all_reduce_is_reduce_scatter_then_all_gather(self):
        steps = collective_steps(Collective("all_reduce", names(ring(4)), S))
        halves = collective_steps(Collective("reduce_scatter", names(ring(4)), S))
        assert steps == halves + collective_steps(Collective("all_gather", names(ring(4)), S))
        assert sum(t.bytes for step in steps for t in step) == 2 * 3 / 4 * S * 4  # each rank sends 2(n-1)/n·S


class TestHierarchical:
    @pytest.mark.parametrize("nodes,per_node", [(2, 8), (4, 8), (4, 2), (1, 8)])
    def test_all_reduce_is_the_two_level_formula(self, nodes, per_node):
        """2(k−1)α₁ + 2(k−1)/k·S/B₁ + 2(m−1)α₂ + 2(m−1)/(km)·S/B₂ (Horovod hierarchical all-reduce)."""
        cluster, k, m = h100(nodes, per_node), per_node, nodes
        c = Collective("all_reduce", names(cluster), S, algorithm="hierarchical")
        expected = 2 * (k - 1) * NV_A + 2 * (k - 1) / k * S / NV_B + 2 * (m - 1) * IB_A + 2 * (m - 1) / (k * m) * S / IB_B
        assert collective_time(c, cluster) == pytest.approx(expected, rel=REL)

    @pytest.mark.parametrize("op", ["reduce_scatter", "all_gather"])
    def test_reduce_scatter_and_all_gather_are_half_of_it(self, op):
        cluster, k, m = h100(4), 8, 4
        c = Collective(op, names(cluster), S, algorithm="hierarchical")
        expected = (k - 1) * NV_A + (k - 1) / k * S / NV_B + (m - 1) * IB_A + (m - 1) / (k * m) * S / IB_B
        assert collective_time(c, cluster) == pytest.approx(expected, rel=REL)

    @pytest.mark.parametrize("op,count", [("all_reduce", 2 * 31), ("reduce_scatter", 31), ("all_gather", 31)])
    def test_a_ring_across_nodes_runs_one_channel_per_nic(self, op, count):
        """NCCL's rings on 4 nodes × 8: 8 channels of S/8, each leaving a node by another
        GPU's NIC: per step, NVLink (k−1)/k·S/(n·B₁) and InfiniBand S/(k·n·B₂) at once."""
        cluster, k, n = h100(4), 8, 32
        c = Collective(op, names(cluster), S)
        step = max(NV_A + (k - 1) / k * S / (n * NV_B), IB_A + S / (k * n * IB_B))
        assert collective_time(c, cluster) == pytest.approx(count * step, rel=REL)

    def test_one_gpu_per_node_is_the_plain_ring_over_infiniband(self):
        cluster = h100(4, 1)
        c = Collective("all_reduce", names(cluster), S)
        assert collective_time(c, cluster) == pytest.approx(2 * 3 / 4 * S / IB_B + 2 * 3 * IB_A, rel=REL)

    def test_unequal_nodes_are_refused_naming_the_group(self):
        from simulator.errors import InputError

        cluster = h100(2)
        with pytest.raises(InputError, match="same number of group members on every node") as info:
            collective_time(Collective("all_reduce", ("gpu0", "gpu1", "gpu8"), S, algorithm="hierarchical"), cluster)
        assert info.value.field == "group"


class TestReplay:
    @pytest.mark.parametrize(
        "op,algorithm",
        [("all_reduce", "ring"), ("reduce_scatter", "ring"), ("all_gather", "ring"), ("all_to_all", "ring"),
         ("broadcast", "ring"), ("send_recv", "ring"), ("all_reduce", "hierarchical"),
         ("reduce_scatter", "hierarchical"), ("all_gather", "hierarchical")],
    )
    def test_a_replayed_collective_equals_the_analytic_time_on_an_idle_cluster(self, op, algorithm):
        cluster = h100(2, 4)
        group = names(cluster, 2) if op == "send_recv" else names(cluster)
        c = Collective(op, group, S, algorithm=algorithm)
        timeline = replay_alone(cluster, CollectiveCall("c", c))
        (record,) = timeline.collectives
        assert record.end - record.start == pytest.approx(collective_time(c, cluster), rel=1e-9)
        assert {(e.start, e.end) for e in timeline.executed} == {(record.start, record.end)}
        assert len(timeline.executed) == len(group)

    def test_each_step_transfer_holds_the_links_of_its_route(self):
        cluster = h100(2, 2)
        timeline = replay_alone(cluster, CollectiveCall("dp", Collective("all_reduce", ("gpu0", "gpu2"), S)))
        first = [t for t in timeline.collective_transfers if t.step == 0 and t.src == "gpu0"]
        assert [t.links for t in first] == [("gpu0.inter.out", "gpu2.inter.in")]
        assert first[0].end - first[0].start == pytest.approx(IB_A + S / 2 / IB_B, rel=REL)


def one_nic_per_node() -> Cluster:
    """Two nodes of two GPUs: NVLink inside a node, ONE InfiniBand link each way between
    the nodes' NICs (PCIe from each GPU to its node's NIC)."""
    gpus = tuple(Device(f"g{i}", "t", 80e9, 1e15, node=i // 2) for i in range(4))
    links = [Link("nv0", "g0", "g1", 300e9, 1e-6), Link("nv0.rev", "g1", "g0", 300e9, 1e-6),
             Link("nv1", "g2", "g3", 300e9, 1e-6), Link("nv1.rev", "g3", "g2", 300e9, 1e-6),
             Link("ib", "nic0", "nic1", 25e9, 4e-6), Link("ib.rev", "nic1", "nic0", 25e9, 4e-6)]
    for i in range(4):
        links += [Link(f"g{i}.pcie.up", f"g{i}", f"nic{i // 2}", 64e9, 1e-6),
                  Link(f"g{i}.pcie.down", f"nic{i // 2}", f"g{i}", 64e9, 1e-6)]
    return Cluster("one-nic", gpus, tuple(links))


class TestContention:
    IB_HOP = 1e-6 + 4e-6 + 1e-6, 25e9  # route latency (pcie + ib + pcie), bottleneck

    def test_two_collectives_sharing_the_ib_link_slow_each_other(self):
        cluster = one_nic_per_node()
        a = CollectiveCall("dp.a", Collective("reduce_scatter", ("g0", "g2"), S))
        b = CollectiveCall("dp.b", Collective("reduce_scatter", ("g1", "g3"), S))
        alone = collective_time(a.collective, cluster)
        latency, bandwidth = self.IB_HOP
        assert alone == pytest.approx(latency + S / 2 / bandwidth, rel=REL)
        timeline = replay_alone(cluster, a, b)
        durations = sorted(r.end - r.start for r in timeline.collectives)
        # One holds the IB link in each direction first; the other waits for it: 2x.
        assert durations == pytest.approx([alone, 2 * alone], rel=REL)
        from simulator.metrics import build_report

        assert sorted(c.slowdown for c in build_report(timeline).collectives) == pytest.approx([1, 2], rel=REL)

    def test_a_tp_all_reduce_on_nvlink_and_a_dp_reduce_scatter_on_ib_do_not(self):
        cluster = one_nic_per_node()
        tp = CollectiveCall("tp", Collective("all_reduce", ("g0", "g1"), S), stream="compute")
        dp = CollectiveCall("dp", Collective("reduce_scatter", ("g0", "g2"), S))
        timeline = replay_alone(cluster, tp, dp)
        ran = {r.name: (r.start, r.end) for r in timeline.collectives}
        assert ran["tp"] == pytest.approx((0, S / 300e9 + 2 * 1e-6), rel=REL)
        assert ran["dp"] == pytest.approx((0, collective_time(dp.collective, cluster)), rel=REL)

    def test_on_a_dgx_cluster_tp_and_dp_use_separate_ports(self):
        """One NIC per GPU (DGX H100): a TP all-reduce in node 0 and a DP all-reduce
        across nodes at the same time run at their idle speed."""
        cluster = h100(2)
        tp = CollectiveCall("tp", Collective("all_reduce", names(cluster, 8), S), stream="compute")
        dp = CollectiveCall("dp", Collective("all_reduce", ("gpu0", "gpu8"), S))
        timeline = replay_alone(cluster, tp, dp)
        for record, call in zip(sorted(timeline.collectives, key=lambda r: r.name), (dp, tp)):
            assert (record.start, record.end - record.start) == pytest.approx((0, collective_time(call.collective, cluster)), rel=REL)


    def test_a_pipeline_send_and_a_dp_all_reduce_share_the_gpus_nic(self):
        """DGX: gpu0 and gpu8 talk through gpu0's one NIC. The all-reduce's first step
        holds it, then the send (queued first), then the all-reduce's second step."""
        cluster = h100(2)
        reduce = CollectiveCall("dp", Collective("all_reduce", ("gpu0", "gpu8"), S))
        send = CollectiveCall("pp", Collective("send_recv", ("gpu0", "gpu8"), S / 4), stream="compute")
        step, p2p = IB_A + S / 2 / IB_B, IB_A + S / 4 / IB_B
        ran = {r.name: (r.start, r.end) for r in replay_alone(cluster, reduce, send).collectives}
        assert ran["dp"] == pytest.approx((0, 2 * step + p2p), rel=REL)
        assert ran["pp"] == pytest.approx((0, step + p2p), rel=REL)


class TestExpertAllToAll:
    TOKENS, HIDDEN, TOP_K = 4096, 4096, 2

    def dispatch(self, group, expert_rank) -> Collective:
        matrix = expert_dispatch_matrix([self.TOKENS] * len(group), expert_rank, len(group), self.TOP_K, self.HIDDEN * 2)
        return Collective("all_to_all", group, matrix=matrix)

    def test_experts_on_nvlink_ranks_vs_ib_ranks(self):
        """Two EP ranks, 8 experts split evenly: each sends tokens·hidden·top-k/2 bytes to the other."""
        cluster = h100(2)
        share = self.TOKENS * self.HIDDEN * 2 * self.TOP_K / 2
        nvlink = self.dispatch(("gpu0", "gpu1"), [0] * 4 + [1] * 4)
        infiniband = self.dispatch(("gpu0", "gpu8"), [0] * 4 + [1] * 4)
        assert collective_time(nvlink, cluster) == pytest.approx(NV_A + share / NV_B, rel=REL)
        assert collective_time(infiniband, cluster) == pytest.approx(IB_A + share / IB_B, rel=REL)
        for c in (nvlink, infiniband):
            (record,) = replay_alone(cluster, CollectiveCall("a2a", c)).collectives
            assert record.end - record.start == pytest.approx(collective_time(c, cluster), rel=REL)

    def test_moving_experts_off_the_node_makes_the_dispatch_cross_infiniband(self):
        cluster = h100(2, 2)
        group = names(cluster)  # gpu0, gpu1 on node 0; gpu2, gpu3 on node 1
        local = self.dispatch(group, [0, 1, 0, 1])  # every expert on node 0
        spread = self.dispatch(group, [0, 1, 2, 3])
        assert local.matrix[0][2] == 0 and spread.matrix[0][2] > 0
        assert collective_time(spread, cluster) != pytest.approx(collective_time(local, cluster), rel=1e-3)
        for c in (local, spread):
            (record,) = replay_alone(cluster, CollectiveCall("a2a", c)).collectives
            assert record.end - record.start == pytest.approx(collective_time(c, cluster), rel=REL)


OPS = st.sampled_from(["all_reduce", "reduce_scatter", "all_gather", "all_to_all", "broadcast"])


@st.composite
def concurrent_calls(draw):
    """Two collectives on random groups of a 2×4 H100 cluster, one per stream."""
    devices = names(h100(2, 4))
    calls = []
    for name, stream in (("a", "comm"), ("b", "compute")):
        group = draw(st.lists(st.sampled_from(devices), min_size=2, max_size=8, unique=True))
        size = draw(st.floats(min_value=0.0, max_value=1e9))
        calls.append(CollectiveCall(name, Collective(draw(OPS), tuple(group), size), stream=stream))
    return calls


@settings(max_examples=40, deadline=None)
@given(concurrent_calls())
def test_a_collective_never_beats_its_idle_time_and_all_members_finish_together(calls):
    cluster = h100(2, 4)
    timeline = replay_alone(cluster, *calls)
    records = {r.name: r for r in timeline.collectives}
    for call in calls:
        record = records[call.name]
        assert record.end - record.start >= collective_time(call.collective, cluster) * (1 - 1e-9)
        ends = {e.end for e in timeline.executed if e.entry.collective == call}
        assert ends == {record.end}


class TestOnMegatronRankGroups:
    """Megatron's rank order (tp innermost) priced on 4 × 8 H100: TP stays on NVLink."""

    def groups(self, layout, token: str) -> list[tuple[str, ...]]:
        return [tuple(f"gpu{rank}" for rank in group) for group in layout.groups(token)]

    def test_tp_all_reduces_inside_a_node_and_dp_across_nodes(self):
        from simulator.layout import Layout

        cluster, layout = h100(4), Layout(tp=8, pp=2, dp=2, global_batch_size=2)
        for group in self.groups(layout, "tp"):
            t = collective_time(Collective("all_reduce", group, S), cluster)
            assert t == pytest.approx(2 * 7 / 8 * S / NV_B + 2 * 7 * NV_A, rel=REL)
        for group in self.groups(layout, "dp"):  # (gpu0, gpu8): one GPU per node, one NIC each
            t = collective_time(Collective("reduce_scatter", group, S), cluster)
            assert t == pytest.approx(S / 2 / IB_B + IB_A, rel=REL)

    def test_a_dp_group_of_4_per_node_uses_every_nic_of_the_ring(self):
        from simulator.layout import Layout

        cluster, layout = h100(4), Layout(tp=2, dp=16, global_batch_size=16)
        group = self.groups(layout, "dp")[0]  # gpu0, gpu2, ..., gpu30: 4 per node
        k, n = 4, 16
        step = max(NV_A + (k - 1) / k * S / (n * NV_B), IB_A + S / (k * n * IB_B))
        assert collective_time(Collective("all_reduce", group, S), cluster) == pytest.approx(2 * (n - 1) * step, rel=REL)


@st.composite
def lone_collective(draw):
    """One collective on a random group (any order, any spread over 2 nodes of 4)."""
    devices = names(h100(2, 4))
    group = tuple(draw(st.permutations(devices))[: draw(st.integers(2, 8))])
    op = draw(st.sampled_from(["all_reduce", "reduce_scatter", "all_gather", "all_to_all", "broadcast", "send_recv"]))
    if op == "send_recv":
        group = group[:2]
    per_node = {sum(1 for d in group if int(d[3:]) // 4 == node) for node in (0, 1)} - {0}
    hierarchical = op in ("all_reduce", "reduce_scatter", "all_gather") and len(per_node) == 1
    algorithm = draw(st.sampled_from(["ring", "hierarchical"])) if hierarchical else "ring"
    return Collective(op, group, draw(st.floats(min_value=0.0, max_value=1e9)), algorithm=algorithm,
                      root=draw(st.integers(0, len(group) - 1)))


@settings(max_examples=40, deadline=None)
@given(lone_collective())
def test_alone_on_a_switched_cluster_the_replay_is_the_analytic_time(collective):
    """No two transfers of a step share a link on a switched cluster, so step by step
    the replay takes exactly what :func:`collective_time` adds up."""
    cluster = h100(2, 4)
    (record,) = replay_alone(cluster, CollectiveCall("c", collective)).collectives
    assert record.end - record.start == pytest.approx(collective_time(collective, cluster), rel=1e-9, abs=1e-15)
