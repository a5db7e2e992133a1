"""Collectives on H100 clusters: analytic time vs the replay, in nccl-tests' units.

For each collective, algorithm and size, prints the analytic time
(:func:`simulator.collectives.collective_time`), the time the SimPy replay gives for the
collective alone on the cluster, and nccl-tests' bandwidths (doc/PERFORMANCE.md in
NVIDIA/nccl-tests): ``algbw = S / t`` and ``busbw = algbw × 2(n−1)/n`` for all-reduce,
``× (n−1)/n`` for reduce-scatter, all-gather and all-to-all — bus bandwidth is
comparable with a link's speed whatever ``n`` is.

The clusters come from ``hardware_profiles/h100-sxm.yaml``: NVLink 450 GB/s per
direction × 0.65 achieved, 25 ns; one NDR InfiniBand NIC per GPU, 50 GB/s × 0.9,
0.5 us. Published nccl-tests figures to compare with (NVIDIA engineers' answers):

- 8×H100 in one node, ``NCCL_ALGO=RING`` (or any non-all-reduce collective): busbw
  about 370 GB/s — "450GB/s is the line rate. With the protocol overhead (~20%) NCCL
  can get an effective NVLink bandwidth of 370GB/s" (NVIDIA/nccl-tests issue 212).
  All-reduce with NVLink SHARP reaches about 480 GB/s busbw; NVLS is not modelled.
- NDR 400 Gb/s InfiniBand: "you should see 46-48GB/s per NIC" (NVIDIA/nccl-tests issue
  290), which is the busbw of a ring of one GPU per node.

Run::

    python benchmarks/collectives.py              # 64 MiB and 1 GiB
    python benchmarks/collectives.py --sizes-mib 8 8192
"""

from __future__ import annotations

import argparse
import sys
import time

from simulator.cluster import Cluster
from simulator.collectives import Collective, bus_bandwidth_factor, collective_time
from simulator.engine import simulate
from simulator.graph import OperatorGraph
from simulator.problem import Problem, Workload
from simulator.profiles import build_cluster
from simulator.schedule import CollectiveCall, Schedule
from simulator.yamlio import Section

OPS = ("all_reduce", "reduce_scatter", "all_gather", "all_to_all")
#: (cluster label, nodes, GPUs per node, published busbw GB/s for ring AR/RS/AG, its source)
CASES = (
    ("1x8 H100", 1, 8, "~370 (nccl-tests#212)"),
    ("2x1 H100", 2, 1, "46-48 (nccl-tests#290)"),
    ("4x8 H100", 4, 8, "-"),
)


def h100(nodes: int, per_node: int) -> Cluster:
    return build_cluster(Section({"profile": "h100-sxm", "nodes": nodes, "gpus_per_node": per_node}))


def replayed(cluster: Cluster, collective: Collective) -> tuple[float, float]:
    """Seconds the replay gives for ``collective`` alone, and the CPU seconds it took."""
    call = CollectiveCall("c", collective)
    schedule = Schedule.from_lists({device: [call] for device in collective.group})
    problem = Problem(OperatorGraph("none", ()), cluster, Workload(1))
    start = time.process_time()
    timeline = simulate(problem, schedule)
    (record,) = timeline.collectives
    return record.end - record.start, time.process_time() - start


def rows(sizes: list[float]):
    """One row per cluster, collective, algorithm and size."""
    for label, nodes, per_node, published in CASES:
        cluster = h100(nodes, per_node)
        group = cluster.device_names
        for op in OPS:
            algorithms = ("ring", "hierarchical") if nodes > 1 and per_node > 1 and op != "all_to_all" else ("ring",)
            for algorithm in algorithms:
                for size in sizes:
                    c = Collective(op, group, size, algorithm=algorithm)
                    analytic = collective_time(c, cluster)
                    simulated, cpu = replayed(cluster, c)
                    algbw = size / simulated
                    quoted = published if op != "all_to_all" and algorithm == "ring" else "-"
                    yield (label, op, algorithm, size, analytic, simulated, algbw,
                           algbw * bus_bandwidth_factor(op, len(group)), quoted, cpu)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes-mib", type=float, nargs="+", default=[64, 1024], help="buffer sizes S in MiB")
    args = parser.parse_args(argv)
    sizes = [s * 2**20 for s in args.sizes_mib]
    header = (f"{'cluster':<9} {'collective':<15} {'algorithm':<12} {'size':>9} {'analytic ms':>11} {'replay ms':>10}"
              f" {'algbw GB/s':>10} {'busbw GB/s':>10} {'nccl-tests busbw':>22} {'replay cpu s':>12}")
    print(header)
    for label, op, algorithm, size, analytic, simulated, algbw, busbw, quoted, cpu in rows(sizes):
        print(f"{label:<9} {op:<15} {algorithm:<12} {size / 2**20:>6.0f}MiB {analytic * 1e3:>11.4f} {simulated * 1e3:>10.4f}"
              f" {algbw / 1e9:>10.1f} {busbw / 1e9:>10.1f} {quoted:>22} {cpu:>12.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
