"""How the scheduling MIP scales: solve time, gap and bubble against the number of tasks.

Run:  python benchmarks/mip_scaling.py [--time-limit 60] [--quick]

Instances: pipelines p x m with F = B = W = 1 ms on the chain placement (one stage per
device, memory limited to 1F1B's p activations) and on DualPipe's bidirectional
placement (memory limited to DualPipe's peak); 8 x 20 pipelines whose passes differ
(issue 12: F, B, W = 2, 2, 1 and 3, 4, 2 ms on the bidirectional placement at DualPipe's
peak, 3, 4, 2 on the chain at ZB-H1's; activations held from F to B; optima 106, 189 and
208 ms computed independently), warm-started with the better of list scheduling and the
built-in schedule; and random layered DAGs of 100 to 2000 operators on 4 devices
(training, 1 micro-batch; placement by the contiguous chain partition). Each instance is solved with both formulations of the lower level:
``tight`` (window big-M, symmetry breaking, tail cuts, neighbourhood search; the
default) and ``global-m`` (one horizon big-M, none of those). Every number in the table
is measured in this run; the ratio column compares the two formulations' makespans.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from planner.heuristics import best_list_schedule  # noqa: E402
from planner.memory import memory_like  # noqa: E402
from planner.mip.lower import FORMULATIONS, ScheduleSettings, solve_schedule  # noqa: E402
from planner.placements import by_operator, contiguous_partitions, pipeline_placements  # noqa: E402
from planner.schedules import generate  # noqa: E402
from planner.schedules.examples import example_scenario  # noqa: E402
from planner.taskgraph import TaskGraph  # noqa: E402
from simulator.cluster import Cluster, Device  # noqa: E402
from simulator.graph import Edge, Operator, OperatorGraph  # noqa: E402
from simulator.problem import Problem, Workload  # noqa: E402


def pipeline_instances(quick: bool):
    sizes = [(4, 8), (8, 20)] if quick else [(4, 8), (8, 20), (16, 32)]
    for p, m in sizes:
        scenario = example_scenario(stages=p, micro_batches=m, w_retained_gb=0.5, static_gb=0.0)
        placements = pipeline_placements(scenario.problem)
        limits = {f"gpu{i}": p * 1e9 for i in range(p)}
        yield f"pipeline {p}x{m} chain", TaskGraph(scenario.problem, placements["chain"]), limits, None, None
        if "bidirectional" in placements:
            limits = {f"gpu{i}": (p + 1) * 1e9 for i in range(p)}
            yield f"pipeline {p}x{m} bidirectional", TaskGraph(scenario.problem, placements["bidirectional"]), limits, None, None


#: (F, B, W ms, placement, built-in whose peak memory is the limit, known optimum ms)
UNEQUAL_PASSES = [(2, 2, 1, "bidirectional", "dualpipe", 106), (3, 4, 2, "bidirectional", "dualpipe", 189),
                  (3, 4, 2, "chain", "zb-h1", 208)]


def unequal_pass_instances():
    for F, B, W, placement, like, optimum in UNEQUAL_PASSES:
        scenario = example_scenario(stages=8, micro_batches=20, F=F, B=B, W=W, w_retained_gb=0.0, static_gb=0.0)
        graph = TaskGraph(scenario.problem, pipeline_placements(scenario.problem)[placement])
        limit = memory_like(scenario, like)
        builtin = graph.order_from_schedule(generate(like, scenario))
        yield f"8x20 {placement} {F},{B},{W} @{like}", graph, {d: limit for d in graph.devices}, builtin, optimum * 1e-3


def random_dag(ops: int, seed: int = 0) -> Problem:
    """A layered DAG: ~8 operators per layer, each with 1-3 inputs from the previous layer."""
    rng = random.Random(seed)
    width = 8
    layers = [list(range(i, min(i + width, ops))) for i in range(0, ops, width)]
    operators = [
        Operator(f"op{i}", measured={"*": {"F": rng.uniform(0.5, 2.0) * 1e-3, "B": rng.uniform(0.5, 2.0) * 1e-3,
                                           "W": rng.uniform(0.2, 1.0) * 1e-3}}, activation_bytes=1e8)
        for i in range(ops)
    ]
    edges = []
    for prev, layer in zip(layers, layers[1:]):
        for j in layer:
            for i in rng.sample(prev, k=min(len(prev), rng.randint(1, 3))):
                edges.append(Edge(f"op{i}", f"op{j}", 1e6))
    gpus = tuple(Device(f"gpu{i}", "t", 80e9, 1e15) for i in range(4))
    return Problem(OperatorGraph(f"dag{ops}", tuple(operators), tuple(edges)), Cluster("4", gpus, ideal_interconnect=True),
                   Workload(1))


def dag_instances(quick: bool):
    for ops in ([100, 500] if quick else [100, 500, 2000]):
        problem = random_dag(ops)
        yield f"DAG {ops} ops", TaskGraph(problem, by_operator(problem, contiguous_partitions(problem, 4))), None, None, None


def _row(name: str, graph: TaskGraph, limits, builtin, optimum, time_limit: float, formulations=FORMULATIONS,
         deterministic: bool = True) -> None:
    """Solve one instance with each formulation; print a line each."""
    warm = best_list_schedule(graph, memory_limit=limits, seeds=0)
    warm_order, warm_span = (warm.order, warm.makespan) if warm else (None, float("nan"))
    if builtin is not None and graph.makespan(graph.left_shift(builtin)) < warm_span:
        warm_order, warm_span = builtin, graph.makespan(graph.left_shift(builtin))
    busy = {d: 0.0 for d in graph.devices}
    for i, (device, _) in enumerate(graph.device_stream):
        busy[device] += graph.duration[i]
    spans = {}
    for formulation in formulations:
        began = time.monotonic()
        settings = ScheduleSettings(time_limit=time_limit, formulation=formulation, deterministic=deterministic)
        result = solve_schedule(graph, settings, warm_order=warm_order, memory_limit=limits)
        seconds = time.monotonic() - began
        spans[formulation] = result.makespan
        bubble = max(result.makespan - b for b in busy.values()) / result.makespan
        unit = 1e3 if result.makespan < 1 else 1.0
        best = f"{optimum * unit:.4g}" if optimum else "-"
        print(f"{name:32} {formulation:9} {len(graph.tasks):6d} {result.binaries:9d} {warm_span * unit:9.4g} "
              f"{result.makespan * unit:9.4g} {result.lower_bound * unit:9.4g} {best:>7} {100 * result.gap:6.2f} "
              f"{100 * bubble:8.2f} {seconds:8.1f} {result.makespan / spans.get('tight', result.makespan):8.3f}  {result.source}"
              + ("  (restricted)" if result.restricted else ""), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--time-limit", type=float, default=60.0)
    parser.add_argument("--quick", action="store_true", help="smaller instances only")
    parser.add_argument("--only", default=None, metavar="TEXT", help="only the instances whose name contains TEXT")
    parser.add_argument("--no-planner", action="store_true", help="skip the end-to-end planner line")
    parser.add_argument("--formulation", choices=FORMULATIONS, default=None, help="only this formulation")
    parser.add_argument("--nondeterministic", action="store_true", help="engines stopped by the wall clock (faster, not reproducible)")
    args = parser.parse_args()
    header = f"{'instance':32} {'form.':9} {'tasks':>6} {'binaries':>9} {'warm':>9} {'makespan':>9} {'bound':>9} {'optimum':>7} "
    header += f"{'gap %':>6} {'bubble %':>8} {'seconds':>8} {'vs tight':>8}  found by"
    print(header)
    print("-" * len(header))
    instances = [*pipeline_instances(args.quick), *unequal_pass_instances(), *dag_instances(args.quick)]
    for name, graph, limits, builtin, optimum in instances:
        if args.only is None or args.only in name:
            _row(name, graph, limits, builtin, optimum, args.time_limit,
                 (args.formulation,) if args.formulation else FORMULATIONS, not args.nondeterministic)
    if not args.no_planner:
        planner_end_to_end(args.time_limit)


def planner_end_to_end(time_limit: float) -> None:
    """The whole bi-level planner on DualPipe's setting, held to DualPipe's peak memory."""
    from planner.bilevel import plan
    from simulator.engine import replay
    from simulator.metrics import build_report

    scenario = example_scenario(stages=8, micro_batches=20, w_retained_gb=0.5, static_gb=10)
    began = time.monotonic()
    result = plan(scenario, time_limit=time_limit, memory_limit_bytes=memory_like(scenario, "dualpipe"))
    seconds = time.monotonic() - began
    planned = build_report(result.timeline)
    dualpipe = build_report(replay(scenario.problem, generate("dualpipe", scenario)))
    print()
    print("bi-level planner, DualPipe setting 8x20 (F = B = W = 1 ms), memory held to DualPipe's peak")
    print(f"  planned makespan {planned.makespan * 1e3:.4g} ms, bubble {planned.max_bubble * 1e3:.4g} ms, peak "
          f"{planned.peak_memory / 1e9:.4g} GB, gap {100 * result.lower.gap:.2f}%, {seconds:.1f} s; DualPipe bubble "
          f"{dualpipe.max_bubble * 1e3:.4g} ms, peak {dualpipe.peak_memory / 1e9:.4g} GB; ratio "
          f"{planned.max_bubble / dualpipe.max_bubble:.3f}")


if __name__ == "__main__":
    main()
