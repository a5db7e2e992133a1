"""``opplan serve SCENARIO``: replay a serving workload on one or more layouts, or plan one.

``--layout TPxPP`` (repeatable) picks layouts to compare (default: the scenario's
``parallel:`` tp and pp, else TP over one node); ``--plan`` enumerates layouts and batch
limits with the serving simulation and prints the best under ``objective.serving`` and
``objective.slo`` as vLLM / TensorRT-LLM arguments. With ``workload.disaggregation`` the
replay uses its prefill / decode split (``--layout`` does not apply) and ``--plan`` searches
colocated layouts. (``opplan plan`` is the training
planner; serving planning lives here.)
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from opplan.commands.common import FiniteFloat, scenario_argument
from opplan.output import save_figure, write_output
from opplan.startup import startup_seconds
from simulator.errors import InputError
from simulator.scenario import Scenario, load_scenario
from simulator.serving.workload import BatchPolicy
from simulator.yamlio import Section


def _parse_layout(text: str) -> tuple[int, int]:
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise InputError(f"expected TPxPP such as 8x1 or 4x2, got {text!r}", field="--layout")
    return int(parts[0]), int(parts[1])


def _table(title: str) -> Table:
    table = Table(title=title)
    for name in ("layout", "max seqs", "max tokens", "TTFT p50/p90/p99 ms", "TPOT p50/p90/p99 ms", "out tok/s", "total tok/s",
                 "KV peak / mean", "done", "rejected", "queued for KV"):
        table.add_column(name, justify="left" if name == "layout" else "right")
    return table


def _row(table: Table, label: str, policy, report) -> None:
    def trio(values: dict) -> str:
        return " / ".join(f"{values[p]:.1f}" for p in (50, 90, 99))
    table.add_row(label, str(policy.max_num_seqs), str(policy.max_num_batched_tokens), trio(report.ttft_ms), trio(report.tpot_ms),
                  f"{report.output_tokens_per_s:,.0f}", f"{report.total_tokens_per_s:,.0f}",
                  f"{report.kv_peak:.1%} / {report.kv_mean:.1%}", str(report.completed), str(report.rejected),
                  str(report.queued_for_memory))


def _label(scenario: Scenario, tp: int, pp: int, *, colocated: bool = False) -> str:
    if scenario.serving.disaggregation is not None and not colocated:
        d = scenario.serving.disaggregation
        return f"prefill TP{d.prefill_tp} on {d.prefill_devices} / decode TP{d.decode_tp}"
    dp = len(scenario.problem.cluster.devices) // (tp * pp)
    return f"TP{tp}" + (f" x PP{pp}" if pp > 1 else "") + (f" x {dp} replicas" if dp > 1 else "")


def _plan(setup, scenario: Scenario, console: Console, deadline: float | None) -> tuple[dict, tuple]:
    """The serving plan as JSON and the table row ``(label, policy, report)`` it adds."""
    from planner.serving import engine_arguments, plan_serving

    objective = scenario.serving_objective.get("serving", "throughput")
    slo = scenario.serving_objective.get("slo", {})
    plan = plan_serving(setup, objective, slo, deadline=deadline)
    devices = len(scenario.problem.cluster.devices)
    shown = f"SLO {', '.join(f'{k} <= {v:g}' for k, v in slo.items()) or 'none'}"
    reached = "" if plan.complete else f" of {plan.grid} (the time limit stopped the enumeration)"
    console.print(f"planner: enumerated {len(plan.evaluated)}{reached} candidates (layouts x max_num_seqs x max_num_batched_tokens),"
                  f" each replayed by the serving simulation; {len(plan.feasible)} complete every request within the {shown}")
    if not plan.evaluated:
        raise InputError("the time limit ended before any serving layout was replayed; give more --time-limit", field="--time-limit")
    if plan.best is None:
        raise InputError(f"no enumerated layout meets the {shown} with objective {objective}", file=scenario.file, field="objective.slo")
    c = plan.best.candidate
    label = f"planner ({objective}): " + _label(scenario, c.tp, c.pp, colocated=True)
    row = (label, BatchPolicy(scenario.serving.batching.policy, c.max_num_seqs, c.max_num_batched_tokens), plan.best.report)
    vllm, trt = engine_arguments(c, devices)
    return {"objective": objective, "slo": slo, "enumerated": len(plan.evaluated), "grid": plan.grid, "feasible": len(plan.feasible),
            "choice": {"tp": c.tp, "pp": c.pp, "max_num_seqs": c.max_num_seqs, "max_num_batched_tokens": c.max_num_batched_tokens},
            "vllm": vllm, "tensorrt_llm": trt, "report": plan.best.report.to_dict()}, row


def _replay_layouts(setup, loaded: Scenario, layouts: tuple[str, ...], table: Table, console: Console,
                    deadline: float | None) -> list[dict]:
    """The compared layouts' rows; under a deadline each is cut short (and said so) if time runs out."""
    from planner.timebox import OutOfTime, time_boxed
    from simulator.serving.run import default_layout, simulate_serving

    rows = []
    for tp, pp in [_parse_layout(text) for text in layouts] or [default_layout(loaded.parallel, loaded.problem.cluster)]:
        try:
            with time_boxed(None if deadline is None else deadline - time.monotonic()):
                report = simulate_serving(setup, tp=tp, pp=pp)
        except OutOfTime:
            console.print(f"{_label(loaded, tp, pp)}: not replayed (the time limit ended first)", highlight=False)
            continue
        _row(table, _label(loaded, tp, pp), loaded.serving.batching, report)
        rows.append({"tp": tp, "pp": pp, **report.to_dict()})
    return rows


def _kv_figure(curves: list[tuple[str, list]]):
    """Reserved KV cache (share of capacity) over time, one step line per replayed layout."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 3.4), layout="constrained")
    axes = figure.add_subplot()
    for label, timeline in curves:
        axes.step([t for t, _ in timeline], [100 * v for _, v in timeline], where="post", label=label)
    axes.set(xlabel="time (s)", ylabel="KV cache reserved (% of capacity)", title="KV-cache occupancy")
    axes.legend(fontsize="small")
    return figure


@click.command("serve")
@scenario_argument
@click.option("--layout", "layouts", multiple=True, metavar="TPxPP", help="layout to replay, e.g. 8x1 or 4x2 (repeatable)")
@click.option("--plan", "plan", is_flag=True, help="also enumerate layouts and batch limits, print the best")
@click.option("--time-limit", type=FiniteFloat(min=1.0), default=None,
              help="seconds for the whole command; --plan replays the grid until then and says how much it covered")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path),
              help="write the results (with KV occupancy over time) as JSON")
@click.option("--kv-plot", "kv_plot", type=click.Path(dir_okay=False, path_type=Path), help="draw KV occupancy over time (.png/.svg/.pdf)")
def serve(scenario: Path, layouts: tuple[str, ...], plan: bool, json_path: Path | None, kv_plot: Path | None,
          time_limit: float | None = None, began: float | None = None) -> None:
    """Replay a serving workload (TTFT, TPOT, throughput, KV cache); --plan chooses a layout."""
    from simulator.serving.run import serving_setup

    began = time.monotonic() if began is None else began
    # The limit covers the whole process when opplan is the program (interpreter start-up included).
    deadline = None if time_limit is None else began + time_limit - startup_seconds()
    loaded = load_scenario(scenario)
    if loaded.serving is None:
        raise InputError("no serving workload: set workload.mode: inference and workload.requests", file=str(scenario),
                         field="workload.requests")
    setup = serving_setup(Section(dict(loaded.model_config), loaded.file, "model"), loaded.problem.cluster, loaded.serving)
    console, table = Console(width=max(Console().width, 160)), _table(f"{loaded.name}: {loaded.serving.description}")
    results: dict = {"scenario": loaded.name}
    # Under a time limit the plan goes first: the compared layouts only add context rows.
    planned = _plan(setup, loaded, console, deadline) if plan and deadline is not None else None
    results["layouts"] = _replay_layouts(setup, loaded, layouts, table, console, deadline)
    if plan:
        results["plan"], row = planned or _plan(setup, loaded, console, None)
        _row(table, *row)
    console.print(table)
    if plan:
        console.print(f"starting point (enumerated, not measured on hardware): {results['plan']['vllm']}")
        console.print(f"                                                       {results['plan']['tensorrt_llm']}")
    if kv_plot is not None:
        curves = [(_label(loaded, r["tp"], r["pp"]), r["kv_timeline"]) for r in results["layouts"]]
        save_figure(_kv_figure(curves), kv_plot, inputs=[scenario], option="--kv-plot")
    if json_path is not None:
        write_output(json_path, json.dumps(results, indent=1) + "\n", inputs=[scenario], option="--json")
