"""Operator times from a ``torch.profiler`` Chrome trace, mapped by module / annotation names.

A trace of a real training step holds CPU ranges (``user_annotation`` from
``record_function``, ``python_function`` ``nn.Module: Name_i`` from ``with_stack``),
CPU operators (``cpu_op``) and, on a GPU, kernels linked to their launch by
``args.correlation``. Each *leaf* — a kernel (or, in a CPU-only trace, a top-level CPU
operator) — is charged to an operator:

- forward: the innermost range around its launch whose name a rule maps to an operator
  (:data:`DEFAULT_RULES`, or ``--map REGEX=NAME``; an annotation equal to an operator
  name maps to it);
- backward: autograd runs each backward node as a CPU operator carrying the forward
  operator's ``Sequence number``; a leaf inside it is charged to the operator whose
  forward recorded that sequence number.

Times are averaged per occurrence of the operator's forward range (a micro-batch). The
backward is reported whole (``backward``): ``measured:`` splits it into B and W by the
model's own ratio, since a trace cannot tell an input-gradient GEMM from a weight one.
"""

from __future__ import annotations

import bisect
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from simulator.documents import load_document
from simulator.errors import InputError

__all__ = ["DEFAULT_RULES", "Rule", "TraceTimes", "load_trace", "operator_times", "parse_rules"]

#: Range names -> operator names for common module names (HF LLaMA-style) and opplan's own annotations.
DEFAULT_RULES: tuple[tuple[str, str], ...] = (
    (r"^(?:opplan:)?((?:vision\.|text\.|fusion\.)?L\d+\.\w+|head|embed|text\.embed)$", r"\1"),
    (r"^nn\.Module: \w*Attention_(\d+)$", r"L\1.attn"),
    (r"^nn\.Module: \w*(?:MLP|FeedForward)_(\d+)$", r"L\1.mlp"),
)
_LEAF_GPU = {"kernel", "gpu_memcpy", "gpu_memset"}
_RANGES = {"user_annotation", "python_function"}


@dataclass(frozen=True)
class Rule:
    """A range-name pattern and the operator name it maps to (``\\1`` refers to a group)."""

    pattern: re.Pattern
    target: str

    def apply(self, name: str) -> str | None:
        match = self.pattern.match(name)
        return match.expand(self.target) if match else None


@dataclass(frozen=True)
class TraceTimes:
    """Per operator: seconds of F and of the whole backward per micro-batch, and how many micro-batches."""

    forward: dict[str, float]
    backward: dict[str, float]
    occurrences: dict[str, int]
    leaves: int
    unmapped_seconds: float


def parse_rules(items: Iterable[str]) -> tuple[Rule, ...]:
    """``REGEX=NAME`` strings (first match wins), then :data:`DEFAULT_RULES`."""
    rules = []
    for item in items:
        regex, sep, target = item.rpartition("=")
        if not sep or not regex:
            raise InputError(f"a mapping is REGEX=OPERATOR, got {item!r}", field="--map")
        try:
            rules.append(Rule(re.compile(regex), target))
        except re.error as exc:
            raise InputError(f"bad regular expression {regex!r}: {exc}", field="--map") from None
    return (*rules, *(Rule(re.compile(p), t) for p, t in DEFAULT_RULES))


def load_trace(path: Path) -> list[dict]:
    """The complete (``ph: X``) events of a Chrome trace file."""
    doc = load_document(path)  # the hardened reading path: regular file, size cap, strict UTF-8 and JSON
    events = doc.get("traceEvents") if isinstance(doc, dict) else doc
    if not isinstance(events, list):
        raise InputError("expected a Chrome trace: an object with traceEvents, or a list of events", file=str(path))
    good = [e for e in events if isinstance(e, dict) and e.get("ph") == "X" and isinstance(e.get("ts"), (int, float))]
    if not good:
        raise InputError("the trace has no complete ('ph': 'X') events", file=str(path), field="traceEvents")
    return good


class _Ranges:
    """Per thread, ranges sorted by start, to find the innermost one around a time."""

    def __init__(self, events: Iterable[dict]):
        self.by_thread: dict[tuple, list[dict]] = defaultdict(list)
        for event in events:
            self.by_thread[event.get("pid"), event.get("tid")].append(event)
        for ranges in self.by_thread.values():
            ranges.sort(key=lambda e: (e["ts"], -e.get("dur", 0)))
        self.starts = {key: [e["ts"] for e in ranges] for key, ranges in self.by_thread.items()}

    def around(self, thread: tuple, ts: float) -> list[dict]:
        """Ranges on ``thread`` that contain ``ts``, outermost first."""
        ranges = self.by_thread.get(thread, [])
        stop = bisect.bisect_right(self.starts.get(thread, []), ts)
        return [e for e in ranges[:stop] if e["ts"] <= ts <= e["ts"] + e.get("dur", 0)]


def _leaves(events: Sequence[dict]) -> list[tuple[dict, tuple, float]]:
    """``(leaf, thread of its launch, launch time)``: kernels by correlation, else top-level CPU ops."""
    kernels = [e for e in events if e.get("cat") in _LEAF_GPU]
    if kernels:
        launches = {
            e["args"]["correlation"]: e
            for e in events
            if e.get("cat") in ("cuda_runtime", "cuda_driver") and "correlation" in e.get("args", {})
        }
        out = []
        for kernel in kernels:
            launch = launches.get(kernel.get("args", {}).get("correlation"))
            if launch is not None:
                out.append((kernel, (launch.get("pid"), launch.get("tid")), launch["ts"]))
        return out
    return [(e, (e.get("pid"), e.get("tid")), e["ts"]) for e in _top_level(e for e in events if e.get("cat") == "cpu_op")]


def _top_level(events: Iterable[dict]) -> list[dict]:
    """Events not nested in another on the same thread (a nested ATen call is its parent's time)."""
    out = []
    by_thread: dict[tuple, list[dict]] = defaultdict(list)
    for event in events:
        by_thread[event.get("pid"), event.get("tid")].append(event)
    for thread_events in by_thread.values():
        end = float("-inf")
        for event in sorted(thread_events, key=lambda e: (e["ts"], -e.get("dur", 0))):
            if event["ts"] >= end:
                out.append(event)
                end = event["ts"] + event.get("dur", 0)
            else:
                end = max(end, event["ts"] + event.get("dur", 0))
    return out


def _mapper(ranges: _Ranges, rules: Sequence[Rule], operators: set[str] | None):
    """``(thread, ts) -> operator`` of the innermost mapped range, or None."""

    def name_of(event: dict) -> str | None:
        for rule in rules:
            name = rule.apply(str(event.get("name", "")))
            if name is not None:
                return name if operators is None or name in operators else None
        return None

    def op_at(thread: tuple, ts: float) -> str | None:
        for event in reversed(ranges.around(thread, ts)):
            name = name_of(event)
            if name is not None:
                return name
        return None

    return name_of, op_at


def _occurrences(ranges: _Ranges, name_of) -> dict[str, int]:
    """How many times each operator's range opens, not counting one nested in a range of the same operator."""
    counts: dict[str, int] = defaultdict(int)
    for thread, events in ranges.by_thread.items():
        for event in events:
            name = name_of(event)
            if name is None:
                continue
            outer = ranges.around(thread, event["ts"])
            if not any(o is not event and name_of(o) == name for o in outer):
                counts[name] += 1
    return dict(counts)


def operator_times(events: Sequence[dict], rules: Sequence[Rule], operators: set[str] | None = None) -> TraceTimes:
    """Per-operator F and backward seconds per micro-batch (see the module docstring)."""
    ranges = _Ranges(e for e in events if e.get("cat") in _RANGES)
    cpu_ops = _Ranges(e for e in events if e.get("cat") == "cpu_op")
    name_of, op_at = _mapper(ranges, rules, operators)
    seq_to_op: dict[int, str] = {}
    for thread, ops in cpu_ops.by_thread.items():
        for op in ops:
            seq = op.get("args", {}).get("Sequence number")
            if seq is not None and not str(op.get("name", "")).startswith("autograd::"):
                owner = op_at(thread, op["ts"])
                if owner is not None:
                    seq_to_op.setdefault(seq, owner)
    forward: dict[str, float] = defaultdict(float)
    backward: dict[str, float] = defaultdict(float)
    unmapped, leaves = 0.0, _leaves(events)
    for leaf, thread, ts in leaves:
        seconds = leaf.get("dur", 0) * 1e-6
        owner = op_at(thread, ts)
        if owner is not None:
            forward[owner] += seconds
            continue
        seqs = [e.get("args", {}).get("Sequence number") for e in reversed(cpu_ops.around(thread, ts))]
        owner = next((seq_to_op[s] for s in seqs if s is not None and s in seq_to_op), None)
        if owner is not None:
            backward[owner] += seconds
        else:
            unmapped += seconds
    counts = _occurrences(ranges, name_of)
    per = {op: max(counts.get(op, 1), 1) for op in set(forward) | set(backward)}
    return TraceTimes(
        forward={op: t / per[op] for op, t in forward.items()},
        backward={op: t / per[op] for op, t in backward.items()},
        occurrences=per,
        leaves=len(leaves),
        unmapped_seconds=unmapped,
    )
