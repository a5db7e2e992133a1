"""Hybrid-space search on the four realistic scenarios: layouts considered, pruned,
simulated, lower-level runs, seconds, best step time and the engine that ordered it,
against the best practitioner preset replayed in the same simulator.

With ``--lower``, a second table: the lower level (:mod:`planner.search.lower`) on the
pipeline layouts of each scenario — its pipeline presets (Megatron TP x PP) and, per
pipeline schedule, the layout of the space with the smallest step-time bound — each
replayed with its built-in schedule and with the lower level's order.

    python3 benchmarks/planner_search.py [--time-limit 120] [--workers 0] [--lower [--lower-seconds 60]] [SCENARIO ...]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from planner.layouts.presets import preset_layouts  # noqa: E402
from planner.layouts.step import describe_layout, simulate_layout  # noqa: E402
from planner.search.context import SearchContext  # noqa: E402
from planner.search.lower import improve_layout  # noqa: E402
from planner.search.search import search_layouts  # noqa: E402
from planner.search.space import enumerate_layouts  # noqa: E402
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


def pipeline_layouts(scenario) -> list[tuple[str, object]]:
    """The scenario's pipeline presets, and per schedule the pipeline layout of the space with the smallest bound."""
    layouts, _ = preset_layouts(scenario)
    out = [(name, layout) for name, layout in layouts.items() if layout.pp > 1]
    ctx = SearchContext(scenario)
    best: dict[str, tuple[float, object]] = {}
    for layout in enumerate_layouts(ctx.space, ctx.shape):
        if layout.pp == 1:
            continue
        bound = ctx.bound(layout)
        if bound.memory <= ctx.capacity and (layout.schedule not in best or bound.time < best[layout.schedule][0]):
            best[layout.schedule] = (bound.time, layout)
    return out + [(f"space, least bound ({name})", layout) for name, (_, layout) in sorted(best.items())]


def lower_table(paths: list[str], seconds: float) -> None:
    """Built-in schedule vs lower level, replayed, on each scenario's pipeline layouts."""
    print("\n| scenario | layout | degrees | mbs | built-in ms | warm start | stage model: warm -> lower (bound) ms | lower level ms"
          " | engine | saved | seconds |")
    print("|" + "---|" * 11)
    for path in paths:
        scenario = load_scenario(path)
        for name, layout in pipeline_layouts(scenario):
            o = improve_layout(scenario, layout, time_limit=seconds)
            after = f"{o.step * 1e3:.1f}" if o.kept else f"kept built-in ({o.note})"
            print(f"| {scenario.name} | {name} | {describe_layout(layout)} | {layout.micro_batch_size} | {o.warm_step * 1e3:.1f}"
                  f" | {o.warm_name} | {o.model_warm * 1e3:.1f} -> {o.model_makespan * 1e3:.1f} ({o.model_bound * 1e3:.1f})"
                  f" | {after} | {o.engine} | {100 * o.improvement:.2f}% | {o.seconds:.1f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("scenarios", nargs="*", default=[f"scenarios/{s}.yaml" for s in SCENARIOS])
    parser.add_argument("--time-limit", type=float, default=120.0)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--lower", action="store_true", help="also the lower level on each scenario's pipeline layouts")
    parser.add_argument("--lower-seconds", type=float, default=60.0, help="solving seconds per lower-level run")
    parser.add_argument("--no-search", action="store_true", help="only the lower-level table")
    args = parser.parse_args()
    if not args.no_search:
        search_table(args)
    if args.lower:
        lower_table(args.scenarios, args.lower_seconds)


def search_table(args) -> None:
    print("| scenario | layouts | duplicates | pruned (memory) | pruned (time) | MIP cuts (better) | simulated | lower level (faster)"
          " | seconds | certified | plan | plan step ms | ordered by | best preset | preset step ms |")
    print("|" + "---|" * 15)
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
              f" | {found.mip_cuts} ({found.mip_improved}) | {len(found.replayed)}"
              f" | {len(found.lower)} ({sum(o.kept for o in found.lower)}) | {seconds:.1f} | {certified} | {what} | {step}"
              f" | {_engine(plan)} | {name} | {preset * 1e3:.1f} |", flush=True)


def _engine(plan) -> str:
    if plan is None:
        return "-"
    if plan.lower is None:
        return plan.engine
    return f"{plan.engine} (built-in {plan.lower.warm_step * 1e3:.1f} ms)"


if __name__ == "__main__":
    main()
