"""DualPipe and DualPipeV (DeepSeek-V3; deepseek-ai/DualPipe).

Notation (DualPipe's): ``F`` forward chunk, ``B`` *full* backward chunk (input and
weight gradients, ``T_B + T_W``), ``W`` weight-gradient part, ``F&B`` a forward and a
full backward of two different micro-batches run overlapped in one slot. A trailing
``0`` / ``1`` names the rank's first / second chunk: the one its first micro-batches
reach, and the other.

Both schedules run the same eight phases on every rank; only the phase lengths depend
on the rank. With ``h`` the rank's distance from the nearer end (DualPipe) or its
index (DualPipeV), ``N`` half the ranks (DualPipe) or all of them (DualPipeV) and
``M`` the micro-batches per chunk:

1. ``nF0``        ``2(N - h - 1)``    forwards fill the pipe from this rank's end;
2. ``nF0F1``      ``h + 1``           the other chunk's forwards arrive;
3. ``nB1W1F1``    ``N - h - 1``       first backwards, split so ``B`` travels early;
4. ``nF0B1F1B0``  ``M - 2N + h + 1``  the main step: two overlapped ``F&B`` slots;
5. ``nB1F1B0``    ``N - h - 1``       forwards of chunk 0 are used up;
6. ``nB1B0``      ``h + 1``           backwards only; from the middle on, ``W`` is deferred;
7. ``nWB0``       ``N - h - 1``       deferred weight passes interleave with chunk 0's ``B``;
8. ``nW``         ``h + 1``           the remaining weight passes.

On the rank(s) at the turning point (DualPipe's two middle ranks, DualPipeV's last
rank) the first step-4 forward is *not* overlapped with the following backward ("to
further reduce bubble size", the reference's comment): it runs alone, then the backward.

Send points. The reference (``deepseek-ai/DualPipe``, ``dualpipe.py``) queues each send
and posts it at the next ``_commit_and_wait_comm``, i.e. when the next chunk starts, so
an output normally leaves when its computation ends. Three sends are queued later:

- step 2, every rank but the turning point: a chunk-0 forward's output is queued only
  after the chunk-1 forward that follows it (``send=self.is_middle_rank``, then
  ``_send_forward(0)`` after ``_forward_chunk(1)``);
- step 2, the turning point's last chunk-1 forward: sent after step 4's first forward;
- step 4, the turning point's first forward: sent after the following backward.

The reference also queues two receives early and waits for them at that earlier commit:
step 2's next chunk-0 input (waited for before the chunk-1 forward) and step 3's next
chunk-1 input (waited for before the weight pass).

``dualpipe`` / ``dualpipev`` send there and wait there (the schedule marks those entries
``send: after-next`` and ``prefetch``); :mod:`planner.schedules.dualpipe_reference`
models the reference's communication independently and agrees with the replay.
``dualpipe-per-pass`` / ``dualpipev-per-pass`` send every output when its pass ends
and wait only for their own inputs, an idealisation of the same order; DualPipe's
published bubble formula describes that variant (``tests/test_schedules_formulas.py``).
With ``T_F = T_B`` the two replay alike; the reference's waits cost time when a forward
is longer (8 ranks, 24 micro-batches, F = 2, B = W = 1: 109 against 108 ms). DualPipeV
hands the turning point's chunk-0 output to its own chunk 1 at once (no send), so only
the first and second send points apply to it.
"""

from __future__ import annotations

from typing import Any

from planner.schedules.layout import RankProgram, build_schedule, pipeline_of, require
from simulator.scenario import Scenario
from simulator.schedule import Schedule

__all__ = ["dualpipe", "dualpipev", "dualpipe_per_pass", "dualpipev_per_pass"]


def _eight_phases(rank: RankProgram, chunk0: tuple[int, str], chunk1: tuple[int, str], *, h: int, half: int,
                  per_chunk: int, turning_point: bool, sends: frozenset[str]) -> None:
    """The DualPipe phases of one rank; ``chunk0``/``chunk1`` are ``(stream, stage)`` pairs.

    ``sends`` names the reference's deferred send points to reproduce (module docstring):
    ``step2`` and ``turning`` (the turning point's first step-4 forward).
    """
    # Step 1: nF0
    for _ in range(2 * (half - h - 1)):
        rank.forward(*chunk0)
    # Step 2: nF0F1
    for i in range(h + 1):
        rank.forward(*chunk0)
        if "step2" in sends and not turning_point:
            rank.send_after_next()
        rank.forward(*chunk1)
        if "prefetch" in sends:  # the next chunk-0 input was posted before this forward's commit
            rank.prefetch_forward(*chunk0)
        if "step2" in sends and turning_point and i == h:
            rank.send_after_next()
    # Step 3: nB1W1F1 (zero bubble: B1 goes upstream before its W runs)
    for _ in range(half - h - 1):
        rank.backward(*chunk1, split=True)
        rank.weight()
        if "prefetch" in sends:  # the next chunk-1 input was posted before this W's commit
            rank.prefetch_forward(*chunk1)
        rank.forward(*chunk1)
    # Step 4 (main step): nF0B1F1B0
    for i in range(per_chunk - 2 * half + h + 1):
        if i == 0 and turning_point:
            rank.forward(*chunk0)  # not overlapped with the backward that follows
            if "turning" in sends:
                rank.send_after_next()
            rank.backward(*chunk1)
        else:
            rank.forward_backward(chunk0, chunk1)
        rank.forward_backward(chunk1, chunk0)
    # Step 5: nB1F1B0
    for _ in range(half - h - 1):
        rank.backward(*chunk1)
        rank.forward_backward(chunk1, chunk0)
    # Step 6: nB1B0 (the second half of these defer W)
    split = False
    for i in range(h + 1):
        if i == (h + 1) // 2 and h % 2 == 1:
            split = True
        rank.backward(*chunk1, split=split)
        if i == (h + 1) // 2 and h % 2 == 0:
            split = True
        rank.backward(*chunk0, split=split)
    # Step 7: nWB0 (zero bubble)
    for _ in range(half - h - 1):
        rank.weight()
        rank.backward(*chunk0, split=True)
    # Step 8: nW
    for _ in range(h + 1):
        rank.weight()


#: The reference's deferred send points (module docstring) each variant reproduces.
REFERENCE_SENDS = frozenset({"step2", "turning", "prefetch"})
#: DualPipeV's turning point hands its chunk-0 output to its own chunk 1: no send to defer.
REFERENCE_SENDS_V = frozenset({"step2", "prefetch"})
PER_PASS = frozenset()


def dualpipe(scenario: Scenario, **options: Any) -> Schedule:
    """DualPipe with the reference implementation's send points (module docstring)."""
    return _dualpipe(scenario, options, "dualpipe", REFERENCE_SENDS)


def dualpipe_per_pass(scenario: Scenario, **options: Any) -> Schedule:
    """DualPipe sending every output when its pass ends (the published formula's setting)."""
    return _dualpipe(scenario, options, "dualpipe-per-pass", PER_PASS)


def dualpipev(scenario: Scenario, **options: Any) -> Schedule:
    """DualPipeV with the reference implementation's send points (module docstring)."""
    return _dualpipev(scenario, options, "dualpipev", REFERENCE_SENDS_V)


def dualpipev_per_pass(scenario: Scenario, **options: Any) -> Schedule:
    """DualPipeV sending every output when its pass ends (the published formula's setting)."""
    return _dualpipev(scenario, options, "dualpipev-per-pass", PER_PASS)


def _dualpipe(scenario: Scenario, options: dict[str, Any], name: str, sends: frozenset[str]) -> Schedule:
    """DualPipe: micro-batches enter from both ends of ``p`` ranks, each holding two stages.

    Rank ``r`` holds stage ``r`` and stage ``p - 1 - r`` (parameters twice, 2x static
    memory). Micro-batches ``0 .. m/2 - 1`` flow through stages ``0 .. p-1`` on ranks
    ``0 .. p-1``; micro-batches ``m/2 .. m-1`` flow through the same stages on ranks
    ``p-1 .. 0``, so stage ``s`` of the second half runs on rank ``p - 1 - s``.
    Preconditions (the reference's): ``p`` even, ``m`` even and ``m >= 2p``.

    Published (DualPipe README, its notation): bubble ``(p/2 - 1)(F&B + B - 3W)``,
    activations ``p + 1`` micro-batch-stages per rank, 2x parameters. The replay gives
    exactly these for equal stage times, free communication, a forward as long as an
    input-backward (``T_F = T_B``, the setting of DualPipe's figure) and ``W <= F``,
    for any ``fb_overlap``; the activation peak is ``p + 1`` whatever part ``W`` keeps.
    With ``T_F != T_B`` the formula is only approximate: on 8 ranks with F = 2,
    T_B = 1, W = 1 the replayed bubble is 12 ms against 9 ms (for ``T_F > T_B`` it
    behaves like ``(p/2 - 1)(F&B + F - 2W)``). These hold for ``dualpipe-per-pass``;
    the reference's later sends add to the bubble.
    """
    pipe = pipeline_of(scenario, options)
    p, m = pipe.stage_count, pipe.micro_batches
    require(pipe, p >= 2 and p % 2 == 0,
            f"dualpipe needs an even number of stages (= ranks, rank r holds stages r and p-1-r), got {p}", "model.stages")
    require(pipe, m % 2 == 0, f"dualpipe feeds m/2 micro-batches from each end: micro_batches must be even, got {m}",
            "workload.micro_batches")
    require(pipe, m >= 2 * p, f"dualpipe needs at least 2p = {2 * p} micro-batches on {p} ranks, got {m}",
            "workload.micro_batches")
    ranks = pipe.ranks(p, "dualpipe")
    half_m = m // 2
    programs = {}
    for r, device in enumerate(ranks):
        # Direction 0 (micro-batches 0..M-1) runs stage r here; direction 1 runs stage p-1-r.
        directions = {0: (0, pipe.stages[r]), 1: (1, pipe.stages[p - 1 - r])}
        first = 0 if r < p // 2 else 1  # the direction whose micro-batches reach this rank first
        rank = RankProgram({0: list(range(half_m)), 1: list(range(half_m, m))})
        _eight_phases(rank, directions[first], directions[1 - first], h=min(r, p - 1 - r), half=p // 2,
                      per_chunk=half_m, turning_point=min(r, p - 1 - r) == p // 2 - 1, sends=sends)
        programs[device] = rank
    return build_schedule(name, programs, {"generator": "planner.schedules.dualpipe", "ranks": p, "sends": sorted(sends)})


def _dualpipev(scenario: Scenario, options: dict[str, Any], name: str, sends: frozenset[str]) -> Schedule:
    """DualPipeV ("cut-in-half" DualPipe): ``2p`` stages on ``p`` ranks in a V.

    Rank ``r`` holds stages ``r`` and ``2p - 1 - r``: every micro-batch goes down the
    ranks through stages ``0 .. p-1`` and back up through ``p .. 2p-1``, so no
    parameter is duplicated, yet each rank holds two stages (2x one stage's static
    memory). Preconditions (the reference's): an even number of stages, ``m >= 2p``.

    Published: same bubble as DualPipe on a ``2p``-stage model, ``(p - 1)(F&B + B - 3W)``
    with per-stage times, and ``2p + 1`` micro-batch-stages of activations per rank.
    Exact for ``dualpipev-per-pass`` under the same conditions as DualPipe
    (``T_F = T_B``, ``W <= F``).
    """
    pipe = pipeline_of(scenario, options)
    stages, m = pipe.stage_count, pipe.micro_batches
    require(pipe, stages >= 2 and stages % 2 == 0,
            f"dualpipev folds the stages in a V over stages/2 ranks: needs an even number of stages, got {stages}",
            "model.stages")
    p = stages // 2
    require(pipe, m >= 2 * p, f"dualpipev needs at least 2p = {2 * p} micro-batches on {p} ranks, got {m}",
            "workload.micro_batches")
    ranks = pipe.ranks(p, "dualpipev")
    programs = {}
    for r, device in enumerate(ranks):
        rank = RankProgram({0: list(range(m)), 1: list(range(m))})
        _eight_phases(rank, (0, pipe.stages[r]), (1, pipe.stages[stages - 1 - r]), h=r, half=p, per_chunk=m,
                      turning_point=r == p - 1, sends=sends)
        programs[device] = rank
    return build_schedule(name, programs, {"generator": "planner.schedules.dualpipev", "ranks": p, "sends": sorted(sends)})
