"""Replaying candidate layouts: in this process (``workers = 0``) or on a Dask cluster —
an embedded ``distributed.LocalCluster`` of worker processes, or ``scheduler`` — as
:mod:`opplan.sweeps.runner` runs sweep points.

A job carries the scenario's file and the layout; each worker loads the scenario once
and rebuilds the model at the layout's micro-batch size
(:func:`planner.search.context.with_micro_batch_size`). A layout whose collectives would
cost more than :data:`SEARCH_REPLAY_EVENTS` transfers to replay on links is replayed with
priced collectives (:mod:`planner.layouts.build`): a 70B layout in ~1-2 s instead of 5-30 s."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from functools import lru_cache
from typing import Protocol

from planner.layouts.step import StepResult, simulate_layout
from planner.search.context import with_micro_batch_size
from planner.timebox import OutOfTime, can_interrupt, time_boxed
from simulator.errors import InputError
from simulator.layout import Layout
from simulator.scenario import Scenario, load_scenario
from simulator.schedule import Schedule

__all__ = ["OUT_OF_TIME", "SEARCH_REPLAY_EVENTS", "Evaluator", "evaluator", "replay_layout", "replay_on_links"]

#: Link-replay events (transfers and phantom entries) above which a candidate's collectives
#: are priced: about 1.5 s of link replay on one core.
SEARCH_REPLAY_EVENTS = 50_000


@lru_cache(maxsize=4)
def _scenario(path: str) -> Scenario:
    return load_scenario(path)


def replay_layout(scenario: Scenario | str, layout: Layout) -> StepResult | str:
    """One replayed step of ``layout``, or why the replay refused it."""
    loaded = _scenario(scenario) if isinstance(scenario, str) else scenario
    try:
        return simulate_layout(with_micro_batch_size(loaded, layout.micro_batch_size), layout,
                               event_budget=SEARCH_REPLAY_EVENTS)
    except InputError as exc:
        return exc.message


#: What a replay cut short by the time limit returns.
OUT_OF_TIME = "stopped at the time limit"


def replay_on_links(scenario: Scenario, layout: Layout, seconds: float, pipeline: Schedule | None = None) -> StepResult | None:
    """``layout`` (with ``pipeline`` as its stage-level schedule, None: the built-in) replayed with
    every collective on links (the exact replay), or None when that cannot finish within
    ``seconds`` (or is refused): the plan's final replay when time is left."""
    if seconds < 0.1 or not can_interrupt():
        return None  # no SIGALRM outside the main thread: the replay could not be cut short
    with time_boxed(seconds):
        try:
            return simulate_layout(with_micro_batch_size(scenario, layout.micro_batch_size), layout, collectives="links",
                                   pipeline=pipeline)
        except (OutOfTime, InputError):
            return None


class Evaluator(Protocol):
    def submit(self, key: int, layout: Layout) -> None: ...
    def done(self, timeout: float) -> list[tuple[int, StepResult | str]]: ...
    def pending(self) -> int: ...


class _Serial:
    def __init__(self, scenario: Scenario) -> None:
        self.scenario, self.queue = scenario, []

    def submit(self, key: int, layout: Layout) -> None:
        self.queue.append((key, layout))

    def done(self, timeout: float) -> list[tuple[int, StepResult | str]]:
        key, layout = self.queue.pop(0)
        with time_boxed(timeout):
            try:
                return [(key, replay_layout(self.scenario, layout))]
            except OutOfTime:
                return [(key, OUT_OF_TIME)]

    def pending(self) -> int:
        return len(self.queue)


class _Dask:
    def __init__(self, client, path: str) -> None:
        self.client, self.path, self.futures = client, path, {}

    def submit(self, key: int, layout: Layout) -> None:
        self.futures[self.client.submit(replay_layout, self.path, layout, pure=False)] = key

    def done(self, timeout: float) -> list[tuple[int, StepResult | str]]:
        from distributed import wait
        try:
            finished = wait(list(self.futures), timeout=max(timeout, 0.01), return_when="FIRST_COMPLETED").done
        except TimeoutError:
            return []
        return [(self.futures.pop(f), f.result()) for f in finished]

    def pending(self) -> int:
        return len(self.futures)


@contextmanager
def evaluator(scenario: Scenario, *, workers: int = 0, scheduler: str | None = None) -> Iterator[Evaluator]:
    """Serial when ``workers`` is 0 and no scheduler is given, else Dask."""
    if workers == 0 and scheduler is None:
        yield _Serial(scenario)
        return
    if not scenario.file:
        raise InputError("parallel evaluation needs a scenario file", field="--workers")
    from distributed import Client, LocalCluster
    with ExitStack() as stack:
        if scheduler:
            client = stack.enter_context(Client(scheduler, timeout="20s"))
        else:
            cluster = stack.enter_context(LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                                       dashboard_address=None, silence_logs=logging.ERROR))
            client = stack.enter_context(Client(cluster))
        yield _Dask(client, scenario.file)
