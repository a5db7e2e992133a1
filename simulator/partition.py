"""Cutting a sequence of weights into contiguous groups with the lightest heaviest group.

This is the *linear partition* problem (what pipeline parallelism does by hand when it
gives each stage a run of consecutive layers). It is the one chain partitioner of the
project: :func:`simulator.coarsen.chain_groups` (groups of operators for the planner's
upper level) and :func:`planner.placements.contiguous_partitions` (the "chain"
placement) both call it.

It solves the textbook dynamic programme exactly, ``best[i][k]`` = the lightest
heaviest group when the first ``i`` weights form ``k`` groups::

    best[i][k] = min over j of max(best[j][k-1], w[j] + ... + w[i-1])

and follows the cuts back from ``best[n][groups]``. Among equally good cuts it keeps the
first one found scanning ``j`` upwards (the longest last group), so the rest is itself
an optimal split: a heavy operator at the end does not leave the first groups
lopsided. ``best[j][k-1]`` only grows with ``j`` and the last group only shrinks, so
the best ``j`` sits where the two cross; that crossing only moves right as ``i``
grows, which makes the programme O(n x groups) instead of O(n^2 x groups).
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import accumulate

__all__ = ["contiguous_split"]

#: Cuts whose heaviest groups differ by less than this (in the weights' unit) are equally good.
TOLERANCE = 1e-15


def contiguous_split(weights: Sequence[float], groups: int) -> list[int]:
    """The group (``0 .. groups-1``) of each weight, groups contiguous and non-empty.

    ``weights`` must not be negative and ``1 <= groups <= len(weights)``.

    >>> contiguous_split([1.0, 1.0, 1.0, 1.0, 5.0], 3)
    [0, 0, 1, 1, 2]
    >>> contiguous_split([5.0, 1.0, 1.0, 1.0, 1.0, 1.0], 2)
    [0, 1, 1, 1, 1, 1]
    """
    count = len(weights)
    if not 1 <= groups <= count:
        raise ValueError(f"cannot split {count} weights into {groups} non-empty groups")
    prefix = list(accumulate(weights, initial=0.0))
    previous = [0.0] + [float("inf")] * count  # k = 0 groups: only the empty prefix
    cuts: list[list[int]] = []
    for k in range(1, groups + 1):
        best, cut = _add_group(prefix, previous, k)
        cuts.append(cut)
        previous = best
    out = [0] * count
    end = count
    for k in range(groups, 0, -1):
        start = cuts[k - 1][end]
        out[start:end] = [k - 1] * (end - start)
        end = start
    return out


def _add_group(prefix: list[float], previous: list[float], k: int) -> tuple[list[float], list[int]]:
    """``best[i]`` and its cut ``j`` for ``k`` groups, from ``previous = best[.][k-1]``.

    For a given ``i``, ``max(previous[j], prefix[i] - prefix[j])`` falls while the last
    group is the heavier (``j < cross``) and rises after. Scanning ``j`` upwards, the
    first value within :data:`TOLERANCE` of the falling part's lowest is kept, unless
    the value at the crossing beats it by more than that.
    """
    count = len(prefix) - 1
    best = [float("inf")] * (count + 1)
    cut = [0] * (count + 1)
    cross = k - 1
    for i in range(k, count + 1):
        total = prefix[i]
        while cross < i and previous[cross] < total - prefix[cross]:
            cross += 1
        if cross == k - 1:  # no falling part: the first cut is the best
            best[i], cut[i] = previous[cross], cross
            continue
        j = cross - 1
        low = total - prefix[j]
        while j > k - 1 and total - prefix[j - 1] <= low + TOLERANCE:
            j -= 1
        value = total - prefix[j]
        if cross < i and previous[cross] < value - TOLERANCE:
            j, value = cross, previous[cross]
        best[i], cut[i] = value, j
    return best, cut
