"""Running CVXPY problems on HiGHS, the one place solver calls go through."""

from __future__ import annotations

import warnings

import cvxpy as cp

__all__ = ["run_highs"]


def run_highs(problem: cp.Problem, **options) -> None:
    """Solve with HiGHS. A time limit is an expected outcome for our callers (they check
    the status and the primal solution before reading values), so CVXPY's "solution may
    be inaccurate" warning for a time-limited MIP is muted."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Solution may be inaccurate")
        problem.solve(solver=cp.HIGHS, **options)
