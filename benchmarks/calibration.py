"""Cost model vs a measured LLaMA-2-7B layer on an H100: per operator, per layer chain, activation bytes.

    python3 benchmarks/calibration.py [--profile h100-sxm]

The measured numbers are those of ``shared/reference/h100-llama7b-measured.md`` (one H100
SXM5, PyTorch 2.11, 4096 tokens, bf16), copied below; the estimates come from
``simulator.costs`` and the hardware profile alone, with no measured time loaded.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from simulator.calibration import IMPLEMENTATIONS, chain_estimate, layer_estimates
from simulator.profiles import load_profile

#: implementation -> op -> (F, B, W) ms (shared/reference/h100-llama7b-measured.md).
MEASURED_MS = {
    "A": {"attention": (2.03, 3.43, 0.78), "mlp": (1.94, 2.40, 1.74), "head": (2.73, 3.05, 1.46), "embedding": (0.04, 0.0, 0.42)},
    "C": {"attention": (1.51, 2.31, 0.85), "mlp": (1.66, 1.89, 1.75), "head": (2.50, 2.50, 1.49), "embedding": (0.05, 0.0, 0.44)},
}
MEASURED_CHAIN_MS = {"A": (16.69, 34.43), "C": (13.93, 27.98)}
MEASURED_SAVED_MIB = {"A": {"attention": 320.5, "mlp": 472.0, "head": 628.0}, "C": {"attention": 256.5, "mlp": 408.0, "head": 564.0}}
MEASURED_RETAINED_MIB = {"attention": 192.0, "mlp": 322.0, "head": 282.0}


def _cell(model: float, measured: float) -> str:
    return f"{model:6.3f} / {measured:5.2f} ({model / measured:4.2f})" if measured else f"{model:6.3f} /  0    (  - )"


def print_times(profile_name: str) -> None:
    profile = load_profile(profile_name)
    print(f"## times, estimate / measured ms (ratio), {profile.name}")
    print(f"| impl | op | {'F':^24} | {'B':^24} | {'W':^24} |")
    for impl, choices in IMPLEMENTATIONS.items():
        estimates = layer_estimates(profile, **choices)
        for op, measured in MEASURED_MS[impl].items():
            e = estimates[op]
            cells = [_cell(m, x) for m, x in zip((e.forward_ms, e.backward_ms, e.weight_ms), measured, strict=True)]
            print(f"| {impl} | {op} | " + " | ".join(cells) + " |")
        forward, backward = chain_estimate(estimates)
        chain = MEASURED_CHAIN_MS[impl]
        print(f"| {impl} | 4-layer chain | {_cell(forward, chain[0])} | B+W {_cell(backward, chain[1])} | |")


def print_memory(profile_name: str) -> None:
    profile = load_profile(profile_name)
    print("\n## activation bytes, estimate / measured MiB (ratio)")
    print("| impl | op | saved for backward | kept from B to W (X + dY) |")
    for impl, choices in IMPLEMENTATIONS.items():
        estimates = layer_estimates(profile, **choices)
        for op, mib in MEASURED_SAVED_MIB[impl].items():
            retained = _cell(estimates[op].retained_mib, MEASURED_RETAINED_MIB[op]) if impl == "C" else "-"
            print(f"| {impl} | {op} | {_cell(estimates[op].saved_mib, mib)} | {retained} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="h100-sxm")
    args = parser.parse_args()
    print_times(args.profile)
    print_memory(args.profile)


if __name__ == "__main__":
    main()
