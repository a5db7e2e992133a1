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
5. Iterate with the lower level (:mod:`planner.search.lower`): the replayed pipeline
   layouts that could still beat the incumbent (bound below it, replay within
   :data:`LOWER_WITHIN` of it, a gap between replay and bound) get, smallest bound first,
   the scheduling MIP on their pipeline order and its DP communication; a faster replay
   becomes the incumbent, which prunes more of the heap, and the best-first replays
   resume with the layouts still below it. Bounds hold for *any* schedule of a layout,
   so the certificate compares against them unchanged.
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
from planner.search.lower import LowerOutcome, improve_layout
from planner.search.space import enumerate_layouts
from simulator.layout import Layout
from simulator.scenario import Scenario

__all__ = ["LOWER_SHARE", "LOWER_WITHIN", "SearchResult", "Replayed", "search_layouts"]

#: Share of the time limit the best-first replays leave to the lower level (they get it back
#: when no pipeline layout is worth the lower level's time).
LOWER_SHARE = 0.4
#: A pipeline layout gets the lower level when its replay is within this fraction of the
#: incumbent (the lower level reorders passes and communication; it saved 0-3 % here).
LOWER_WITHIN = 0.05
#: ... and its replay is at least this far above its bound (else there is nothing to win).
LOWER_MIN_GAP = 0.002
#: Seconds of solving below which a lower-level run is not started.
LOWER_MIN_SECONDS = 1.0
#: Seconds of solving a lower-level run gets per stage task (F, B, W of a stage and micro-batch),
#: at least :data:`LOWER_MIN_SECONDS` x 2 and at most the lower level's share of the time limit:
#: CP-SAT's improvements on the realistic pipelines came within about this.
LOWER_SECONDS_PER_TASK = 0.02


@dataclass(frozen=True)
class Replayed:
    layout: Layout
    bound: Bound
    result: StepResult | None
    refused: str = ""
    #: Who ordered the plan's pipeline: "built-in schedule" or "lower level: <engine>".
    engine: str = "built-in schedule"
    seconds: float = 0.0  # wall-clock seconds of its replay
    lower: LowerOutcome | None = None  # the lower level's run that gave this result

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
    #: Every lower-level run, in the order they ran.
    lower: list[LowerOutcome] = field(default_factory=list)

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
    tried: set = field(default_factory=set)  # layouts the lower level has run on
    limit: float = 0.0  # the search's time limit, seconds

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


def _dispatch(state: _State, ev: Evaluator, slots: int, serial: bool, until: float) -> None:
    """Submit the best-bounded layouts while slots are free and their bound can still win, until
    ``until`` (a serial replay that would end after it waits in the heap for the next round)."""
    units = len(state.ctx.shape.layers) + 2
    while state.heap and ev.pending() < slots and state.heap[0][0] < state.best_step and time.monotonic() < until:
        _, _, _, layout, bound, cut_done = heapq.heappop(state.heap)
        if not cut_done:
            _refine(state, layout)
            continue
        if serial and state.rate and time.monotonic() + state.rate * _size(layout, units) > until:
            if until < state.deadline:
                state.push(bound, layout, cut_done)
                return
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
        item = Replayed(layout, bound, result if not isinstance(result, str) else None, result if isinstance(result, str) else "",
                        seconds=time.monotonic() - started)
        state.out.replayed.append(item)
        if item.feasible and item.result.step < state.best_step:
            state.out.best = item


def _lower_candidates(state: _State) -> list[Replayed]:
    """Replayed pipeline layouts the lower level could make the plan: smallest bound first (the
    most it could reach), then the largest gap between replay and bound, then the most exposed
    communication (what reordering the passes can hide)."""
    best = state.best_step
    out = [r for r in state.out.replayed
           if r.feasible and r.layout.pp > 1 and _stage_key(r.layout) not in state.tried and r.bound.time < best * (1 - 1e-9)
           and r.result.step <= best * (1 + LOWER_WITHIN) and r.result.step > r.bound.time * (1 + LOWER_MIN_GAP)]
    return sorted(out, key=lambda r: (r.bound.time, r.bound.time - r.result.step, -r.result.comm_exposed))


def _stage_key(layout: Layout) -> Layout:
    """Layouts with the same stage problem (the ZeRO stage is moot without data parallelism)."""
    alone = layout.dp * layout.cp == 1 and layout.expert_dp == 1
    return replace(layout, zero=0) if alone else layout


def _run_lower(state: _State, item: Replayed, margin: float, log: Callable[[str], None] | None) -> None:
    """The lower level on ``item``'s layout with the time its replay leaves; a faster replay
    becomes the incumbent."""
    state.tried.add(_stage_key(item.layout))
    left = state.deadline - margin - time.monotonic() - (1.5 * item.seconds + 0.5)  # its replay, and building the model
    tasks = 3 * item.layout.stages * item.layout.micro_batches
    solve = min(left, LOWER_SHARE * state.limit, max(2 * LOWER_MIN_SECONDS, LOWER_SECONDS_PER_TASK * tasks))
    if solve < LOWER_MIN_SECONDS:
        return
    try:
        outcome = improve_layout(state.ctx.scenario_for(item.layout), item.layout, time_limit=solve, warm=item.result)
    except Exception as exc:  # noqa: BLE001 — an improver's failure must not cost the user the plan already found
        state.out.messages.append(f"lower level failed on {item.result.layout}: {type(exc).__name__}: {exc}")
        return
    state.out.lower.append(outcome)
    if log:
        log(f"lower level on {item.result.layout} (mbs {item.layout.micro_batch_size}): {_describe(outcome)}")
    if outcome.kept and outcome.step < state.best_step:
        state.out.best = replace(item, result=outcome.result, engine=f"lower level: {outcome.engine}", lower=outcome)


def _describe(outcome: LowerOutcome) -> str:
    if not outcome.kept:
        return f"built-in {outcome.warm_step * 1e3:.1f} ms kept ({outcome.engine}: {outcome.note}) in {outcome.seconds:.1f} s"
    return (f"built-in {outcome.warm_step * 1e3:.1f} ms -> {outcome.step * 1e3:.1f} ms ({outcome.engine}; stage model"
            f" {outcome.model_warm * 1e3:.1f} -> {outcome.model_makespan * 1e3:.1f} ms, its bound"
            f" {outcome.model_bound * 1e3:.1f} ms) in {outcome.seconds:.1f} s")


def _finish(state: _State, started: float) -> SearchResult:
    out = state.out
    left = [entry[0] for entry in state.heap] + [bound.time for _, bound, _ in state.pending.values()] + state.skipped
    out.lower_bound = 0.0 if state.incomplete else min([state.best_step, *left])
    out.certified = not out.timed_out and out.best is not None and out.lower_bound >= state.best_step * (1 - 1e-12)
    out.pruned_time = sum(1 for t in left if t >= state.best_step)
    out.seconds = time.monotonic() - started
    return out


def _best_first(state: _State, ev: Evaluator, slots: int, serial: bool, until: float, margin: float) -> None:
    """Replay the best-bounded layouts, dispatching until ``until``, each replay collected by the deadline."""
    while True:
        _dispatch(state, ev, slots, serial, until)
        if not ev.pending():
            return
        remaining = state.deadline - margin - time.monotonic()
        if remaining <= 0:
            state.out.timed_out = True
            return
        _collect(state, ev.done(remaining))


def search_layouts(scenario: Scenario, *, time_limit: float = 60.0, workers: int = 0, scheduler: str | None = None,
                   log: Callable[[str], None] | None = None) -> SearchResult:
    """Best-first search of ``scenario``'s hybrid space within ``time_limit`` seconds of wall clock,
    iterating with the lower level on the most promising pipeline layouts."""
    started = time.monotonic()
    state = _State(SearchContext(scenario), SearchResult(), started + time_limit, limit=time_limit)
    _seed(state)
    if log:
        log(f"{state.out.enumerated} layouts enumerated, {state.out.pruned_memory} over memory by the lower bound")
    serial = workers == 0 and scheduler is None
    slots = 1 if serial else max(1, workers) * 2
    margin = 0.0 if serial else min(3.0, 0.05 * time_limit)  # closing the Dask cluster
    until = started + (1 - LOWER_SHARE) * time_limit
    with evaluator(scenario, workers=workers, scheduler=scheduler) as ev:
        while time.monotonic() < state.deadline - margin:
            _best_first(state, ev, slots, serial, until, margin)
            candidate = next(iter(_lower_candidates(state)), None)
            if candidate is not None:
                _run_lower(state, candidate, margin, log)
            elif until >= state.deadline or time.monotonic() >= state.deadline - margin:
                break
            else:
                until = state.deadline  # no lower-level work left: the rest of the time to replays
    state.out.timed_out = state.out.timed_out or bool(state.heap and state.heap[0][0] < state.best_step) or bool(state.skipped)
    return _finish(state, started)
