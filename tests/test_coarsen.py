"""Coarsening: quotient graphs of operator groups, and balanced contiguous splits."""

from __future__ import annotations

from itertools import combinations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simulator.coarsen import chain_groups, coarsen
from simulator.errors import InputError
from simulator.graph import Edge, Operator, OperatorGraph, chain_graph
from simulator.models.transformer import config_from_section, transformer_graph
from simulator.yamlio import Section


def op(name: str, group: str = "", **fields) -> Operator:
    return Operator(name=name, group=group, **fields)


def diamond() -> OperatorGraph:
    """a -> (b, c) -> d, with measured times, FLOPs and memory to add up."""
    ops = (
        op("a", "g1", measured={"*": {"F": 1.0, "B": 2.0}}, flops={"F": 10.0}, static_bytes=5, params=1, activation_bytes=3),
        op("b", "g1", measured={"*": {"F": 4.0, "B": 8.0}, "H100": {"F": 3.0}}, flops={"F": 20.0}, static_bytes=7, params=2),
        op("c", "g2", measured={"*": {"F": 1.0}}, flops={"F": 1.0, "W": 2.0}, workspace_bytes=9, activation_bytes=4, w_retained_bytes=1),
        op("d", "g2", measured={"H100": {"F": 5.0}}, workspace_bytes=6),
    )
    edges = (Edge("a", "b", 1), Edge("a", "c", 2), Edge("b", "d", 4), Edge("c", "d", 8))
    return OperatorGraph("diamond", ops, edges)


def test_default_grouping_uses_the_operator_group_labels():
    c = coarsen(diamond())
    assert c.graph.topological_order == ("g1", "g2")
    assert dict(c.members) == {"g1": ("a", "b"), "g2": ("c", "d")}
    assert dict(c.group_of) == {"a": "g1", "b": "g1", "c": "g2", "d": "g2"}


def test_group_operators_sum_flops_memory_and_keep_the_largest_workspace():
    g1, g2 = (coarsen(diamond()).graph.by_name[g] for g in ("g1", "g2"))
    assert dict(g1.flops) == {"F": 30.0} and dict(g2.flops) == {"F": 1.0, "W": 2.0}
    assert (g1.static_bytes, g1.params, g1.activation_bytes) == (12, 3, 3)
    assert (g2.activation_bytes, g2.w_retained_bytes, g2.workspace_bytes) == (4, 1, 9)


def test_measured_times_are_summed_only_where_every_member_is_measured():
    g1, g2 = (coarsen(diamond()).graph.by_name[g] for g in ("g1", "g2"))
    # g1: both measured on "*" for F and B; on H100 every time not given falls back to "*"
    assert {k: dict(v) for k, v in g1.measured.items()} == {"*": {"F": 5.0, "B": 10.0}, "H100": {"F": 1.0 + 3.0, "B": 2.0 + 8.0}}
    # g2: d has no "*" time, c has no H100 time of its own but its "*" covers it
    assert {k: dict(v) for k, v in g2.measured.items()} == {"H100": {"F": 6.0}}


def test_edges_between_groups_sum_their_bytes_and_edges_inside_vanish():
    edges = coarsen(diamond()).graph.edges
    assert [(e.src, e.dst, e.bytes) for e in edges] == [("g1", "g2", 2 + 4)]


def test_an_explicit_grouping_overrides_the_labels_and_expands_back():
    c = coarsen(diamond(), {"a": "x", "b": "y", "c": "y", "d": "z"})
    assert c.graph.topological_order == ("x", "y", "z")
    assert c.expand_placement({"x": "gpu0", "y": "gpu1", "z": "gpu0"}) == {"a": "gpu0", "b": "gpu1", "c": "gpu1", "d": "gpu0"}


def test_a_grouping_that_creates_a_cycle_is_rejected_naming_the_groups():
    with pytest.raises(InputError, match=r"cycle between groups: (p -> q -> p|q -> p -> q)"):
        coarsen(diamond(), {"a": "p", "d": "p", "b": "q", "c": "q"})


def test_unlabelled_operators_form_groups_of_their_own():
    graph = OperatorGraph("g", (op("a"), op("b", "L"), op("c", "L")), (Edge("a", "b"), Edge("b", "c")))
    assert coarsen(graph).graph.topological_order == ("a", "L")


@pytest.mark.parametrize(
    ("groups", "words"),
    [
        ({"a": "x", "b": "x", "c": "x", "d": "x", "e": "x"}, "unknown operators: e"),
        ({"a": "x", "b": "x"}, "without a group: c, d"),
        ({"a": "x", "b": "x", "c": "x", "d": ""}, "empty group label"),
    ],
)
def test_groupings_must_name_each_operator_exactly(groups, words):
    with pytest.raises(InputError, match=words):
        coarsen(diamond(), groups)


def test_an_unlabelled_operator_named_like_a_group_is_ambiguous():
    graph = OperatorGraph("g", (op("L"), op("b", "L")), (Edge("L", "b"),))
    with pytest.raises(InputError, match="uses its name as a group label"):
        coarsen(graph)


def test_placements_must_cover_exactly_the_groups():
    c = coarsen(diamond())
    with pytest.raises(InputError, match="no device for groups: g2"):
        c.expand_placement({"g1": "gpu0"})
    with pytest.raises(InputError, match="unknown groups: g3"):
        c.expand_placement({"g1": "gpu0", "g2": "gpu0", "g3": "gpu1"})


def test_collectives_stay_collectives_when_grouped_alone():
    graph = OperatorGraph("g", (op("x", flops={"F": 1.0}), op("a2a", "comm", stream="comm", comm_bytes=64)), (Edge("x", "a2a"),))
    assert coarsen(graph).graph.by_name["comm"].stream == "comm"
    assert coarsen(graph, {"x": "all", "a2a": "all"}).graph.by_name["all"].stream == "compute"


def test_a_transformer_coarsens_to_one_operator_per_layer_with_the_same_totals():
    section = Section({"preset": "llama-7b", "seq_len": 512})
    graph = transformer_graph(config_from_section(section), "llama")
    coarse = coarsen(graph).graph
    assert coarse.topological_order == ("embed", *(f"layer{i}" for i in range(32)), "head")
    for attr in ("params", "static_bytes", "activation_bytes", "w_retained_bytes"):
        assert coarse.total(attr) == pytest.approx(graph.total(attr))
    for kind in "FBW":
        assert sum(o.flops[kind] for o in coarse.operators) == pytest.approx(sum(o.flops[kind] for o in graph.operators))


def test_chain_groups_splits_the_topological_order_into_balanced_stages():
    graph = chain_graph("p", 6, {"F": 1.0})
    assert chain_groups(graph, 3) == {"s0": "stage0", "s1": "stage0", "s2": "stage1", "s3": "stage1", "s4": "stage2", "s5": "stage2"}
    weights = {"s0": 5.0, "s1": 1.0, "s2": 1.0, "s3": 1.0, "s4": 1.0, "s5": 1.0}
    split = chain_groups(graph, 2, weight=lambda o: weights[o.name])
    assert [n for n, g in split.items() if g == "stage0"] == ["s0"]


def test_chain_groups_balances_flops_of_a_real_model_and_coarsens_to_a_chain():
    section = Section({"preset": "llama-7b", "seq_len": 512})
    graph = transformer_graph(config_from_section(section), "llama")
    coarse = coarsen(graph, chain_groups(graph, 8)).graph
    assert coarse.topological_order == tuple(f"stage{i}" for i in range(8))
    loads = [sum(o.flops.values()) for o in coarse.operators]
    layer = sum(graph.by_name["L0.attn"].flops.values()) + sum(graph.by_name["L0.mlp"].flops.values())
    assert max(loads) - min(loads) <= layer  # within one layer of perfect balance


def test_chain_groups_rejects_impossible_counts():
    graph = chain_graph("p", 3, {"F": 1.0})
    with pytest.raises(InputError, match="cannot split 3 operators into 4"):
        chain_groups(graph, 4)
    with pytest.raises(InputError, match="at least one group"):
        chain_groups(graph, 0)


def _best_bottleneck(weights: list[float], n: int) -> float:
    """Brute force over every way to cut ``weights`` into ``n`` non-empty contiguous pieces."""
    best = float("inf")
    for cuts in combinations(range(1, len(weights)), n - 1):
        bounds = (0, *cuts, len(weights))
        best = min(best, max(sum(weights[a:b]) for a, b in zip(bounds, bounds[1:])))
    return best


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 20), min_size=1, max_size=9), st.integers(1, 9))
def test_chain_groups_matches_the_brute_force_optimum(raw, n):
    n = min(n, len(raw))
    weights = [float(w) for w in raw]
    graph = chain_graph("p", len(weights), {"F": 1.0})
    split = chain_groups(graph, n, weight=lambda o: weights[int(o.name[1:])])
    stages = [int(split[f"s{i}"][5:]) for i in range(len(weights))]
    assert stages == sorted(stages) and set(stages) == set(range(n))  # contiguous, all non-empty
    loads = [sum(w for w, s in zip(weights, stages) if s == k) for k in range(n)]
    assert max(loads) == pytest.approx(_best_bottleneck(weights, n))
