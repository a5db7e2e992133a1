"""The one chain partitioner: contiguous groups with the lightest heaviest group, and which of
the equally light splits it takes (the longest last group that leaves an optimal rest)."""

from __future__ import annotations

from functools import lru_cache
from itertools import combinations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simulator.partition import contiguous_split


def _splits(count: int, groups: int):
    for cuts in combinations(range(1, count), groups - 1):
        yield (0, *cuts, count)


def _best(weights: tuple[float, ...], groups: int) -> float:
    """Brute force: the lightest heaviest group over every split into ``groups`` pieces."""
    return min(max(sum(weights[a:b]) for a, b in zip(bounds, bounds[1:])) for bounds in _splits(len(weights), groups))


def _expected(weights: tuple[float, ...], groups: int) -> list[int]:
    """The rule, by brute force: from the back, the longest last group that keeps the split optimal."""
    best = lru_cache(maxsize=None)(lambda end, k: _best(weights[:end], k))
    out = [0] * len(weights)
    end = len(weights)
    for k in range(groups, 0, -1):
        if k == 1:
            start = 0
        else:
            start = min(j for j in range(k - 1, end) if max(best(j, k - 1), sum(weights[j:end])) == best(end, k))
        out[start:end] = [k - 1] * (end - start)
        end = start
    return out


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(0, 9), min_size=1, max_size=9), st.integers(1, 9))
def test_the_split_is_optimal_and_takes_the_longest_last_group(raw, groups):
    weights = tuple(float(w) for w in raw)  # small integers: sums are exact, ties are real ties
    groups = min(groups, len(weights))
    split = contiguous_split(weights, groups)
    assert split == sorted(split) and set(split) == set(range(groups))  # contiguous, none empty
    loads = [sum(w for w, g in zip(weights, split) if g == k) for k in range(groups)]
    assert max(loads) == _best(weights, groups)
    assert split == _expected(weights, groups)


def test_a_heavy_last_operator_leaves_the_first_groups_balanced():
    # Greedy filling from the front would give [1, 1, 1] | [1] | [5]; the split balances the rest.
    assert contiguous_split([1.0, 1.0, 1.0, 1.0, 5.0], 3) == [0, 0, 1, 1, 2]


@pytest.mark.parametrize("groups", [0, 4])
def test_impossible_group_counts_are_refused(groups):
    with pytest.raises(ValueError, match=f"into {groups} non-empty groups"):
        contiguous_split([1.0, 2.0, 3.0], groups)
