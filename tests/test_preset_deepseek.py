"""The ``deepseek-v3`` preset: DeepSeek-V3's published layout (arXiv 2412.19437 section 3.2), and
the search's shortcut that derives units across EP degrees."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from planner.layouts.presets import PRESETS, preset_layouts
from planner.search.context import SearchContext
from simulator.hybrid import model_units
from simulator.layout import Layout
from simulator.memory_model import layout_memory
from simulator.scenario import load_scenario

SCENARIOS = Path(__file__).resolve().parents[1] / "scenarios"


def test_on_2048_h800_it_is_deepseeks_layout_cut_by_cost_with_the_least_recompute_that_fits():
    scenario = load_scenario(SCENARIOS / "deepseek-v3-2048xh800.yaml")
    layouts, _ = preset_layouts(scenario)
    layout = layouts["deepseek-v3"]
    assert (layout.dp, layout.tp, layout.pp, layout.ep, layout.zero, layout.schedule) == (128, 1, 16, 64, 1, "dualpipe")
    assert sum(layout.stage_layers) == 61 and len(layout.stage_layers) == 16
    assert layout.stage_layers == scenario.parallel.stage_layers  # the bundled scenario is the preset
    expert_group = layout.groups("ep")[0]
    assert len({rank // 8 for rank in expert_group}) == 8  # EP 64 spans 8 nodes
    from planner.layouts.build import shape_of
    shape = shape_of(scenario)
    assert layout.recompute == "full"
    over = max(m.total for m in layout_memory(shape, replace(layout, recompute="selective")))
    assert over > 80e9 >= max(m.total for m in layout_memory(shape, layout))


def test_on_two_nodes_it_scales_down_and_a_dense_model_is_refused_in_one_line():
    scenario = load_scenario(SCENARIOS / "deepseek-moe-h800.yaml")
    layouts, _ = preset_layouts(scenario)
    layout = layouts["deepseek-v3"]
    assert layout.pp % 2 == 0 and layout.pp * layout.dp == 16 and layout.tp == 1 and layout.schedule == "dualpipe"
    assert layout.micro_batches >= 2 * layout.pp and 16 % layout.ep == 0
    _, why = preset_layouts(load_scenario(SCENARIOS / "llama7b-8xh100.yaml"))
    assert why["deepseek-v3"] == "deepseek-v3 needs a mixture-of-experts model"
    assert "deepseek-v3" in PRESETS


@pytest.mark.parametrize("ep", [4, 8, 16])
def test_units_derived_across_ep_degrees_are_model_units(ep):
    scenario = load_scenario(SCENARIOS / "deepseek-moe-h800.yaml")
    ctx = SearchContext(scenario)
    layout = Layout(dp=16, ep=ep, zero=1, global_batch_size=128)
    expected = model_units(scenario.problem.graph, ctx.shape, layout, scenario.problem.cluster.devices[0])
    assert ctx.costs(layout).units == expected
