"""Lower bounds on a layout's replayed step time and per-rank peak memory, from formulas.

Both are *lower* bounds of what :func:`planner.layouts.step.simulate_layout` reports for
the same layout, so a layout whose bound exceeds the memory capacity, or whose time bound
is no better than a step already simulated, can be discarded without replaying it.

Time, per pipeline rank ``r`` (every data-parallel replica is the same by symmetry):

    step >= start_r + work_r + reduce_r + optimizer_r + gather_r

- ``work_r``: the rank's micro-batches times its units' F + B + W (the roofline seconds
  the replay gives each unit, :func:`simulator.hybrid.model_units`; full recompute adds F
  inside B) plus each unit's TP all-reduces / reduce-scatters + all-gathers, its context-parallel
  KV ring (the all-gather of K and V in F, the reduce-scatter of their gradients in B:
  :func:`simulator.hybrid._with_context_parallel`, replayed blocking) and EP all-to-alls
  priced on an idle cluster as :func:`simulator.collectives.collective_time` prices them
  (:mod:`planner.search.prices`) — they run
  on the compute stream, and contention only makes them slower. DualPipe's two
  directions share the micro-batches (``m / 2`` per held stage); with ``fb_overlap`` a
  fused F&B pair may save ``fb_overlap x min(F, B)``, which is subtracted.
- ``start_r``: the pipeline bubble a rank cannot avoid: its first task is an F of one
  of its stages, which waits for that micro-batch's F on every earlier stage (for
  1F1B this is Narayanan et al.'s ``(p - 1) t_F`` on the last rank).
- ``reduce_r``: data-parallel gradient reduction not hidable after the last backward:
  the bucket holding the last-finished unit is at least that unit's gradients, reduced
  (all-reduce for ZeRO-0/1, reduce-scatter for 2/3) over the ``dp x cp`` group after its
  last W — the cheapest such unit of the rank.
- ``optimizer_r`` and ``gather_r``: the fused Adam step on the rank's shard and the
  ZeRO-1/2 weight all-gather, which the step adds after the replay
  (:mod:`planner.layouts.step`), computed the same way.

The rank's comm stream gives a second bound, ``step >= comm_r + optimizer_r + gather_r``
(:func:`_comm_stream`): its ZeRO-3 gathers and gradient reductions run one after another.

Memory, per rank: the model states and buffers of :func:`simulator.memory_model.rank_memory`
(the replay's static memory) plus the activations of every F the rank's schedule lists
before its first B (:mod:`planner.search.inflight`: none of them can have been freed
yet), and at least one micro-batch of its lightest stage.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from itertools import accumulate

from planner.search.prices import PriceCurve, price_curve
from simulator.cluster import Cluster
from simulator.hybrid import GATHER_BYTES, Unit, optimizer_seconds, stage_units
from simulator.layout import Layout
from simulator.memory_model import GRAD_BYTES, rank_memory
from simulator.shapes import ModelShape

__all__ = ["Bound", "LayoutCosts", "layout_bound", "static_bytes"]


@dataclass(frozen=True)
class Bound:
    """A layout's lower bounds: step seconds (and its parts on the binding rank) and peak bytes."""

    time: float
    memory: float
    compute: float
    bubble: float
    communication: float
    tail: float


@dataclass(frozen=True)
class LayoutCosts:
    """Per-unit idle-cluster seconds of one layout's units (shared by layouts with the same units)."""

    units: tuple[Unit, ...]
    #: A layout with these units' degrees (groups are those of its first ranks; schedule and cut unused).
    layout: Layout
    cluster: Cluster
    #: Idle-cluster prices by op, group (degrees and order) and bytes, shared by every layout of a search (a group
    #: of 2048 ranks takes milliseconds to price, and thousands of layouts share a few groups).
    prices: dict = field(default_factory=dict, compare=False, repr=False)

    def _group(self, token: str) -> tuple[str, ...]:
        names = self.prices.get("names")
        if names is None:
            names = self.prices["names"] = self.cluster.device_names
        return tuple(names[r] for r in self.layout.groups(token)[0])

    def _price(self, op: str, token: str, size: float) -> float:
        """Idle-cluster seconds of ``op`` over the first ``token`` group (memoised: layers repeat; one
        :func:`planner.search.prices.price_curve` per group and op)."""
        layout = self.layout
        group_key = (op, token, layout.dp, layout.tp, layout.pp, layout.cp, layout.ep, layout.order)
        key = (*group_key, size)
        if key not in self.prices:
            curve = self.prices.get(group_key)
            if curve is None:  # many degrees share a group (the first TP, CP or EP group is ranks 0..n-1)
                group = self._group(token)
                if (op, group) not in self.prices:
                    self.prices[op, group] = price_curve(op, group, self.cluster) if len(group) > 1 else PriceCurve(())
                curve = self.prices[group_key] = self.prices[op, group]
            self.prices[key] = curve.seconds(size)
        return self.prices[key]

    @cached_property
    def passes(self) -> tuple[dict[str, float], ...]:
        """Per unit: seconds of F, B, W including its TP, CP and EP collectives (compute stream)."""
        out = []
        for u in self.units:
            t = {k: u.seconds[k] for k in ("F", "B", "W")}
            calls = [("F", op, "tp", s) for op, s in u.tp_forward] + [("B", op, "tp", s) for op, s in u.tp_backward]
            calls += [("F", op, "cp", s) for op, s in u.cp_forward] + [("B", op, "cp", s) for op, s in u.cp_backward]
            calls += [("F" if i < 2 else "B", "all_to_all", "ep", s) for i, s in enumerate(u.all_to_all)]
            for kind, op, token, size in calls:
                t[kind] += self._price(op, token, size)
            out.append(t)
        return tuple(out)

    @cached_property
    def reductions(self) -> tuple[float, ...]:
        """Per unit: its dense gradients reduced over the data-parallel group, alone."""
        op = "all_reduce" if self.layout.zero < 2 else "reduce_scatter"
        return tuple(self._price(op, "dp-cp", GRAD_BYTES * u.dense_params) for u in self.units)


def _stage_times(costs: LayoutCosts, units: tuple[int, ...]) -> dict[str, float]:
    """Seconds of F, B and W of a stage holding ``units`` (cached per stage)."""
    cache = costs.__dict__.setdefault("_stage_cache", {})
    found = cache.get(units)
    if found is None:
        found = cache[units] = {k: sum(costs.passes[u][k] for u in units) for k in ("F", "B", "W")}
    return found


def _tail(costs: LayoutCosts, held: set[int]) -> float:
    """Optimizer step on the rank's shard, plus the ZeRO-1/2 all-gather of its updated weights."""
    layout = costs.layout
    dense = sum(costs.units[u].dense_params for u in held)
    expert = sum(costs.units[u].expert_params for u in held)
    shard = dense / (layout.dp * layout.cp) + expert / layout.expert_dp if layout.zero >= 1 else dense + expert
    tail = optimizer_seconds(shard, costs.cluster.devices[0])
    if layout.zero in (1, 2):
        tail += costs._price("all_gather", "dp-cp", GATHER_BYTES * dense) + costs._price("all_gather", "expert-dp", GATHER_BYTES * expert)
    return tail


def _rank_time(costs: LayoutCosts, layout: Layout, stages: tuple[tuple[int, ...], ...], r: int, overlap: float,
               times: list[dict[str, float]], before: list[float]) -> tuple[float, ...]:
    """(total, compute, bubble, communication, tail) lower bound of pipeline rank ``r`` (``times``:
    each stage's seconds per pass; ``before[s]``: the F seconds of the stages before ``s``)."""
    mine = layout.stages_of(r)
    share = layout.micro_batches / (2 if layout.schedule == "dualpipe" else 1)
    passes = {k: share * sum(times[s][k] for s in mine) for k in ("F", "B", "W")}
    work = sum(passes.values())
    if overlap and layout.schedule in ("dualpipe", "dualpipev"):
        work -= overlap * min(passes["F"], passes["B"])
    start = min(before[s] for s in mine)
    held = {u for s in mine for u in stages[s]}
    reduce = min(costs.reductions[u] for u in held) if layout.dp * layout.cp > 1 else 0.0
    tail = _tail(costs, held)
    comm = _comm_stream(costs, layout, [u for s in mine for u in stages[s]], share)
    return max(start + work + reduce, comm) + tail, work, start, reduce, tail


def _comm_stream(costs: LayoutCosts, layout: Layout, units: list[int], share: float) -> float:
    """Seconds the rank's one comm stream is busy (:mod:`planner.layouts.dataparallel` runs its
    calls one after another): ZeRO-3's all-gather before every F and B of each unit, and the
    dense gradients' reduction — once per step (ZeRO-0/1) or every micro-batch (ZeRO-2/3).
    Many calls of one op over one group cost at least one call of their summed bytes (each ring
    step's price is a max of ``a + b S`` with latency ``a >= 0``, so it is subadditive), which
    keeps this a lower bound whatever the buckets. It binds where gathers repeat per micro-batch
    (ZeRO-3 with many micro-batches, e.g. under PP x CP), which the per-rank compute bound misses."""
    if layout.dp * layout.cp == 1:
        return 0.0
    dense = sum(costs.units[u].dense_params for u in units)
    gathers = costs._price("all_gather", "dp-cp", 2 * share * GATHER_BYTES * dense) if layout.zero == 3 else 0.0
    op = "all_reduce" if layout.zero < 2 else "reduce_scatter"
    return gathers + costs._price(op, "dp-cp", (share if layout.zero >= 2 else 1) * GRAD_BYTES * dense)


def _memory(costs: LayoutCosts, layout: Layout, shape: ModelShape, stages, held_f: Mapping[int, Mapping[int, int]],
            states: Callable[[int], float]) -> float:
    """Per-rank peak lower bound: static states + the activations of the Fs before the first B."""
    memory = 0.0
    for r in range(layout.pp):
        chunk = {s: sum(costs.units[u].activation_bytes for u in stages[s]) for s in layout.stages_of(r)}
        counted = sum(n * chunk.get(s, 0.0) for s, n in held_f.get(r, {}).items())
        memory = max(memory, states(r) + max(counted, min(chunk.values())))
    return memory


def layout_bound(costs: LayoutCosts, layout: Layout, shape: ModelShape, *, fb_overlap: float = 0.0,
                 held_f: Mapping[int, Mapping[int, int]] | None = None, states: Callable[[int], float] | None = None) -> Bound:
    """Lower bounds of ``layout``'s step time and peak per-rank memory (``costs``: its units,
    from any layout with the same degrees, ZeRO stage, recompute and micro-batch size)."""
    stages = stage_units(layout, len(shape.layers))
    times = [_stage_times(costs, units) for units in stages]
    before = list(accumulate((t["F"] for t in times[:-1]), initial=0.0))
    ranks = [_rank_time(costs, layout, stages, r, fb_overlap, times, before) for r in range(layout.pp)]
    total, compute, bubble, comm, tail = max(ranks)
    if states is None:
        states = lambda r: static_bytes(shape, layout, r)  # noqa: E731
    memory = _memory(costs, layout, shape, stages, held_f or {}, states)
    return Bound(time=total, memory=memory, compute=compute, bubble=bubble, communication=comm, tail=tail)


def static_bytes(shape: ModelShape, layout: Layout, pp_rank: int) -> float:
    """Model states and buffers of pipeline rank ``pp_rank`` (the replay's static memory)."""
    memory = rank_memory(shape, layout, layout.rank_of(pp=pp_rank))
    return memory.total - memory.activations
