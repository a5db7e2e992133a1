"""``opplan profile SCENARIO.yaml -o FILE``: measured operator times for a scenario, as a ``measured:`` file.

Two sources:

- ``--device cuda|cpu`` builds the scenario's operators (``transformer``, ``moe``,
  ``two_tower``) as PyTorch modules at its shapes, one tensor-parallel rank's share
  (``--tp``), and times them by the shared reference's method (:mod:`opplan.profile.measure`).
  Needs PyTorch (``pip install opplan[profile]``); ``--device cpu`` with a small model
  runs the same code without a GPU.
- ``--trace TRACE.json`` imports a ``torch.profiler`` Chrome trace of a real training
  step, mapping kernels to operators by module / annotation names (``--map REGEX=OP``);
  no PyTorch needed.

The file is keyed by ``--device-type`` (default: the scenario's first device type when
measuring on a GPU or importing a trace; ``cpu`` on a CPU, so that CPU times are never
taken for a GPU's by accident).
"""

from __future__ import annotations

import datetime
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from opplan.commands.common import limit_options, scenario_argument, wrote
from opplan.output import check_output, write_output
from simulator.errors import InputError
from simulator.measured import apply_measured
from simulator.scenario import load_scenario
from simulator.yamlio import Section

__all__ = ["profile_command"]


def _measure_rows(model: Section, device: str, tp: int, repeats: int, warmup: int, threads: int) -> tuple[dict, dict]:
    try:
        import torch
    except ImportError:
        raise InputError("opplan profile --device needs PyTorch: pip install 'opplan[profile]' (or import a trace with --trace)",
                         field="--device") from None
    from opplan.profile.plan import profile_items
    from opplan.profile.run import pick_device, run_items

    items = profile_items(model, tp)
    target = pick_device(device, threads)
    precision = str(model.raw("precision", "bf16"))
    results = run_items(items, target, precision, repeats=repeats, warmup=warmup)
    rows = {
        r.item.pattern: {"F": r.measurement.forward_ms, "B": r.measurement.backward_ms, "W": r.measurement.weight_ms,
                         "activation_MiB": r.measurement.saved_bytes / 2**20}
        for r in results
    }
    name = torch.cuda.get_device_name(target) if target.type == "cuda" else "cpu"
    meta = {"source": "measured", "device": name, "torch": str(torch.__version__), "tp": tp, "repeats": repeats, "warmup": warmup,
            "cpu_threads": torch.get_num_threads() if target.type == "cpu" else None,
            "method": "F; B = autograd.grad(out, [x]); W = full - B; activations from saved_tensors_hooks (median times)"}
    return rows, meta


def _trace_rows(trace: Path, maps: tuple[str, ...], operators: set[str]) -> tuple[dict, dict]:
    from opplan.profile.trace import load_trace, operator_times, parse_rules

    times = operator_times(load_trace(trace), parse_rules(maps), operators)
    if not times.forward and not times.backward:
        raise InputError("no kernel or CPU operator in the trace falls inside a range mapped to an operator of this model"
                         " (add --map REGEX=OPERATOR)", file=str(trace))
    rows = {}
    for op in sorted(set(times.forward) | set(times.backward)):
        row = {"F": times.forward.get(op, 0.0) * 1e3}
        if op in times.backward:
            row["backward"] = times.backward[op] * 1e3
        rows[op] = row
    meta = {"source": f"torch.profiler trace {trace.name}", "leaves": times.leaves,
            "unmapped_ms": round(times.unmapped_seconds * 1e3, 6), "micro_batches": max(times.occurrences.values())}
    return rows, meta


def _print(rows: dict, device_type: str) -> None:
    table = Table(title=f"measured ({device_type}), ms per micro-batch")
    for column in ("operators", "F", "B", "W", "backward", "activations MiB"):
        table.add_column(column, justify="left" if column == "operators" else "right")
    for pattern, row in rows.items():
        cells = [f"{row[k]:.4g}" if k in row else "-" for k in ("F", "B", "W", "backward", "activation_MiB")]
        table.add_row(pattern, *cells)
    Console().print(table)


@click.command("profile")
@scenario_argument
@limit_options
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True, help="measured: file to write")
@click.option("--device", type=click.Choice(["cuda", "cpu"]), default="cuda", show_default=True, help="where to measure")
@click.option("--trace", type=click.Path(dir_okay=False, path_type=Path), help="import a torch.profiler Chrome trace instead")
@click.option("--map", "maps", multiple=True, metavar="REGEX=OP", help="trace range name -> operator (repeatable)")
@click.option("--tp", type=click.IntRange(min=1), default=1, show_default=True, help="tensor-parallel ranks (one rank's share)")
@click.option("--repeats", type=click.IntRange(min=1), default=30, show_default=True)
@click.option("--warmup", type=click.IntRange(min=0), default=8, show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True, help="CPU threads (--device cpu)")
@click.option("--device-type", help="device type to key the times by (default: see the command's help)")
def profile_command(scenario: Path, output: Path, device: str, trace: Path | None, maps: tuple[str, ...], tp: int,
                    repeats: int, warmup: int, threads: int, device_type: str | None) -> None:
    """Measure the scenario's operators (or import a trace) into a measured: file."""
    inputs = [scenario] + ([trace] if trace else [])
    check_output(output, option="--output", inputs=inputs)  # before minutes of measuring, not after
    loaded = load_scenario(scenario)
    model = Section(dict(loaded.model_config), file=str(scenario), path="model")
    operators = {op.name for op in loaded.problem.graph.operators}
    if trace is not None:
        rows, meta = _trace_rows(trace, maps, operators)
    else:
        rows, meta = _measure_rows(model, device, tp, repeats, warmup, threads)
    if device_type is None:
        device_type = "cpu" if trace is None and device == "cpu" else loaded.problem.cluster.devices[0].type
    meta["created"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    from opplan.profile.output import measured_document, render

    document = measured_document(rows, device_type, meta)
    # The file must apply to this model: every pattern matches, every value is valid.
    apply_measured(Section({"measured": document["measured"]}, file=str(output), path="model"), loaded.problem.graph.operators)
    path = write_output(output, render(document), inputs=inputs, option="--output")
    _print(rows, device_type)
    wrote(path)
