"""opplan, the application: the ``opplan`` command line, sweeps and output files.

Layers run one way: :mod:`simulator` (model, engine, metrics) ← :mod:`planner`
(placements, MIPs, bi-level method, built-in schedules) ← :mod:`opplan` (this
package). Nothing below imports from here.
"""
