"""Running one sweep point: overrides -> scenario -> schedule -> replay -> one table row.

This is the function the Dask workers run, so it takes one picklable
:class:`PointJob` and never raises: whatever goes wrong is the point's result
(``status`` and ``error``), and the sweep goes on with the next point.

Statuses:

- ``ok``: replayed without violations;
- ``invalid``: replayed, but the timeline has violations (memory over capacity,
  deadlock, an unmet start time); metrics are those of the replay, ``error`` names
  the first violation;
- ``not-applicable``: the built-in schedule does not apply to this scenario (e.g.
  DualPipe on an odd number of stages);
- ``error``: the scenario, the schedule file or the planner failed; ``error`` says why.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opplan.planning import planned_schedule
from opplan.sweeps.overrides import apply_overrides
from opplan.sweeps.spec import PLANNER, Point, SweepSpec, builtin_names, is_schedule_file
from planner import schedules
from planner.schedules import NotApplicable
from simulator.engine import replay
from simulator.errors import InputError, OpplanError, ScheduleRejected
from simulator.limits import Limits, current_limits, using_limits
from simulator.metrics import Report, build_report
from simulator.scenario import Scenario, scenario_from_dict
from simulator.schedule import Schedule, load_schedule

__all__ = ["METRICS", "SERVING_METRICS", "serving_metrics", "NotApplicable", "PointJob", "builtin_schedule", "job_for", "metrics_of",
           "resolve_schedule", "run_point"]

#: Metric columns of a row, in table order (units in the names).
METRICS = (
    "makespan_ms",
    "bubble_ms",
    "max_bubble_ms",
    "bubble_ratio",
    "utilization",
    "mfu",
    "peak_memory_gb",
    "activation_peak_gb",
    "transfer_gb",
    "devices",
    "tasks",
    "violations",
)
#: Metric columns of a serving point (``workload.requests``): latency percentiles, throughput, KV cache.
SERVING_METRICS = ("ttft_p50_ms", "ttft_p90_ms", "ttft_p99_ms", "tpot_p50_ms", "tpot_p90_ms", "tpot_p99_ms", "output_tokens_per_s",
                   "total_tokens_per_s", "completed", "rejected", "queued_for_memory", "kv_peak", "kv_mean")


@dataclass(frozen=True)
class PointJob:
    """Everything a worker needs to run a point: plain data, no open files, picklable."""

    key: str
    fields: tuple[tuple[str, Any], ...]
    base_doc: Mapping[str, Any]
    base_file: str
    folder: str
    planner_time_limit_s: float | None = None
    #: The driver's limits: a Dask worker is another process and would otherwise use the defaults.
    limits: Limits = field(default_factory=Limits)

    @property
    def schedule(self) -> str | None:
        return dict(self.fields).get("schedule")


def job_for(spec: SweepSpec, point: Point) -> PointJob:
    return PointJob(
        key=point.key,
        fields=point.fields,
        base_doc=dict(spec.base_doc),
        base_file=str(spec.base_file),
        folder=str(spec.folder),
        planner_time_limit_s=spec.planner_time_limit_s,
        limits=current_limits(),
    )


def resolve_schedule(value: str | None, scenario: Scenario, *, folder: Path, time_limit_s: float | None = None) -> Schedule:
    """The schedule a ``schedule:`` value names, for ``scenario``.

    ``None``: the scenario's own schedule file; a ``.json``/``.yaml`` name: that file
    (relative to ``folder``); ``planner``: the bi-level MIP planner; otherwise a
    built-in schedule name. Raises :class:`NotApplicable` for a built-in that does
    not fit the scenario.
    """
    if value is None:
        if scenario.schedule_file is None:
            raise InputError("no schedule: the point names none and the scenario has no schedule: file", field="schedule")
        return load_schedule(scenario.schedule_file)
    if is_schedule_file(value):
        return load_schedule(folder / value)
    if value == PLANNER:
        return planned_schedule(scenario, time_limit=time_limit_s)  # None: the scenario's objective.time_limit_s
    return builtin_schedule(value, scenario)


def builtin_schedule(name: str, scenario: Scenario) -> Schedule:
    """The built-in schedule ``name`` for ``scenario``; :class:`NotApplicable` if it does not fit."""
    known = builtin_names()
    if name not in known:
        raise InputError(
            f"unknown schedule {name!r} (built-in: {', '.join(known)}; or a .json/.yaml file, or {PLANNER!r})", field="schedule"
        )
    return schedules.builtin_schedule(name, scenario)


def metrics_of(report: Report, tasks: int) -> dict[str, float | int]:
    """The row's metric columns from a replay report (milliseconds, gigabytes, ratios).

    ``bubble_ms`` is the mean per-device bubble, so ``bubble_ms / makespan_ms`` equals
    ``bubble_ratio``, the mean per-device bubble ratio.
    """
    devices = len(report.devices)
    return {
        "makespan_ms": report.makespan * 1e3,
        "bubble_ms": report.total_bubble / devices * 1e3 if devices else 0.0,
        "max_bubble_ms": report.max_bubble * 1e3,
        "bubble_ratio": report.mean_bubble_ratio,
        "utilization": report.mean_utilization,
        "mfu": sum(d.mfu for d in report.devices) / devices if devices else 0.0,
        "peak_memory_gb": report.peak_memory / 1e9,
        "activation_peak_gb": report.peak_activation / 1e9,
        "transfer_gb": report.transfer_bytes / 1e9,
        "devices": devices,
        "tasks": tasks,
        "violations": len(report.violations),
    }


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ScheduleRejected):
        shown = "; ".join(v.message for v in exc.violations[:3])
        more = f" (and {len(exc.violations) - 3} more)" if len(exc.violations) > 3 else ""
        return f"schedule rejected: {shown}{more}"
    if isinstance(exc, OpplanError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def serving_metrics(scenario: Scenario) -> dict[str, float]:
    """A serving scenario's row: its requests replayed on its ``parallel:`` tp x pp (no schedule)."""
    from simulator.serving.run import default_layout, serving_setup, simulate_serving
    from simulator.yamlio import Section

    setup = serving_setup(Section(dict(scenario.model_config), scenario.file, "model"), scenario.problem.cluster, scenario.serving)
    tp, pp = default_layout(scenario.parallel, scenario.problem.cluster)
    return simulate_serving(setup, tp=tp, pp=pp).metrics()


def run_point(job: PointJob) -> dict[str, Any]:
    """Run one point and return its row (never raises for a problem of the point itself)."""
    started = time.perf_counter()
    row: dict[str, Any] = {"key": job.key, "fields": dict(job.fields), "status": "error", "error": "", "schedule_name": ""}
    try:
        with using_limits(job.limits):
            _run(job, row)
    except NotApplicable as exc:
        row["status"] = "not-applicable"
        row["error"] = exc.message
    except Exception as exc:  # noqa: BLE001 - a failing point is a result, the sweep goes on
        row["error"] = _describe(exc)
    row["elapsed_s"] = time.perf_counter() - started
    return row


def _run(job: PointJob, row: dict[str, Any]) -> None:
    """Overrides -> scenario -> schedule -> replay, filling ``row``; raises for a failed point."""
    doc = apply_overrides(dict(job.base_doc), [(path, value) for path, value in job.fields if path != "schedule"])
    scenario = scenario_from_dict(doc, job.base_file)
    if scenario.serving is not None:
        row.update(serving_metrics(scenario), status="ok", schedule_name="serving")
        return
    schedule = resolve_schedule(job.schedule, scenario, folder=Path(job.folder), time_limit_s=job.planner_time_limit_s)
    row["schedule_name"] = schedule.name
    timeline = replay(scenario.problem, schedule)
    row.update(metrics_of(build_report(timeline), len(schedule)))
    if timeline.violations:
        row["status"] = "invalid"
        more = len(timeline.violations) - 1
        row["error"] = timeline.violations[0].message + (f" (and {more} more)" if more else "")
    else:
        row["status"] = "ok"
