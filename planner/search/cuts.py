"""Stage cuts as a small MIP: contiguous layers per pipeline stage, balanced by the cost model.

Data: per layer ``l`` its seconds per micro-batch ``c_l`` (F + B + W with its TP / EP
collectives, :class:`planner.search.bounds.LayoutCosts`) and its bytes ``b_l^s`` on stage
``s`` (model states at the layout's ZeRO stage, plus activations times the micro-batches
stage ``s`` keeps in flight under the schedule, :func:`simulator.memory_model.in_flight`);
the embedding is fixed on the first stage and the head on the last (Megatron-LM).

Variables: ``x[l, s]`` = 1 when layer ``l`` is on stage ``s``; ``T`` the slowest stage.
Constraints: every layer on one stage; contiguity (the stage index ``z_l = sum_s s x[l,s]``
never decreases and grows by at most one from a layer to the next, layer 0 on stage 0,
the last layer on the last stage — so no stage is empty); per-stage memory ``<=``
capacity; ``T >=`` each stage's seconds. Objective: minimise ``T``. Solved by HiGHS
through CVXPY; status checked before values are read.

Only schedules with one stage per rank (1F1B, ZB-H1, ZB-H2, GPipe) are cut by MIP: with
interleaving or DualPipe a rank holds several stages and the even cut keeps them alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import cvxpy as cp
import numpy as np

from planner.mip.highs import run_highs
from planner.search.bounds import LayoutCosts
from simulator.layout import Layout
from simulator.memory_model import in_flight, zero_model_states

__all__ = ["CutResult", "MIP_SCHEDULES", "balanced_cut", "max_stage_seconds"]

MIP_SCHEDULES = ("1f1b", "zb-h1", "zb-h2", "gpipe")


@dataclass(frozen=True)
class CutResult:
    """Layers per stage and the slowest stage's seconds per micro-batch (None: infeasible)."""

    layers: tuple[int, ...] | None
    seconds: float
    status: str


def _unit_bytes(costs: LayoutCosts, layout: Layout, u: int, flight: float) -> float:
    unit = costs.units[u]
    states = zero_model_states(unit.dense_params, layout.dp * layout.cp, layout.zero).total
    states += zero_model_states(unit.expert_params, layout.expert_dp, layout.zero).total
    return states + flight * unit.activation_bytes


def max_stage_seconds(costs: LayoutCosts, cut: tuple[int, ...]) -> float:
    """The slowest stage's F + B + W seconds per micro-batch under ``cut`` (embedding first, head last)."""
    seconds = [sum(p.values()) for p in costs.passes]
    out, start = [], 1
    for count in cut:
        out.append(sum(seconds[start:start + count]))
        start += count
    out[0] += seconds[0]
    out[-1] += seconds[-1]
    return max(out)


def balanced_cut(costs: LayoutCosts, layout: Layout, capacity: float, *, time_limit: float = 5.0) -> CutResult:
    """The contiguous cut of ``layout``'s layers into ``layout.pp`` stages minimising the slowest stage."""
    seconds = np.array([sum(p.values()) for p in costs.passes])
    layers, stages = len(seconds) - 2, layout.pp
    flight = [in_flight(layout.schedule, stages, s, layout.micro_batches)[0] + in_flight(layout.schedule, stages, s,
              layout.micro_batches)[1] for s in range(stages)]
    memory = np.array([[_unit_bytes(costs, layout, u, flight[s]) for s in range(stages)] for u in range(layers + 2)])
    scale = float(seconds.max()) or 1.0
    # variables
    x = cp.Variable((layers, stages), boolean=True)
    slowest = cp.Variable()
    z = x @ np.arange(stages)
    # constraints per family
    fixed = np.zeros(stages)
    fixed[0] += seconds[0] / scale
    fixed[-1] += seconds[-1] / scale
    base = np.zeros(stages)
    base[0] += memory[0, 0]
    base[-1] += memory[-1, -1]
    constraints = [cp.sum(x, axis=1) == 1, z[0] == 0, z[layers - 1] == stages - 1]
    if layers > 1:
        constraints += [z[1:] >= z[:-1], z[1:] <= z[:-1] + 1]
    constraints += [cp.sum(cp.multiply(x, memory[1:-1]), axis=0) + base <= capacity]
    constraints += [(seconds[1:-1] / scale) @ x + fixed <= slowest]
    # objective, solve
    problem = cp.Problem(cp.Minimize(slowest), constraints)
    result = run_highs(problem, time_limit=time_limit)
    if not result.has_primal:
        return CutResult(None, float("inf"), str(result.status))
    assignment = np.rint(x.value).argmax(axis=1)
    cut = tuple(int((assignment == s).sum()) for s in range(stages))
    return CutResult(cut, max_stage_seconds(costs, cut), str(problem.status))
