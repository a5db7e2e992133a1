"""Built-in pipeline schedules, each a task-by-task :class:`~simulator.schedule.Schedule`.

Every generator takes a scenario whose model is a chain of stages (``type: pipeline``)
and returns the schedule the simulator replays; violated preconditions (an odd rank
count for DualPipe, too few micro-batches, stages that are not ``chunks x ranks``) are
raised as one-line :class:`~simulator.errors.InputError` naming the field.

>>> from planner.schedules.examples import example_scenario
>>> scenario = example_scenario(stages=4, micro_batches=8)
>>> sorted(name for name, why in available(scenario).items() if why is None)
['1f1b', 'dualpipe', 'dualpipe-per-pass', 'dualpipev', 'dualpipev-per-pass', 'gpipe', 'interleaved-1f1b', 'zb-h1', 'zb-h2']
>>> len(generate("1f1b", scenario))  # 4 stages x 8 micro-batches x (F, B, W)
96
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

from planner.schedules.classic import gpipe, interleaved_1f1b, one_f_one_b
from planner.schedules.dualpipe import dualpipe, dualpipe_per_pass, dualpipev, dualpipev_per_pass
from planner.schedules.zero_bubble import zb_h1, zb_h2
from simulator.errors import InputError
from simulator.scenario import Scenario
from simulator.schedule import Schedule

__all__ = ["SCHEDULES", "Generator", "NotApplicable", "available", "builtin_schedule", "generate"]

Generator = Callable[..., Schedule]


class NotApplicable(InputError):
    """A built-in schedule's precondition does not hold for the scenario (e.g. an odd rank count for DualPipe)."""

#: name -> generator ``(scenario, **options) -> Schedule``, in the order tables list them.
SCHEDULES: dict[str, Generator] = {
    "gpipe": gpipe,
    "1f1b": one_f_one_b,
    "interleaved-1f1b": interleaved_1f1b,
    "zb-h1": zb_h1,
    "zb-h2": zb_h2,
    "dualpipe": dualpipe,
    "dualpipev": dualpipev,
    "dualpipe-per-pass": dualpipe_per_pass,
    "dualpipev-per-pass": dualpipev_per_pass,
}


#: Built-in schedules already generated: ``(id(scenario), name, options)`` -> the schedule,
#: or the error its generator raised. ``opplan compare --plan --plan-memory-like`` needs
#: the same built-ins for its table, for the memory limit and for the planner's
#: candidates: each is generated once. Scenarios and schedules are immutable, and an
#: entry goes when its scenario is garbage-collected, so an answer is never stale.
_generated: dict[tuple, Schedule | InputError] = {}


def generate(name: str, scenario: Scenario, **options: Any) -> Schedule:
    """The schedule ``name`` for ``scenario``; ``options`` override its ``pipeline:`` settings.

    ZB-H1 against 1F1B in DualPipe's setting (8 stages, 20 micro-batches, F = B = W = 1 ms):

    >>> from simulator.engine import replay
    >>> from simulator.scenario import load_scenario
    >>> scenario = load_scenario("scenarios/dualpipe-8x20.yaml")
    >>> for name in ("1f1b", "zb-h1"):
    ...     print(name, round(replay(scenario.problem, generate(name, scenario)).makespan * 1e3, 9))
    1f1b 81.0
    zb-h1 67.0
    """
    generator = SCHEDULES.get(name)
    if generator is None:
        raise InputError(f"unknown schedule {name!r} (built in: {', '.join(SCHEDULES)})", field="schedule")
    key = (id(scenario), name, tuple(sorted((k, v) for k, v in options.items() if v is not None)))
    try:
        outcome = _generated.get(key)
    except TypeError:  # an unhashable option value: nothing to share
        return generator(scenario, **options)
    if outcome is None:
        try:
            outcome = generator(scenario, **options)
        except InputError as exc:
            outcome = exc
        _generated[key] = outcome
        weakref.finalize(scenario, _generated.pop, key, None)
    if isinstance(outcome, InputError):  # a fresh error each time: callers may fill in its file
        raise type(outcome)(outcome.message, file=outcome.file, field=outcome.field)
    return outcome


def available(scenario: Scenario, **options: Any) -> dict[str, str | None]:
    """name -> None where the schedule applies to ``scenario``, else why it does not."""
    out: dict[str, str | None] = {}
    for name in SCHEDULES:
        try:
            generate(name, scenario, **options)
        except InputError as exc:
            out[name] = f"{exc.field}: {exc.message}" if exc.field else exc.message
        else:
            out[name] = None
    return out


def builtin_schedule(name: str, scenario: Scenario) -> Schedule:
    """The built-in schedule ``name`` for ``scenario``; :class:`NotApplicable` (naming the schedule) if it does not fit."""
    if name not in SCHEDULES:
        generate(name, scenario)  # raises the unknown-name error
    try:
        return generate(name, scenario)
    except InputError as exc:  # the generators' contract: a violated precondition
        reason = f"{exc.field}: {exc.message}" if exc.field else exc.message
        raise NotApplicable(f"{name} does not apply: {reason}", file=scenario.file or None, field="schedule") from None
