"""``opplan profile``: trace import (no PyTorch), the measured file it writes, and the PyTorch path when installed."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from opplan.profile.trace import load_trace, operator_times, parse_rules
from simulator.errors import InputError
from simulator.problem import Task
from simulator.scenario import load_scenario

FIXTURES = Path(__file__).resolve().parent / "fixtures"
SCENARIO = FIXTURES / "tiny-llama-cpu.yaml"
TRACE = FIXTURES / "tiny-llama-cpu.trace.json"  # made by tests/fixtures/make_trace_fixture.py
#: HF-style range names in the fixture -> the scenario's operators.
MAPS = [r"^model\.layers\.(\d+)\.self_attn$=L\1.attn", r"^model\.layers\.(\d+)\.mlp$=L\1.mlp",
        r"^model\.embed_tokens$=embed", r"^lm_head\+loss$=head"]
OPERATORS = {"embed", "L0.attn", "L0.mlp", "L1.attn", "L1.mlp", "head"}
HAS_TORCH = importlib.util.find_spec("torch") is not None


def opplan(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "opplan", *args], capture_output=True, text=True, timeout=120)


def gpu_trace() -> list[dict]:
    """A GPU-style trace by hand: two forward kernels of L0.attn, one backward kernel of its MmBackward."""
    cpu, gpu = {"pid": 1, "tid": 1}, {"pid": 0, "tid": 7}
    return [
        {"ph": "X", "cat": "user_annotation", "name": "L0.attn", "ts": 0, "dur": 100, **cpu},
        {"ph": "X", "cat": "cpu_op", "name": "aten::mm", "ts": 10, "dur": 20, "args": {"Sequence number": 5}, **cpu},
        {"ph": "X", "cat": "cuda_runtime", "name": "cudaLaunchKernel", "ts": 12, "dur": 3, "args": {"correlation": 1}, **cpu},
        {"ph": "X", "cat": "cuda_runtime", "name": "cudaLaunchKernel", "ts": 40, "dur": 3, "args": {"correlation": 2}, **cpu},
        {"ph": "X", "cat": "cpu_op", "name": "autograd::engine::evaluate_function: MmBackward0", "ts": 200, "dur": 50,
         "args": {"Sequence number": 5}, "pid": 1, "tid": 2},
        {"ph": "X", "cat": "cuda_runtime", "name": "cudaLaunchKernel", "ts": 210, "dur": 3, "args": {"correlation": 3}, "pid": 1, "tid": 2},
        {"ph": "X", "cat": "cuda_runtime", "name": "cudaLaunchKernel", "ts": 300, "dur": 3, "args": {"correlation": 4}, **cpu},
        {"ph": "X", "cat": "kernel", "name": "gemm", "ts": 20, "dur": 10, "args": {"correlation": 1}, **gpu},
        {"ph": "X", "cat": "kernel", "name": "softmax", "ts": 50, "dur": 20, "args": {"correlation": 2}, **gpu},
        {"ph": "X", "cat": "kernel", "name": "gemm_dx", "ts": 220, "dur": 30, "args": {"correlation": 3}, **gpu},
        {"ph": "X", "cat": "kernel", "name": "optimizer", "ts": 310, "dur": 7, "args": {"correlation": 4}, **gpu},
    ]


def test_kernels_go_to_the_range_around_their_launch_and_backward_kernels_by_sequence_number():
    times = operator_times(gpu_trace(), parse_rules([]))
    assert times.forward == {"L0.attn": pytest.approx(30e-6)}
    assert times.backward == {"L0.attn": pytest.approx(30e-6)}
    assert times.unmapped_seconds == pytest.approx(7e-6)
    assert times.leaves == 4


def test_the_fixture_maps_every_operator_within_its_annotated_ranges():
    events = load_trace(TRACE)
    times = operator_times(events, parse_rules(MAPS), OPERATORS)
    assert set(times.forward) == set(times.backward) == OPERATORS
    assert set(times.occurrences.values()) == {2}  # two micro-batches
    rules = parse_rules(MAPS)
    for op in OPERATORS:
        ranges = [e["dur"] * 1e-6 for e in events if e.get("cat") == "user_annotation" and any(r.apply(e["name"]) == op for r in rules)]
        per_range = sum(ranges) / len(ranges)
        # The operators inside a range take most of it (the profiler's own cost aside), never more.
        assert 0.3 * per_range <= times.forward[op] <= per_range
    assert times.unmapped_seconds < 0.05 * sum(times.backward.values())  # the loss gradient's seed and the like


def test_profile_imports_the_trace_and_the_scenario_includes_the_file(tmp_path):
    out = tmp_path / "tiny.measured.yaml"
    run = opplan("profile", str(SCENARIO), "--trace", str(TRACE), *[f"--map={m}" for m in MAPS], "-o", str(out))
    assert run.returncode == 0, run.stderr
    table = yaml.safe_load(out.read_text())["measured"]
    assert set(table) == OPERATORS and all(set(row["cpu"]) == {"F", "backward"} for row in table.values())
    scenario = yaml.safe_load(SCENARIO.read_text())
    scenario["model"]["measured"] = str(out)
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(scenario))
    problem = load_scenario(tmp_path / "s.yaml").problem
    device = problem.cluster.devices[0]
    b, w = (problem.duration(Task("L1.mlp", 0, k), device) for k in "BW")
    assert b + w == pytest.approx(table["L1.mlp"]["cpu"]["backward"] * 1e-3)
    assert problem.duration(Task("head", 0, "F"), device) == pytest.approx(table["head"]["cpu"]["F"] * 1e-3)


def test_a_trace_with_no_mapped_range_and_a_bad_map_are_one_line_errors(tmp_path):
    run = opplan("profile", str(SCENARIO), "--trace", str(TRACE), "-o", str(tmp_path / "x.yaml"))
    assert run.returncode == 2 and len(run.stderr.strip().splitlines()) == 1 and "--map" in run.stderr
    with pytest.raises(InputError):
        parse_rules(["no-equals-sign"])
    (tmp_path / "bad.json").write_text(json.dumps({"traceEvents": 3}))
    with pytest.raises(InputError):
        load_trace(tmp_path / "bad.json")


@pytest.mark.skipif(HAS_TORCH, reason="checks the message shown when PyTorch is missing")
def test_without_pytorch_measuring_says_so_in_one_line(tmp_path):
    run = opplan("profile", str(SCENARIO), "--device", "cpu", "-o", str(tmp_path / "x.yaml"))
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [run.stderr.strip()] and "opplan[profile]" in run.stderr


@pytest.mark.skipif(not HAS_TORCH, reason="needs PyTorch (pip install opplan[profile])")
def test_measuring_on_the_cpu_writes_a_file_the_scenario_includes(tmp_path):
    out = tmp_path / "m.yaml"
    run = opplan("profile", str(SCENARIO), "--device", "cpu", "--repeats", "3", "--warmup", "1", "-o", str(out))
    assert run.returncode == 0, run.stderr
    table = yaml.safe_load(out.read_text())["measured"]
    assert set(table) == {"embed", "L*.attn", "L*.mlp", "head"}
    assert table["embed"]["cpu"]["B"] == 0.0 and table["L*.mlp"]["memory"]["activation_MiB"] > 0


@pytest.mark.skipif(not HAS_TORCH, reason="needs PyTorch (pip install opplan[profile])")
def test_saved_bytes_are_the_distinct_non_parameter_storages_autograd_keeps():
    import torch

    from opplan.profile.measure import saved_bytes

    linear = torch.nn.Linear(8, 16, bias=False)
    x = torch.randn(4, 8, requires_grad=True)
    assert saved_bytes(linear, [x]) == 4 * 8 * 4  # its fp32 input, not its weight

    class Twice(torch.nn.Module):
        def forward(self, t):
            return (t * t) * t  # t saved twice, counted once; t*t saved once

    assert saved_bytes(Twice(), [x]) == 2 * 4 * 8 * 4


@pytest.mark.skipif(not HAS_TORCH, reason="needs PyTorch")
def test_asking_for_a_gpu_where_there_is_none_is_one_line(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    run = opplan("profile", str(SCENARIO), "-o", str(tmp_path / "x.yaml"))
    assert run.returncode == 2 and "no CUDA GPU" in run.stderr and len(run.stderr.strip().splitlines()) == 1
