"""Documented limits on what one run may read and build, so hostile input fails fast.

Every file the tool opens is read through :mod:`simulator.reading` and
:mod:`simulator.yamlio`, and every scenario is sized by :mod:`simulator.sizes` before
anything is built; both compare against the limits here. The defaults are generous
for real work (the bundled DeepSeek-V3 preset on 2 048 GPUs is far inside them) and
small enough that a refused input costs well under a second and no memory. The
command line raises them per run (``--max-tasks``, ``--max-devices``, ``--max-points``,
``--max-input-mb``); library callers use :func:`using_limits`.

=====================  ===========  ===========================================
limit                  default      what it bounds
=====================  ===========  ===========================================
``max_input_bytes``    16 MB        bytes read from any one input file
``max_depth``          64           nesting of mappings and lists in a document
``max_nodes``          1 000 000    values in a document, YAML aliases expanded
``max_tasks``          5 000 000    operators x micro-batches x passes (F, B, W)
``max_devices``        65 536       devices in a cluster
``max_points``         100 000      points of a sweep (grid product + ``points:``)
=====================  ===========  ===========================================
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, replace

__all__ = ["Limits", "current_limits", "using_limits", "fmt_count"]


@dataclass(frozen=True)
class Limits:
    """The limits of one run; see the module docstring for what each bounds."""

    max_input_bytes: int = 16_000_000
    max_depth: int = 64
    max_nodes: int = 1_000_000
    max_tasks: int = 5_000_000
    max_devices: int = 65_536
    max_points: int = 100_000


_DEFAULTS = Limits()
_CURRENT: ContextVar[Limits | None] = ContextVar("opplan_limits", default=None)


def current_limits() -> Limits:
    """The limits in force (the defaults unless a caller set others with :func:`using_limits`)."""
    return _CURRENT.get() or _DEFAULTS


@contextmanager
def using_limits(limits: Limits | None = None, **changes: int) -> Iterator[Limits]:
    """Run a block under other limits: ``with using_limits(max_tasks=10**7): ...``."""
    chosen = replace(limits or current_limits(), **changes)
    token = _CURRENT.set(chosen)
    try:
        yield chosen
    finally:
        _CURRENT.reset(token)


def fmt_count(value: int | float) -> str:
    """A count with space-separated thousands, as the messages print it; absurd ones in powers of ten.

    >>> fmt_count(20_000_000), fmt_count(10**100), fmt_count(10**4000)
    ('20 000 000', '1e+100', 'about 1e+4000')
    """
    if value >= 1e15:  # math.log10 takes integers of any size, float() does not
        exponent = int(math.log10(value))
        return f"{value / 10**exponent:.3g}e+{exponent}" if exponent < 300 else f"about 1e+{exponent}"
    return f"{int(value):,}".replace(",", " ")
