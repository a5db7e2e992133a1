"""Best-first search over the hybrid space, with a certificate.

1. Enumerate every valid layout (:mod:`planner.search.space`).
2. Bound each (:mod:`planner.search.bounds`): a layout whose per-rank memory lower bound
   exceeds the device's capacity is discarded; the rest wait in a heap by step-time
   lower bound.
3. Pop the smallest bound. A pipeline layout with one stage per rank first gets its cut
   from the MIP (:mod:`planner.search.cuts`); when the MIP's slowest stage beats the even
   cut's, the layout is re-bounded with that cut and goes back to the heap. Otherwise
   it is replayed (:mod:`planner.search.evaluate`, serially or on Dask workers).
4. Stop when the smallest bound left is no less than the best replayed step: every layout
   not replayed is then provably no faster (the *certificate*), or when the time limit
   is reached (the bound left is then the lower bound over the whole space, and the gap
   is reported). Replays whose timeline violates memory are infeasible, never the plan.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from planner.layouts.step import StepResult
from planner.search.bounds import Bound
from planner.search.context import SearchContext
from planner.search.cuts import MIP_SCHEDULES, balanced_cut, max_stage_seconds
from planner.search.evaluate import OUT_OF_TIME, Evaluator, evaluator
from planner.search.space import enumerate_layouts
from simulator.layout import Layout
from simulator.scenario import Scenario

__all__ = ["SearchResult", "Replayed", "search_layouts"]


@dataclass(frozen=True)
class Replayed:
    layout: Layout
    bound: Bound
    result: StepResult | None
    refused: str = ""

    @property
    def feasible(self) -> bool:
        return self.result is not None and not self.result.note


@dataclass
class SearchResult:
    """What the search saw, did and found."""

    enumerated: int = 0
    #: Layouts identical to another in the replay (selective recompute with nothing to recompute).
    duplicates: int = 0
    pruned_memory: int = 0
    pruned_time: int = 0
    mip_cuts: int = 0
    mip_improved: int = 0
    replayed: list[Replayed] = field(default_factory=list)
    best: Replayed | None = None
    #: Lower bound on the step time of every layout of the space (min of best and bounds left).
    lower_bound: float = 0.0
    certified: bool = False
    #: The smallest per-rank memory lower bound seen, and its layout (what a refusal names).
    least_memory: tuple[float, Layout] | None = None
    timed_out: bool = False
    seconds: float = 0.0
    messages: list[str] = field(default_factory=list)

    @property
    def gap(self) -> float:
        if self.best is None or self.best.result is None:
            return float("inf")
        return self.best.result.step / self.lower_bound - 1.0 if self.lower_bound else float("inf")


@dataclass
class _State:
    ctx: SearchContext
    out: SearchResult
    deadline: float
    heap: list = field(default_factory=list)
    pending: dict = field(default_factory=dict)
    counter: int = 0
    rate: float = 0.0  # least replay seconds per unit task seen (serial time guard)
    skipped: list = field(default_factory=list)
    incomplete: bool = False

    def push(self, bound: Bound, layout: Layout, cut_done: bool) -> None:
        """Into the heap by bound; among equal bounds the cheaper replay first."""
        self.counter += 1
        size = _size(layout, len(self.ctx.shape.layers) + 2)
        heapq.heappush(self.heap, (bound.time, size, self.counter, layout, bound, cut_done))

    @property
    def best_step(self) -> float:
        best = self.out.best
        return best.result.step if best is not None and best.result is not None else float("inf")


def _seed(state: _State) -> None:
    """Enumerate and bound every layout; discard those over memory."""
    ctx = state.ctx
    for layout in enumerate_layouts(ctx.space, ctx.shape):
        if time.monotonic() > state.deadline:
            state.out.timed_out = state.incomplete = True  # the layouts not enumerated have no bound
            return
        state.out.enumerated += 1
        if layout.recompute == "selective" and ctx.costs(layout).units == ctx.costs(replace(layout, recompute="none")).units:
            state.out.duplicates += 1  # flash attention stores no scores: selective = none, replayed once
            continue
        bound = ctx.bound(layout)
        if state.out.least_memory is None or bound.memory < state.out.least_memory[0]:
            state.out.least_memory = (bound.memory, layout)
        if bound.memory > ctx.capacity:
            state.out.pruned_memory += 1
            continue
        state.push(bound, layout, cut_done=layout.pp == 1 or layout.schedule not in MIP_SCHEDULES)


def _refine(state: _State, layout: Layout) -> None:
    """Cut ``layout``'s stages by MIP; keep the MIP's cut when its slowest stage beats the even cut's."""
    ctx = state.ctx
    costs = ctx.costs(layout)
    remaining = min(5.0, state.deadline - time.monotonic())
    if remaining < 0.5:  # no time for a MIP: the even cut stays
        state.push(ctx.bound(layout), layout, cut_done=True)
        return
    cut = balanced_cut(costs, layout, ctx.capacity, time_limit=remaining)
    state.out.mip_cuts += 1
    even = max_stage_seconds(costs, layout.stage_layers)
    if cut.layers is not None and cut.layers != layout.stage_layers and cut.seconds < even * (1 - 1e-9):
        state.out.mip_improved += 1
        layout = replace(layout, stage_layers=cut.layers)
    bound = ctx.bound(layout)
    if bound.memory > ctx.capacity:
        state.out.pruned_memory += 1
        return
    state.push(bound, layout, cut_done=True)


def _size(layout: Layout, units: int) -> float:
    """Unit tasks a replay runs (for the serial time guard)."""
    replicas = layout.dp if layout.world_size <= 16 else 1
    return layout.micro_batches * units * replicas * layout.tp * layout.cp


def _dispatch(state: _State, ev: Evaluator, slots: int, serial: bool) -> None:
    """Submit the best-bounded layouts while slots are free and their bound can still win."""
    units = len(state.ctx.shape.layers) + 2
    while state.heap and ev.pending() < slots and state.heap[0][0] < state.best_step and time.monotonic() < state.deadline:
        _, _, _, layout, bound, cut_done = heapq.heappop(state.heap)
        if not cut_done:
            _refine(state, layout)
            continue
        if serial and state.rate and time.monotonic() + state.rate * _size(layout, units) > state.deadline:
            state.skipped.append(bound.time)  # would not finish in time: never replayed, its bound still counts
            continue
        state.counter += 1
        state.pending[state.counter] = (layout, bound, time.monotonic())
        ev.submit(state.counter, layout)


def _collect(state: _State, finished: list) -> None:
    units = len(state.ctx.shape.layers) + 2
    for key, result in finished:
        layout, bound, started = state.pending.pop(key)
        if result == OUT_OF_TIME:
            state.out.timed_out = True
            state.skipped.append(bound.time)
            continue
        rate = (time.monotonic() - started) / _size(layout, units)
        state.rate = min(state.rate, rate) if state.rate else rate
        item = Replayed(layout, bound, result if not isinstance(result, str) else None, result if isinstance(result, str) else "")
        state.out.replayed.append(item)
        if item.feasible and item.result.step < state.best_step:
            state.out.best = item


def _finish(state: _State, started: float) -> SearchResult:
    out = state.out
    left = [entry[0] for entry in state.heap] + [bound.time for _, bound, _ in state.pending.values()] + state.skipped
    out.lower_bound = 0.0 if state.incomplete else min([state.best_step, *left])
    out.certified = not out.timed_out and out.best is not None and out.lower_bound >= state.best_step * (1 - 1e-12)
    out.pruned_time = sum(1 for t in left if t >= state.best_step)
    out.seconds = time.monotonic() - started
    return out


def search_layouts(scenario: Scenario, *, time_limit: float = 60.0, workers: int = 0, scheduler: str | None = None,
                   log: Callable[[str], None] | None = None) -> SearchResult:
    """Best-first search of ``scenario``'s hybrid space within ``time_limit`` seconds of wall clock."""
    started = time.monotonic()
    state = _State(SearchContext(scenario), SearchResult(), started + time_limit)
    _seed(state)
    if log:
        log(f"{state.out.enumerated} layouts enumerated, {state.out.pruned_memory} over memory by the lower bound")
    serial = workers == 0 and scheduler is None
    slots = 1 if serial else max(1, workers) * 2
    margin = 0.0 if serial else min(3.0, 0.05 * time_limit)  # closing the Dask cluster
    with evaluator(scenario, workers=workers, scheduler=scheduler) as ev:
        while True:
            _dispatch(state, ev, slots, serial)
            if not ev.pending():
                break
            remaining = state.deadline - margin - time.monotonic()
            if remaining <= 0:
                state.out.timed_out = True
                break
            _collect(state, ev.done(remaining))
    state.out.timed_out = state.out.timed_out or bool(state.heap and state.heap[0][0] < state.best_step) or bool(state.skipped)
    return _finish(state, started)
