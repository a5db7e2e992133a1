"""A collective's idle-cluster price as a function of its size, built once per group.

:func:`simulator.collectives.collective_time` builds a collective's steps and routes every
transfer for each size it is asked about; over a 2048-rank group that is thousands of
transfers (an all-to-all over 256 ranks: 65 280), and the search asks for thousands of
sizes. But in a ring, NCCL's rail rings and a uniform all-to-all, every transfer carries a
fixed fraction ``f`` of the buffer ``S`` and the steps do not depend on ``S``, so a
transfer lasts ``L + f S / W`` on its route (:meth:`simulator.cluster.Route.transfer_time`),
and a step — its slowest transfer, or the summed transfers of a link two of them share
(:func:`simulator.collectives.step_time`) — lasts the largest of a few affine functions of
``S``. The price is the sum over steps: built once per group, evaluated per size in
microseconds, equal to ``collective_time`` up to float rounding (checked in the tests).
Broadcasts (chunked by size) and hierarchical collectives are not priced this way.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from simulator.cluster import Cluster
from simulator.collectives import Collective, collective_steps

__all__ = ["PriceCurve", "price_curve"]

#: Collectives whose transfers are fixed fractions of the buffer (ring algorithm).
LINEAR_OPS = ("all_reduce", "reduce_scatter", "all_gather", "all_to_all")


@dataclass(frozen=True)
class PriceCurve:
    """``seconds(S) = sum over steps of count x max_j (a_j + b_j S)``."""

    steps: tuple[tuple[int, tuple[tuple[float, float], ...]], ...]

    def seconds(self, size: float) -> float:
        if size <= 0:
            return 0.0
        return sum(count * max((a + b * size for a, b in pieces), default=0.0) for count, pieces in self.steps)


def price_curve(op: str, group: tuple[str, ...], cluster: Cluster) -> PriceCurve:
    """The price of ``op`` over ``group`` (ring algorithm, uniform all-to-all) as a :class:`PriceCurve`."""
    if op not in LINEAR_OPS:
        raise ValueError(f"{op} is not priced linearly in its size")
    steps = collective_steps(Collective(op, group, 1.0), cluster)
    counts = Counter(id(step) for step in steps)
    distinct = {id(step): step for step in steps}
    out = []
    for key, step in distinct.items():
        pieces: set[tuple[float, float]] = set()
        per_link: dict[str, list[float]] = {}
        for src, dst, fraction in step:
            route = cluster.route(src, dst)
            if not route.links:
                continue  # same device or an ideal interconnect: no time
            a, b = route.latency, fraction / route.bandwidth
            pieces.add((a, b))
            for link in route.links:
                total = per_link.setdefault(link, [0.0, 0.0])
                total[0] += a
                total[1] += b
        pieces.update((a, b) for a, b in per_link.values())
        out.append((counts[key], tuple(sorted(pieces))))
    return PriceCurve(tuple(out))
