"""Run the measurement for every :class:`~opplan.profile.plan.Item` on one device."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from opplan.profile.measure import Measurement, measure_module
from opplan.profile.plan import _DTYPES, Item
from simulator.errors import InputError

__all__ = ["Result", "pick_device", "run_items"]


@dataclass(frozen=True)
class Result:
    item: Item
    measurement: Measurement


def pick_device(name: str, cpu_threads: int = 1) -> torch.device:
    """``cuda`` (the first GPU) or ``cpu``; a missing GPU is a one-line error.

    On a CPU, intra-op threads are limited to ``cpu_threads``: on a shared machine an
    oversubscribed thread pool turns sub-millisecond kernels into tens of milliseconds.
    """
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("no CUDA GPU is visible to PyTorch here; measure on a GPU machine, or use --device cpu with a small model",
                         field="--device")
    if name == "cpu":
        torch.set_num_threads(cpu_threads)
    return torch.device(name)


def _inputs(item: Item, device: torch.device, dtype: torch.dtype, module: torch.nn.Module) -> list[torch.Tensor]:
    b, s = item.tokens
    generator = torch.Generator(device="cpu").manual_seed(0)
    if item.width == 0:
        return [torch.randint(item.vocab, (b, s), generator=generator).to(device)]
    if item.vocab:
        module.targets = torch.randint(item.vocab, (b, s), generator=generator).to(device)
    x = torch.randn(b, s, item.width, generator=generator, dtype=torch.float32).to(device=device, dtype=dtype)
    return [x.requires_grad_()]


def run_items(items: list[Item], device: torch.device, precision: str, *, repeats: int, warmup: int) -> list[Result]:
    """Build each module in ``precision`` on ``device`` and measure it."""
    dtype = _DTYPES[precision]
    torch.manual_seed(0)
    results = []
    for item in items:
        module = item.build().to(device=device, dtype=dtype)
        inputs = _inputs(item, device, dtype, module)
        results.append(Result(item, measure_module(module, inputs, repeats=repeats, warmup=warmup)))
        del module, inputs
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return results
