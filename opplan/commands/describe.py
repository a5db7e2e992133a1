"""``opplan describe SCENARIO.yaml``: what the model is, before anything is planned.

Prints the graph's size (operators by kind), parameters, FLOPs and memory per
micro-batch, the critical path of one micro-batch on the scenario's device type, and
the groups the planner's upper level places. Everything is read off the operator graph
and the cost model, so it is also a quick check that a new model section means what
its author thinks.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from opplan.commands.common import limit_options, scenario_argument
from opplan.commands.memory_table import memory_table
from simulator.graph import KINDS, OperatorGraph
from simulator.paths import CriticalPath, critical_path, operator_kind
from simulator.problem import Problem
from simulator.report import fmt_bytes, fmt_ms
from simulator.scenario import load_scenario
from simulator.yamlio import Section

__all__ = ["describe"]

#: Builders that know more than the graph says (tokens, presets, activated parameters).
_FACTS: dict[str, str] = {
    "transformer": "simulator.models.transformer",
    "moe": "simulator.models.moe",
    "two_tower": "simulator.models.multimodal",
}
#: At most this many rows of groups or path operators are listed.
MAX_ROWS = 40


def fmt_flops(flops: float) -> str:
    for unit, scale in (("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6)):
        if abs(flops) >= scale:
            return f"{flops / scale:.4g} {unit}"
    return f"{flops:.4g} FLOP"


def fmt_count(count: float) -> str:
    for unit, scale in (("e12", 1e12), ("e9", 1e9), ("e6", 1e6), ("e3", 1e3)):
        if abs(count) >= scale:
            return f"{count / scale:.4g}{unit}"
    return f"{count:.4g}"


def _kind_flops(graph: OperatorGraph, kind: str) -> float:
    return sum(op.flops.get(kind, 0.0) for op in graph.operators)


def _model_facts(model_type: str, section: Section) -> list[tuple[str, str]]:
    module = _FACTS.get(model_type)
    if module is None:
        return []
    facts: Callable[[Section], list[tuple[str, str]]] = importlib.import_module(module).model_facts
    return facts(section)


def _summary(scenario_name: str, problem: Problem, facts: list[tuple[str, str]]) -> Table:
    graph, workload = problem.graph, problem.workload
    table = Table(title=f"{scenario_name}: model {graph.name!r}", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    for key, value in facts:
        table.add_row(key, value)
    table.add_row("operators / edges", f"{len(graph.operators)} / {len(graph.edges)}")
    table.add_row("parameters", fmt_count(graph.total("params")))
    flops = " | ".join(f"{kind} {fmt_flops(_kind_flops(graph, kind))}" for kind in KINDS)
    table.add_row("FLOPs per micro-batch", flops)
    table.add_row(
        "activations per micro-batch",
        f"{fmt_bytes(graph.total('activation_bytes'))} (kept for W: {fmt_bytes(graph.total('w_retained_bytes'))})",
    )
    table.add_row("static memory (weights, grads, Adam)", fmt_bytes(graph.total("static_bytes")))
    devices = problem.cluster.devices
    capacity = sum(d.memory_bytes for d in devices)
    table.add_row("cluster", f"{len(devices)} x {devices[0].type}, {fmt_bytes(capacity)} memory in all")
    plural = "es" if workload.micro_batches != 1 else ""
    table.add_row("workload", f"{workload.micro_batches} micro-batch{plural}, {workload.mode}")
    return table


def _by_kind(graph: OperatorGraph) -> Table:
    table = Table(title="operators by kind")
    for header in ("kind", "count", "stream", "params", "F FLOPs", "activations", "static"):
        table.add_column(header, justify="right" if header not in ("kind", "stream") else "left")
    kinds: dict[str, list] = {}
    for op in graph.operators:
        kinds.setdefault(operator_kind(op.name), []).append(op)
    for kind, ops in kinds.items():
        table.add_row(
            kind,
            str(len(ops)),
            "/".join(sorted({op.stream for op in ops})),
            fmt_count(sum(op.params for op in ops)),
            fmt_flops(sum(op.flops.get("F", 0.0) for op in ops)),
            fmt_bytes(sum(op.activation_bytes for op in ops)),
            fmt_bytes(sum(op.static_bytes for op in ops)),
        )
    return table


def _groups(graph: OperatorGraph) -> Table:
    groups: dict[str, list] = {}
    for op in graph.operators:
        groups.setdefault(op.group or op.name, []).append(op)
    table = Table(title=f"{len(groups)} groups (coarsening units)")
    for header in ("group", "ops", "params", "F+B+W FLOPs", "activations", "static"):
        table.add_column(header, justify="left" if header == "group" else "right")
    for index, (group, ops) in enumerate(groups.items()):
        if index == MAX_ROWS:
            table.add_row(f"... {len(groups) - MAX_ROWS} more", "", "", "", "", "")
            break
        table.add_row(
            group,
            str(len(ops)),
            fmt_count(sum(op.params for op in ops)),
            fmt_flops(sum(sum(op.flops.values()) for op in ops)),
            fmt_bytes(sum(op.activation_bytes for op in ops)),
            fmt_bytes(sum(op.static_bytes for op in ops)),
        )
    return table


def _path_text(path: CriticalPath) -> str:
    ops = list(path.operators)
    if len(ops) > MAX_ROWS:
        half = MAX_ROWS // 2
        ops = ops[:half] + [f"... {len(ops) - 2 * half} more ..."] + ops[-half:]
    return (
        f"critical path of one micro-batch on {path.device_type}: {fmt_ms(path.seconds)} ms"
        f" over {len(path.operators)} operators (F + B + W, transfers left out)\n  " + " -> ".join(ops)
    )


@click.command()
@scenario_argument
@limit_options
def describe(scenario: Path) -> None:
    """Summarise a scenario's model: operators, parameters, FLOPs, memory, critical path, groups."""
    loaded = load_scenario(scenario)
    problem = loaded.problem
    model_type = str(loaded.model_config.get("type", ""))
    facts = _model_facts(model_type, Section(dict(loaded.model_config), file=loaded.file, path="model"))
    console = Console(width=max(Console().width, 132))
    console.print(_summary(loaded.name, problem, [("type", model_type), *facts]))
    console.print(_by_kind(problem.graph))
    console.print(_path_text(critical_path(problem)))
    console.print(_groups(problem.graph))
    if (memory := memory_table(loaded)) is not None:
        console.print(memory)
