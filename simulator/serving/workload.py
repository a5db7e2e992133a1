"""The serving workload: requests, the batch policy, and optional prefill/decode disaggregation.

::

    workload:
      mode: inference
      requests:
        count: 300                 # how many requests
        seed: 7                    # numpy's default_rng(seed): the same requests every run
        rate_per_s: 2.0            # Poisson arrivals (exponential gaps); 0 or left out: all at t = 0
        prompt: {distribution: lognormal, median: 512, sigma: 0.8, min: 32, max: 3072}
        output: 256                # a fixed length, or {distribution: uniform, min: 64, max: 512}
        # or instead of count / rate / prompt / output:
        # trace: requests.csv      # rows arrival_s,prompt,output (CSV with that header, or JSON/YAML list)
      batching:
        policy: continuous         # continuous (vLLM / TensorRT-LLM in-flight) | static
        max_num_seqs: 64           # vLLM --max-num-seqs, TensorRT-LLM --max_batch_size
        max_num_batched_tokens: 8192  # vLLM --max-num-batched-tokens, TensorRT-LLM --max_num_tokens
        chunked_prefill: false     # true: long prompts are cut into chunks that fill each step's token budget
      serving:                     # optional
        weights: bf16              # bf16 | fp8 (bytes per weight read and held)
        kv_cache: bf16             # bf16 | fp8
        hbm_efficiency: 0.8        # default simulator.serving.hbm.HBM_EFFICIENCY
        hbm_bandwidth_GBps: 3350   # default: the device type's datasheet figure
        gpu_memory_utilization: 0.9  # vLLM's default: the share of HBM the engine may use
      disaggregation:              # optional: prefill on its own devices, KV shipped to decode
        prefill_devices: 4         # the first N devices prefill, the rest decode
        prefill_tp: 4              # default: prefill_devices
        decode_tp: 4               # default: the remaining devices

Every problem is one :class:`~simulator.errors.InputError` naming the file and the field.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from simulator.errors import InputError
from simulator.yamlio import Section, load_document

__all__ = ["Request", "BatchPolicy", "ServingOptions", "Disaggregation", "ServingWorkload", "read_serving", "SERVING_KEYS"]

#: ``workload:`` keys a serving scenario may set (besides ``mode`` and ``micro_batches``).
SERVING_KEYS = frozenset({"requests", "batching", "serving", "disaggregation"})
DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp8": 1}


@dataclass(frozen=True)
class Request:
    """One request: when it arrives (s), its prompt tokens and the tokens it will generate."""

    id: int
    arrival: float
    prompt: int
    output: int


@dataclass(frozen=True)
class BatchPolicy:
    policy: str = "continuous"
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    chunked_prefill: bool = False


@dataclass(frozen=True)
class ServingOptions:
    weight_bytes: float = 2.0
    kv_bytes: float = 2.0
    hbm_efficiency: float | None = None
    hbm_bandwidth: float | None = None
    gpu_memory_utilization: float = 0.9


@dataclass(frozen=True)
class Disaggregation:
    prefill_devices: int
    prefill_tp: int
    decode_tp: int


@dataclass(frozen=True)
class ServingWorkload:
    requests: tuple[Request, ...]
    batching: BatchPolicy = BatchPolicy()
    options: ServingOptions = ServingOptions()
    disaggregation: Disaggregation | None = None
    description: str = ""


def _lengths(section: Section, key: str, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` token lengths: a fixed integer or ``{distribution: uniform | lognormal, ...}``."""
    if isinstance(section.raw(key), int) and not isinstance(section.raw(key), bool):
        return np.full(count, section.integer(key, minimum=1))
    spec = section.section(key)
    kind = spec.str("distribution", choices=("uniform", "lognormal"))
    spec.check_keys({"distribution", "min", "max"} | ({"median", "sigma"} if kind == "lognormal" else set()))
    low, high = spec.integer("min", 1, minimum=1), spec.integer("max", minimum=1)
    if high < low:
        raise spec.error(f"max ({high}) is below min ({low})", "max")
    if kind == "uniform":
        return rng.integers(low, high + 1, size=count)
    median, sigma = spec.number("median", strictly_positive=True), spec.number("sigma", strictly_positive=True)
    return np.clip(np.rint(rng.lognormal(np.log(median), sigma, size=count)), low, high).astype(int)


def _generated(section: Section) -> tuple[Request, ...]:
    """Requests drawn from ``numpy.random.default_rng(seed)``: arrivals, then prompts, then outputs."""
    section.check_keys({"count", "seed", "rate_per_s", "prompt", "output"})
    count = section.integer("count", minimum=1)
    rng = np.random.default_rng(section.integer("seed", 0))
    rate = section.number("rate_per_s", 0.0)
    arrivals = np.cumsum(rng.exponential(1.0 / rate, size=count)) if rate > 0 else np.zeros(count)
    prompts, outputs = _lengths(section, "prompt", count, rng), _lengths(section, "output", count, rng)
    return tuple(Request(i, float(a), int(p), int(o)) for i, (a, p, o) in enumerate(zip(arrivals, prompts, outputs)))


def _trace_rows(path: Path) -> list:
    if path.suffix.lower() != ".csv":
        rows = load_document(path)
        if not isinstance(rows, list):
            raise InputError("expected a list of {arrival_s, prompt, output} rows", file=str(path))
        return rows
    try:
        with path.open(newline="") as handle:
            return list(csv.DictReader(handle))
    except FileNotFoundError:
        raise InputError("file not found", file=str(path)) from None
    except (OSError, csv.Error) as exc:
        raise InputError(f"cannot read CSV ({exc})", file=str(path)) from None


def _trace(path: Path) -> tuple[Request, ...]:
    """Rows ``arrival_s, prompt, output`` (sorted by arrival); row numbers count from 1."""
    out = []
    for index, row in enumerate(_trace_rows(path), start=1):
        if not isinstance(row, dict):
            raise InputError(f"row {index}: expected arrival_s, prompt, output", file=str(path))
        try:
            arrival, prompt, output = float(row["arrival_s"]), int(row["prompt"]), int(row["output"])
        except KeyError as exc:
            raise InputError(f"row {index}: missing column {exc.args[0]!r} (need arrival_s, prompt, output)", file=str(path)) from None
        except (TypeError, ValueError):
            raise InputError(f"row {index}: arrival_s must be a number, prompt and output integers", file=str(path)) from None
        if arrival < 0 or prompt < 1 or output < 1:
            raise InputError(f"row {index}: need arrival_s >= 0, prompt >= 1 and output >= 1", file=str(path))
        out.append((arrival, prompt, output))
    if not out:
        raise InputError("the trace has no rows", file=str(path))
    return tuple(Request(i, a, p, o) for i, (a, p, o) in enumerate(sorted(out, key=lambda r: r[0])))


def _batching(section: Section) -> BatchPolicy:
    section.check_keys({"policy", "max_num_seqs", "max_num_batched_tokens", "chunked_prefill"})
    return BatchPolicy(section.str("policy", "continuous", choices=("continuous", "static")),
                       section.integer("max_num_seqs", 256, minimum=1), section.integer("max_num_batched_tokens", 8192, minimum=1),
                       section.bool("chunked_prefill", False))


def _options(section: Section) -> ServingOptions:
    section.check_keys({"weights", "kv_cache", "hbm_efficiency", "hbm_bandwidth_GBps", "gpu_memory_utilization"})
    bandwidth = section.number("hbm_bandwidth_GBps", strictly_positive=True) * 1e9 if "hbm_bandwidth_GBps" in section else None
    efficiency = section.number("hbm_efficiency", strictly_positive=True, maximum=1.0) if "hbm_efficiency" in section else None
    return ServingOptions(
        weight_bytes=DTYPE_BYTES[section.str("weights", "bf16", choices=("bf16", "fp8"))],
        kv_bytes=DTYPE_BYTES[section.str("kv_cache", "bf16", choices=("bf16", "fp8"))],
        hbm_efficiency=efficiency, hbm_bandwidth=bandwidth,
        gpu_memory_utilization=section.number("gpu_memory_utilization", 0.9, strictly_positive=True, maximum=1.0),
    )


def _disaggregation(section: Section, devices: int) -> Disaggregation:
    section.check_keys({"prefill_devices", "prefill_tp", "decode_tp"})
    prefill = section.integer("prefill_devices", minimum=1)
    if prefill >= devices:
        raise section.error(f"{prefill} leaves none of the cluster's {devices} devices to decode", "prefill_devices")
    prefill_tp, decode_tp = section.integer("prefill_tp", prefill, minimum=1), section.integer("decode_tp", devices - prefill, minimum=1)
    if prefill_tp > prefill or decode_tp > devices - prefill:
        raise section.error(f"prefill_tp ({prefill_tp}) must fit in {prefill} devices and decode_tp ({decode_tp}) in"
                            f" {devices - prefill}", "prefill_tp" if prefill_tp > prefill else "decode_tp")
    return Disaggregation(prefill, prefill_tp, decode_tp)


def read_serving(workload: Section, devices: int, base_dir: Path) -> ServingWorkload:
    """The serving parts of a ``workload:`` section (``mode: inference`` with ``requests:``)."""
    requests = workload.section("requests")
    if "trace" in requests:
        requests.check_keys({"trace"})
        items = _trace(base_dir / requests.str("trace"))
        described = f"trace {requests.str('trace')}"
    else:
        items = _generated(requests)
        described = f"{len(items)} requests, seed {requests.integer('seed', 0)}"
    disaggregation = _disaggregation(workload.section("disaggregation"), devices) if "disaggregation" in workload else None
    return ServingWorkload(items, _batching(workload.section("batching", {})), _options(workload.section("serving", {})),
                           disaggregation, described)
