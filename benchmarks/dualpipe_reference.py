"""Cross-check: opplan's ``dualpipe`` replay against an independent model of the reference's communication.

    python3 benchmarks/dualpipe_reference.py

See :mod:`planner.schedules.dualpipe_reference`: the reference's ``step()`` as commits
and computations per rank, with ``batch_isend_irecv``'s waits solved for start times.
Prints both makespans per setting (free transfers).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from planner.schedules import generate  # noqa: E402
from planner.schedules.dualpipe_reference import reference_makespan  # noqa: E402
from planner.schedules.examples import example_scenario  # noqa: E402
from simulator.engine import simulate  # noqa: E402

SETTINGS = [(4, 8, (1, 1, 1)), (6, 12, (1, 1, 1)), (8, 20, (1, 1, 1)), (8, 24, (1, 1.5, 0.5)),
            (8, 24, (2, 1, 1)), (8, 24, (1, 2, 1)), (16, 40, (1, 1, 1))]


def main() -> None:
    print(f"{'ranks':>5} {'micro-batches':>13} {'F / B / W ms':>13} {'opplan dualpipe':>16} {'reference semantics':>20}")
    for p, m, times in SETTINGS:
        scenario = example_scenario(stages=p, micro_batches=m, F=times[0], B=times[1], W=times[2])
        opplan = simulate(scenario.problem, generate("dualpipe", scenario)).makespan * 1e3
        label = " / ".join(f"{t:g}" for t in times)
        print(f"{p:>5} {m:>13} {label:>13} {opplan:>16.1f} {reference_makespan(p, m, times):>20.1f}")


if __name__ == "__main__":
    main()
