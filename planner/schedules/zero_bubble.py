"""ZB-H1 and ZB-H2 (Qi, Wan, Huang, Lin: "Zero Bubble Pipeline Parallelism", ICLR 2024).

The backward is split into ``B`` (gradient for the inputs, on the critical path) and
``W`` (gradient for the weights, which nothing else waits for), so ``B`` travels
upstream at once and ``W`` fills what would otherwise be bubbles.

Both schedules are one pattern with a different *lead*. In the steady state rank
``r`` runs the triple ``F(x), B(x - a), W(x - c)``: the forward runs ``a`` micro-batches
ahead of the backward and the weight pass lags ``c - a`` behind it, with

- ZB-H1: ``a = p - 1 - r``, ``c = p - 1`` (1F1B's warm-up, so 1F1B's memory);
- ZB-H2: ``a = 2(p - 1 - r)``, ``c = 2(p - 1)`` (twice the warm-up forwards fill the
  start-up bubble; the lagging weight passes fill the tail).

Writing out where each index of the triple starts and stops gives five phases per
rank: ``nF`` (a), ``nFB`` (c - a), ``nFBW`` (m - c), ``nBW`` (a), ``nW`` (c - a).
"""

from __future__ import annotations

from typing import Any

from planner.schedules.layout import RankProgram, build_schedule, pipeline_of, require
from simulator.scenario import Scenario
from simulator.schedule import Schedule

__all__ = ["zb_h1", "zb_h2"]


def _zero_bubble(scenario: Scenario, options: dict[str, Any], name: str, lead: int) -> Schedule:
    pipe = pipeline_of(scenario, options)
    p, m = pipe.stage_count, pipe.micro_batches
    ranks = pipe.ranks(p, name)
    c = lead * (p - 1)
    require(pipe, m >= c,
            f"{name} needs at least {c} micro-batches on {p} ranks to reach its steady state, got {m}",
            "workload.micro_batches")
    programs = {}
    for r, device in enumerate(ranks):
        stage = pipe.stages[r]
        rank = RankProgram({0: list(range(m))})
        a = lead * (p - 1 - r)
        # Step 1: nF -- warm-up forwards, the lead a of the forwards over the backwards
        for _ in range(a):
            rank.forward(0, stage)
        # Step 2: nFB -- forward and input-backward; weight passes wait (c - a of them)
        for _ in range(c - a):
            rank.forward(0, stage)
            rank.backward(0, stage, split=True)
        # Step 3: nFBW -- steady state, one of each; W runs the oldest deferred weight pass
        for _ in range(m - c):
            rank.forward(0, stage)
            rank.backward(0, stage, split=True)
            rank.weight()
        # Step 4: nBW -- cool-down, the remaining input-backwards each with a weight pass
        for _ in range(a):
            rank.backward(0, stage, split=True)
            rank.weight()
        # Step 5: nW -- the deferred weight passes fill the tail
        for _ in range(c - a):
            rank.weight()
        programs[device] = rank
    return build_schedule(name, programs, {"generator": f"planner.schedules.{name}", "ranks": p})


def zb_h1(scenario: Scenario, **options: Any) -> Schedule:
    """ZB-H1: 1F1B's memory, a third of its bubble when ``F = B = W``.

    Rank ``r`` (0-based) warms up with ``p - 1 - r`` forwards like 1F1B and defers
    ``r`` weight passes. Needs ``m >= p - 1``.

    Published (Table 2, zero-bubble notation): bubble ``(p - 1)(F + B - W)``; peak
    activation on worker ``i = r + 1``: ``(p - i + 1) M_B + (i - 1) M_W`` where ``M_B``
    is one micro-batch's activations and ``M_W`` the part kept for ``W``. Exact for
    equal stage times, free communication, ``W <= F`` and ``W <= B``, and ``m >= p``.

    >>> from planner.schedules.examples import example_scenario
    >>> s = zb_h1(example_scenario(stages=2, micro_batches=2))
    >>> [str(e) for e in s.devices["gpu1"]]
    ['F:s1:0', 'B:s1:0', 'F:s1:1', 'B:s1:1', 'W:s1:0', 'W:s1:1']
    """
    return _zero_bubble(scenario, dict(options), "zb-h1", 1)


def zb_h2(scenario: Scenario, **options: Any) -> Schedule:
    """ZB-H2: zero bubble when ``F + B = 2W``, for about twice 1F1B's activation memory.

    Rank ``r`` warms up with ``2(p - 1 - r)`` forwards and defers ``2r`` weight
    passes. Needs ``m >= 2(p - 1)``.

    Published: bubble ``(p - 1)(F + B - 2W)``; peak activation on worker ``i = r + 1``:
    ``(2p - 2i + 1) M_B + (2i - 2) M_W``. With equal stage times, free communication,
    ``W <= F``, ``W <= B`` and ``m >= 2p - 1``, the replay gives rank 0 exactly that
    idle time and each rank the published activation peak. The iteration's bubble
    (``makespan - busy``) cannot fall below ``(p - 1)F``, the time before the last
    rank gets its first input, so it equals the formula when ``2W <= B`` and is
    ``(p - 1)F`` otherwise: the paper's "zero bubble" at ``F = B = W`` is per rank
    from its first task to its last, which needs the next iteration to start before
    this one ends (its optimizer-step post-validation), a parallelogram rather than a
    synchronous iteration.
    """
    return _zero_bubble(scenario, dict(options), "zb-h2", 2)
