"""Memory lower bounds that refuse a model which cannot fit, before any planning.

Two bounds, both valid for every placement and every order the planner could choose
(operators are not split across devices; memory is counted as the simulator counts it,
:meth:`~simulator.problem.Problem.task_memory`):

- **one operator**: its static bytes (weights, gradients, optimizer state) plus one
  micro-batch's activations and workspace must fit on one device;
- **the whole model**: every operator's static bytes live somewhere for the whole
  iteration, and while the first backward pass starts (training), the activations of one
  micro-batch along a path from an input to that sink are all alive (a backward pass
  needs the backward passes of every successor, so the first one to start is a sink's,
  after the forward passes of all its ancestors; nothing has freed activations yet).
  In inference, one forward pass's activations and workspace are alive beside the static
  bytes. Their sum must fit in the devices' limits together, so a cluster needs at least
  ``ceil(need / largest limit)`` devices.

Both take time linear in the operator graph: a model of any size is refused in well
under a second, without building a task graph.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from simulator.errors import InfeasibleError
from simulator.scenario import Scenario

__all__ = ["MemoryNeed", "memory_need", "check_memory_fits"]


@dataclass(frozen=True)
class MemoryNeed:
    """Bytes the whole model needs at one moment at least, on all devices together."""

    static: float  # weights, gradients, optimizer state of every operator
    activations: float  # one micro-batch's activations alive at the first backward pass

    @property
    def total(self) -> float:
        return self.static + self.activations


def memory_need(scenario: Scenario) -> MemoryNeed:
    """The whole model's memory lower bound (see the module's description).

    >>> from planner.schedules.examples import example_scenario
    >>> need = memory_need(example_scenario(stages=4, micro_batches=8, static_gb=2))
    >>> need.static / 1e9, need.activations / 1e9   # 4 x 2 GB static; 1 GB per stage along the chain
    (8.0, 4.0)
    """
    problem = scenario.problem
    graph = problem.graph
    static = float(sum(op.static_bytes for op in graph.operators))
    one_task = max((op.activation_bytes + op.workspace_bytes for op in graph.operators), default=0.0)
    if problem.workload.mode != "training":
        return MemoryNeed(static, one_task)
    # Heaviest path of kept activations ending at each operator; the first backward starts
    # at a sink, so the lightest sink's heaviest path is alive then.
    path: dict[str, float] = {}
    for name in graph.topological_order:
        before = max((path[e.src] for e in graph.predecessors[name]), default=0.0)
        path[name] = before + problem.task_memory(name, "F")[0] - problem.task_memory(name, "F")[1]
    sinks = [name for name in graph.topological_order if not graph.successors[name]]
    return MemoryNeed(static, max(one_task, min((path[s] for s in sinks), default=0.0)))


def check_memory_fits(scenario: Scenario, limits: Mapping[str, float]) -> None:
    """Refuse, saying by how much and how many devices it would take, a model that fits nowhere."""
    field = "objective.memory_limit_gb" if scenario.objective.memory_limit_bytes else "cluster"
    largest = max(limits.values())
    for op in scenario.problem.graph.operators:
        need = op.static_bytes + op.activation_bytes + op.workspace_bytes
        if need > largest:
            raise InfeasibleError(
                f"operator {op.name!r} needs {need / 1e9:.4g} GB (weights, optimizer state, one micro-batch of"
                f" activations) but the largest device memory limit is {largest / 1e9:.4g} GB:"
                f" short by {(need - largest) / 1e9:.4g} GB",
                file=scenario.file,
                field=field,
            )
    need = memory_need(scenario)
    capacity = sum(limits.values())
    if need.total > capacity * (1 + 1e-9):
        devices = math.ceil(need.total / largest - 1e-9)
        raise InfeasibleError(
            f"the model needs at least {_size(need.total)} at once ({_size(need.static)} of weights, gradients and"
            f" optimizer state + {_size(need.activations)} of one micro-batch's activations) but its {len(limits)}"
            f" devices hold {_size(capacity)}: it needs at least {devices} GPUs of {_size(largest)}",
            file=scenario.file,
            field=field,
        )


def _size(nbytes: float) -> str:
    """Decimal units as datasheets write them: 80 GB, 10.74 TB."""
    return f"{nbytes / 1e12:.4g} TB" if nbytes >= 1e12 else f"{nbytes / 1e9:.4g} GB"
