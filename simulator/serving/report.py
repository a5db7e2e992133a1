"""Serving metrics from a timeline's outcomes: TTFT / TPOT percentiles, throughput, KV occupancy.

- time to first token (TTFT): first token − arrival (queueing + prefill);
- time per output token (TPOT): (finish − first token) / (output − 1), requests with
  more than one output token (vLLM's benchmark definition);
- throughput: generated tokens / (last finish − first arrival); ``total`` adds prompts;
- KV occupancy: reserved KV tokens / capacity over time (peak, time-weighted mean).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from simulator.serving.engine import Outcome

__all__ = ["ServingReport", "serving_report", "PERCENTILES"]

PERCENTILES = (50, 90, 99)


@dataclass(frozen=True)
class ServingReport:
    requests: int
    completed: int
    rejected: int
    queued_for_memory: int
    ttft_ms: dict[int, float]
    tpot_ms: dict[int, float]
    output_tokens_per_s: float
    total_tokens_per_s: float
    makespan_s: float
    kv_capacity_tokens: int
    kv_peak: float
    kv_mean: float
    steps: int
    kv_timeline: tuple[tuple[float, float], ...] = ()
    first_rejection: str = ""

    def to_dict(self) -> dict:
        out = asdict(self)
        out["ttft_ms"] = {f"p{k}": v for k, v in self.ttft_ms.items()}
        out["tpot_ms"] = {f"p{k}": v for k, v in self.tpot_ms.items()}
        out["kv_timeline"] = [list(p) for p in self.kv_timeline]
        return out

    def metrics(self) -> dict[str, float]:
        """Flat columns for tables and sweeps (milliseconds, tokens/s, fractions)."""
        row = {f"ttft_p{k}_ms": v for k, v in self.ttft_ms.items()} | {f"tpot_p{k}_ms": v for k, v in self.tpot_ms.items()}
        return row | {"output_tokens_per_s": self.output_tokens_per_s, "total_tokens_per_s": self.total_tokens_per_s,
                      "completed": self.completed, "rejected": self.rejected, "queued_for_memory": self.queued_for_memory,
                      "kv_peak": self.kv_peak, "kv_mean": self.kv_mean}


def _percentiles(values: list[float]) -> dict[int, float]:
    if not values:
        return {p: float("nan") for p in PERCENTILES}
    return {p: float(np.percentile(values, p)) * 1e3 for p in PERCENTILES}


def _occupancy(samples: list[tuple[float, float]], end: float) -> tuple[float, float]:
    """Peak and time-weighted mean of a step function sampled at change points."""
    samples = sorted(samples)
    peak = max((v for _, v in samples), default=0.0)
    area = sum(v * (min(t1, end) - t0) for (t0, v), (t1, _) in zip(samples, samples[1:] + [(end, 0.0)]) if t1 > t0)
    return peak, area / end if end > 0 else 0.0


def serving_report(outcomes: list[Outcome], occupancy: list[tuple[float, float]], capacity: int, steps: int) -> ServingReport:
    """``occupancy``: (time, reserved KV tokens) of the engine(s) in the timeline; ``capacity``: their total."""
    done = [o for o in outcomes if o.finish is not None]
    ttft = [o.first_token - o.request.arrival for o in outcomes if o.first_token is not None]
    tpot = [(o.finish - o.first_token) / (o.request.output - 1) for o in done if o.request.output > 1]
    start = min((o.request.arrival for o in outcomes), default=0.0)
    end = max((o.finish for o in done), default=start)
    span = end - start
    generated = sum(o.request.output for o in done)
    prompts = sum(o.request.prompt for o in done)
    peak, mean = _occupancy(occupancy, end)
    rejected = [o.rejected for o in outcomes if o.rejected]
    return ServingReport(
        requests=len(outcomes), completed=len(done), rejected=len(rejected),
        queued_for_memory=sum(o.queued_for_memory for o in outcomes),
        ttft_ms=_percentiles(ttft), tpot_ms=_percentiles(tpot),
        output_tokens_per_s=generated / span if span > 0 else 0.0,
        total_tokens_per_s=(generated + prompts) / span if span > 0 else 0.0,
        makespan_s=span, kv_capacity_tokens=capacity, kv_peak=peak / capacity, kv_mean=mean / capacity, steps=steps,
        kv_timeline=tuple((t, v / capacity) for t, v in occupancy), first_rejection=rejected[0] if rejected else "",
    )
