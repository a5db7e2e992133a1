"""Time limits are promises: ``opplan plan --time-limit T`` on every bundled scenario.

Run:  python benchmarks/plan_time_limits.py [--time-limit 30] [--scenario FILE ...]

Each scenario is planned by the command line in a fresh process (so the time counts
Python's start, imports and reading the scenario, as a user sees it), and the wall-clock
is checked against the promise, the time limit + 10%. The last row is the full
DeepSeek-V3 preset (``model: {type: moe, preset: deepseek-v3}``) on two H800 nodes,
which the planner must refuse, saying how many GPUs it would need, in about a second; the
bundled ``deepseek-v3-2048xh800`` is the same model where it fits (2048 H800): bounding its
116 328 layouts takes about 40 s of CPU, so at 30 s it says in one line that the limit ended
before any replay, and ``--time-limit 300`` plans it (README, "DeepSeek-V3 on 2048 H800").
Every number in the table is measured in this run.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

DEEPSEEK_V3 = """\
name: deepseek-v3-2x8-h800
description: the full DeepSeek-V3 preset (671e9 parameters) on 2 x 8 H800, for the memory lower bound
model: {type: moe, preset: deepseek-v3, seq_len: 4096, micro_batch_size: 1}
cluster: {profile: h800-sxm, nodes: 2}
workload: {micro_batches: 8}
objective: {minimize: makespan, memory_limit_gb: 80}
"""


def run(scenario: Path, time_limit: float) -> tuple[float, int, str]:
    """(wall seconds, exit code, what it says) of one ``opplan plan`` in a fresh process."""
    began = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "opplan", "plan", str(scenario), "--time-limit", f"{time_limit:g}"],
                          cwd=ROOT, capture_output=True, text=True)
    seconds = time.monotonic() - began
    text = done.stdout + done.stderr
    found = re.search(r"plan: makespan (\S+) ms.*?gap (\S+%)", text)
    if done.returncode == 0 and found:
        return seconds, 0, f"makespan {found.group(1)} ms, gap {found.group(2)}"
    lines = [line for line in text.splitlines() if line.strip()]
    return seconds, done.returncode, (lines[-1] if lines else "")[:110]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--time-limit", type=float, default=30.0)
    parser.add_argument("--scenario", type=Path, action="append", help="only these (default: every bundled scenario)")
    args = parser.parse_args()
    promise = 1.1 * args.time_limit
    header = f"{'scenario':28} {'seconds':>8} {'within':>7} {'exit':>4}  result"
    print(f"opplan plan --time-limit {args.time_limit:g}: promise {promise:.3g} s wall-clock")
    print(header)
    print("-" * 120)
    with tempfile.TemporaryDirectory() as folder:
        deepseek = Path(folder) / "deepseek-v3-2x8-h800.yaml"
        deepseek.write_text(DEEPSEEK_V3)
        scenarios = args.scenario or [*sorted((ROOT / "scenarios").glob("*.yaml")), deepseek]
        for scenario in scenarios:
            seconds, code, said = run(scenario, args.time_limit)
            within = "yes" if seconds <= promise else "NO"
            print(f"{scenario.stem:28} {seconds:8.1f} {within:>7} {code:4d}  {said}", flush=True)


if __name__ == "__main__":
    main()
