"""Routes: the direct one- and two-link lookup gives exactly the route a shortest-path
search gives, on switched clusters and on random topologies, and costs no search at scale."""

from __future__ import annotations

import time

import networkx as nx
from hypothesis import given, settings
from hypothesis import strategies as st

from simulator.cluster import Cluster, Device, Link
from simulator.profiles import build_cluster
from simulator.yamlio import Section


def _searched(cluster: Cluster, src: str, dst: str) -> tuple[str, ...]:
    """The route by networkx's Dijkstra on the cluster's own graph (what route() did before)."""
    graph = cluster._topology
    path = nx.shortest_path(graph, src, dst, weight="weight")
    return tuple(graph.edges[u, v]["name"] for u, v in zip(path, path[1:]))


def test_switched_cluster_routes_go_through_the_node_switch_or_the_fabric():
    cluster = build_cluster(Section({"profile": "h100-sxm", "nodes": 2}))
    assert cluster.route("gpu0", "gpu3").links == ("gpu0.intra.out", "gpu3.intra.in")
    assert cluster.route("gpu0", "gpu9").links == ("gpu0.inter.out", "gpu9.inter.in")
    for src in cluster.device_names:
        for dst in cluster.device_names:
            if src != dst:
                assert cluster.route(src, dst).links == _searched(cluster, src, dst)


def test_equal_latency_inside_and_across_nodes_is_left_to_the_search():
    """With the same latency on NVSwitch and fabric two routes tie: networkx breaks the tie."""
    cluster = build_cluster(Section({"devices": 4, "gpus_per_node": 2,
                                     "interconnect": {"bandwidth_GBps": 100, "latency_us": 2}}))
    assert cluster._short_route("gpu0", "gpu1") is None
    assert cluster.route("gpu0", "gpu1").links == _searched(cluster, "gpu0", "gpu1")


def test_a_2048_gpu_all_to_all_worth_of_routes_takes_well_under_a_second():
    cluster = build_cluster(Section({"profile": "h800-sxm", "nodes": 256}))
    names = cluster.device_names[:512:8] + cluster.device_names[1:8]  # 64 nodes, and all of node 0
    began = time.process_time()
    routes = [cluster.route(a, b) for a in names for b in names if a != b]
    assert time.process_time() - began < 1.0 and len(routes) == 71 * 70


@st.composite
def _topologies(draw) -> Cluster:
    n = draw(st.integers(2, 5))
    devices = [Device(f"g{i}", "t", 1e9, 1e12) for i in range(n)]
    ends = [f"g{i}" for i in range(n)] + ["s0", "s1"]
    pairs = draw(st.lists(st.tuples(st.sampled_from(ends), st.sampled_from(ends)), min_size=1, max_size=14))
    links = [Link(f"l{k}", a, b, draw(st.sampled_from([1e9, 2e9])), draw(st.sampled_from([0.0, 1e-6, 2e-6, 5e-6])))
             for k, (a, b) in enumerate(pairs) if a != b]
    return Cluster("random", tuple(devices), tuple(links))


@settings(max_examples=150, deadline=None)
@given(_topologies())
def test_every_route_is_the_shortest_path_search_route(cluster):
    for src in cluster.device_names:
        for dst in cluster.device_names:
            if src == dst or not nx.has_path(cluster._topology, src, dst):
                continue
            route = cluster.route(src, dst)
            expected = _searched(cluster, src, dst)
            assert route.links == expected
            assert route.latency == sum(cluster.link_by_name[n].latency for n in expected)
