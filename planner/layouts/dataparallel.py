"""Once-per-step data-parallel work on a rank's comm stream.

- **Gradient buckets** (PyTorch DDP's ``Reducer``, Megatron's ``DistributedDataParallel``):
  gradients are reduced in buckets, in the order the backward finishes them, and a bucket
  is launched as soon as every gradient in it is ready — here when the W of the last
  micro-batch of each of its units has run — on the communication stream, overlapping
  the rest of the backward. DDP's bucket cap is 25 MiB (``bucket_cap_mb``); Megatron's
  ``max(40M, 1M x dp)`` parameters. A unit larger than the cap is reduced in
  ``ceil(bytes / cap)`` equal buckets (DDP gives an oversized parameter a bucket of its
  own; a layer holds several). ZeRO-0/1 all-reduce, ZeRO-2/3 reduce-scatter (the ZeRO
  paper, section 5), dense gradients over the ``dp x cp`` group, expert gradients over
  the expert data-parallel group. Gradients are reduced once per step, after the last
  micro-batch (DDP's ``no_sync`` / Megatron's gradient accumulation); FSDP reduces one
  unit (an FSDP module) per bucket.
- **ZeRO-3 / FSDP parameter all-gathers** before every F and every B of a unit, each
  allowed to start once the unit two places earlier has finished (FSDP's
  ``forward_prefetch`` / ``backward_prefetch``: the next unit's gather overlaps the current
  unit's compute, and at most two units are gathered at a time).

The comm stream runs these in the order the compute stream needs them, like one NCCL
stream; FSDP's separate all-gather and reduce-scatter streams would let a gather pass a
pending reduce-scatter, which this does not.
"""

from __future__ import annotations

import math

from planner.layouts.context import Context
from simulator.hybrid import GATHER_BYTES
from simulator.memory_model import GRAD_BYTES
from simulator.problem import Task
from simulator.schedule import CollectiveCall

__all__ = ["DDP_BUCKET_BYTES", "bucket_bytes", "comm_stream"]

DDP_BUCKET_BYTES = 25 * 2**20
#: At most this many simulated transfers for one rank's gradient buckets: a gradient of
#: 138 GB in 25 MiB buckets over 32 ranks would be 21 M transfers; above the budget the
#: buckets grow (fewer, larger: only the last one's exposure changes, by its size).
BUCKET_TRANSFER_BUDGET = 200_000


def bucket_bytes(layout) -> float:
    """DDP's 25 MiB without model parallelism, else Megatron's ``max(40M, 1M dp)`` parameters' gradients."""
    if layout.tp == 1 and layout.pp == 1:
        return DDP_BUCKET_BYTES
    return GRAD_BYTES * max(40e6, 1e6 * layout.dp)


def _gathers(ctx: Context, compute: list, device: str) -> dict[int, list[CollectiveCall]]:
    """ZeRO-3: position in ``compute`` of the task during which an all-gather is issued -> that
    gather. The gather for the ``k``-th task needing one is issued when the ``k−1``-th starts
    (after the ``k−2``-th has finished and freed its unit), as FSDP's prefetch issues it, so
    on the comm stream it comes before the reduce-scatter of the unit running meanwhile."""
    out: dict[int, list[CollectiveCall]] = {}
    if ctx.layout.zero != 3:
        return out
    group = ctx.group("dp-cp", device)
    needing: list[Task] = []
    issued_at: list[int] = []
    for position, item in enumerate(compute):
        if not isinstance(item, Task) or item.kind == "W":
            continue
        unit = ctx.units[_unit_index(ctx, item.op)]
        if unit.dense_params == 0 or len(group) == 1:
            continue
        after = (needing[-2],) if len(needing) >= 2 else ()
        call = ctx.call(f"ag.{item.kind}.{unit.name}.{item.mb}", "all_gather", GATHER_BYTES * unit.dense_params, group, "comm",
                        after=after, before=(item,))
        out.setdefault(issued_at[-1] if issued_at else position, []).append(call)
        needing.append(item)
        issued_at.append(position)
    return out


def _unit_index(ctx: Context, op: str) -> int:
    name = op.split("@", 1)[0]
    return ctx.unit_index[name]


def _grad_calls(ctx: Context, units: list[tuple[int, Task]], device: str, expert: bool, index: int,
                cap: float) -> list[CollectiveCall]:
    """Bucket(s) for the gradients of ``units`` (each with its last W task)."""
    layout = ctx.layout
    group = ctx.group("expert-dp" if expert else "dp-cp", device)
    if len(group) == 1:
        return []
    size = sum(GRAD_BYTES * (ctx.units[u].expert_params if expert else ctx.units[u].dense_params) for u, _ in units)
    if size == 0:
        return []
    op = "all_reduce" if layout.zero < 2 else "reduce_scatter"
    parts = max(1, math.ceil(size / cap)) if layout.zero != 3 else 1
    after = tuple(task for _, task in units)
    tag = "edp" if expert else "dp"
    return [ctx.call(f"{tag}.grads.{index}.{i}", op, size / parts, group, "comm", after=after) for i in range(parts)]


def _buckets(ctx: Context, compute: list, device: str) -> dict[int, list[CollectiveCall]]:
    """Position of the W that completes a bucket in ``compute`` -> the buckets launched there.

    ZeRO-0/1 reduce once per step, after each unit's last W (DDP's ``no_sync``, Megatron's
    gradient accumulation into a full buffer); ZeRO-2/3 hold only their gradient shard, so
    they reduce-scatter every micro-batch (DeepSpeed's micro-step reduction, FSDP without
    ``no_sync``), a micro-batch's last bucket flushed at its last W."""
    per_micro_batch = ctx.layout.zero >= 2
    last: dict[tuple[int, int], tuple[int, Task]] = {}
    for position, item in enumerate(compute):
        if isinstance(item, Task) and item.kind == "W":
            last[_unit_index(ctx, item.op), item.mb if per_micro_batch else 0] = (position, item)
    flush = {max(p for (_, mb), (p, _) in last.items() if mb == m) for m in {mb for _, mb in last}}
    cap = bucket_bytes(ctx.layout) if ctx.layout.zero != 3 else 0.0
    n = len(ctx.group("dp-cp", device))
    total = sum(GRAD_BYTES * ctx.units[u].params for u, _ in last)
    cap = max(cap, total * 2 * n * n / BUCKET_TRANSFER_BUDGET)
    out: dict[int, list[CollectiveCall]] = {}
    pending: list[tuple[int, Task]] = []
    for (unit, _), (position, task) in sorted(last.items(), key=lambda kv: kv[1][0]):
        pending.append((unit, task))
        if sum(GRAD_BYTES * ctx.units[u].params for u, _ in pending) >= cap or position in flush:
            out[position] = [c for expert in (False, True) for c in _grad_calls(ctx, pending, device, expert, len(out), cap)]
            pending = []
    return out


def comm_stream(ctx: Context, compute: list, device: str) -> list[CollectiveCall]:
    """The rank's comm-stream calls, in the order its compute stream needs them."""
    gathers = _gathers(ctx, compute, device)
    buckets = _buckets(ctx, compute, device) if ctx.layout.dp * ctx.layout.cp > 1 else {}
    out: list[CollectiveCall] = []
    for position in range(len(compute)):
        out += gathers.get(position, [])
        out += buckets.get(position, [])
    return out
