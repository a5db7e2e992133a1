"""``opplan plan``: the bi-level MIP planner from the command line.

Prints a progress line while the solver runs (incumbent, bound, gap), then the
candidates the upper level weighed, the certificate (lower bound and gap), and the
simulator's report of the planned schedule. ``-o`` writes the schedule document.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import click
from rich.console import Console

from opplan.commands.common import FiniteFloat, limit_options, scenario_argument, write_reports, wrote
from opplan.output import check_outputs, write_output
from opplan.planning import print_plan, progress_printer, run_planner, verbose_option
from planner.mip import FORMULATIONS
from simulator.errors import InputError
from simulator.metrics import build_report
from simulator.report import fmt_bytes, print_report
from simulator.scenario import OBJECTIVES, Scenario, load_scenario
from simulator.schedule import schedule_to_dict

__all__ = ["plan_command", "progress_printer", "print_plan"]


@click.command("plan")
@scenario_argument
@click.option("--objective", type=click.Choice(OBJECTIVES), default=None, help="what to minimise (default: the scenario's)")
@click.option("--time-limit", type=FiniteFloat(min=1.0), default=None, help="seconds for the whole plan")
@click.option("--memory-limit", "memory_limit_gb", type=FiniteFloat(min=0.0, min_open=True, max=1e6), default=None,
              help="per-device memory limit in GB (decimal, as datasheets)")
@click.option("--memory-like", "like_schedule", default=None, metavar="SCHEDULE",
              help="limit memory to the peak of this built-in schedule (e.g. dualpipe)")
@click.option("--formulation", type=click.Choice(FORMULATIONS), default="tight", show_default=True)
@click.option("--nondeterministic", is_flag=True, help="solvers stopped by the wall clock: often better on an idle"
              " machine, but two runs may differ (default: work counts set from --time-limit, the same plan every run)")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None, help="write the schedule")
@click.option("--trace", "trace_path", type=click.Path(dir_okay=False, path_type=Path), help="write a Perfetto trace")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), help="write the report as JSON")
@click.option("--space", type=click.Choice(("auto", "hybrid", "pipeline")), default="auto", show_default=True,
              help="hybrid: search dp/tp/pp/ep, ZeRO, micro-batch, recompute, schedule (auto: for transformer/moe/two_tower)")
@click.option("--workers", type=click.IntRange(min=0), default=0, help="hybrid: Dask worker processes replaying layouts (0: here)")
@click.option("--scheduler", metavar="ADDRESS", default=None, help="hybrid: replay on an existing Dask cluster")
@limit_options
@verbose_option
def plan_command(
    scenario: Path,
    objective: str | None,
    time_limit: float | None,
    memory_limit_gb: float | None,
    like_schedule: str | None,
    formulation: str,
    nondeterministic: bool,
    output: Path | None,
    trace_path: Path | None,
    json_path: Path | None,
    verbose: bool,
    space: str = "auto",
    workers: int = 0,
    scheduler: str | None = None,
) -> None:
    """Plan SCENARIO with the bi-level MIP (or, for models with layers, the hybrid-space search);
    print the certificate and the simulated report.

    The time limit counts from the start of the command (reading the scenario included)."""
    began = time.monotonic()
    loaded = load_scenario(scenario)  # once: the full DeepSeek-V3 takes seconds to read
    if _serving_plan(loaded, scenario, json_path, time_limit, began,
                     {"--output": output, "--trace": trace_path, "--objective": objective}):
        return
    if _hybrid_plan(loaded, scenario, space, time_limit, workers, scheduler, output, began,
                    {"--json": json_path, "--trace": trace_path}):
        return
    from planner.memory import memory_like

    outputs = {"--output": output, "--json": json_path, "--trace": trace_path}
    check_outputs(outputs, inputs=[scenario])
    if memory_limit_gb is not None and like_schedule is not None:
        raise InputError("give --memory-limit or --memory-like, not both", field="--memory-like")
    limit = memory_limit_gb * 1e9 if memory_limit_gb is not None else None
    console = Console(width=max(Console().width, 132))
    if like_schedule is not None:
        limit = memory_like(loaded, like_schedule)
        console.print(f"memory limit: {fmt_bytes(limit)} per device (the peak of {like_schedule})", highlight=False)
    result = run_planner(loaded, time_limit=time_limit, memory_limit_bytes=limit, console=console, began=began,
                         verbose=verbose, objective=objective, formulation=formulation, deterministic=not nondeterministic,
                         log=lambda line: console.print(line, highlight=False))
    print_plan(result, console)
    print_report(build_report(result.timeline), console, title=f"{loaded.name}: planned schedule")
    if output is not None:
        wrote(write_output(output, json.dumps(schedule_to_dict(result.schedule), indent=1) + "\n", inputs=[scenario],
                           option="--output"))
    write_reports(result.timeline, json_path=json_path, trace_path=trace_path, inputs=[scenario])


def _hybrid_plan(loaded: Scenario, scenario: Path, space: str, time_limit: float | None, workers: int, scheduler: str | None,
                 output: Path | None, began: float, pipeline_only: dict[str, Path | None]) -> bool:
    """Dispatch to :mod:`planner.search` for ``--space hybrid`` or a transformer / moe / two_tower model."""
    from opplan.commands.plan_hybrid import plan_hybrid
    from simulator.model_shapes import SHAPES

    if space == "pipeline":
        return False
    training = loaded.problem.workload.mode == "training"
    if space == "auto" and (str(loaded.model_config.get("type", "")) not in SHAPES or not training):
        return False
    if not training:
        raise InputError("the hybrid search plans training steps; plan inference with --space pipeline, or give"
                         " workload.requests and use the serving planner", file=str(scenario), field="workload.mode")
    for flag, given in pipeline_only.items():
        if given is not None:
            raise InputError(f"{flag} applies to pipeline plans; a hybrid plan is written with -o", field=flag)
    check_outputs({"--output": output}, inputs=[scenario])
    plan_hybrid(loaded, scenario, time_limit=time_limit or loaded.objective.time_limit_s, workers=workers, scheduler=scheduler,
                output=output, console=Console(width=max(Console().width, 200)), began=began)
    return True


def _serving_plan(loaded: Scenario, scenario: Path, json_path: Path | None, time_limit: float | None, began: float,
                  training_only: dict[str, object]) -> bool:
    """A serving workload (``workload.requests``) is planned by :mod:`planner.serving`: the same
    enumeration and serving replay as ``opplan serve --plan``, with ``objective.serving`` and its SLO,
    within ``--time-limit`` (else the scenario's ``objective.time_limit_s``) from ``began``."""
    from opplan.commands.serve import serve

    if loaded.serving is None:
        return False
    for flag, given in training_only.items():
        if given is not None:
            raise InputError(f"{flag} applies to training plans; a serving plan takes objective.serving and objective.slo"
                             " in the scenario", field=flag)
    click.get_current_context().invoke(serve, scenario=scenario, layouts=(), plan=True, json_path=json_path, kv_plot=None,
                                       time_limit=time_limit or loaded.objective.time_limit_s, began=began)
    return True
