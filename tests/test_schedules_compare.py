"""``comparison_rows`` and ``opplan compare``: one replay per schedule, one table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from opplan.cli import main
from planner.schedules import SCHEDULES, generate
from planner.schedules.compare import ComparisonRow, comparison_rows, measure
from planner.schedules.examples import example_scenario
from simulator.errors import InputError
from simulator.scenario import load_scenario
from simulator.schedule import Entry, Schedule, save_schedule

MS = 1e-3
GB = 1e9
DUALPIPE_8X20 = Path(__file__).resolve().parent.parent / "scenarios" / "dualpipe-8x20.yaml"


@pytest.fixture(scope="module")
def figure_rows() -> dict[str, ComparisonRow]:
    return {row.name: row for row in comparison_rows(load_scenario(DUALPIPE_8X20))}


def test_the_dualpipe_figure_setting_gets_every_schedule_in_order(figure_rows):
    assert list(figure_rows) == list(SCHEDULES)


def test_figure_setting_bubbles_are_the_published_ones(figure_rows):
    """p = 8, F = B = W = 1 ms, F&B = 3 ms, full backward 2 ms."""
    assert figure_rows["1f1b"].bubble == pytest.approx(7 * 3 * MS)
    assert figure_rows["zb-h1"].bubble == pytest.approx(7 * 1 * MS)
    assert figure_rows["dualpipe-per-pass"].bubble == pytest.approx(3 * (3 + 2 - 3) * MS)
    assert figure_rows["dualpipev"].bubble == pytest.approx(3 * (3 + 2 - 3) * MS)  # 8 stages on 4 ranks
    assert figure_rows["dualpipe-per-pass"].makespan_vs_best == 1.0
    # The reference's deferred sends are off the critical path here: the same bubble.
    assert figure_rows["dualpipe"].bubble == pytest.approx(3 * (3 + 2 - 3) * MS)
    assert figure_rows["dualpipe"].makespan_vs_best == 1.0


def test_figure_setting_memory_multiples(figure_rows):
    assert figure_rows["1f1b"].activation_microbatches == pytest.approx(8)
    assert figure_rows["gpipe"].activation_microbatches == pytest.approx(20)
    assert figure_rows["dualpipe"].activation_microbatches == pytest.approx(9)
    assert figure_rows["dualpipe"].activation_bytes == pytest.approx(9 * GB)
    assert figure_rows["dualpipe"].param_multiple == pytest.approx(2)
    assert figure_rows["1f1b"].param_multiple == pytest.approx(1)
    assert figure_rows["1f1b"].activation_vs_best == pytest.approx(1)
    assert figure_rows["gpipe"].activation_vs_best == pytest.approx(20 / 8)
    assert figure_rows["dualpipev"].note == "4 of 8 devices"


def test_ratios_are_to_the_best_row():
    rows = comparison_rows(example_scenario(stages=4, micro_batches=8))
    best = min(row.makespan for row in rows)
    for row in rows:
        assert row.makespan_vs_best == pytest.approx(row.makespan / best)
        assert row.bubble_ratio == pytest.approx(row.bubble / row.makespan)


def test_ratios_to_a_zero_best_bubble():
    """A single stage never idles; equal zero bubbles compare as 1x, a worse one has no finite ratio."""
    scenario = example_scenario(stages=1, micro_batches=3)
    gpipe = generate("gpipe", scenario)
    first, *rest = gpipe.devices["gpu0"]
    late = Schedule(devices={"gpu0": (Entry(first.tasks, start=1 * MS), *rest)}, name="late")
    rows = {row.name: row for row in comparison_rows(scenario, {"late": late})}
    assert rows["gpipe"].bubble == pytest.approx(0.0, abs=1e-15) and rows["gpipe"].bubble_vs_best == 1.0
    assert rows["late"].bubble == pytest.approx(1 * MS)
    assert rows["late"].bubble_vs_best is None


def test_extra_schedules_become_rows_with_their_label_and_note():
    scenario = example_scenario(stages=4, micro_batches=8)
    planned = generate("zb-h1", scenario)
    heuristic = Schedule(devices=planned.devices, name="mine", meta={"heuristic": True})
    rows = comparison_rows(scenario, {"planner": heuristic})
    assert rows[-1].name == "planner" and rows[-1].note == "heuristic"
    assert rows[-1].makespan == pytest.approx(measure(scenario, planned).makespan)


def test_memory_over_capacity_is_noted_not_raised():
    scenario = example_scenario(stages=2, micro_batches=8, activation_gb=2e5)  # capacity is 1e6 GB
    row = measure(scenario, generate("gpipe", scenario))
    assert row.note.startswith("memory over capacity on gpu0")


# -- the command line ----------------------------------------------------------------------
def test_compare_prints_one_table_and_the_schedules_that_do_not_apply(tmp_path, capsys):
    scenario = tmp_path / "three.yaml"
    scenario.write_text(
        "model: {type: pipeline, stages: 3, F_ms: 1, B_ms: 1, W_ms: 1}\n"
        "cluster: {devices: 3, interconnect: ideal}\n"
        "workload: {micro_batches: 6}\n")
    assert main(["compare", str(scenario)]) == 0
    out = capsys.readouterr().out
    for name in ("gpipe", "1f1b", "zb-h1", "zb-h2"):
        assert f"│ {name} " in out
    assert "not applicable:" in out
    assert "dualpipe: model.stages: dualpipe needs an even number of stages" in out
    assert "interleaved-1f1b: model.stages:" in out


def test_compare_with_a_schedule_file_and_json_rows(tmp_path, capsys):
    scenario_path = DUALPIPE_8X20
    schedule_file = tmp_path / "mine.json"
    save_schedule(generate("zb-h2", load_scenario(scenario_path)), schedule_file)
    rows_file = tmp_path / "rows.json"
    assert main(["compare", str(scenario_path), "--with", f"mine={schedule_file}", "--json", str(rows_file)]) == 0
    assert "│ mine " in capsys.readouterr().out
    rows = json.loads(rows_file.read_text())
    assert [row["name"] for row in rows] == [*SCHEDULES, "mine"]
    assert rows[-1]["makespan"] == pytest.approx(rows[list(SCHEDULES).index("zb-h2")]["makespan"])


def test_compare_rejects_a_malformed_with(capsys):
    assert main(["compare", str(DUALPIPE_8X20), "--with", "nolabel.json"]) == 2
    assert capsys.readouterr().err == "opplan: error: --with: expected LABEL=FILE, got 'nolabel.json'\n"


def test_compare_rejects_an_invalid_schedule_file_naming_it(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"devices": {"gpu0": ["F:s0:0"]}}))
    assert main(["compare", str(DUALPIPE_8X20), "--with", f"bad={bad}"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"opplan: error: {bad}: schedule rejected") and "is not scheduled" in err


def test_a_comparison_with_a_memory_like_limit_generates_each_builtin_once(monkeypatch):
    """The table, ``--plan-memory-like`` and the planner's candidates share one generation per schedule."""
    from planner import schedules
    from planner.memory import memory_like

    calls: dict[str, int] = {}

    def counted(name, generator):
        def run(scenario, **options):
            calls[name] = calls.get(name, 0) + 1
            return generator(scenario, **options)
        return run

    for name, generator in SCHEDULES.items():
        monkeypatch.setitem(schedules.SCHEDULES, name, counted(name, generator))
    scenario = example_scenario(stages=4, micro_batches=8)
    rows = comparison_rows(scenario)
    limit = memory_like(scenario, "dualpipe")
    again = {name: generate(name, scenario) for name, why in schedules.available(scenario).items() if why is None}
    assert calls == dict.fromkeys(SCHEDULES, 1)
    assert [row.name for row in rows] == list(again)
    assert limit == memory_like(scenario, "dualpipe") > 0
    assert calls == dict.fromkeys(SCHEDULES, 1)


def test_a_builtin_that_does_not_apply_says_why_every_time_it_is_asked():
    scenario = example_scenario(stages=3, micro_batches=8)
    with pytest.raises(InputError) as first:
        generate("dualpipe", scenario)
    first.value.file = "filled-in-by-a-caller.yaml"
    with pytest.raises(InputError) as second:
        generate("dualpipe", scenario)
    assert second.value is not first.value and second.value.file != first.value.file
    assert second.value.message == first.value.message and "even" in second.value.message
