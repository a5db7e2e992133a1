"""``opplan plan`` on models with layers: the search over the hybrid space
(:mod:`planner.search`), printed with what was enumerated, pruned, cut by MIP and
replayed, the certificate, and the plan as Megatron-LM arguments and a ``parallel:`` block."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, replace
from pathlib import Path

from rich.console import Console

from opplan.commands.common import wrote
from opplan.output import write_output
from opplan.startup import startup_seconds
from planner.capacity import check_memory_fits
from planner.layouts.build import shape_of
from planner.layouts.compare import render_layout_rows
from planner.layouts.step import StepResult, describe_layout
from planner.memory import memory_limits
from planner.search.evaluate import replay_on_links
from planner.search.launch import deepspeed_config, megatron_arguments, parallel_block
from planner.search.search import SearchResult, search_layouts
from simulator.errors import InputError
from simulator.scenario import Scenario

__all__ = ["final_replay", "plan_hybrid", "print_search", "searched_row"]


def print_search(result: SearchResult, console: Console) -> None:
    """What the search did, and its certificate."""
    say = lambda line: console.print(line, highlight=False)  # noqa: E731
    say(f"enumerated {result.enumerated} layouts (degrees, ZeRO, micro-batch, recompute, schedule: enumeration);"
        f" {result.duplicates} the same as another in the replay, {result.pruned_memory} discarded by the memory lower"
        f" bound, {result.pruned_time} by the step-time lower bound")
    say(f"stage cuts: {result.mip_cuts} solved as MIPs (CVXPY + HiGHS), {result.mip_improved} better than the even cut")
    say(f"replayed {len(result.replayed)} layouts in the simulator ({sum(r.feasible for r in result.replayed)} within memory)"
        f" in {result.seconds:.1f} s")
    for line in lower_lines(result):
        say(line)
    if result.best is None:
        return
    step = result.best.result.step
    if result.certified:
        say(f"certificate: every layout not replayed has a step-time lower bound >= {step * 1e3:.1f} ms: the plan is optimal"
            " over the searched space (in this simulator)")
    else:
        say(f"time limit reached: lower bound over the space {result.lower_bound * 1e3:.1f} ms, gap {100 * result.gap:.2f}%")


def lower_lines(result: SearchResult) -> list[str]:
    """The lower level's runs, and which engine ordered the plan."""
    if not result.lower:
        return list(result.messages)
    kept = [o for o in result.lower if o.kept]
    lines = [f"lower level (stage scheduling MIP: OR-Tools CP-SAT + CVXPY/HiGHS, warm-started by the built-in schedule) on"
             f" {len(result.lower)} pipeline layouts, {len(kept)} replayed faster than their built-in schedule:"]
    for o in result.lower:
        verdict = f"{o.step * 1e3:.1f} ms ({o.engine}, {100 * o.improvement:.2f}% faster)" if o.kept else f"kept ({o.note})"
        lines.append(f"  {describe_layout(o.layout)} mbs {o.layout.micro_batch_size}: built-in {o.warm_step * 1e3:.1f} ms ->"
                     f" {verdict}; stage model {o.model_warm * 1e3:.1f} -> {o.model_makespan * 1e3:.1f} ms, its bound"
                     f" {o.model_bound * 1e3:.1f} ms; {o.seconds:.1f} s")
    if result.best is not None:
        lines.append(f"the plan's pipeline order: {result.best.engine}")
    return lines + list(result.messages)


#: Seconds kept back from the search for printing the plan and leaving the process.
REPORT_SECONDS = 0.5


def search_budget(time_limit: float, began: float) -> float:
    """The search's share of ``--time-limit``, a promise for the whole command begun at ``began``
    (``time.monotonic()``): the time spent since (reading the scenario), the interpreter's start-up
    when ``opplan`` is the program (:mod:`opplan.startup`), and the report come off it."""
    spent = time.monotonic() - began + startup_seconds()
    return max(0.1, time_limit - spent - REPORT_SECONDS)


def _refuse_if_empty(result: SearchResult, scenario: Scenario) -> None:
    """No plan: say why, with the least memory any layout would need per GPU."""
    if result.best is not None:
        return
    if result.timed_out:
        tried = f" ({len(result.replayed)} replayed, none within memory)" if result.replayed else ""
        raise InputError(f"the time limit ended before any layout was replayed within memory{tried}; give more --time-limit",
                         field="--time-limit")
    need = ""
    if result.least_memory is not None:
        memory, layout = result.least_memory
        need = f"; the least any layout needs is {memory / 1e9:.1f} GB per GPU ({describe_layout(layout)}, micro-batch" \
               f" {layout.micro_batch_size}): more or larger GPUs"
    raise InputError(f"no layout fits: every layout is over memory or refused by the replay{need}",
                     file=scenario.file or None, field="parallel")


def final_replay(scenario: Scenario, result: SearchResult, deadline: float, console: Console) -> StepResult:
    """The plan's step: replayed again with collectives on links when the search priced them
    and the time left (to ``deadline``, ``time.monotonic()``) allows, else the priced replay."""
    step = result.best.result
    if "collectives priced" not in step.simulated:
        return step
    best = result.best
    exact = replay_on_links(scenario, best.layout, deadline - time.monotonic(), best.lower.pipeline if best.lower else None)
    if exact is None:
        console.print("final replay: collectives priced (their replay on links did not fit in the time left)", highlight=False)
        return step
    console.print(f"final replay: collectives on links, {exact.step * 1e3:.1f} ms (priced in the search:"
                  f" {step.step * 1e3:.1f} ms, {100 * (step.step / exact.step - 1):+.2f}%)", highlight=False)
    return replace(exact, name=step.name)


def searched_row(scenario: Scenario, time_limit: float, console: Console) -> StepResult:
    """The search's plan as a row of ``opplan compare`` (named ``opplan plan``)."""
    began = time.monotonic()
    result = search_layouts(scenario, time_limit=time_limit)  # compare: --time-limit is the planner's seconds
    print_search(result, console)
    _refuse_if_empty(result, scenario)
    return replace(final_replay(scenario, result, began + time_limit, console), name="opplan plan")


def plan_hybrid(scenario: Scenario, scenario_path: Path, *, time_limit: float, workers: int, scheduler: str | None,
                output: Path | None, console: Console, began: float) -> None:
    """Search, print the report and the launch arguments; ``-o`` writes the plan as JSON."""
    # A model whose states and one micro-batch exceed the whole cluster fits in no layout: the
    # pipeline planner's refusal (with the GPUs it needs) holds for every layout too.
    check_memory_fits(scenario, memory_limits(scenario, None))
    budget = search_budget(time_limit, began)
    deadline = time.monotonic() + budget
    result = search_layouts(scenario, time_limit=budget, workers=workers, scheduler=scheduler,
                            log=lambda line: console.print(line, highlight=False))
    print_search(result, console)
    _refuse_if_empty(result, scenario)
    best = result.best
    step = final_replay(scenario, result, deadline, console)
    render_layout_rows([step], title=f"{scenario.name}: planned layout", console=console)
    layers = len(shape_of(scenario).layers)
    console.print("Megatron-LM (a starting point to check on the cluster):", highlight=False)
    console.print("  " + " \\\n  ".join(megatron_arguments(best.layout, layers)), highlight=False, markup=False)
    if best.lower is not None:
        console.print(f"  # pipeline order from opplan's {best.engine}, not the built-in {best.layout.schedule}: -o writes it"
                      " as pipeline_order, per pipeline rank", highlight=False, markup=False)
    console.print(parallel_block(best.layout), highlight=False, markup=False)
    document = {"layout": asdict(best.layout), "step_s": step.step, "replayed": step.simulated,
                "lower_bound_s": result.lower_bound, "certified": result.certified, "deepspeed": deepspeed_config(best.layout),
                "megatron": megatron_arguments(best.layout, layers), "engine": best.engine,
                "lower_level": [{"layout": describe_layout(o.layout), "micro_batch_size": o.layout.micro_batch_size,
                                 "built_in_step_s": o.warm_step, "step_s": o.step if o.kept else None, "engine": o.engine,
                                 "seconds": o.seconds} for o in result.lower]}
    if best.lower is not None:  # the order is the plan's: Megatron's flags cannot say it
        document["built_in_step_s"] = best.lower.warm_step
        names = scenario.problem.cluster.device_names  # the stage-level schedule names pipeline rank r by device r
        document["pipeline_order"] = {f"pp_rank_{names.index(device)}": [str(task) for entry in entries for task in entry.tasks]
                                      for device, entries in best.lower.pipeline.devices.items()}
    if output is not None:
        wrote(write_output(output, json.dumps(document, indent=1, default=str) + "\n", inputs=[scenario_path], option="--output"))
