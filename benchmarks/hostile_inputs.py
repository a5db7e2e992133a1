"""How fast, and in how little memory, hostile inputs are refused.

Run:  python benchmarks/hostile_inputs.py

Each case is one ``opplan`` command run in this process (``opplan.cli.main``), so the
interpreter's start-up (about a second, mostly imports) is left out. The table gives
the exit code, the CPU seconds, the peak of Python allocations during the run
(``tracemalloc``) and the one line printed on stderr. Before the reading path and the
size accounting, the bombs, the absurd sizes and ``/dev/zero`` ran past 60 s or to
2–7 GB; every number here is measured in this run.
"""

from __future__ import annotations

import contextlib
import io
import os
import stat
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import yaml  # noqa: E402

from opplan.cli import main  # noqa: E402

BASE = {"name": "tiny", "model": {"type": "pipeline", "stages": 2, "F_ms": 1, "B_ms": 1, "W_ms": 1},
        "cluster": {"devices": 2, "interconnect": "ideal"}, "workload": {"micro_batches": 2}}
LAUGHS = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(9))


def _scenario(folder: Path, name: str, **changes) -> Path:
    doc = yaml.safe_load(yaml.safe_dump(BASE))
    for path, value in changes.items():
        section, key = path.split("__")
        doc[section][key] = value
    target = folder / f"{name}.yaml"
    target.write_text(yaml.safe_dump(doc))
    return target


def _cases(folder: Path) -> list[tuple[str, list[str]]]:
    ok = _scenario(folder, "ok")
    (folder / "bomb.yaml").write_text(ok.read_text() + "description:\n" + "".join(f"  {line}\n" for line in LAUGHS.splitlines()))
    (folder / "digits.yaml").write_text(ok.read_text().replace("micro_batches: 2", "micro_batches: " + "9" * 5000))
    (folder / "random.yaml").write_bytes(os.urandom(1_000_000))
    (folder / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    values = ", ".join(str(i) for i in range(1, 3001))
    (folder / "sweep.yaml").write_text(f"scenario: ok.yaml\ngrid:\n  workload.micro_batches: [{values}]\n  model.stages: [{values}]\n")
    os.mkfifo(folder / "fifo.json")
    cases = [
        ("YAML alias bomb (10^9 values)", ["describe", folder / "bomb.yaml"]),
        ("5000-digit integer", ["describe", folder / "digits.yaml"]),
        ("1 MB of random bytes", ["describe", folder / "random.yaml"]),
        ("JSON nested 100 000 deep", ["validate", ok, "--schedule", folder / "deep.json"]),
        ("micro_batches 10^7", ["describe", _scenario(folder, "mb", workload__micro_batches=10**7)]),
        ("micro_batches 1e100", ["describe", _scenario(folder, "mb100", workload__micro_batches=1e100)]),
        ("devices 10^8", ["describe", _scenario(folder, "dev", cluster__devices=10**8)]),
        ("stages 10^7", ["describe", _scenario(folder, "stages", model__stages=10**7)]),
        ("sweep grid of 9e6 points", ["sweep", folder / "sweep.yaml", "--workers", "0", "--out", folder / "out"]),
        ("a FIFO as the schedule", ["validate", ok, "--schedule", folder / "fifo.json"]),
    ]
    try:
        os.mknod(folder / "zero.yaml", stat.S_IFCHR | 0o666, os.makedev(1, 5))
        os.mknod(folder / "full", stat.S_IFCHR | 0o666, os.makedev(1, 7))
        cases += [("a /dev/zero node as the scenario", ["describe", folder / "zero.yaml"]),
                  ("--json to a /dev/full node", ["simulate", ok, "--builtin", "1f1b", "--json", folder / "full"])]
    except PermissionError:
        pass  # device nodes need CAP_MKNOD
    return cases


def _run(args: list) -> tuple[int, float, float, str]:
    err = io.StringIO()
    tracemalloc.start()
    started = time.process_time()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    seconds = time.process_time() - started
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return code, seconds, peak, err.getvalue().strip().split(": ", 2)[-1]


def main_table() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        with contextlib.redirect_stdout(io.StringIO()):  # imports out of the timings
            main(["describe", str(_scenario(Path(tmp), "warm"))])
            import opplan.sweeps.runner  # noqa: F401
        print("| input | exit | CPU s | peak MB | message |")
        print("|---|---|---|---|---|")
        for label, args in _cases(Path(tmp)):
            code, seconds, peak, message = _run(args)
            message = message.replace(tmp + "/", "")
            print(f"| {label} | {code} | {seconds:.3f} | {peak / 1e6:.2f} | {message[:110]} |")


if __name__ == "__main__":
    main_table()
