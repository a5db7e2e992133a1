"""Upper level: place groups of operators on devices with a MIP.

On the coarsened graph (layers, experts, towers — :mod:`simulator.coarsen`), choose a
device for every group so that the busiest device's work is small, little data
crosses devices, and every device's memory holds what it is given:

variables  x_gd = 1 iff group g runs on device d;  z_e >= 0 for edge e (1 when cut);  L
constraints
           assignment   sum_d x_gd = 1
           load         L >= m * sum_g w_gd x_gd               (w_gd: F+B+W time of g on d)
           cut          z_e >= x_gd - x_hd  for every edge e = (g, h) and device d
           memory       sum_g (static_g + k * act_g) x_gd <= limit_d
                        (k = min(m, devices): micro-batches in flight, as in 1F1B)
           no-good      sum of the x_gd set in an earlier answer <= |groups| - 1
objective  L + comm_weight * 2 m sum_e t_e z_e / devices

This is a model of the placement only; the lower level then schedules the placed
tasks exactly and decides which candidate wins. The first group is pinned to the first
device: devices of one type are interchangeable, so this removes mirror solutions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import cvxpy as cp
import numpy as np

from planner.mip.highs import run_highs
from simulator.coarsen import Coarsening
from simulator.problem import Problem, Task

__all__ = ["PlacementCandidate", "solve_placement"]


@dataclass(frozen=True)
class PlacementCandidate:
    groups: Mapping[str, str]  # group -> device
    load: float
    communication: float
    status: str


@dataclass(frozen=True)
class _PlacementData:
    groups: list[str]
    work: np.ndarray  # (group, device): F+B+W seconds of one micro-batch
    memory: np.ndarray  # per group: static bytes + in-flight activations
    edge_time: np.ndarray  # per coarse edge: seconds to move its tensor between two devices
    micro_batches: int


def _placement_data(problem: Problem, coarsening: Coarsening, devices: Sequence[str]) -> _PlacementData:
    coarse = coarsening.graph
    groups = [op.name for op in coarse.operators]
    m = problem.workload.micro_batches
    cluster = problem.cluster
    coarse_problem = Problem(coarse, cluster, problem.workload)
    work = np.array(
        [
            [sum(coarse_problem.duration(Task(g, 0, k), cluster.by_name[d]) for k in problem.workload.kinds) for d in devices]
            for g in groups
        ]
    )
    in_flight = min(m, len(devices))
    memory = np.array([op.static_bytes + in_flight * op.activation_bytes for op in coarse.operators])
    # Time to move one edge's tensor between two different devices (the cheapest route: a lower estimate).
    pairs = [(a, b) for a in devices for b in devices if a != b]
    edge_time = np.array(
        [min((problem.transfer_time(a, b, e.bytes) for a, b in pairs), default=0.0) for e in coarse.edges]
    )
    return _PlacementData(groups, work, memory, edge_time, m)


def solve_placement(
    problem: Problem,
    coarsening: Coarsening,
    *,
    devices: Sequence[str],
    memory_limit: Mapping[str, float],
    comm_weight: float = 1.0,
    exclude: Sequence[Mapping[str, str]] = (),
    time_limit: float = 10.0,
) -> PlacementCandidate | None:
    """One placement from the MIP, or None when no placement fits (or none is found in time)."""
    data = _placement_data(problem, coarsening, devices)
    edges = coarsening.graph.edges
    index = {g: i for i, g in enumerate(data.groups)}
    n_g, n_d, m = len(data.groups), len(devices), data.micro_batches
    # -- variables ---------------------------------------------------------------------------
    x = cp.Variable((n_g, n_d), boolean=True, name="on")
    z = cp.Variable(len(edges), nonneg=True, name="cut") if edges else None
    load = cp.Variable(name="max_load")
    # -- constraints ---------------------------------------------------------------------------
    constraints = [cp.sum(x, axis=1) == 1, x[0, 0] == 1]
    constraints.append(load >= m * cp.sum(cp.multiply(data.work, x), axis=0))
    constraints.append(data.memory @ x <= np.array([memory_limit[d] for d in devices]))
    if z is not None:
        src, dst = [index[e.src] for e in edges], [index[e.dst] for e in edges]
        constraints += [z >= x[src, d] - x[dst, d] for d in range(n_d)]
    for previous in exclude:
        chosen = [(index[g], devices.index(d)) for g, d in previous.items() if g in index and d in devices]
        if chosen:
            rows, cols = zip(*chosen)
            constraints.append(cp.sum(x[list(rows), list(cols)]) <= len(chosen) - 1)
    # -- objective -------------------------------------------------------------------------------
    communication = 2 * m * (data.edge_time @ z) / n_d if z is not None else 0
    problem_mip = cp.Problem(cp.Minimize(load + comm_weight * communication), constraints)
    # -- solve, status before values ----------------------------------------------------------------
    try:
        result = run_highs(problem_mip, time_limit=time_limit, mip_rel_gap=1e-3)
    except cp.error.SolverError:
        return None
    if not result.has_primal:
        return None
    chosen_device = np.asarray(x.value).argmax(axis=1)
    placement = {g: devices[int(chosen_device[i])] for i, g in enumerate(data.groups)}
    comm_value = float(communication.value) if z is not None else 0.0
    return PlacementCandidate(placement, float(load.value), comm_value, result.status)
