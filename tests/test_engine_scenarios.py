"""The bundled scenarios replay cleanly from the command line, with the numbers their
comments promise."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from opplan.cli import main
from simulator.engine import simulate
from simulator.metrics import build_report
from simulator.scenario import load_scenario
from simulator.schedule import load_schedule

SCENARIOS = Path(__file__).resolve().parent.parent / "scenarios"


@pytest.mark.parametrize("name", ["pipeline-4x8", "moe-layer-4gpu"])
def test_opplan_simulate_accepts_the_bundled_scenario(name, tmp_path, capsys):
    report = tmp_path / "report.json"
    assert main(["simulate", str(SCENARIOS / f"{name}.yaml"), "--json", str(report)]) == 0
    assert capsys.readouterr().err == ""
    assert json.loads(report.read_text())["violations"] == []


def test_pipeline_4x8_gives_the_gpipe_formula():
    scenario = load_scenario(SCENARIOS / "pipeline-4x8.yaml")
    report = build_report(simulate(scenario.problem, load_schedule(scenario.schedule_file)))
    assert report.makespan == pytest.approx((8 + 4 - 1) * 3e-3)
    assert [d.bubble for d in report.devices] == pytest.approx([(4 - 1) * 3e-3] * 4)


class TestMoeLayer:
    @pytest.fixture(scope="class")
    def replayed(self):
        scenario = load_scenario(SCENARIOS / "moe-layer-4gpu.yaml")
        schedule = load_schedule(scenario.schedule_file)
        return scenario, schedule, simulate(scenario.problem, schedule)

    def test_is_a_branchy_graph(self, replayed):
        graph = replayed[0].problem.graph
        assert [e.dst for e in graph.successors["router"]] == ["expert0", "expert1", "expert2", "expert3"]
        assert sorted(e.src for e in graph.predecessors["combine"]) == ["expert0", "expert1", "expert2", "expert3", "shared"]

    def test_spreads_one_expert_per_gpu(self, replayed):
        placement = replayed[1].placement()
        homes = {task.op: device for task, device in placement.items() if task.op.startswith("expert")}
        assert homes == {"expert0": "gpu0", "expert1": "gpu1", "expert2": "gpu2", "expert3": "gpu3"}

    def test_moves_tensors_over_the_finite_interconnect(self, replayed):
        _, _, timeline = replayed
        # Per micro-batch 9 tensors cross GPUs forward and 9 gradients come back: router -> 3 remote
        # experts, 3 remote experts -> combine, attention -> shared -> combine, combine -> head.
        assert len(timeline.transfers) == 4 * 2 * 9
        dispatch = next(t for t in timeline.transfers if str(t.pred) == "F:router:0" and str(t.consumer) == "F:expert1:0")
        assert dispatch.end - dispatch.start == pytest.approx(2e-6 + 16.8e6 / 200e9)

    def test_uses_millisecond_times_and_megabyte_activations(self, replayed):
        problem = replayed[0].problem
        gpu = problem.cluster.devices[0]
        expert = problem.duration(next(t for t in problem.tasks() if t.op == "expert0"), gpu)
        assert 1e-3 < expert < 2e-3
        peaks = [d.activation_peak for d in build_report(replayed[2]).devices]
        assert all(1e8 < peak < 1e10 for peak in peaks)
