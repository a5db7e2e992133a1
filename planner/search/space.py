"""The discrete hybrid space of one scenario: every layout Megatron-LM would accept.

Enumerated, not solved: the degrees are divisors of the device count (a few dozen
combinations), ZeRO has four stages, recompute three modes, the schedules seven. A
candidate is a :class:`~simulator.layout.Layout` that passes the layout's own checks and
:func:`simulator.layout.check_model` (TP divides heads, KV heads and ffn; EP divides the
experts and ``dp x cp``; the global batch splits into whole micro-batches), so nothing
the simulator rejects is ever proposed.

Context parallelism: ``cp`` divides the devices left by ``tp`` and ``pp`` and splits the
sequence into ``2 cp`` load-balanced chunks (:func:`simulator.layout.check_model`); the
bounds price its KV ring as the replay does (blocking, on an idle cluster). Only
transformer-like towers with self-attention have a ring: every bundled model type does.

Kept out on purpose:

- TP x CP beyond one node (the ring's and TP's every-layer exchanges stay on NVLink;
  long-context runs that need CP across nodes are not this space's target);
- TP beyond one node (Megatron's advice, and the replay's TP groups assume NVLink);
- micro-batch sizes other than the model's own ``b`` times 1/4, 1/2, 1, 2, 4 (activations
  grow linearly with it; the roofline's rate changes little).

Stage cuts are left even here; :mod:`planner.search.cuts` balances them per candidate.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from simulator.errors import InputError
from simulator.layout import Layout, check_model
from simulator.shapes import ModelShape
from simulator.yamlio import Section

__all__ = ["Space", "enumerate_layouts", "divisors", "MICRO_BATCH_SIZES", "RECOMPUTE", "PIPELINE_SCHEDULES"]

#: Micro-batch sizes tried, as multiples of the model's own.
MICRO_BATCH_SIZES = (0.25, 0.5, 1, 2, 4)
RECOMPUTE = ("none", "selective", "full")
#: Pipeline schedules with their virtual stages per rank.
PIPELINE_SCHEDULES = (("1f1b", 1), ("interleaved-1f1b", 2), ("zb-h1", 1), ("zb-h2", 1), ("dualpipe", 1), ("dualpipev", 1))


@dataclass(frozen=True)
class Space:
    """What the enumeration ranges over: ``devices`` in nodes of ``per_node``, a fixed global batch."""

    devices: int
    per_node: int
    global_batch: int
    #: The model's own micro-batch size (the sizes tried are multiples of it).
    micro_batch: int = 1

    @property
    def micro_batch_sizes(self) -> tuple[int, ...]:
        return tuple(sorted({int(self.micro_batch * f) for f in MICRO_BATCH_SIZES if self.micro_batch * f >= 1
                             and float(self.micro_batch * f).is_integer()}))


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _degrees(space: Space, shape: ModelShape) -> Iterator[tuple[int, int, int, int]]:
    """``(tp, pp, cp, ep)`` with ``dp = devices / (tp pp cp)``."""
    experts = shape.experts or 1
    for tp in divisors(min(space.devices, space.per_node)):
        if space.devices % tp:
            continue
        for pp in divisors(space.devices // tp):
            if pp > len(shape.layers):
                continue
            for cp in divisors(min(space.devices // (tp * pp), space.per_node // tp)):
                if cp > 1 and (shape.seq_len % (2 * cp) or space.devices % (tp * pp * cp)):
                    continue
                dp = space.devices // (tp * pp * cp)
                for ep in divisors(dp * cp):
                    if experts % ep == 0 and (ep == 1 or shape.experts):
                        yield tp, pp, cp, ep


def _schedules(pp: int, layers: int) -> Iterator[tuple[str, int]]:
    if pp == 1:
        yield "1f1b", 1
        return
    for schedule, vpp in PIPELINE_SCHEDULES:
        stages = 2 * pp if schedule == "dualpipev" else pp * vpp
        if stages <= layers:
            yield schedule, vpp


def _candidate(shape: ModelShape, **fields) -> Layout | None:
    try:
        layout = Layout(**fields)
        check_model(layout, shape, Section({}, path="parallel"))
    except InputError:
        return None
    return layout


def enumerate_layouts(space: Space, shape: ModelShape) -> Iterator[Layout]:
    """Every valid layout of the space (even stage cuts where ``pp x vpp`` divides the
    layers; otherwise the cut is left for :mod:`planner.search.cuts`)."""
    own = space.micro_batch
    sizes = sorted(space.micro_batch_sizes, key=lambda size: (size != own, size))  # the model's own size first: no rebuilt graph
    for mbs in sizes:
        for tp, pp, cp, ep in _degrees(space, shape):
            dp = space.devices // (tp * pp * cp)
            if space.global_batch % (dp * mbs):
                continue
            for schedule, vpp in _schedules(pp, len(shape.layers)):
                yield from _variants(shape, space, dict(dp=dp, tp=tp, pp=pp, cp=cp, ep=ep, vpp=vpp, micro_batch_size=mbs,
                                                        schedule=schedule, stage_layers=_even(shape, pp, vpp, schedule)))


def _variants(shape: ModelShape, space: Space, degrees: dict) -> Iterator[Layout]:
    """ZeRO stages, recompute modes and sequence parallelism on one choice of degrees and schedule."""
    for zero in range(4):
        for recompute in RECOMPUTE:
            for sp in (False, True) if degrees["tp"] > 1 else (False,):
                layout = _candidate(shape, **degrees, sequence_parallel=sp, zero=zero, recompute=recompute,
                                    global_batch_size=space.global_batch)
                if layout is not None:
                    yield layout


def _even(shape: ModelShape, pp: int, vpp: int, schedule: str) -> tuple[int, ...]:
    """An even cut when it exists, else the cut of the first stages one layer longer (refined later)."""
    stages = 2 * pp if schedule == "dualpipev" else pp * vpp
    base, extra = divmod(len(shape.layers), stages)
    return tuple(base + (1 if k < extra else 0) for k in range(stages))
