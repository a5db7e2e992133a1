"""Running CVXPY problems on HiGHS, the one place solver calls go through.

Everything that touches the solver process lives here: the call itself, reading its
statistics (status, whether a primal solution exists, the dual bound), tailing its log
to report progress, and keeping its output off stdout. HiGHS writes a banner to the
process's standard output (C level, not Python's ``sys.stdout``) the first time a
solver object is made; :func:`run_highs` makes that first object itself with standard
output pointed at a temporary file and hands the text to :mod:`logging`, so a report
on the terminal is never interrupted (``verbose=True`` shows it and the solver's log).
"""

from __future__ import annotations

import logging
import math
import os
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import cvxpy as cp

__all__ = ["HighsResult", "Progress", "SOLUTION_STATUSES", "parse_highs_progress", "run_highs"]

logger = logging.getLogger(__name__)

#: CVXPY statuses under which a MIP may carry a primal solution (a time limit is ``user_limit``).
SOLUTION_STATUSES = ("optimal", "optimal_inaccurate", "user_limit")


@dataclass(frozen=True)
class Progress:
    """One line of solver progress: incumbent, best bound, gap, seconds."""

    incumbent: float | None
    bound: float | None
    gap: float | None
    elapsed: float


@dataclass(frozen=True)
class HighsResult:
    """What one solve gave: read ``has_primal`` before any variable's value."""

    status: str
    has_primal: bool
    dual_bound: float | None
    seconds: float  # wall-clock of the whole call: CVXPY's compilation, HiGHS, reading back
    solver_seconds: float = 0.0  # HiGHS's own run time (what its time_limit bounds)

    @property
    def overhead(self) -> float:
        """Seconds the call took beyond HiGHS's run: what a time budget must set aside."""
        return max(0.0, self.seconds - self.solver_seconds)


_banner_sent = False


def _send_banner_to_log(verbose: bool) -> None:
    """Create HiGHS's first solver object with fd 1 captured; log the banner it prints."""
    global _banner_sent
    if _banner_sent or verbose:
        _banner_sent = True
        return
    import highspy

    sys.stdout.flush()
    saved = os.dup(1)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 1)
        try:
            highspy.Highs()
        finally:
            os.dup2(saved, 1)
            os.close(saved)
        sink.seek(0)
        text = sink.read().decode("utf-8", errors="replace")
    _banner_sent = True
    for line in text.splitlines():
        logger.info("HiGHS: %s", line)


def _statistics(problem: cp.Problem) -> tuple[float | None, bool]:
    """(MIP dual bound, primal solution is feasible) from CVXPY's copy of HiGHS's info."""
    stats = problem.solver_stats.extra_stats if problem.solver_stats is not None else None
    if isinstance(stats, Mapping):
        return stats.get("mip_dual_bound"), stats.get("primal_solution_status", 2) == 2
    if stats is None:
        return None, True
    return getattr(stats, "mip_dual_bound", None), getattr(stats, "primal_solution_status", 2) == 2


def run_highs(problem: cp.Problem, *, verbose: bool = False, **options) -> HighsResult:
    """Solve with HiGHS and say what came back. A time limit is an expected outcome for
    our callers (they check ``has_primal`` before reading values), so CVXPY's "solution
    may be inaccurate" warning for a time-limited MIP is muted."""
    _send_banner_to_log(verbose)
    began = time.monotonic()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Solution may be inaccurate")
        problem.solve(solver=cp.HIGHS, verbose=verbose, **options)
    result = outcome(problem, time.monotonic() - began)
    logger.debug("HiGHS: %s in %.2f s, %.2f s in HiGHS (time limit %s s)", result.status, result.seconds, result.solver_seconds,
                 options.get("time_limit"))
    return result


def outcome(problem: cp.Problem, seconds: float = 0.0) -> HighsResult:
    """The :class:`HighsResult` of ``problem``'s latest solve (status ``no solve`` if none)."""
    status = problem.status if problem.status is not None else "no solve"
    dual, primal_feasible = _statistics(problem)
    values_present = all(v.value is not None for v in problem.variables())
    has_primal = status in SOLUTION_STATUSES and primal_feasible and values_present
    dual_bound = float(dual) if dual is not None and math.isfinite(dual) else None
    solver_seconds = problem.solver_stats.solve_time if problem.solver_stats is not None else None
    return HighsResult(status, has_primal, dual_bound, seconds, float(solver_seconds or 0.0) if seconds else 0.0)


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
    first = next((i for i, tok in enumerate(tokens) if tok.endswith("%")), None)
    if first is None or first + 3 >= len(tokens):
        return None
    bound, incumbent, gap = tokens[first + 1], tokens[first + 2], tokens[first + 3]
    if not gap.endswith("%") and gap not in ("inf", "Large"):
        return None
    gap_value = float(gap[:-1]) / 100 if gap.endswith("%") else None
    return _number(bound), _number(incumbent), gap_value


def _number(token: str) -> float | None:
    try:
        value = float(token)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _tail(path: str, callback: Callable[[Progress], None], stop: threading.Event, started: float) -> None:
    """Read HiGHS's log file as it grows and report its progress lines."""
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


@contextmanager
def progress_log(callback: Callable[[Progress], None] | None, started: float) -> Iterator[dict]:
    """Solver options that make HiGHS write its log to a file tailed for ``callback``
    (no options, nothing tailed, without a callback). The file is removed afterwards."""
    if callback is None:
        yield {}
        return
    fd, path = tempfile.mkstemp(prefix="opplan-highs-", suffix=".log")
    os.close(fd)
    stop = threading.Event()
    reader = threading.Thread(target=_tail, args=(path, callback, stop, started), daemon=True)
    reader.start()
    try:
        yield {"log_file": path}
    finally:
        stop.set()
        reader.join(timeout=2)
        os.unlink(path)
