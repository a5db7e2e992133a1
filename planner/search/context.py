"""What the search shares across candidates: the model at each micro-batch size, and the
per-unit costs of each distinct combination of degrees (built once, reused by every
layout that differs only in schedule or stage cut)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from planner.layouts.build import shape_of
from planner.layouts.presets import global_batch
from planner.search.bounds import Bound, LayoutCosts, layout_bound
from planner.search.space import Space
from simulator.hybrid import model_units
from simulator.layout import Layout
from simulator.models import build_model
from simulator.scenario import Scenario
from simulator.shapes import ModelShape
from simulator.yamlio import Section

__all__ = ["SearchContext", "with_micro_batch_size"]


def with_micro_batch_size(scenario: Scenario, size: int) -> Scenario:
    """``scenario`` with its model rebuilt for micro-batches of ``size`` samples (the replay
    prices a unit from the graph's FLOPs, which are per graph micro-batch)."""
    config = dict(scenario.model_config)
    if int(config.get("micro_batch_size", 1)) == size:
        return scenario
    config["micro_batch_size"] = size
    base = Path(scenario.file).parent if scenario.file else Path(".")
    graph = build_model(Section(config, file=scenario.file or None, path="model"), base)
    return replace(scenario, problem=replace(scenario.problem, graph=graph), model_config=config)


@dataclass
class SearchContext:
    """The scenario, its shape, the space searched and caches of models and unit costs."""

    scenario: Scenario
    shape: ModelShape = field(init=False)
    space: Space = field(init=False)
    capacity: float = field(init=False)
    _scenarios: dict[int, Scenario] = field(default_factory=dict, init=False, repr=False)
    _costs: dict[tuple, LayoutCosts] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        self.shape = shape_of(self.scenario)
        devices = self.scenario.problem.cluster.devices
        per_node = sum(1 for d in devices if d.node == devices[0].node)
        self.space = Space(len(devices), per_node, global_batch(self.scenario, self.shape), self.shape.micro_batch_size)
        self.capacity = min(d.memory_bytes for d in devices)

    def scenario_for(self, layout: Layout) -> Scenario:
        size = layout.micro_batch_size
        if size not in self._scenarios:
            self._scenarios[size] = with_micro_batch_size(self.scenario, size)
        return self._scenarios[size]

    def shape_for(self, layout: Layout) -> ModelShape:
        return shape_of(self.scenario_for(layout))

    def costs(self, layout: Layout) -> LayoutCosts:
        key = (layout.micro_batch_size, layout.tp, layout.sequence_parallel, layout.ep, layout.dp, layout.cp, layout.zero,
               layout.recompute, layout.recompute_ranges, layout.order)
        found = self._costs.get(key)
        if found is None:
            scenario = self.scenario_for(layout)
            units = model_units(scenario.problem.graph, self.shape_for(layout), layout, scenario.problem.cluster.devices[0])
            found = self._costs[key] = LayoutCosts(units, layout, scenario.problem.cluster)
        return found

    def bound(self, layout: Layout) -> Bound:
        return layout_bound(self.costs(layout), layout, self.shape_for(layout), fb_overlap=self.scenario.problem.workload.fb_overlap)
