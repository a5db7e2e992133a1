"""The MIPs of the bi-level planner: the lower level orders tasks on fixed devices
(:mod:`planner.mip.lower`), the upper level places operators (:mod:`planner.mip.upper`).

This package's own namespace stays free of CVXPY so that the command line can offer
the formulations without loading a solver.
"""

#: The lower level's formulations: ``tight`` (per-pair big-M from time windows) and
#: ``global-m`` (one big-M for every disjunction).
FORMULATIONS = ("tight", "global-m")
