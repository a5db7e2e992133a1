"""Simulating hybrid layouts at cluster scale: a 175B GPT-3-shaped model on 1024 A100s.

The setting of issue 10: GPT-3 175B (96 layers, hidden 12288, 96 heads; the transformer
builder's SwiGLU MLP with ffn = 8h/3 = 32768 has GPT-3's 12 h^2 parameters per layer),
sequence 2048, global batch 1536, on 128 DGX A100 nodes (8 GPUs on NVLink3, 8 x 200 Gb/s
InfiniBand: ``hardware_profiles/a100-80gb.yaml`` with the scale-out bandwidth set to
25 GB/s per GPU), laid out TP 8 x PP 16 x DP 8 (Megatron-LM's order, TP in the node),
sequence parallel, distributed optimizer, selective recompute, 1F1B and interleaved 1F1B.

What is replayed in full: one data-parallel replica's pipeline (16 ranks, one per stage;
the 8 TP ranks of a stage are identical, so the first stands for them, its unit times
including its TP collectives priced on the real NVLink group), every micro-batch's F, B
and W, the pipeline transfers on the real links, and the data-parallel gradient
reduce/all-reduce buckets replayed step by step over the real 8-rank DP groups (one
GPU per node, on InfiniBand), whose other 7 members join only those collectives. The
optimizer step and the ZeRO-1 gather are priced after the replay.

CPU seconds (``time.process_time``) of the whole thing: scenario loading, building the
layout's problem and schedule, the replay and the step report.

Then (:mod:`benchmarks.priced_replay`): the replay speed of the LLaMA-2-70B layouts the
search replays and of DeepSeek-V3 on 2048 H800 in DeepSeek's published layout, with
collectives on links and priced, and the step-time difference between the two modes on
the four realistic scenarios' scenario layout, presets and searched plan. Run::

    python benchmarks/hybrid_scale.py [--search-seconds 30] [--skip-gpt3]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.priced_replay import accuracy_table, speed_table  # noqa: E402
from planner.layouts.build import build_layout_run  # noqa: E402
from planner.layouts.step import step_result  # noqa: E402
from simulator.engine import replay  # noqa: E402
from simulator.scenario import scenario_from_dict  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
LAYOUTS = {
    "1f1b": {"schedule": "1f1b"},
    "interleaved (vpp 2)": {"schedule": "interleaved", "vpp": 2},
}


def _profile(folder: Path) -> Path:
    """a100-80gb with 8 x 200 Gb/s InfiniBand: 25 GB/s per GPU."""
    doc = yaml.safe_load((ROOT / "hardware_profiles" / "a100-80gb.yaml").read_text())
    doc["node"]["inter_bandwidth_GBps"] = {"value": 25, "source": "InfiniBand HDR 200 Gb/s per port (DGX A100: 8 ports)"}
    doc["name"] = "a100-80gb-hdr"
    path = folder / "a100-80gb-hdr.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _scenario(profile: Path, extra: dict) -> dict:
    return {
        "name": "gpt3-175b-1024xa100",
        "model": {"type": "transformer", "layers": 96, "hidden": 12288, "heads": 96, "ffn": 32768, "vocab": 51200,
                  "seq_len": 2048, "micro_batch_size": 1},
        "cluster": {"profile": str(profile), "nodes": 128},
        "workload": {"micro_batches": 192},
        "parallel": {"tp": 8, "pp": 16, "dp": 8, "sequence_parallel": True, "zero": 1, "recompute": "selective",
                     "micro_batch_size": 1, "global_batch_size": 1536, **extra},
    }


def gpt3_table() -> None:
    print("| layout | devices | replayed ranks | in collectives only | tasks | collectives | replayed on | step s | MFU % | peak GB"
          " | CPU s |")
    print("|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as folder:
        profile = _profile(Path(folder))
        for label, extra in LAYOUTS.items():
            start = time.process_time()
            scenario = scenario_from_dict(_scenario(profile, extra), Path(folder) / "gpt3.yaml")
            run = build_layout_run(scenario, scenario.parallel, label)
            result = step_result(run, replay(run.problem, run.schedule), label)
            seconds = time.process_time() - start
            print(f"| TP8 PP16 DP8 {label} | {scenario.parallel.world_size} | {len(run.simulated)} | {len(run.phantoms)} |"
                  f" {len(run.schedule):,} | {len(run.schedule.collectives):,} | {run.collectives} | {result.step:.2f} |"
                  f" {100 * result.mfu:.1f} |"
                  f" {result.memory_peak / 1e9:.1f}{' ' + result.note if result.note else ''} | {seconds:.1f} |", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--search-seconds", type=float, default=30.0, help="search time per scenario for its plan")
    parser.add_argument("--skip-gpt3", action="store_true")
    args = parser.parse_args()
    if not args.skip_gpt3:
        gpt3_table()
    print()
    speed_table()
    print()
    accuracy_table(args.search_seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
