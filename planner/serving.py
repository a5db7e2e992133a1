"""Choose a serving layout and batch limits by enumeration and the serving simulation.

Every ``(tp, pp)`` whose engines tile the cluster (TP inside a node, Megatron's
divisibility rules, weights fitting) is combined with every batch limit of the grid
(``max_num_seqs`` x ``max_num_batched_tokens``); each candidate is replayed by
:func:`simulator.serving.run.simulate_serving` on the scenario's requests. A candidate
is *feasible* when it completes every request without rejection and meets the SLO
(``p99 TTFT <= ttft_p99_ms``, ``p99 TPOT <= tpot_p99_ms``). Objectives:

- ``throughput``: the most generated tokens per second (ties: lower p99 TTFT);
- ``latency``: the lowest p99 time per output token, the pace a user reads at
  (ties: lower p99 TTFT, then higher throughput).

The search is exhaustive over the grid, not an optimisation model: the answer is the
best of what was enumerated, and is labelled so. Under a time limit the grid is replayed in
:func:`candidates`' order until the deadline, and the output says how much of it was. It covers colocated layouts (prefill and
decode on the same engines); a scenario's disaggregation is left out of the search.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from planner.timebox import OutOfTime, can_interrupt, time_boxed
from simulator.errors import InputError, OpplanError
from simulator.serving.report import ServingReport
from simulator.serving.run import ServingSetup, simulate_serving
from simulator.serving.workload import BatchPolicy

__all__ = ["Candidate", "Evaluated", "ServingPlan", "candidates", "layouts", "plan_serving", "engine_arguments",
           "MAX_NUM_SEQS", "MAX_TOKENS"]

MAX_NUM_SEQS = (32, 64, 128, 256)
MAX_TOKENS = (4096, 8192)


@dataclass(frozen=True)
class Candidate:
    tp: int
    pp: int
    max_num_seqs: int
    max_num_batched_tokens: int


@dataclass(frozen=True)
class Evaluated:
    candidate: Candidate
    report: ServingReport | None
    error: str = ""


@dataclass(frozen=True)
class ServingPlan:
    objective: str
    slo: Mapping[str, float]
    evaluated: tuple[Evaluated, ...]
    best: Evaluated | None
    #: Candidates in the grid; more than ``len(evaluated)`` when a deadline stopped the enumeration.
    grid: int = 0

    @property
    def complete(self) -> bool:
        return len(self.evaluated) >= self.grid

    @property
    def feasible(self) -> tuple[Evaluated, ...]:
        return tuple(e for e in self.evaluated if _meets(e, self.slo))


def _gpus_per_node(setup: ServingSetup) -> int:
    nodes: dict[int, int] = {}
    for device in setup.cluster.devices:
        nodes[device.node] = nodes.get(device.node, 0) + 1
    return min(nodes.values())


def layouts(setup: ServingSetup) -> list[tuple[int, int]]:
    """``(tp, pp)`` pairs with ``tp x pp`` dividing the devices, tp within a node and dividing
    the heads, KV heads and MLP width, pp dividing the layers (weights are checked when simulated)."""
    devices, node = len(setup.cluster.devices), _gpus_per_node(setup)
    tower, layers = setup.shape.towers[0], len(setup.shape.layers)
    out = []
    for tp in (t for t in range(1, node + 1) if node % t == 0):
        if tower.heads % tp or tower.kv_heads % tp or tower.ffn % tp:
            continue
        out += [(tp, pp) for pp in range(1, devices // tp + 1) if devices % (tp * pp) == 0 and layers % pp == 0]
    return out


def _meets(e: Evaluated, slo: Mapping[str, float]) -> bool:
    r = e.report
    if r is None or r.rejected or r.completed < r.requests:
        return False
    return r.ttft_ms[99] <= slo.get("ttft_p99_ms", float("inf")) and r.tpot_ms[99] <= slo.get("tpot_p99_ms", float("inf"))


def _key(objective: str) -> Callable[[Evaluated], tuple]:
    if objective == "throughput":
        return lambda e: (-e.report.output_tokens_per_s, e.report.ttft_ms[99])
    return lambda e: (e.report.tpot_ms[99], e.report.ttft_ms[99], -e.report.output_tokens_per_s)


def candidates(setup: ServingSetup, max_num_seqs: tuple[int, ...] = MAX_NUM_SEQS,
               max_tokens: tuple[int, ...] = MAX_TOKENS) -> list[Candidate]:
    """The grid in the order it is replayed: fewest pipeline stages first, and within them the
    widest TP first (one engine per node, the practitioner's default for a large model), so a
    time limit that stops the enumeration early has tried the usual layouts."""
    ordered = sorted(layouts(setup), key=lambda layout: (layout[1], -layout[0]))
    return [Candidate(tp, pp, seqs, tokens) for tp, pp in ordered for seqs in max_num_seqs for tokens in max_tokens]


def _evaluate(setup: ServingSetup, candidate: Candidate, seconds: float | None) -> Evaluated | None:
    """One candidate replayed (None when ``seconds`` ran out first)."""
    policy = BatchPolicy(setup.workload.batching.policy, candidate.max_num_seqs, candidate.max_num_batched_tokens)
    try:
        with time_boxed(seconds):
            report = simulate_serving(setup, tp=candidate.tp, pp=candidate.pp, policy=policy)
        return Evaluated(candidate, report)
    except OpplanError as exc:
        return Evaluated(candidate, None, exc.message)
    except OutOfTime:
        return None


def plan_serving(setup: ServingSetup, objective: str = "throughput", slo: Mapping[str, float] | None = None, *,
                 max_num_seqs: tuple[int, ...] = MAX_NUM_SEQS, max_tokens: tuple[int, ...] = MAX_TOKENS,
                 progress: Callable[[Evaluated], Any] | None = None, deadline: float | None = None) -> ServingPlan:
    """Replay the grid (:func:`candidates`) and pick the best feasible candidate (None if none is).

    ``deadline`` (``time.monotonic()``): no candidate runs past it — the one running then is cut
    short (where :func:`planner.timebox.can_interrupt`) and the rest are not started; the plan
    says how many of the grid were replayed."""
    if objective not in ("latency", "throughput"):
        raise InputError(f"unknown serving objective {objective!r} (latency or throughput)", field="objective.serving")
    slo = dict(slo or {})
    setup = replace(setup, workload=replace(setup.workload, disaggregation=None))  # colocated layouts only
    grid = candidates(setup, max_num_seqs, max_tokens)
    evaluated: list[Evaluated] = []
    for candidate in grid:
        seconds = None if deadline is None else deadline - time.monotonic()
        if seconds is not None and (seconds <= 0 or not can_interrupt() and evaluated):
            break
        item = _evaluate(setup, candidate, seconds)
        if item is None:
            break
        evaluated.append(item)
        if progress is not None:
            progress(item)
    feasible = [e for e in evaluated if _meets(e, slo)]
    best = min(feasible, key=_key(objective)) if feasible else None
    return ServingPlan(objective, slo, tuple(evaluated), best, len(grid))


def engine_arguments(c: Candidate, devices: int) -> tuple[str, str]:
    """The candidate as vLLM and TensorRT-LLM arguments (a starting point to tune from, not a measurement)."""
    dp = devices // (c.tp * c.pp)
    vllm = (f"vllm serve MODEL --tensor-parallel-size {c.tp} --pipeline-parallel-size {c.pp}"
            + (f" --data-parallel-size {dp}" if dp > 1 else "")
            + f" --max-num-seqs {c.max_num_seqs} --max-num-batched-tokens {c.max_num_batched_tokens}")
    trt = f"trtllm-build --tp_size {c.tp} --pp_size {c.pp} --max_batch_size {c.max_num_seqs} --max_num_tokens {c.max_num_batched_tokens}"
    return vllm, trt + (f"  (x {dp} replicas)" if dp > 1 else "")
