"""Collectives on links or priced: replay speed at scale and the step-time difference.

1. Speed: the LLaMA-2-70B / 32 H100 layouts the hybrid search replays, and DeepSeek-V3 on
   2048 H800 (256 nodes) in DeepSeek's published layout (DP 128 x PP 16, EP 64, ZeRO-1,
   DualPipe, full recompute, 4 x 13 + 3 x 3 layers per stage), each built and replayed
   with ``collectives="links"`` (every step's transfers on the links; phantom members,
   stand-ins) and ``collectives="priced"`` (each collective holds its members for its
   idle-cluster α–β time, :func:`simulator.collectives.collective_time`). CPU seconds
   (``time.process_time``) of build + replay + step report.
2. Accuracy: on the four realistic scenarios, the scenario's own layout, every preset and
   the searched plan, step time with collectives on links and priced: priced leaves out
   contention (two collectives, or a collective and a pipeline send, on one link), so it
   is never slower; the difference is what contention costs.

Run::

    python benchmarks/priced_replay.py [--search-seconds 30]
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from planner.layouts.build import build_layout_run, link_events  # noqa: E402
from planner.layouts.presets import preset_layouts  # noqa: E402
from planner.layouts.step import describe_layout, step_result  # noqa: E402
from planner.search.context import with_micro_batch_size  # noqa: E402
from planner.search.search import search_layouts  # noqa: E402
from simulator.engine import replay  # noqa: E402
from simulator.scenario import load_scenario, scenario_from_dict  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
REALISTIC = ("llama7b-8xh100", "llama70b-32xh100", "deepseek-moe-h800", "two-tower-h100")
#: The 70B layouts the search replays (``opplan plan scenarios/llama70b-32xh100.yaml``).
SEARCHED_70B = {
    "dp8 tp4 sp zero3": {"dp": 8, "tp": 4, "pp": 1, "zero": 3},
    "dp4 tp4 pp2 sp zero3 dualpipev": {"dp": 4, "tp": 4, "pp": 2, "zero": 3, "schedule": "dualpipev"},
    "dp2 tp4 pp4 sp zero2 dualpipev": {"dp": 2, "tp": 4, "pp": 4, "zero": 2, "schedule": "dualpipev"},
    "tp8 pp4 sp 1f1b (Megatron)": {},
    "dp32 zero3 (FSDP)": {"dp": 32, "tp": 1, "pp": 1, "zero": 3, "sequence_parallel": False, "recompute": "full"},
}
DEEPSEEK_V3 = {
    "name": "deepseek-v3-2048xh800",
    "model": {"type": "moe", "preset": "deepseek-v3", "seq_len": 4096, "micro_batch_size": 1},
    "cluster": {"profile": "h800-sxm", "nodes": 256},
    "workload": {"micro_batches": 16},
    "objective": {"minimize": "makespan", "memory_limit_gb": 80},
    "parallel": {"dp": 128, "pp": 16, "ep": 64, "zero": 1, "recompute": "full", "schedule": "dualpipe",
                 "stage_layers": [4] * 13 + [3] * 3, "micro_batch_size": 1, "global_batch_size": 15360},
}


def _timed(scenario, layout, mode: str):
    """(step result, CPU seconds, link events, the run) of one build + replay + report."""
    began = time.process_time()
    run = build_layout_run(scenario, layout, "x", collectives=mode)
    result = step_result(run, replay(run.problem, run.schedule), "x")
    return result, time.process_time() - began, link_events(run), run


def _auto(run) -> str:
    """What ``auto`` chose: priced, or links with how many calls priced exactly (uncontended)."""
    calls = run.schedule.collectives.values()
    if run.collectives == "priced":
        return "priced"
    return f"links ({sum(c.priced for c in calls)}/{len(calls)} exact-priced)"


def _diff(priced: float, links: float) -> str:
    return f"{100 * (priced / links - 1):+.2f}%"


def speed_table() -> None:
    print("| layout | devices | link events | links: CPU s | priced: CPU s | speed-up | links step s | priced step s | priced - links"
          " | auto | auto CPU s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|")
    llama = load_scenario(ROOT / "scenarios" / "llama70b-32xh100.yaml")
    cases = [(f"LLaMA-2-70B {name}", llama, replace(llama.parallel, **change)) for name, change in SEARCHED_70B.items()]
    deepseek = scenario_from_dict(DEEPSEEK_V3, ROOT / "scenarios" / "deepseek-v3-2048xh800.yaml")
    cases.append(("DeepSeek-V3 dp128 pp16 ep64 zero1 dualpipe (published)", deepseek, deepseek.parallel))
    for label, scenario, layout in cases:
        links, links_s, events, _ = _timed(scenario, layout, "links")
        priced, priced_s, _, _ = _timed(scenario, layout, "priced")
        _, auto_s, _, auto = _timed(scenario, layout, "auto")
        print(f"| {label} | {layout.world_size} | {events:,} | {links_s:.2f} | {priced_s:.2f} | {links_s / priced_s:.1f}x |"
              f" {links.step:.3f} | {priced.step:.3f} | {_diff(priced.step, links.step)} | {_auto(auto)} | {auto_s:.2f} |",
              flush=True)


def _layouts(scenario, search_seconds: float) -> dict[str, object]:
    """The scenario's layout, its presets, and the search's plan (priced where the search prices)."""
    out = {"scenario": scenario.parallel} if scenario.parallel is not None else {}
    out.update(preset_layouts(scenario)[0])
    found = search_layouts(scenario, time_limit=search_seconds)
    if found.best is not None:
        out[f"plan: {describe_layout(found.best.layout)}"] = found.best.layout
    return out


def accuracy_table(search_seconds: float) -> None:
    print("| scenario | layout | links step ms | priced step ms | priced - links | links CPU s | priced CPU s |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name in REALISTIC:
        scenario = load_scenario(ROOT / "scenarios" / f"{name}.yaml")
        for label, layout in _layouts(scenario, search_seconds).items():
            at_mbs = with_micro_batch_size(scenario, layout.micro_batch_size)
            links, links_s, _, _ = _timed(at_mbs, layout, "links")
            priced, priced_s, _, _ = _timed(at_mbs, layout, "priced")
            note = f" ({links.note})" if links.note else ""
            print(f"| {name} | {label}{note} | {links.step * 1e3:.1f} | {priced.step * 1e3:.1f} |"
                  f" {_diff(priced.step, links.step)} | {links_s:.2f} | {priced_s:.2f} |", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--search-seconds", type=float, default=30.0, help="search time per scenario for its plan")
    parser.add_argument("--skip-speed", action="store_true")
    args = parser.parse_args()
    if not args.skip_speed:
        speed_table()
        print()
    accuracy_table(args.search_seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
