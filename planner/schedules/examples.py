"""Small pipeline scenarios built in code, for examples, doctests and tests.

A scenario is normally a YAML file; this builds the same thing from keyword arguments
so a docstring can show a schedule on two stages without touching the disk.
"""

from __future__ import annotations

from simulator.scenario import Scenario, scenario_from_dict

__all__ = ["example_scenario"]


def example_scenario(
    stages: int = 4,
    micro_batches: int = 8,
    *,
    F: float = 1.0,
    B: float = 1.0,
    W: float = 1.0,
    devices: int | None = None,
    activation_gb: float = 1.0,
    w_retained_gb: float = 0.0,
    static_gb: float = 1.0,
    fb_overlap: float = 0.0,
    pipeline: dict | None = None,
    name: str = "example",
) -> Scenario:
    """A ``type: pipeline`` scenario on an ideal interconnect; times in milliseconds.

    >>> s = example_scenario(stages=2, micro_batches=4, F=1, B=1.5, W=0.5)
    >>> s.problem.graph.topological_order, s.problem.workload.micro_batches
    (('s0', 's1'), 4)
    """
    doc = {
        "name": name,
        "model": {
            "type": "pipeline", "stages": stages, "F_ms": F, "B_ms": B, "W_ms": W,
            "activation_gb": activation_gb, "w_retained_gb": w_retained_gb, "static_gb": static_gb,
        },
        "cluster": {"devices": devices or stages, "device": {"memory_gb": 1e6}, "interconnect": "ideal"},
        "workload": {"micro_batches": micro_batches, "fb_overlap": fb_overlap},
    }
    if pipeline:
        doc["pipeline"] = dict(pipeline)
    return scenario_from_dict(doc, f"{name}.yaml")
