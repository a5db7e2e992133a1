"""What the search shares across candidates: the model at each micro-batch size, and the
per-unit costs of each distinct combination of degrees (built once, reused by every
layout that differs only in schedule or stage cut)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from planner.layouts.build import shape_of
from planner.layouts.presets import global_batch
from planner.search.bounds import Bound, LayoutCosts, layout_bound, static_bytes
from planner.search.inflight import forwards_before_first_backward
from planner.search.space import Space
from simulator.hybrid import Unit, model_units, model_work
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
    _units: dict[tuple, tuple] = field(default_factory=dict, init=False, repr=False)
    _passes: dict[tuple, LayoutCosts] = field(default_factory=dict, init=False, repr=False)
    _base_units: dict[tuple, tuple] = field(default_factory=dict, init=False, repr=False)
    _prices: dict = field(default_factory=dict, init=False, repr=False)
    _work: dict[int, dict] = field(default_factory=dict, init=False, repr=False)
    _shapes: dict[int, ModelShape] = field(default_factory=dict, init=False, repr=False)
    _held: dict[tuple, dict] = field(default_factory=dict, init=False, repr=False)
    _static: dict[tuple, float] = field(default_factory=dict, init=False, repr=False)

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
        size = layout.micro_batch_size
        if size not in self._shapes:
            self._shapes[size] = shape_of(self.scenario_for(layout))
        return self._shapes[size]

    def costs(self, layout: Layout) -> LayoutCosts:
        """Unit costs for ``layout``: units shared by every layout with the same per-rank split,
        collective prices by every layout of the search."""
        split = (layout.micro_batch_size, layout.tp, layout.sequence_parallel, layout.ep, layout.cp, layout.recompute,
                 layout.recompute_ranges, layout.order)
        key = (*split, layout.dp, layout.zero)
        found = self._costs.get(key)
        if found is None:
            scenario = self.scenario_for(layout)
            if split not in self._units:
                self._units[split] = self._model_units(layout)
            found = self._costs[key] = LayoutCosts(self._units[split], layout, scenario.problem.cluster, self._prices)
            shared = self._passes.setdefault(split, found)
            if shared is not found:  # same units and TP / EP groups: reuse the priced passes
                found.__dict__["passes"] = shared.passes
        return found

    def _model_units(self, layout: Layout) -> tuple[Unit, ...]:
        """:func:`simulator.hybrid.model_units`, built once per split with and without EP: the EP
        degree changes a unit only in the expert parameters it holds (``expert_params / (ep tp)``,
        as :func:`simulator.hybrid.model_units` divides them; the all-to-all sizes do not depend on it)."""
        reference = replace(layout, ep=min(layout.ep, 2), dp=1 if layout.ep == 1 else 2, pp=1, schedule="1f1b", vpp=1,
                            stage_layers=(), global_batch_size=0)
        key = (reference.micro_batch_size, reference.tp, reference.sequence_parallel, reference.ep, reference.cp,
               reference.recompute, reference.recompute_ranges, reference.order)
        if key not in self._base_units:
            scenario = self.scenario_for(layout)
            device = scenario.problem.cluster.devices[0]
            size = layout.micro_batch_size
            if size not in self._work:
                self._work[size] = model_work(scenario.problem.graph, self.shape_for(layout), device)
            self._base_units[key] = model_units(scenario.problem.graph, self.shape_for(layout), reference, device,
                                                work=self._work[size])
        units = self._base_units[key]
        if layout.ep == reference.ep:
            return units
        shape = self.shape_for(layout)
        memory = [shape.pre, *shape.layers, shape.post]
        return tuple(replace(u, expert_params=m.expert_params / (layout.ep * layout.tp)) for u, m in zip(units, memory))

    def held_forwards(self, layout: Layout) -> dict:
        key = (layout.schedule, layout.pp, layout.vpp, layout.micro_batches)
        if key not in self._held:
            self._held[key] = forwards_before_first_backward(self.scenario, layout)
        return self._held[key]

    def static(self, layout: Layout) -> Callable[[int], float]:
        """Pipeline rank -> static bytes, cached over layouts that hold the same layers with the same states."""
        shape = self.shape_for(layout)
        key = (layout.micro_batch_size, layout.tp, layout.sequence_parallel, layout.ep, layout.dp, layout.cp, layout.zero,
               layout.recompute, layout.recompute_ranges, layout.stage_layer_ranges(len(shape.layers)), layout.stages)
        cache = self._static.setdefault(key, {})

        def states(r: int) -> float:
            held = layout.stages_of(r)
            if held not in cache:
                cache[held] = static_bytes(shape, layout, r)
            return cache[held]
        return states

    def bound(self, layout: Layout) -> Bound:
        return layout_bound(self.costs(layout), layout, self.shape_for(layout), fb_overlap=self.scenario.problem.workload.fb_overlap,
                            held_f=self.held_forwards(layout), states=self.static(layout))
