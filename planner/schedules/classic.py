"""GPipe, 1F1B and interleaved 1F1B: the schedules with an unsplit (full) backward.

Notation (zero-bubble paper): per stage and micro-batch, ``F`` forward, ``B`` backward
for inputs, ``W`` backward for weights; these schedules run ``B`` and ``W`` back to
back as one slot (a *full backward*, ``B + W``). ``p`` ranks, ``m`` micro-batches.
"""

from __future__ import annotations

from typing import Any

from planner.schedules.layout import RankProgram, build_schedule, pipeline_of, require
from simulator.scenario import Scenario
from simulator.schedule import Schedule

__all__ = ["gpipe", "one_f_one_b", "interleaved_1f1b"]


def gpipe(scenario: Scenario, **options: Any) -> Schedule:
    """GPipe (Huang et al., 2019): every forward, then every backward.

    One stage per rank (``p = stages``), any ``m``. With equal stage times and free
    communication each rank idles ``(p - 1)(F + B + W)`` and holds the activations of
    all ``m`` micro-batches at its peak (no re-materialisation).

    >>> from planner.schedules.examples import example_scenario
    >>> s = gpipe(example_scenario(stages=2, micro_batches=2))
    >>> [str(e) for e in s.devices["gpu0"]]
    ['F:s0:0', 'F:s0:1', 'B:s0:0+W:s0:0', 'B:s0:1+W:s0:1']
    """
    pipe = pipeline_of(scenario, options)
    p, m = pipe.stage_count, pipe.micro_batches
    ranks = pipe.ranks(p, "gpipe")
    programs = {}
    for r, device in enumerate(ranks):
        stage = pipe.stages[r]
        rank = RankProgram({0: list(range(m))})
        # Step 1: mF -- fill the pipe with every micro-batch
        for _ in range(m):
            rank.forward(0, stage)
        # Step 2: mB -- drain it, full backward in micro-batch order
        for _ in range(m):
            rank.backward(0, stage)
        programs[device] = rank
    return build_schedule("gpipe", programs, {"generator": "planner.schedules.gpipe", "ranks": p})


def one_f_one_b(scenario: Scenario, **options: Any) -> Schedule:
    """1F1B (PipeDream-flush, Megatron's default): warm up, alternate, cool down.

    Rank ``r`` runs ``min(p - 1 - r, m)`` forwards, then pairs of one forward and one
    full backward, then the backwards left. At most ``p - r`` micro-batches are alive
    on rank ``r``, so rank 0 peaks at ``p`` activations (``min(p, m)`` when ``m < p``);
    the bubble per rank is ``(p - 1)(F + B + W)`` with equal stage times and free
    communication, for any ``m``.

    >>> from planner.schedules.examples import example_scenario
    >>> s = one_f_one_b(example_scenario(stages=2, micro_batches=3))
    >>> [str(e) for e in s.devices["gpu0"]]
    ['F:s0:0', 'F:s0:1', 'B:s0:0+W:s0:0', 'F:s0:2', 'B:s0:1+W:s0:1', 'B:s0:2+W:s0:2']
    """
    pipe = pipeline_of(scenario, options)
    p, m = pipe.stage_count, pipe.micro_batches
    ranks = pipe.ranks(p, "1f1b")
    programs = {}
    for r, device in enumerate(ranks):
        stage = pipe.stages[r]
        rank = RankProgram({0: list(range(m))})
        warmup = min(p - 1 - r, m)
        # Step 1: nF -- warm-up forwards, p - 1 - r of them
        for _ in range(warmup):
            rank.forward(0, stage)
        # Step 2: n(FB) -- steady state, one forward then one full backward
        for _ in range(m - warmup):
            rank.forward(0, stage)
            rank.backward(0, stage)
        # Step 3: nB -- cool-down backwards
        for _ in range(warmup):
            rank.backward(0, stage)
        programs[device] = rank
    return build_schedule("1f1b", programs, {"generator": "planner.schedules.1f1b", "ranks": p})


def _interleaved_layout(scenario: Scenario, options: dict[str, Any]) -> tuple[Any, int, int]:
    """(pipeline, ranks p, chunks v) with ``stages = v * p``; ``pipeline.chunks`` wins, then ``ranks``, else v = 2."""
    pipe = pipeline_of(scenario, options)
    stages = pipe.stage_count
    chunks, ranks = pipe.option("chunks"), pipe.option("ranks")
    if chunks is None:
        if ranks is not None:
            require(pipe, stages % ranks == 0,
                    f"interleaved-1f1b puts stages/ranks chunks on each rank: {stages} stages on {ranks} ranks do not divide",
                    "model.stages")
            chunks = stages // ranks
        else:
            chunks = 2
    require(pipe, chunks >= 2,
            f"interleaved-1f1b needs at least 2 chunks per rank, got {chunks} (set pipeline.chunks or pipeline.ranks)",
            "pipeline.chunks")
    require(pipe, stages % chunks == 0,
            f"interleaved-1f1b needs stages = chunks x ranks: {stages} stages are not a multiple of {chunks} chunks",
            "model.stages")
    return pipe, stages // chunks, chunks


def interleaved_1f1b(scenario: Scenario, **options: Any) -> Schedule:
    """Interleaved 1F1B (Megatron-LM, Narayanan et al. 2021) with ``v`` chunks per rank.

    Stage ``s`` lives on rank ``s mod p`` (``stages = v * p``), so each micro-batch
    visits every rank ``v`` times. Rank ``r`` works through its chunks in groups of
    ``p`` micro-batches: forward ``k`` is chunk ``(k // p) mod v``, backward ``k`` is
    chunk ``v - 1 - (k // p) mod v``. It warms up with ``2(p - 1 - r) + (v - 1)p``
    forwards, then alternates one forward and one full backward, then cools down.
    Preconditions (Megatron's): ``m`` a multiple of ``p``; ``v >= 2``.

    Per rank the bubble is ``(p - 1)(F + B + W)`` in per-stage (per-chunk) times, i.e.
    Megatron's ``(p - 1)(t_f + t_b) / v`` with ``t_f = vF``, ``t_b = v(B + W)`` the
    rank's whole share. Exact for equal stage times and free communication (tested with
    forwards shorter and longer than the full backward).
    """
    pipe, p, v = _interleaved_layout(scenario, dict(options))
    m = pipe.micro_batches
    require(pipe, m % p == 0,
            f"interleaved-1f1b sends micro-batches in groups of p = {p} ranks: micro_batches = {m} is not a multiple of {p}",
            "workload.micro_batches")
    ranks = pipe.ranks(p, "interleaved-1f1b")
    total = m * v
    programs = {}
    for r, device in enumerate(ranks):
        rank = RankProgram({chunk: list(range(m)) for chunk in range(v)})

        def forward(k: int, r: int = r, rank: RankProgram = rank) -> None:
            chunk = (k // p) % v
            rank.forward(chunk, pipe.stages[chunk * p + r])

        def backward(k: int, r: int = r, rank: RankProgram = rank) -> None:
            chunk = v - 1 - (k // p) % v
            rank.backward(chunk, pipe.stages[chunk * p + r])

        warmup = min(2 * (p - 1 - r) + (v - 1) * p, total)
        # Step 1: nF -- warm-up forwards across the chunks, 2(p-1-r) + (v-1)p of them
        for k in range(warmup):
            forward(k)
        # Step 2: n(FB) -- steady state, forward k + warmup then full backward k
        for k in range(total - warmup):
            forward(k + warmup)
            backward(k)
        # Step 3: nB -- cool-down backwards
        for k in range(total - warmup, total):
            backward(k)
        programs[device] = rank
    return build_schedule("interleaved-1f1b", programs,
                          {"generator": "planner.schedules.interleaved-1f1b", "ranks": p, "chunks": v})
