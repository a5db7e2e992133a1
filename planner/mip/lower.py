"""Lower level: the scheduling MIP for tasks already placed on devices.

Given where every task runs, decide when it starts and the order of tasks on every
device stream. Laid out in the fixed order of a job-shop model, one function per block:

data      durations p, lags (transfer time between devices), heads r (release) and
          tails q from longest paths, an incumbent makespan U (warm start), windows
          and big-M values                                              :func:`_data`
strength  (tight) symmetry chains and the precedences memory forces, closed, with the
          heads and tails they imply (:mod:`planner.mip.strengthen`)     :func:`_data`
primal    the active schedule over that graph (:mod:`planner.mip.construct`), then
          OR-Tools CP-SAT from the incumbent (:mod:`planner.mip.cpsat`); a shorter
          order becomes the incumbent and tightens U before the model is built
                                                                        :func:`_cpsat_phase`
pairs     every same-stream pair fixed (first, second) or free (a binary);
          restricted to the pairs nearest the warm start when too many  :func:`_classify_pairs`
variables S_t start of task t, C makespan, y_ij = 1 iff i runs before j for every
          *free* pair (i, j) on one stream, optional per-device memory peak
constraints
          precedence       S_j >= S_i + p_i + lag_ij                    :func:`_precedence`
          stream order     S_j >= S_i + p_i for a fixed pair (i, j)     :func:`_stream_order`
          disjunction      S_j >= S_i + p_i - M_ij (1 - y_ij);  S_i >= S_j + p_j - M_ji y_ij
                                                                        :func:`_disjunctions`
          completion       S_t + p_t + q_t <= C      (tail cut, a valid inequality)
                                                                        :func:`_completion`
          windows          r_t <= S_t <= U - p_t - q_t;  C >= lower bound (max over streams
                           of min r + work + min q, and the critical path)  :func:`_windows`
          memory           at the start of every forward pass on a device:
                           static + sum_u delta_u [u before t] + alloc_t <= limit
                                                                        :func:`_memory`
objective makespan C (default), or C plus a weighted memory peak        :func:`_objective`
solve     neighbourhood search from the warm start, then the full MIP   :func:`_solve`
status    checked before any value is read; then the certificate       :func:`_certificate`

Pairs are only made binary when nothing else decides them: an ancestor always runs
first; micro-batches of one operator and kind with the same placement keep their
order (symmetry breaking: they are interchangeable); and time windows that cannot
overlap fix the order. Big-M values come from the windows (``M_ij = LS_i + p_i - r_j``),
not from a global horizon. :data:`FORMULATIONS` lists the variants the benchmark
compares (``tight`` is the default; ``global-m`` drops windows, symmetry breaking
and tail cuts). The solver knobs are one :class:`ScheduleSettings`.

Time is a promise: every solver call is given what is left of ``time_limit`` minus what
calls have cost beyond their own limit (:class:`_Clock`), and a model too large to build
in the time left is not built (the incumbent comes back with the combinatorial bound).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import cvxpy as cp
import numpy as np
import scipy.sparse as sp

from planner.mip import FORMULATIONS
from planner.mip.construct import active_schedule
from planner.mip.cpsat import cpsat_available, solve_order
from planner.mip.highs import HighsResult, Progress, outcome, progress_log, run_highs
from planner.mip.strengthen import Strengthening, canonical_order, strengthen
from planner.taskgraph import TaskGraph
from simulator.errors import InfeasibleError

__all__ = ["FORMULATIONS", "OBJECTIVES", "LowerLevelResult", "Progress", "ScheduleSettings", "solve_schedule"]

logger = logging.getLogger(__name__)

OBJECTIVES = ("makespan", "memory")

Order = Mapping[tuple[str, str], Sequence[int]]


@dataclass(frozen=True)
class ScheduleSettings:
    """How the scheduling MIP is solved; the defaults are what ``opplan plan`` uses.

    ``lns_*`` shape the neighbourhood search: it gets ``lns_fraction`` of the time,
    windows start ``lns_window`` average task lengths wide, each sub-MIP gets at most
    ``lns_budget`` seconds. Above ``max_binaries`` free pairs only those nearest the warm
    start stay free (the answer is then a neighbourhood's, marked ``restricted``).
    ``cpsat_fraction`` of the time goes first to OR-Tools CP-SAT (:mod:`planner.mip.cpsat`,
    ``cpsat_workers`` threads, ``seed``) as a primal heuristic; 0 turns it off.

    ``deterministic`` (the default): every engine stops on a count of its own work, set
    from ``work_seconds`` (default ``time_limit``) — CP-SAT's deterministic time with its
    workers interleaved on one thread, a number of neighbourhood sub-MIPs each held to a
    number of branch-and-bound nodes, and a node limit on the final MIP — so the same input
    and time limit give the same plan; the wall clock (``time_limit``) is only a safety net
    (on a machine too slow for the work it stops first, and the answer may then differ).
    False: every engine stops by the wall clock (CP-SAT's parallel portfolio, ``cpsat_workers``
    threads), faster to good answers on an idle machine, not reproducible.
    """

    objective: str = "makespan"
    memory_weight: float = 1.0
    time_limit: float = 60.0
    mip_gap: float = 1e-4
    formulation: str = "tight"
    threads: int | None = None
    lns_fraction: float = 0.6
    lns_window: float = 8.0
    lns_budget: float = 2.0
    max_binaries: int = 40_000
    cpsat_fraction: float = 0.5
    cpsat_workers: int = 8
    seed: int = 0
    verbose: bool = False
    deterministic: bool = True
    work_seconds: float | None = None

    @property
    def work(self) -> float:
        """The seconds the work counts of deterministic mode are set from."""
        return self.time_limit if self.work_seconds is None else self.work_seconds

    def __post_init__(self) -> None:
        if self.formulation not in FORMULATIONS:
            raise ValueError(f"unknown formulation {self.formulation!r} (known: {', '.join(FORMULATIONS)})")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {self.objective!r} (known: {', '.join(OBJECTIVES)})")

    @property
    def tight(self) -> bool:
        return self.formulation == "tight"

    def options(self) -> dict:
        """HiGHS options of every solve."""
        out: dict = {"mip_rel_gap": self.mip_gap, "verbose": self.verbose}
        if self.threads:
            out["threads"] = self.threads
        return out


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
    source: str  # the engine that found the order: "warm start", "active schedule", "cp-sat", "mip neighbourhood search", "mip"
    peak_memory: Mapping[str, float] = field(default_factory=dict)
    neighbourhoods: int = 0  # sub-MIPs solved by the neighbourhood search
    improvements: int = 0
    restricted: bool = False  # True when only pairs near the warm start were left to decide


# -- data -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Incumbent:
    """A complete order, its left-shifted timing, and the engine that found it."""

    order: dict[tuple[str, str], list[int]]
    starts: list[float]
    span: float
    engine: str = "warm start"


@dataclass(frozen=True)
class _Data:
    p: list[float]
    release: list[float]
    tail: list[float]
    lower: float  # combinatorial bound: critical path and per-stream load
    delta: tuple[tuple[float, float], ...]  # (bytes allocated at start, freed at end) per task
    limits: dict[str, float]
    static: Mapping[str, float]
    warm: _Incumbent | None
    window_upper: float  # the warm start's makespan when it bounds the answer, else inf
    latest: list[float]  # latest start LS_t in the windows
    strong: Strengthening | None = None  # symmetry and memory precedences (tight formulation)

    def precedes(self, i: int, j: int, graph: TaskGraph) -> bool:
        """i ends before j starts in every schedule the model allows (data flow, symmetry, memory)."""
        return self.strong.precedes(i, j) if self.strong is not None else graph.precedes(i, j)

    @property
    def n(self) -> int:
        return len(self.p)

    @property
    def upper(self) -> float:
        return self.warm.span if self.warm is not None else math.inf

    @property
    def need_memory(self) -> bool:
        return any(a > 0 for a, _ in self.delta)


def _limits(graph: TaskGraph, memory_limit: Mapping[str, float] | None) -> dict[str, float]:
    """Per-device memory limits; a device whose static memory alone is over its limit fails."""
    limits = {d: (memory_limit or {}).get(d, graph.problem.cluster.by_name[d].memory_bytes) for d in graph.devices}
    static = graph.static_memory
    for device in graph.devices:
        if static[device] > limits[device]:
            raise InfeasibleError(
                f"{device}: static memory {static[device] / 1e9:.4g} GB (weights, gradients, optimizer state)"
                f" exceeds its limit {limits[device] / 1e9:.4g} GB by {(static[device] - limits[device]) / 1e9:.4g} GB"
            )
    return limits


def _with_incumbent(d: _Data, incumbent: _Incumbent, settings: ScheduleSettings) -> _Data:
    """The data with a better incumbent: its makespan tightens the windows and big-M values."""
    window_upper = incumbent.span if settings.objective == "makespan" else math.inf
    horizon = window_upper if math.isfinite(window_upper) else None
    if horizon is None:
        return replace(d, warm=incumbent)
    latest = [horizon - d.p[t] - (d.tail[t] if settings.tight else 0.0) for t in range(d.n)]
    return replace(d, warm=incumbent, window_upper=window_upper, latest=latest)


def _warm(graph: TaskGraph, warm_order: Order | None, limits, strong: Strengthening | None) -> _Incumbent | None:
    """The warm start, timed; with symmetry fixed, in micro-batch order per class (as
    short or shorter: :func:`~planner.mip.strengthen.canonical_order`) so the model holds it."""
    if warm_order is None:
        return None
    starts = graph.left_shift(warm_order)
    warm = _Incumbent({key: list(v) for key, v in warm_order.items()}, starts, graph.makespan(starts))
    if strong is None:
        return warm
    order = canonical_order(graph, warm.order)
    try:
        starts = graph.left_shift(order)
    except InfeasibleError:
        return warm
    span = graph.makespan(starts)
    if span <= warm.span + 1e-12 and _within_memory(graph, order, graph.memory_delta(), limits):
        warm = _Incumbent(order, starts, span, warm.engine)
    return _constructed(graph, warm, limits, strong)


def _constructed(graph: TaskGraph, warm: _Incumbent, limits, strong: Strengthening) -> _Incumbent:
    """The active schedule over the strengthened graph (:mod:`planner.mip.construct`) when
    it is shorter than the warm start."""
    if len(graph.tasks) > CONSTRUCT_MAX_TASKS:
        return warm
    order = active_schedule(graph, strong, limits)
    if order is None:
        return warm
    try:
        starts = graph.left_shift(order)
    except InfeasibleError:
        return warm
    span = graph.makespan(starts)
    if span >= warm.span - 1e-12 or not _within_memory(graph, order, graph.memory_delta(), limits):
        return warm
    logger.info("active schedule: %.6g ms from %.6g ms", span * 1e3, warm.span * 1e3)
    return _Incumbent(order, starts, span, "active schedule")


def _data(graph: TaskGraph, warm_order: Order | None, memory_limit, settings: ScheduleSettings) -> _Data:
    limits = _limits(graph, memory_limit)
    strong = strengthen(graph, limits) if settings.tight else None
    p, tail = list(graph.duration), list(strong.tail if strong else graph.tail)
    release, lower = (list(strong.release), strong.lower) if strong else (list(graph.release), graph.lower_bound)
    warm = _warm(graph, warm_order, limits, strong)
    # A weighted objective may lengthen the schedule to save memory: then the warm start's
    # makespan is no bound on the answer and cannot shape the windows.
    window_upper = warm.span if warm is not None and settings.objective == "makespan" else math.inf
    horizon = window_upper if math.isfinite(window_upper) else sum(p) + sum(a.lag for a in graph.arcs)
    latest = [horizon - p[t] - (tail[t] if settings.tight else 0.0) for t in range(len(p))]
    return _Data(p, release, tail, lower, graph.memory_delta(), limits, graph.static_memory, warm, window_upper, latest,
                 strong)


def _cpsat_phase(graph: TaskGraph, d: _Data, settings: ScheduleSettings, clock: _Clock,
                 progress: Callable[[Progress], None] | None) -> tuple[_Data, bool]:
    """CP-SAT from the warm start, with its share of the time; its order, re-timed exactly
    and checked for memory, becomes the incumbent when shorter. Also says whether CP-SAT
    proved its answer optimal (then the neighbourhood search has nothing to find)."""
    if (d.warm is None or settings.objective != "makespan" or settings.cpsat_fraction <= 0
            or d.warm.span <= d.lower + 1e-9 or d.n > CPSAT_MAX_TASKS or not cpsat_available()):
        return d, False
    # Deterministic: CP-SAT's search depends on its wall-clock limit too (not only on when it
    # stops), so the limit comes from the work seconds, the same every run, unless less time is left.
    seconds = clock.budget(settings.cpsat_fraction * (settings.work if settings.deterministic else settings.time_limit))
    given = time.monotonic()
    # Many threads on few cores overrun a short limit by a second or more: few for short calls.
    workers = settings.cpsat_workers if seconds >= 4.0 else min(settings.cpsat_workers, 2)
    limit = CPSAT_SHARE_OF_BUDGET * seconds - CPSAT_OVERRUN_PER_TASK * d.n
    if limit < MIN_SOLVE_SECONDS:
        return d, False
    work = None
    if settings.deterministic:
        workers = DETERMINISTIC_CPSAT_WORKERS
        work = CPSAT_WORK_PER_SECOND * limit
    extra = d.strong.precedences if d.strong is not None else ()
    found = solve_order(graph, d.limits, seconds=limit, hint=d.warm.order, seed=settings.seed, workers=workers,
                        precedences=extra, lower_bound=d.lower, deterministic_time=work)
    logger.debug("CP-SAT: %s in %.2f s (time limit %.2f s)", found and found.status, time.monotonic() - given, limit)
    if found is None or (settings.deterministic and found.by_clock):
        if found is not None:
            logger.info("CP-SAT stopped by the wall clock before its deterministic time: its answer is not used")
        return d, False
    try:
        starts = graph.left_shift(found.order)
    except InfeasibleError:
        return d, False
    span = graph.makespan(starts)
    proven = found.status == "optimal" and span <= found.bound_seconds + 1e-9
    if span >= d.warm.span - 1e-9 or not _within_memory(graph, found.order, d.delta, d.limits):
        return d, proven and span <= d.warm.span + 1e-9
    logger.info("CP-SAT: %.6g ms (%s, its bound %.6g ms) from %.6g ms in %.1f s", span * 1e3, found.status,
                found.bound_seconds * 1e3, d.warm.span * 1e3, clock.elapsed())
    if progress is not None:
        progress(Progress(span, d.lower, (span - d.lower) / span, clock.elapsed()))
    return _with_incumbent(d, _Incumbent(found.order, starts, span, "cp-sat"), settings), proven


# -- pair classification ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Pairs:
    fixed: list[tuple[int, int]]  # (first, second)
    free: list[tuple[int, int]]  # one binary each: y = 1 iff the first runs first
    restricted: bool  # free pairs were cut down to a neighbourhood of the warm start

    @property
    def index(self) -> dict[tuple[int, int], int]:
        return {pair: q for q, pair in enumerate(self.free)}


def _fixed_order(graph: TaskGraph, i: int, j: int, d: _Data, tight: bool, signature) -> tuple[int, int] | None:
    """The order of the same-stream pair (i, j) when something other than a binary decides it."""
    if d.precedes(i, j, graph):
        return i, j
    if d.precedes(j, i, graph):
        return j, i
    if not tight:
        return None
    ti, tj = graph.tasks[i], graph.tasks[j]
    if ti.op == tj.op and ti.kind == tj.kind and signature(ti.mb) == signature(tj.mb):
        return (i, j) if ti.mb < tj.mb else (j, i)  # interchangeable micro-batches keep their order
    # Windows: if j cannot start before i could end at the latest, the order is forced.
    if d.latest[i] + d.p[i] <= d.release[j] + 1e-9:
        return i, j
    if d.latest[j] + d.p[j] <= d.release[i] + 1e-9:
        return j, i
    return None


def _classify_pairs(graph: TaskGraph, d: _Data, settings: ScheduleSettings) -> _Pairs:
    """Every same-stream pair fixed or free; too many free ones are cut to the warm start's neighbourhood."""
    ops = graph.problem.graph.topological_order
    signature: dict[int, tuple] = {}
    task_type = type(graph.tasks[0]) if graph.tasks else None

    def sig(mb: int) -> tuple:  # the devices micro-batch mb visits, operator by operator
        if mb not in signature:
            signature[mb] = tuple(graph.device_of[task_type(op, mb, "F")] for op in ops)
        return signature[mb]

    fixed: list[tuple[int, int]] = []
    free: list[tuple[int, int]] = []
    for members in graph.streams.values():
        for a_pos, i in enumerate(members):
            for j in members[a_pos + 1 :]:
                decided = _fixed_order(graph, i, j, d, settings.tight, sig)
                (fixed if decided is not None else free).append(decided or (i, j))
    if len(free) <= settings.max_binaries or d.warm is None:
        return _Pairs(fixed, free, False)
    # Too many orders to decide at once: keep the pairs whose warm-start times are closest
    # free and fix the others as the warm start has them. The solver then searches a
    # neighbourhood of the warm start, so its dual bound is not a bound for the whole
    # problem: only the combinatorial bound is reported.
    s = d.warm.starts
    ranked = sorted(free, key=lambda pair: abs(s[pair[0]] - s[pair[1]]))
    fixed += [(i, j) if s[i] <= s[j] else (j, i) for i, j in ranked[settings.max_binaries :]]
    return _Pairs(fixed, ranked[: settings.max_binaries], True)


# -- constraints, one family each --------------------------------------------------------------------


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


def _precedence(rows: _Rows, graph: TaskGraph, d: _Data) -> None:
    """S_i + p_i + lag <= S_j for every data-flow arc."""
    for arc in graph.arcs:
        rows.add([(arc.src, 1.0), (arc.dst, -1.0)], [], 0.0, -(d.p[arc.src] + arc.lag))


def _stream_order(rows: _Rows, graph: TaskGraph, d: _Data, pairs: _Pairs) -> None:
    """S_i + p_i <= S_j for a fixed pair not already implied by a path of arcs and of the
    strengthening's precedences (those get a row each)."""
    direct = set(d.strong.precedences) if d.strong is not None else set()
    for i, j in pairs.fixed:
        implied = graph.precedes(i, j) or ((i, j) not in direct and d.strong is not None and d.strong.precedes(i, j))
        if not implied:
            rows.add([(i, 1.0), (j, -1.0)], [], 0.0, -d.p[i])


def _disjunctions(rows: _Rows, d: _Data, pairs: _Pairs) -> None:
    """Either order of a free pair, with per-pair big-M from the windows."""
    for q, (i, j) in enumerate(pairs.free):
        m_ij = max(d.latest[i] + d.p[i] - d.release[j], d.p[i])
        m_ji = max(d.latest[j] + d.p[j] - d.release[i], d.p[j])
        rows.add([(i, 1.0), (j, -1.0)], [(q, m_ij)], 0.0, m_ij - d.p[i])  # y=1: S_i + p_i <= S_j + M_ij (1 - y)
        rows.add([(j, 1.0), (i, -1.0)], [(q, -m_ji)], 0.0, -d.p[j])  # y=0: S_j + p_j <= S_i + M_ji y


def _completion(rows: _Rows, d: _Data, tight: bool) -> None:
    """S_t + p_t (+ q_t, the tail cut, in the tight formulation) <= C."""
    for t in range(d.n):
        rows.add([(t, 1.0)], [], -1.0, -(d.p[t] + (d.tail[t] if tight else 0.0)))


def _memory_row(graph: TaskGraph, d: _Data, fixed_before: set, index: dict, members, change, t: int, device: str):
    """(y terms, constant) of the live bytes on ``device`` when task ``t`` allocates."""
    constant = d.static[device] + d.delta[t][0]
    y_terms: list[tuple[int, float]] = []
    for u in members:
        if u == t or abs(change[u]) < 1e-15:
            continue
        if (u, t) in fixed_before or d.precedes(u, t, graph):
            constant += change[u]
        elif (t, u) in fixed_before or d.precedes(t, u, graph):
            continue
        elif (u, t) in index:  # y = 1 means u before t
            y_terms.append((index[u, t], change[u]))
        else:  # y = 1 means t before u: u before t is (1 - y)
            constant += change[u]
            y_terms.append((index[t, u], -change[u]))
    return y_terms, constant


def _memory(rows: _Rows, graph: TaskGraph, d: _Data, pairs: _Pairs) -> dict[str, list[int]]:
    """At each allocation on a device the live bytes stay under its limit; the rows per device."""
    memory_rows: dict[str, list[int]] = {dev: [] for dev in graph.devices}
    if not d.need_memory:
        return memory_rows
    fixed_before, index = set(pairs.fixed), pairs.index
    device_tasks: dict[str, list[int]] = {}
    for t in range(d.n):
        device_tasks.setdefault(graph.device_stream[t][0], []).append(t)
    for device, members in device_tasks.items():
        change = {u: d.delta[u][0] - d.delta[u][1] for u in members}  # net bytes left behind by u
        if all(abs(change[u]) < 1e-12 for u in members) and not any(d.delta[u][0] for u in members):
            continue
        for t in members:
            if d.delta[t][0] <= 0:
                continue
            y_terms, constant = _memory_row(graph, d, fixed_before, index, members, change, t, device)
            memory_rows[device].append(len(rows))
            rows.add([], y_terms, 0.0, d.limits[device] - constant)
    return memory_rows


# -- the model: variables, constraints, objective ----------------------------------------------------


@dataclass
class _Model:
    problem: cp.Problem
    start: cp.Variable
    makespan: cp.Variable
    order: cp.Variable | None
    earliness: cp.Parameter  # > 0 only inside the neighbourhood search: prefer early starts
    lo: cp.Parameter | None  # bounds on the order binaries: fixing some (or all) of them
    hi: cp.Parameter | None
    free: list[tuple[int, int]]
    rows: int
    restricted: bool  # only a neighbourhood of the warm start is free: no bound to prove


def _peak_rows(expr, rhs: np.ndarray, memory_rows, graph: TaskGraph, d: _Data) -> tuple[list, cp.Variable]:
    """The rows with the memory rows bounded by per-device peak variables instead of the limits."""
    peak = cp.Variable(len(graph.devices), name="peak")
    mem_idx = [r for dev in graph.devices for r in memory_rows[dev]]
    other = np.setdiff1d(np.arange(len(rhs)), np.asarray(mem_idx, dtype=int))
    constraints = [expr[other] <= rhs[other]]
    for d_index, device in enumerate(graph.devices):
        idx = memory_rows[device]
        if idx:  # live bytes = limit - rhs + lhs; live <= peak_d <= limit
            constraints.append(expr[idx] - rhs[idx] + d.limits[device] <= peak[d_index])
    constraints.append(peak <= np.asarray([d.limits[dev] for dev in graph.devices]))
    return constraints, peak


def _windows(start: cp.Variable, makespan: cp.Variable, d: _Data, tight: bool) -> list:
    """Heads, the combinatorial bound on C, and (tight, with a warm start) latest starts."""
    constraints = [start >= np.asarray(d.release), makespan >= d.lower]
    if tight and math.isfinite(d.window_upper):
        constraints.append(start <= np.asarray([d.window_upper - d.p[t] - d.tail[t] for t in range(d.n)]))
        constraints.append(makespan <= d.window_upper)
    return constraints


def _objective(makespan, start, peak, earliness, d: _Data, settings: ScheduleSettings) -> cp.Minimize:
    """Makespan (plus a tiny earliness term in the neighbourhood search), or makespan and peak memory."""
    if peak is None:
        return cp.Minimize(makespan + earliness * cp.sum(start))
    scale_time = max(d.upper if math.isfinite(d.upper) else d.lower, 1e-12)
    scale_memory = max(max(d.limits.values()), 1e-12)
    return cp.Minimize(makespan / scale_time + settings.memory_weight * cp.max(peak) / scale_memory + earliness * cp.sum(start))


def _build_model(graph: TaskGraph, d: _Data, pairs: _Pairs, settings: ScheduleSettings) -> _Model:
    rows = _Rows()
    _precedence(rows, graph, d)
    _stream_order(rows, graph, d, pairs)
    _disjunctions(rows, d, pairs)
    _completion(rows, d, settings.tight)
    memory_rows = _memory(rows, graph, d, pairs)
    # -- variables
    k = len(pairs.free)
    earliness = cp.Parameter(nonneg=True, name="earliness_weight", value=0.0)
    start = cp.Variable(d.n, name="start")
    makespan = cp.Variable(name="makespan")
    order = cp.Variable(k, boolean=True, name="before") if k else None
    # -- constraints
    m = len(rows)
    expr = sp.csr_matrix((rows.s_vals, (rows.s_rows, rows.s_cols)), shape=(m, d.n)) @ start
    expr = expr + np.asarray(rows.c_coef) * makespan
    if order is not None:
        expr = expr + sp.csr_matrix((rows.y_vals, (rows.y_rows, rows.y_cols)), shape=(m, k)) @ order
    rhs = np.asarray(rows.rhs)
    window = _windows(start, makespan, d, settings.tight)
    constraints, peak = window[:2], None
    if settings.objective == "memory" and d.need_memory:
        peak_constraints, peak = _peak_rows(expr, rhs, memory_rows, graph, d)
        constraints += peak_constraints
    else:
        constraints.append(expr <= rhs)
    constraints += window[2:]
    goal = _objective(makespan, start, peak, earliness, d, settings)
    lo = cp.Parameter(k, name="order_lo") if k else None
    hi = cp.Parameter(k, name="order_hi") if k else None
    if order is not None:
        constraints += [order >= lo, order <= hi]
    return _Model(cp.Problem(goal, constraints), start, makespan, order, earliness, lo, hi, pairs.free, m, pairs.restricted)


# -- solve -------------------------------------------------------------------------------------------
# HiGHS receives a MIP start only through CVXPY's solver cache: solving once with the
# order fixed (bounds lo = hi = the incumbent's order) leaves that solution in the cache,
# and the next solve with warm_start=True hands it to HiGHS. The same bounds fix
# everything outside a time window in the neighbourhood search: each sub-MIP reorders
# only the tasks of one window (a few hundred binaries) and is solved to optimality in a
# second or two; the last, full solve proves the bound.


#: Seconds per same-stream pair to classify it and build its rows, and per row for CVXPY to
#: compile the model (measured on the bundled scenarios, ~2-3x margin): what the size
#: guard and the first solve's budget expect before anything was measured.
SECONDS_PER_PAIR = 2e-5
SECONDS_PER_ROW = 1e-5
#: Above this many tasks CP-SAT is not tried (its model is built in Python, task by task).
CPSAT_MAX_TASKS = 20_000
#: What the full MIP's root LP ran past HiGHS's limit per constraint row, at least
#: (llama7b, ~10^5 rows: 1.5 s on a loaded 2-core machine).
OVERRUN_PER_ROW = 5e-6
#: CP-SAT's own limit as a share of its budget: model building and its threads stopping
#: took up to a fifth more on a loaded 2-core machine.
CPSAT_SHARE_OF_BUDGET = 0.8
#: ... less this per task: building the model and CP-SAT's presolve ran past its limit
#: by about 4 ms a task (the 1500-task random DAG: 6 s over a 12 s limit).
CPSAT_OVERRUN_PER_TASK = 4e-3
#: Above this many tasks the active schedule is not built (its loop is quadratic in the ready set).
CONSTRUCT_MAX_TASKS = 5_000
#: Deterministic mode's work counts per second of ``work_seconds``, sized so that the wall
#: clock (the safety net) rarely stops an engine first on a loaded 2-core machine. CP-SAT's
#: deterministic time per second of its wall-clock limit: 6 units took 21-25 s of wall clock
#: on the 100-operator random DAG at load average 7 (0.45 units per CPU-second), 0.3 units
#: 1.2-1.8 s on pipeline-8x24-uneven (presolve); at 0.2 units a second the wall clock
#: stopped it first in one of two runs. Neighbourhood sub-MIPs took 0.05-6 s each. HiGHS nodes: the
#: 480-task models ran 50-300 nodes a second.
CPSAT_WORK_PER_SECOND = 0.1
DETERMINISTIC_CPSAT_WORKERS = 2  # better than 8 at the same deterministic time on the DAG
LNS_ROUNDS_PER_SECOND = 0.5
LNS_NODES = 200
FINAL_NODES_PER_SECOND = 30.0
#: Solver calls shorter than this are not worth starting.
MIN_SOLVE_SECONDS = 0.2
#: The full MIP's root LP runs past HiGHS's limit about twice as long as a neighbourhood's
#: (measured on the bundled llama7b and DeepSeek scenarios: 2.3 s against 1.3 s).
FULL_MODEL_RISK = 2.0


@dataclass
class _Clock:
    """One call's time: it ends by ``began + time_limit``. Every solver call is given what
    is left minus what calls have cost beyond HiGHS's own run (CVXPY's compilation and
    reading back) and by how much HiGHS has run past its limit (it checks the clock only
    between phases: on large models the root LP runs on for seconds)."""

    began: float
    end: float
    overhead: float = 0.0
    overrun: float = 0.0

    def elapsed(self) -> float:
        return time.monotonic() - self.began

    def left(self) -> float:
        return self.end - time.monotonic()

    def budget(self, wanted: float, until: float | None = None, risk: float = 1.0, overrun: float = 0.0) -> float:
        """HiGHS's time limit for a call wanting ``wanted`` s that must end by ``until``
        (default: the end), ``risk`` times the worst overrun seen (at least ``overrun``) set
        aside; 0 when there is no time for a call."""
        end = min(self.end, until if until is not None else self.end)
        room = end - time.monotonic() - self.overhead - risk * max(self.overrun, overrun)
        return min(wanted, room) if room >= MIN_SOLVE_SECONDS else 0.0

    def run(self, model: _Model, limit: float, settings: ScheduleSettings, **options) -> HighsResult:
        """One HiGHS call. In deterministic mode a call the wall clock stopped (not its node
        count or optimality) comes back without its primal values: where it stopped is luck."""
        result = run_highs(model.problem, time_limit=limit, **settings.options(), **options)
        self.overhead = result.overhead
        self.overrun = max(self.overrun, result.solver_seconds - limit)
        if settings.deterministic and result.status == "user_limit" and result.solver_seconds >= 0.98 * limit:
            logger.debug("HiGHS stopped by the wall clock: its incumbent is not used (deterministic mode)")
            return replace(result, has_primal=False)
        return result


def _order_values(model: _Model, task_order: Order) -> np.ndarray:
    position = {t: pos for members in task_order.values() for pos, t in enumerate(members)}
    return np.array([1.0 if position[i] < position[j] else 0.0 for i, j in model.free])


def _fixed_solve(model: _Model, task_order: Order, settings: ScheduleSettings, clock: _Clock) -> bool:
    """Solve with every binary fixed to ``task_order``: seeds the solver cache with it.
    False (nothing run) when the time left is too short for it and a full solve after."""
    limit = clock.budget(max(1.0, settings.time_limit / 4), until=clock.end - clock.overhead - MIN_SOLVE_SECONDS,
                         risk=1.0 + FULL_MODEL_RISK)
    if limit <= 0:
        return False
    values = _order_values(model, task_order)
    model.lo.value, model.hi.value = values, values
    model.earliness.value = 0.0
    clock.run(model, limit, settings)
    return True


@dataclass
class _Search:
    """The neighbourhood search's state: its incumbent and counters."""

    best: _Incumbent
    rounds: int = 0
    improvements: int = 0


def _window_solve(graph: TaskGraph, model: _Model, d: _Data, search: _Search, mask: np.ndarray, budget: float,
                  settings: ScheduleSettings, clock: _Clock) -> bool:
    """Re-order the free pairs under ``mask``, the rest fixed; True when it strictly improves."""
    values = _order_values(model, search.best.order)
    model.lo.value = np.where(mask, 0.0, values)
    model.hi.value = np.where(mask, 1.0, values)
    model.earliness.value = 1e-4 / max(d.n, 1) / max(search.best.span, 1e-12)
    result = clock.run(model, budget, settings, **({"mip_max_nodes": LNS_NODES} if settings.deterministic else {}))
    search.rounds += 1
    if not result.has_primal:
        return False
    candidate = graph.order_from_starts(list(model.start.value))
    try:
        starts = graph.left_shift(candidate)
    except InfeasibleError:
        return False
    span, best = graph.makespan(starts), search.best
    best_sum = sum(best.starts)
    if not (span < best.span - 1e-9 or (span <= best.span + 1e-9 and sum(starts) < best_sum - 1e-9)):
        return False
    if not _within_memory(graph, candidate, d.delta, d.limits):
        return False
    engine = "mip neighbourhood search" if span < best.span - 1e-9 else best.engine  # a shorter schedule renames it
    search.best = _Incumbent(candidate, starts, span, engine)
    search.improvements += 1
    return span < best.span - 1e-9 or sum(starts) < best_sum - 1e-6


def _neighbourhood_search(graph: TaskGraph, model: _Model, d: _Data, settings: ScheduleSettings, clock: _Clock,
                          progress: Callable[[Progress], None] | None) -> _Search:
    """Slide a time window over the incumbent, re-optimising the order inside it; widen it
    by half whenever a sweep finds nothing, until the time share is spent or the bound is met."""
    search = _Search(d.warm)
    stream_size = max(len(v) for v in graph.streams.values())
    width = max(d.warm.span * settings.lns_window / max(stream_size, 1), max(d.p))
    deadline = clock.began + settings.lns_fraction * settings.time_limit
    rounds = math.inf
    if settings.deterministic:  # a count of sub-MIPs; the wall clock a safety net
        share = max(settings.lns_fraction - settings.cpsat_fraction, 0.1)
        rounds = math.ceil(LNS_ROUNDS_PER_SECOND * share * settings.work)
        deadline = clock.began + min(settings.lns_fraction + 0.15, 0.8) * settings.time_limit

    def open_() -> bool:
        return time.monotonic() < deadline and search.best.span > d.lower + 1e-9 and search.rounds < rounds

    while open_() and width <= 2 * search.best.span:
        improved, left = False, 0.0
        while left < search.best.span and open_():
            starts = search.best.starts
            inside = np.array([left <= starts[t] < left + width for t in range(d.n)])
            mask = np.array([inside[i] and inside[j] for i, j in model.free], dtype=bool)
            left += width / 2
            if not mask.any():
                continue
            budget = clock.budget(min(settings.lns_budget, max(0.5, deadline - time.monotonic())))
            if budget <= 0:
                break
            before = search.improvements
            improved = _window_solve(graph, model, d, search, mask, budget, settings, clock) or improved
            if progress is not None and search.improvements > before:
                span = search.best.span
                progress(Progress(span, d.lower, (span - d.lower) / span, clock.elapsed()))
        if not improved:
            width *= 1.5
    return search


def _solve(graph: TaskGraph, model: _Model, d: _Data, settings: ScheduleSettings, clock: _Clock,
           progress: Callable[[Progress], None] | None, neighbourhoods: bool = True) -> tuple[HighsResult, _Search | None]:
    """Neighbourhood search from the incumbent (not when CP-SAT proved it optimal), the
    incumbent handed to HiGHS, then the full MIP with the time left to prove the bound
    (skipped when none is left: the incumbent stands)."""
    seeded = True
    search = None
    if d.warm is not None and model.order is not None:
        if neighbourhoods and settings.objective == "makespan":
            search = _neighbourhood_search(graph, model, d, settings, clock, progress)
        if model.restricted and settings.objective == "makespan":
            # The full solve of a restricted model proves nothing, and on large models its
            # root LP ran 25 s past a 5 s limit: the neighbourhood search's answer stands.
            return HighsResult("restricted: neighbourhood search only", False, None, 0.0), search
        seeded = _fixed_solve(model, (search.best if search else d.warm).order, settings, clock)
    if model.order is not None:
        model.lo.value, model.hi.value = np.zeros(len(model.free)), np.ones(len(model.free))
    model.earliness.value = 0.0
    upper = search.best.span if search is not None else d.upper
    if upper <= d.lower + 1e-9 and d.warm is not None and settings.objective == "makespan":
        return outcome(model.problem), search  # the incumbent meets the bound: nothing to prove
    remaining = clock.budget(math.inf, risk=FULL_MODEL_RISK, overrun=model.rows * OVERRUN_PER_ROW)
    if not seeded or (remaining <= 0 and d.warm is not None):
        # Out of time: the incumbent stands. The last call solved a restricted problem, so
        # neither its values nor its bound speak for the whole one.
        return HighsResult("time limit", has_primal=False, dual_bound=None, seconds=0.0), search
    with progress_log(progress, clock.began) as log_options:
        if settings.deterministic:
            log_options["mip_max_nodes"] = max(int(FINAL_NODES_PER_SECOND * (1 - settings.lns_fraction) * settings.work), 1)
        result = clock.run(model, max(remaining, MIN_SOLVE_SECONDS), settings, warm_start=True, **log_options)
    return result, search


# -- certificate -------------------------------------------------------------------------------------


def _certificate(graph: TaskGraph, model: _Model, d: _Data, pairs: _Pairs, result: HighsResult, search: _Search | None,
                 settings: ScheduleSettings, clock: _Clock) -> LowerLevelResult:
    """Status first, then values: the best order, its timing, and the proven bound."""
    makespan_goal = settings.objective == "makespan"
    bound = d.lower
    dual = None if pairs.restricted else result.dual_bound
    if dual is not None and makespan_goal:
        bound = max(bound, dual)
    elif result.status == "optimal" and makespan_goal and result.has_primal and not pairs.restricted:
        bound = max(bound, float(model.makespan.value) * (1 - settings.mip_gap))
    found = None
    if result.has_primal:
        order = graph.order_from_starts(list(model.start.value))
        starts = graph.left_shift(order)
        found = _Incumbent(order, starts, graph.makespan(starts), "mip")
    incumbent = search.best if search is not None else d.warm
    # A weighted objective may trade time for memory: its optimum can be longer than the
    # warm start. For the makespan, the MIP's answer counts only when it is shorter (the
    # incumbent keeps the name of the engine that found it).
    if incumbent is not None and (found is None or (found.span > incumbent.span - 1e-9 and makespan_goal)):
        found = incumbent
    if found is None:
        raise InfeasibleError(
            f"the scheduling MIP found no feasible schedule in {settings.time_limit:g} s (status {result.status})"
            + (" — the memory limit may be too tight" if d.need_memory else "")
        )
    if result.status == "infeasible":
        raise InfeasibleError("the scheduling MIP is infeasible: no order fits the memory limit on this placement")
    bound = min(bound, found.span)
    return LowerLevelResult(
        order=found.order, start=list(found.starts), makespan=found.span, lower_bound=bound,
        gap=(found.span - bound) / found.span if found.span > 0 else 0.0, status=result.status,
        solve_seconds=clock.elapsed(), binaries=len(pairs.free), fixed_pairs=len(pairs.fixed), constraints=model.rows,
        source=found.engine, peak_memory=_peaks(graph, found.order, d.delta), neighbourhoods=search.rounds if search else 0,
        improvements=search.improvements if search else 0, restricted=pairs.restricted,
    )


def solve_schedule(
    graph: TaskGraph,
    settings: ScheduleSettings | None = None,
    *,
    warm_order: Order | None = None,
    memory_limit: Mapping[str, float] | None = None,
    progress: Callable[[Progress], None] | None = None,
) -> LowerLevelResult:
    """Solve the scheduling MIP on ``graph``'s placement. Never returns nothing:
    without a better MIP solution in time, the warm start comes back with its gap.

    Two stages, two micro-batches, F = B = W = 1 ms, one stage per GPU: each GPU has
    6 ms of work and the second waits 1 ms for its first input, so 7 ms is optimal.

    >>> from planner.placements import pipeline_placements
    >>> from planner.schedules.examples import example_scenario
    >>> scenario = example_scenario(stages=2, micro_batches=2)
    >>> graph = TaskGraph(scenario.problem, pipeline_placements(scenario.problem)["chain"])
    >>> result = solve_schedule(graph, ScheduleSettings(time_limit=10))
    >>> result.status, round(result.makespan * 1e3, 6), result.gap
    ('optimal', 7.0, 0.0)
    """
    settings = settings or ScheduleSettings()
    began = time.monotonic()
    clock = _Clock(began, began + settings.time_limit)
    d = _data(graph, warm_order, memory_limit, settings)
    if d.warm is not None and _pair_count(graph) * SECONDS_PER_PAIR > 0.5 * clock.left():
        return _unsolved(graph, d, clock, "not solved: the model is too large for the time left")
    d, proven = _cpsat_phase(graph, d, settings, clock, progress)
    if d.warm is not None and _pair_count(graph) * SECONDS_PER_PAIR > clock.left() - MIN_SOLVE_SECONDS:
        return _unsolved(graph, d, clock, "time limit: no time left to build the MIP")
    pairs = _classify_pairs(graph, d, settings)
    model = _build_model(graph, d, pairs, settings)
    clock.overhead = model.rows * SECONDS_PER_ROW  # the first call compiles the model
    result, search = _solve(graph, model, d, settings, clock, progress, neighbourhoods=not proven)
    return _certificate(graph, model, d, pairs, result, search, settings, clock)


def _pair_count(graph: TaskGraph) -> int:
    """Same-stream pairs: what classifying and building the model costs grows with."""
    return sum(len(members) * (len(members) - 1) // 2 for members in graph.streams.values())


def _unsolved(graph: TaskGraph, d: _Data, clock: _Clock, status: str) -> LowerLevelResult:
    """The incumbent with the combinatorial bound, when there is no time to build the MIP."""
    warm = d.warm
    bound = min(d.lower, warm.span)
    return LowerLevelResult(
        order=warm.order, start=list(warm.starts), makespan=warm.span, lower_bound=bound,
        gap=(warm.span - bound) / warm.span if warm.span > 0 else 0.0, status=status, solve_seconds=clock.elapsed(),
        binaries=0, fixed_pairs=0, constraints=0, source=warm.engine, peak_memory=_peaks(graph, warm.order, d.delta),
    )


def _peaks(graph: TaskGraph, order: Order, delta) -> dict[str, float]:
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


def _within_memory(graph: TaskGraph, order: Order, delta, limits: Mapping[str, float]) -> bool:
    peaks = _peaks(graph, order, delta)
    return all(peaks[d] <= limits[d] * (1 + 1e-9) + 1e-9 for d in peaks)
