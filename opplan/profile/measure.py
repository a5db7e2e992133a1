"""Time one operator's F, B and W and count what autograd saves, by the shared reference's method.

``shared/reference/h100-llama7b-measured.md``: F = the module's forward; B =
``torch.autograd.grad(out, [x], grad_out, retain_graph=True)`` (the input gradient
only); W = full − B with full = ``torch.autograd.grad(out, [x] + params, grad_out)``
(timing ``autograd.grad(out, params)`` alone is not W: it re-walks the input-gradient
path); activation bytes = distinct non-parameter storages saved by autograd
(``torch.autograd.graph.saved_tensors_hooks``). Each time is the median of ``repeats``
samples after ``warmup`` runs: CUDA events on a GPU, the wall clock (after a
synchronise) on a CPU — the same code path either way.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

__all__ = ["Measurement", "measure_module", "saved_bytes"]


@dataclass(frozen=True)
class Measurement:
    """Milliseconds of F, B, W and bytes autograd saved for the backward."""

    forward_ms: float
    backward_ms: float
    weight_ms: float
    saved_bytes: int


def _timer(device: torch.device, fn: Callable[[], object], repeats: int, warmup: int) -> float:
    """Median milliseconds of ``fn``."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize(device)
            samples.append(start.elapsed_time(end))
        else:
            begin = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - begin) * 1e3)
    return statistics.median(samples)


def saved_bytes(module: torch.nn.Module, inputs: Sequence[torch.Tensor]) -> int:
    """Bytes of distinct non-parameter storages autograd saves during one forward."""
    params = {p.untyped_storage().data_ptr() for p in module.parameters()}
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in params:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        module(*inputs)
    return sum(storages.values())


def measure_module(module: torch.nn.Module, inputs: Sequence[torch.Tensor], *, repeats: int = 30, warmup: int = 8) -> Measurement:
    """F, B (input gradient), W (full − B) and saved bytes of ``module`` on ``inputs``.

    Inputs that are floating point and require grad are the ``x`` of B; an operator
    without one (the embedding, fed token ids) has B = 0 and W = its whole backward.
    """
    device = inputs[0].device
    params = [p for p in module.parameters() if p.requires_grad]
    xs = [t for t in inputs if t.is_floating_point() and t.requires_grad]
    out = module(*inputs)
    grad = torch.ones_like(out) if out.dim() == 0 else torch.randn_like(out)
    forward = _timer(device, lambda: module(*inputs), repeats, warmup)
    backward = _timer(device, lambda: torch.autograd.grad(out, xs, grad, retain_graph=True), repeats, warmup) if xs else 0.0
    full = _timer(device, lambda: torch.autograd.grad(out, xs + params, grad, retain_graph=True), repeats, warmup)
    return Measurement(forward, backward, max(full - backward, 0.0), saved_bytes(module, inputs))
