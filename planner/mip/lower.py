"""Lower level: the scheduling MIP for tasks already placed on devices.

Given where every task runs, decide when it starts and the order of tasks on every
device stream. Laid out in the fixed order of a job-shop model:

data      durations p, lags (transfer time between devices), heads r (release) and
          tails q from longest paths, an incumbent makespan U (warm start);
variables S_t start of task t, C makespan, y_ij = 1 iff i runs before j for every
          *free* pair (i, j) on one stream, optional per-device memory peak;
constraints
          precedence       S_j >= S_i + p_i + lag_ij
          disjunction      S_j >= S_i + p_i - M_ij (1 - y_ij);  S_i >= S_j + p_j - M_ji y_ij
          completion       S_t + p_t + q_t <= C                  (tail cut, a valid inequality)
          windows          r_t <= S_t <= U - p_t - q_t
          load             C >= max over streams (min r + work + min q)
          memory           at the start of every forward pass on a device:
                           static + sum_u delta_u [u before t] + alloc_t <= limit
objective makespan C (default), or C plus a weighted memory peak.

Pairs are only made binary when nothing else decides them: an ancestor always runs
first; micro-batches of one operator and kind with the same placement keep their
order (symmetry breaking: they are interchangeable); and time windows that cannot
overlap fix the order. Big-M values come from the windows (``M_ij = LS_i + p_i - r_j``),
not from a global horizon. :func:`formulations` lists the variants the benchmark
compares (``tight`` is the default; ``global-m`` drops windows, symmetry breaking
and tail cuts).
"""

from __future__ import annotations

import math
import os
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import cvxpy as cp
import numpy as np
import scipy.sparse as sp

from planner.mip import FORMULATIONS
from planner.mip.highs import run_highs
from planner.taskgraph import TaskGraph
from simulator.errors import InfeasibleError

__all__ = ["LowerLevelResult", "Progress", "solve_schedule", "FORMULATIONS"]


@dataclass(frozen=True)
class Progress:
    """One line of solver progress: incumbent, best bound, gap, seconds."""

    incumbent: float | None
    bound: float | None
    gap: float | None
    elapsed: float


@dataclass(frozen=True)
class LowerLevelResult:
    """The best order found, its left-shifted timing, and the certificate."""

    order: dict[tuple[str, str], list[int]]
    start: list[float]
    makespan: float
    lower_bound: float
    gap: float
    status: str
    solve_seconds: float
    binaries: int
    fixed_pairs: int
    constraints: int
    source: str  # "mip" or "warm start" (the MIP found nothing better in time)
    peak_memory: Mapping[str, float] = field(default_factory=dict)
    neighbourhoods: int = 0  # sub-MIPs solved by the neighbourhood search
    improvements: int = 0
    restricted: bool = False  # True when only pairs near the warm start were left to decide


@dataclass
class _Rows:
    """Sparse constraint rows ``A_S S + A_C C + A_y y <= b`` built up in Python lists."""

    s_rows: list[int] = field(default_factory=list)
    s_cols: list[int] = field(default_factory=list)
    s_vals: list[float] = field(default_factory=list)
    y_rows: list[int] = field(default_factory=list)
    y_cols: list[int] = field(default_factory=list)
    y_vals: list[float] = field(default_factory=list)
    c_coef: list[float] = field(default_factory=list)
    rhs: list[float] = field(default_factory=list)

    def add(self, s_terms: Sequence[tuple[int, float]], y_terms: Sequence[tuple[int, float]], c: float, b: float) -> None:
        row = len(self.rhs)
        for col, val in s_terms:
            self.s_rows.append(row)
            self.s_cols.append(col)
            self.s_vals.append(val)
        for col, val in y_terms:
            self.y_rows.append(row)
            self.y_cols.append(col)
            self.y_vals.append(val)
        self.c_coef.append(c)
        self.rhs.append(b)

    def __len__(self) -> int:
        return len(self.rhs)


def _pairs(graph: TaskGraph, formulation: str, latest: list[float]):
    """Classify every same-stream pair: fixed (first, second) or free (binary)."""
    tasks = graph.tasks
    release, p = graph.release, graph.duration
    signature: dict[int, tuple] = {}
    ops = graph.problem.graph.topological_order

    def sig(mb: int) -> tuple:
        if mb not in signature:
            signature[mb] = tuple(graph.device_of[type(tasks[0])(op, mb, "F")] for op in ops)
        return signature[mb]

    fixed: list[tuple[int, int]] = []
    free: list[tuple[int, int]] = []
    for members in graph.streams.values():
        for a_pos, i in enumerate(members):
            for j in members[a_pos + 1 :]:
                if graph.precedes(i, j):
                    fixed.append((i, j))
                    continue
                if graph.precedes(j, i):
                    fixed.append((j, i))
                    continue
                if formulation == "tight":
                    ti, tj = tasks[i], tasks[j]
                    if ti.op == tj.op and ti.kind == tj.kind and sig(ti.mb) == sig(tj.mb):
                        fixed.append((i, j) if ti.mb < tj.mb else (j, i))
                        continue
                    # Windows: if j cannot start before i could end at the latest... order forced.
                    if latest[i] + p[i] <= release[j] + 1e-9:
                        fixed.append((i, j))
                        continue
                    if latest[j] + p[j] <= release[i] + 1e-9:
                        fixed.append((j, i))
                        continue
                free.append((i, j))
    return fixed, free


def parse_highs_progress(line: str) -> tuple[float | None, float | None, float | None] | None:
    """(bound, incumbent, gap) from one line of HiGHS's branch-and-bound table, else None.

    >>> parse_highs_progress("   0   0   0   0.00%   63   66   4.55%   0  0  0  0  0.6s")
    (63.0, 66.0, 0.0455)
    >>> parse_highs_progress(" H  0   0   0   0.00%   63   inf   inf   0  0  0  0  0.6s")
    (63.0, None, None)
    """
    tokens = line.split()
    if len(tokens) < 8 or not tokens[-1].endswith("s"):
        return None
    if tokens[0].isalpha():
        tokens = tokens[1:]
    try:
        first = next(i for i, tok in enumerate(tokens) if tok.endswith("%"))
    except StopIteration:
        return None
    if first + 3 >= len(tokens):
        return None

    def number(tok: str) -> float | None:
        try:
            value = float(tok)
        except ValueError:
            return None
        return value if math.isfinite(value) else None

    bound, incumbent, gap = tokens[first + 1], tokens[first + 2], tokens[first + 3]
    if not gap.endswith("%") and gap not in ("inf", "Large"):
        return None
    gap_value = float(gap[:-1]) / 100 if gap.endswith("%") else None
    return number(bound), number(incumbent), gap_value


def _progress_reader(path: str, callback: Callable[[Progress], None], stop: threading.Event, started: float) -> None:
    """Tail HiGHS's log file and report (incumbent, bound, gap) lines as they appear."""
    position = 0
    while not stop.is_set():
        stop.wait(0.5)
        try:
            with open(path) as handle:
                handle.seek(position)
                chunk = handle.read()
                position = handle.tell()
        except OSError:
            continue
        for line in chunk.splitlines():
            parsed = parse_highs_progress(line)
            if parsed is not None:
                bound, incumbent, gap = parsed
                callback(Progress(incumbent=incumbent, bound=bound, gap=gap, elapsed=time.monotonic() - started))


def solve_schedule(
    graph: TaskGraph,
    *,
    warm_order: Mapping[tuple[str, str], Sequence[int]] | None = None,
    memory_limit: Mapping[str, float] | None = None,
    objective: str = "makespan",
    memory_weight: float = 1.0,
    time_limit: float = 60.0,
    mip_gap: float = 1e-4,
    formulation: str = "tight",
    progress: Callable[[Progress], None] | None = None,
    threads: int | None = None,
    lns_fraction: float = 0.6,
    lns_window: float = 8.0,
    lns_budget: float = 2.0,
    max_binaries: int = 40_000,
) -> LowerLevelResult:
    """Solve the scheduling MIP on ``graph``'s placement. Never returns nothing:
    without a better MIP solution in time, the warm start comes back with its gap."""
    if formulation not in FORMULATIONS:
        raise ValueError(f"unknown formulation {formulation!r}")
    began = time.monotonic()
    n = len(graph.tasks)
    p = list(graph.duration)
    release = list(graph.release)
    tail = list(graph.tail)
    lower = graph.lower_bound
    delta = graph.memory_delta()
    limits = {d: (memory_limit or {}).get(d, graph.problem.cluster.by_name[d].memory_bytes) for d in graph.devices}
    static = graph.static_memory
    for device in graph.devices:
        if static[device] > limits[device]:
            raise InfeasibleError(
                f"{device}: static memory {static[device] / 1e9:.4g} GB (weights, gradients, optimizer state)"
                f" exceeds its limit {limits[device] / 1e9:.4g} GB by {(static[device] - limits[device]) / 1e9:.4g} GB"
            )

    # -- data: incumbent from the warm start --------------------------------------------
    warm_start_times: list[float] | None = None
    upper = math.inf
    if warm_order is not None:
        warm_start_times = graph.left_shift(warm_order)
        upper = graph.makespan(warm_start_times)
    # A weighted objective may lengthen the schedule to save memory: then the warm start's
    # makespan is no bound on the answer and cannot shape the windows.
    window_upper = upper if objective == "makespan" else math.inf
    horizon = window_upper if math.isfinite(window_upper) else sum(p) + sum(a.lag for a in graph.arcs)
    latest = [horizon - p[t] - tail[t] for t in range(n)] if formulation == "tight" else [horizon - p[t] for t in range(n)]

    fixed, free = _pairs(graph, formulation, latest)
    restricted = False
    if len(free) > max_binaries and warm_start_times is not None:
        # Too many orders to decide at once: keep the pairs whose warm-start times are
        # closest free and fix the others as the warm start has them. The solver then
        # searches a neighbourhood of the warm start, so its dual bound is not a bound
        # for the whole problem: only the combinatorial bound is reported.
        ranked = sorted(free, key=lambda pair: abs(warm_start_times[pair[0]] - warm_start_times[pair[1]]))
        keep = ranked[:max_binaries]
        for i, j in ranked[max_binaries:]:
            fixed.append((i, j) if warm_start_times[i] <= warm_start_times[j] else (j, i))
        free = keep
        restricted = True
    k = len(free)
    rows = _Rows()
    # precedence: S_i - S_j <= -(p_i + lag)
    for arc in graph.arcs:
        rows.add([(arc.src, 1.0), (arc.dst, -1.0)], [], 0.0, -(p[arc.src] + arc.lag))
    # fixed stream order: S_i - S_j <= -p_i
    for i, j in fixed:
        if not graph.precedes(i, j):
            rows.add([(i, 1.0), (j, -1.0)], [], 0.0, -p[i])
    # disjunctions with per-pair big-M
    for q, (i, j) in enumerate(free):
        m_ij = max(latest[i] + p[i] - release[j], p[i])
        m_ji = max(latest[j] + p[j] - release[i], p[j])
        # y=1: i before j  ->  S_i + p_i <= S_j + M_ij (1 - y)
        rows.add([(i, 1.0), (j, -1.0)], [(q, m_ij)], 0.0, m_ij - p[i])
        # y=0: j before i  ->  S_j + p_j <= S_i + M_ji y
        rows.add([(j, 1.0), (i, -1.0)], [(q, -m_ji)], 0.0, -p[j])
    # completion (+ tail cut in the tight formulation): S_t + p_t + q_t - C <= 0
    for t in range(n):
        rows.add([(t, 1.0)], [], -1.0, -(p[t] + (tail[t] if formulation == "tight" else 0.0)))

    # memory: at each allocation on a device, the live bytes stay under the limit
    pair_index = {pair: q for q, pair in enumerate(free)}
    fixed_before = set(fixed)
    memory_rows: dict[str, list[int]] = {d: [] for d in graph.devices}
    need_memory = any(a > 0 for a, _ in delta)
    if need_memory:
        device_tasks: dict[str, list[int]] = {}
        for t in range(n):
            device_tasks.setdefault(graph.device_stream[t][0], []).append(t)
        for device, members in device_tasks.items():
            change = {u: delta[u][0] - delta[u][1] for u in members}  # net bytes left behind by u
            if all(abs(change[u]) < 1e-12 for u in members) and not any(delta[u][0] for u in members):
                continue
            for t in members:
                if delta[t][0] <= 0:
                    continue
                constant = static[device] + delta[t][0]
                y_terms: list[tuple[int, float]] = []
                for u in members:
                    if u == t or abs(change[u]) < 1e-15:
                        continue
                    if (u, t) in fixed_before or graph.precedes(u, t):
                        constant += change[u]
                    elif (t, u) in fixed_before or graph.precedes(t, u):
                        continue
                    else:
                        q = pair_index.get((u, t))
                        if q is not None:  # y_q = 1 means u before t
                            y_terms.append((q, change[u]))
                        else:
                            q = pair_index[(t, u)]  # y_q = 1 means t before u -> u before t is (1 - y_q)
                            constant += change[u]
                            y_terms.append((q, -change[u]))
                memory_rows[device].append(len(rows))
                rows.add([], y_terms, 0.0, limits[device] - constant)

    # -- variables -------------------------------------------------------------------------
    eps = cp.Parameter(nonneg=True, name="earliness_weight", value=0.0)  # >0 only inside the neighbourhood search
    start = cp.Variable(n, name="start")
    makespan = cp.Variable(name="makespan")
    order = cp.Variable(k, boolean=True, name="before") if k else None
    m = len(rows)
    a_s = sp.csr_matrix((rows.s_vals, (rows.s_rows, rows.s_cols)), shape=(m, n))
    expr = a_s @ start + np.asarray(rows.c_coef) * makespan
    if order is not None:
        a_y = sp.csr_matrix((rows.y_vals, (rows.y_rows, rows.y_cols)), shape=(m, k))
        expr = expr + a_y @ order
    rhs = np.asarray(rows.rhs)
    constraints = [start >= np.asarray(release), makespan >= lower]
    peak = None
    if objective == "memory" and need_memory:
        # Per-device peak variables: the memory rows' left-hand sides are bounded by them.
        peak = cp.Variable(len(graph.devices), name="peak")
        mem_idx = [r for d in graph.devices for r in memory_rows[d]]
        other = np.setdiff1d(np.arange(m), np.asarray(mem_idx, dtype=int))
        constraints.append(expr[other] <= rhs[other])
        for d_index, device in enumerate(graph.devices):
            idx = memory_rows[device]
            if idx:
                # live_bytes = limit - rhs + lhs ; require live <= peak_d <= limit
                constraints.append(expr[idx] - rhs[idx] + limits[device] <= peak[d_index])
        constraints.append(peak <= np.asarray([limits[d] for d in graph.devices]))
    else:
        constraints.append(expr <= rhs)
    if formulation == "tight" and math.isfinite(window_upper):
        constraints.append(start <= np.asarray([window_upper - p[t] - tail[t] for t in range(n)]))
        constraints.append(makespan <= window_upper)
    if objective == "memory" and peak is not None:
        scale_time = max(upper if math.isfinite(upper) else lower, 1e-12)
        scale_memory = max(max(limits.values()), 1e-12)
        goal = cp.Minimize(makespan / scale_time + memory_weight * cp.max(peak) / scale_memory + eps * cp.sum(start))
    else:
        goal = cp.Minimize(makespan + eps * cp.sum(start))

    # -- warm start, then large-neighbourhood search, then the full MIP ----------------------
    # HiGHS receives a MIP start only through CVXPY's solver cache: solving once with the
    # order fixed (bounds lo = hi = the incumbent's order) leaves that solution in the
    # cache, and the next solve with warm_start=True hands it to HiGHS. The same bounds
    # fix everything outside a time window in the neighbourhood search: each sub-MIP
    # reorders only the tasks of one window (a few hundred binaries) and is solved to
    # optimality in a second or two; the last, full solve proves the bound.
    lo = cp.Parameter(k, name="order_lo") if k else None
    hi = cp.Parameter(k, name="order_hi") if k else None
    if order is not None:
        constraints += [order >= lo, order <= hi]
    problem = cp.Problem(goal, constraints)
    options: dict = {"mip_rel_gap": mip_gap}
    if threads:
        options["threads"] = threads
    status = "no solve"
    lns_rounds = 0
    lns_improvements = 0

    def order_values(task_order: Mapping[tuple[str, str], Sequence[int]]) -> np.ndarray:
        position = {t: pos for members in task_order.values() for pos, t in enumerate(members)}
        return np.array([1.0 if position[i] < position[j] else 0.0 for i, j in free])

    def fixed_solve(task_order: Mapping[tuple[str, str], Sequence[int]]) -> None:
        values = order_values(task_order)
        lo.value, hi.value = values, values
        eps.value = 0.0
        run_highs(problem, time_limit=max(1.0, time_limit / 4), **options)

    original_upper = upper
    if warm_order is not None and order is not None and objective == "makespan":
        best_order = {key: list(v) for key, v in warm_order.items()}
        best_starts = list(warm_start_times or [])
        best_span, best_sum = upper, sum(best_starts)
        stream_size = max(len(v) for v in graph.streams.values())
        width = max(best_span * lns_window / max(stream_size, 1), max(p))
        deadline = began + lns_fraction * time_limit
        while time.monotonic() < deadline and best_span > lower + 1e-9 and width <= 2 * best_span:
            improved = False
            left = 0.0
            while left < best_span and time.monotonic() < deadline and best_span > lower + 1e-9:
                inside = np.array([left <= best_starts[t] < left + width for t in range(n)])
                mask = np.array([inside[i] and inside[j] for i, j in free], dtype=bool)
                left += width / 2
                if not mask.any():
                    continue
                values = order_values(best_order)
                lo.value = np.where(mask, 0.0, values)
                hi.value = np.where(mask, 1.0, values)
                eps.value = 1e-4 / max(n, 1) / max(best_span, 1e-12)
                budget = min(lns_budget, max(0.5, deadline - time.monotonic()))
                run_highs(problem, time_limit=budget, **options)
                lns_rounds += 1
                if start.value is None or problem.status not in ("optimal", "optimal_inaccurate", "user_limit"):
                    continue
                candidate = graph.order_from_starts(list(start.value))
                try:
                    starts_c = graph.left_shift(candidate)
                except InfeasibleError:
                    continue
                span_c = graph.makespan(starts_c)
                if span_c < best_span - 1e-9 or (span_c <= best_span + 1e-9 and sum(starts_c) < best_sum - 1e-9):
                    if _within_memory(graph, candidate, delta, limits):
                        improved = improved or span_c < best_span - 1e-9 or sum(starts_c) < best_sum - 1e-6
                        best_order, best_starts, best_span, best_sum = candidate, starts_c, span_c, sum(starts_c)
                        lns_improvements += 1
                        if progress is not None:
                            progress(Progress(best_span, lower, (best_span - lower) / best_span, time.monotonic() - began))
            if not improved:
                width *= 1.5
        warm_order, warm_start_times, upper = best_order, best_starts, best_span
        fixed_solve(warm_order)
    if warm_order is not None and order is not None and objective != "makespan":
        fixed_solve(warm_order)  # seed HiGHS with the warm start for the weighted objective too
    if order is not None:
        lo.value = np.zeros(k)
        hi.value = np.ones(k)
    eps.value = 0.0
    remaining = max(1.0, time_limit - (time.monotonic() - began))
    log_path = None
    stop = threading.Event()
    reader = None
    if progress is not None:
        fd, log_path = tempfile.mkstemp(prefix="opplan-highs-", suffix=".log")
        os.close(fd)
        options["log_file"] = log_path
        reader = threading.Thread(target=_progress_reader, args=(log_path, progress, stop, began), daemon=True)
        reader.start()
    try:
        if upper > lower + 1e-9 or warm_order is None or objective != "makespan":
            run_highs(problem, time_limit=remaining, warm_start=True, **options)
        status = problem.status
    finally:
        stop.set()
        if reader is not None:
            reader.join(timeout=2)
        if log_path:
            os.unlink(log_path)

    stats = problem.solver_stats.extra_stats if problem.solver_stats is not None else None
    info = getattr(stats, "get", None)
    bound = lower
    dual = None
    primal_ok = start.value is not None and status in ("optimal", "optimal_inaccurate", "user_limit")
    if isinstance(stats, dict):
        dual = stats.get("mip_dual_bound")
        primal_ok = primal_ok and stats.get("primal_solution_status", 2) == 2
    elif stats is not None and info is None:
        dual = getattr(stats, "mip_dual_bound", None)
        pss = getattr(stats, "primal_solution_status", 2)
        primal_ok = primal_ok and pss == 2
    if restricted:
        dual = None
    if dual is not None and math.isfinite(dual) and objective == "makespan":
        bound = max(bound, float(dual))
    elif status == "optimal" and objective == "makespan" and makespan.value is not None and not restricted:
        bound = max(bound, float(makespan.value) * (1 - mip_gap))

    source = "mip"
    if primal_ok:
        found_order = graph.order_from_starts(list(start.value))
        starts = graph.left_shift(found_order)
        span = graph.makespan(starts)
    else:
        found_order, starts, span = {}, [], math.inf
    # A weighted objective may trade time for memory: its optimum can be longer than the warm start.
    worse = span > upper + 1e-9 and objective == "makespan"
    if warm_order is not None and (not primal_ok or worse):
        found_order = {key: list(v) for key, v in warm_order.items()}
        starts = warm_start_times or []
        span = upper
        source = "warm start" if upper >= original_upper - 1e-9 else "mip"
    if not found_order:
        raise InfeasibleError(
            f"the scheduling MIP found no feasible schedule in {time_limit:g} s (status {status})"
            + (" — the memory limit may be too tight" if need_memory else "")
        )
    if status == "infeasible":
        raise InfeasibleError("the scheduling MIP is infeasible: no order fits the memory limit on this placement")
    bound = min(bound, span)
    peaks = _peaks(graph, found_order, delta)
    return LowerLevelResult(
        order=found_order,
        start=list(starts),
        makespan=span,
        lower_bound=bound,
        gap=(span - bound) / span if span > 0 else 0.0,
        status=status,
        solve_seconds=time.monotonic() - began,
        binaries=k,
        fixed_pairs=len(fixed),
        constraints=m,
        source=source,
        peak_memory=peaks,
        neighbourhoods=lns_rounds,
        improvements=lns_improvements,
        restricted=restricted,
    )


def _peaks(graph: TaskGraph, order: Mapping[tuple[str, str], Sequence[int]], delta) -> dict[str, float]:
    """Peak bytes per device when tasks run in ``order`` (compute stream order)."""
    peaks: dict[str, float] = {}
    for (device, _), members in order.items():
        level = graph.static_memory[device]
        best = level
        for t in members:
            level += delta[t][0]
            best = max(best, level)
            level -= delta[t][1]
        peaks[device] = max(peaks.get(device, 0.0), best)
    return peaks


def _within_memory(graph: TaskGraph, order, delta, limits: Mapping[str, float]) -> bool:
    peaks = _peaks(graph, order, delta)
    return all(peaks[d] <= limits[d] * (1 + 1e-9) + 1e-9 for d in peaks)
