"""Hybrid-space search on the four realistic scenarios: layouts considered, pruned,
simulated, seconds, best step time, against the best practitioner preset replayed in the
same simulator.

    python3 benchmarks/planner_search.py [--time-limit 120] [--workers 0] [SCENARIO ...]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from planner.layouts.presets import preset_layouts  # noqa: E402
from planner.layouts.step import describe_layout, simulate_layout  # noqa: E402
from planner.search.search import search_layouts  # noqa: E402
from simulator.scenario import load_scenario  # noqa: E402

SCENARIOS = ("llama7b-8xh100", "llama70b-32xh100", "deepseek-moe-h800", "two-tower-h100")


def best_preset(scenario) -> tuple[str, float]:
    """The fastest preset whose replay stays within memory."""
    layouts, _ = preset_layouts(scenario)
    best = ("-", float("inf"))
    for name, layout in layouts.items():
        result = simulate_layout(scenario, layout, name)
        if not result.note and result.step < best[1]:
            best = (name, result.step)
    return best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("scenarios", nargs="*", default=[f"scenarios/{s}.yaml" for s in SCENARIOS])
    parser.add_argument("--time-limit", type=float, default=120.0)
    parser.add_argument("--workers", type=int, default=0)
    args = parser.parse_args()
    print("| scenario | layouts | duplicates | pruned (memory) | pruned (time) | MIP cuts (better) | simulated | seconds | certified"
          " | plan | plan step ms | best preset | preset step ms |")
    print("|" + "---|" * 13)
    for path in args.scenarios:
        scenario = load_scenario(path)
        started = time.monotonic()
        found = search_layouts(scenario, time_limit=args.time_limit, workers=args.workers)
        seconds = time.monotonic() - started
        name, preset = best_preset(scenario)
        plan = found.best
        what = f"{describe_layout(plan.layout)} mbs{plan.layout.micro_batch_size}" if plan else "-"
        step = f"{plan.result.step * 1e3:.1f}" if plan else "-"
        certified = "yes" if found.certified else f"no (gap {100 * found.gap:.1f}%)"
        print(f"| {scenario.name} | {found.enumerated} | {found.duplicates} | {found.pruned_memory} | {found.pruned_time}"
              f" | {found.mip_cuts}"
              f" ({found.mip_improved}) | {len(found.replayed)} | {seconds:.1f} | {certified} | {what} | {step} | {name}"
              f" | {preset * 1e3:.1f} |", flush=True)


if __name__ == "__main__":
    main()
