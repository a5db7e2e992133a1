"""Pictures: Gantt charts and memory curves of any replay, charts of a sweep's results."""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pandas as pd
import pytest
import yaml
from matplotlib.colors import to_rgba
from matplotlib.image import imread

from opplan.cli import main
from opplan.output import save_figure
from opplan.sweeps import load_sweep, run_sweep
from opplan.sweeps.chart import sweep_figure
from planner.schedules import generate
from planner.schedules.examples import example_scenario
from simulator.engine import replay
from simulator.errors import InputError
from simulator.pictures import COLORS, category, entry_label, gantt_figure, memory_figure
from simulator.problem import Task
from simulator.scenario import load_scenario
from simulator.schedule import Schedule, save_schedule

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def dualpipe_timeline():
    """DualPipe on 4 ranks, 8 micro-batches: F, B, W, fused B+W and overlapped F&B entries all occur."""
    scenario = example_scenario(stages=4, micro_batches=8)
    return replay(scenario.problem, generate("dualpipe", scenario))


def entry_bars(figure):
    return [patch for patch in figure.axes[0].patches if (patch.get_gid() or "").startswith("entry-")]


def write_scenario(folder: Path, stages: int = 4) -> Path:
    path = folder / "scenario.yaml"
    path.write_text(yaml.safe_dump({
        "model": {"type": "pipeline", "stages": stages, "F_ms": 1, "B_ms": 1, "W_ms": 1, "activation_gb": 2, "static_gb": 10},
        "cluster": {"devices": stages, "device": {"memory_gb": 80}},
        "workload": {"micro_batches": 8},
    }))
    return path


# -- Gantt ----------------------------------------------------------------------------------


def test_a_gantt_chart_has_one_bar_per_executed_entry_coloured_by_its_kind(dualpipe_timeline):
    figure = gantt_figure(dualpipe_timeline)
    bars = entry_bars(figure)
    assert len(bars) == len(dualpipe_timeline.executed) == 62
    kinds = {category(item) for item in dualpipe_timeline.executed}
    assert kinds == {"F", "B", "W", "B+W", "overlap"}
    for bar, item in zip(bars, dualpipe_timeline.executed):
        assert bar.get_facecolor() == to_rgba(COLORS[category(item)])
        assert bar.get_x() == pytest.approx(item.start * 1e3) and bar.get_width() == pytest.approx((item.end - item.start) * 1e3)


def test_micro_batch_numbers_are_written_only_where_they_fit(dualpipe_timeline):
    wide = gantt_figure(dualpipe_timeline, width_in=40)
    narrow = gantt_figure(dualpipe_timeline, width_in=2)
    assert len(wide.axes[0].texts) == len(dualpipe_timeline.executed)
    assert sorted(text.get_text() for text in wide.axes[0].texts) == sorted(entry_label(item) for item in dualpipe_timeline.executed)
    assert any("&" in text.get_text() for text in wide.axes[0].texts)  # an overlapped F&B shows both micro-batches
    assert len(narrow.axes[0].texts) < len(wide.axes[0].texts)


def test_a_png_gantt_file_is_a_valid_png(dualpipe_timeline, tmp_path):
    path = save_figure(gantt_figure(dualpipe_timeline), tmp_path / "gantt.png")
    assert path.read_bytes()[:8] == PNG_MAGIC
    height, width, _ = imread(path).shape
    assert width > 1000 and height > 200


def test_an_svg_gantt_file_is_valid_xml_with_one_bar_per_executed_entry(dualpipe_timeline, tmp_path):
    path = save_figure(gantt_figure(dualpipe_timeline), tmp_path / "gantt.svg")
    root = ElementTree.parse(path).getroot()
    assert root.tag.endswith("svg")
    ids = [element.get("id") for element in root.iter() if (element.get("id") or "").startswith("entry-")]
    assert len(ids) == len(set(ids)) == len(dualpipe_timeline.executed)


def test_communication_tasks_get_a_lane_of_their_own_under_the_compute_lane(make_problem, op):
    problem = make_problem([op("a"), op("x", stream="comm"), op("b")], [("a", "x"), ("x", "b")], devices=1, mode="inference")
    timeline = replay(problem, Schedule.from_lists({"gpu0": [Task("a", 0, "F"), Task("x", 0, "F"), Task("b", 0, "F")]}))
    bars = entry_bars(gantt_figure(timeline))
    centre = {item.entry.first.op: bar.get_y() + bar.get_height() / 2 for bar, item in zip(bars, timeline.executed)}
    assert centre["a"] == centre["b"] < centre["x"]  # the y axis points down: the comm lane is below
    assert bars[[item.entry.first.op for item in timeline.executed].index("x")].get_facecolor() == to_rgba(COLORS["comm"])


# -- memory ---------------------------------------------------------------------------------


def test_the_memory_picture_has_a_curve_per_device_and_the_capacity(tmp_path):
    scenario = example_scenario(stages=4, micro_batches=8, static_gb=10, activation_gb=2)
    timeline = replay(scenario.problem, generate("gpipe", scenario))
    figure = memory_figure(timeline)
    lines = figure.axes[0].lines
    curves = {line.get_label(): line for line in lines}
    assert set(curves) == {"gpu0", "gpu1", "gpu2", "gpu3", f"capacity {scenario.problem.cluster.devices[0].memory_bytes / 1e9:.4g} GB"}
    assert max(curves["gpu0"].get_ydata()) == pytest.approx(10 + 8 * 2)  # GPipe: static + every micro-batch's activations
    path = save_figure(figure, tmp_path / "memory.png")
    assert path.read_bytes()[:8] == PNG_MAGIC


# -- sweep charts ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sweep_table(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sweep")
    write_scenario(folder)
    (folder / "sweep.yaml").write_text(yaml.safe_dump({
        "scenario": "scenario.yaml",
        "grid": {"cluster.memory_gb": [80, 40], "workload.micro_batches": [4, 8, 16], "schedule": ["gpipe", "1f1b", "zb-h1"]},
    }))
    run_sweep(load_sweep(folder / "sweep.yaml"), folder / "out", workers=0)
    return folder / "out" / "results.csv"


def test_a_sweep_chart_has_a_line_per_series_and_a_panel_per_facet(sweep_table):
    table = pd.read_csv(sweep_table)
    figure = sweep_figure(table, x="workload.micro_batches", y="bubble_ratio", series="schedule", facet="cluster.memory_gb")
    panels = [ax for ax in figure.axes if ax.get_visible()]
    assert [ax.get_title() for ax in panels] == ["cluster.memory_gb = 80", "cluster.memory_gb = 40"]
    assert [line.get_label() for line in panels[0].lines] == ["gpipe", "1f1b", "zb-h1"]
    ok = table[(table["status"] == "ok") & (table["cluster.memory_gb"] == 80) & (table["schedule"] == "1f1b")]
    assert list(panels[0].lines[1].get_ydata()) == pytest.approx(list(ok["bubble_ratio"]))
    # GPipe at 16 micro-batches needs 10 + 16 x 2 = 42 GB: over 40, invalid, so that line stops at 8.
    assert list(panels[1].lines[0].get_xdata()) == [4, 8]


def test_a_sweep_chart_refuses_rows_it_would_draw_on_top_of_each_other(sweep_table):
    table = pd.read_csv(sweep_table)
    with pytest.raises(InputError, match="they differ in cluster.memory_gb: use it as --series or --facet"):
        sweep_figure(table, x="workload.micro_batches", y="bubble_ratio", series="schedule")


def test_a_sweep_chart_names_the_columns_it_has_when_one_is_misspelt(sweep_table):
    with pytest.raises(InputError, match=r"no column 'buble_ratio' in the results \(columns: cluster.memory_gb, "):
        sweep_figure(pd.read_csv(sweep_table), x="workload.micro_batches", y="buble_ratio")


def test_the_plot_sweep_command_reads_csv_and_parquet(sweep_table, tmp_path):
    for source, picture in ((sweep_table, "a.png"), (sweep_table.with_suffix(".parquet"), "b.svg")):
        argv = ["plot", "sweep", str(source), "--x", "workload.micro_batches", "--y", "makespan_ms", "--series", "schedule",
                "--facet", "cluster.memory_gb", "-o", str(tmp_path / picture)]
        assert main(argv) == 0
    assert (tmp_path / "a.png").read_bytes()[:8] == PNG_MAGIC
    assert ElementTree.parse(tmp_path / "b.svg").getroot().tag.endswith("svg")


# -- the commands ---------------------------------------------------------------------------


def test_plot_gantt_and_memory_draw_a_builtin_or_a_schedule_file(tmp_path, capsys):
    scenario = write_scenario(tmp_path)
    assert main(["plot", "gantt", str(scenario), "--builtin", "1f1b", "-o", str(tmp_path / "g.svg")]) == 0
    assert capsys.readouterr().out == f"wrote {tmp_path / 'g.svg'} (64 entries on 4 devices)\n"  # 32 F + 32 fused B+W
    schedule = tmp_path / "s.json"
    save_schedule(generate("gpipe", load_scenario(scenario)), schedule)
    assert main(["plot", "memory", str(scenario), "--schedule", str(schedule), "-o", str(tmp_path / "m.pdf")]) == 0
    assert (tmp_path / "m.pdf").read_bytes()[:4] == b"%PDF"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--builtin", "1f1b", "--schedule", "x.json", "-o", "g.png"], "give --schedule FILE or --builtin NAME, not both"),
        (["--builtin", "1f1b", "-o", "g.jpg"], "unknown picture format '.jpg' (use .png, .svg, .pdf)"),
        (["--builtin", "warp-drive", "-o", "g.png"], "unknown schedule 'warp-drive'"),
    ],
)
def test_plot_mistakes_are_one_line_errors(tmp_path, capsys, extra, message):
    scenario = write_scenario(tmp_path)
    assert main(["plot", "gantt", str(scenario), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("opplan: error: ") and message in err[0]


def test_a_builtin_that_does_not_fit_says_why(tmp_path, capsys):
    scenario = write_scenario(tmp_path, stages=3)
    assert main(["plot", "gantt", str(scenario), "--builtin", "dualpipe", "-o", str(tmp_path / "g.png")]) == 2
    assert "dualpipe does not apply: " in capsys.readouterr().err
    assert not (tmp_path / "g.png").exists()


def test_a_picture_never_overwrites_an_input(tmp_path, dualpipe_timeline):
    picture = tmp_path / "mine.png"
    picture.write_bytes(PNG_MAGIC)
    with pytest.raises(InputError, match="refusing to overwrite input file"):
        save_figure(gantt_figure(dualpipe_timeline), picture, inputs=[picture])
    assert picture.read_bytes() == PNG_MAGIC
