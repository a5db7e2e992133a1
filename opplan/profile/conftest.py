"""Doctest collection: the modules that need PyTorch (an optional extra) are skipped without it."""

import importlib.util

collect_ignore = [] if importlib.util.find_spec("torch") else ["blocks.py", "measure.py", "plan.py", "run.py"]
