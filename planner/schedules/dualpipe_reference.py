"""An independent model of ``deepseek-ai/DualPipe``'s communication, to check the ``dualpipe`` replay against.

The reference (``dualpipe/dualpipe.py``) queues sends and receives and posts them in one
``dist.batch_isend_irecv`` at the start of the next chunk (``_commit_and_wait_comm``),
then waits for all of them: a receive needs the peer's send posted, a send needs the
peer's receive posted (NCCL point-to-point pairs them in order per rank pair), and a
receive queued early (step 2's next forward input, step 3's next chunk-1 input) is
waited for at that earlier commit. :func:`reference_makespan` walks the reference's
``step()`` control flow as a list of commits and computations per rank and solves those
waits for the start times (free transfers, fixed pass times). It shares nothing with the
simulator, so agreement is evidence that ``dualpipe`` replays like the reference
(``tests/test_schedules_formulas.py``, ``benchmarks/dualpipe_reference.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["reference_makespan"]


@dataclass
class Rank:
    """One rank's program as the reference builds it: ``("commit", recvs, sends)`` / ``("compute", ms)``."""

    r: int
    p: int
    times: tuple[float, float, float]  # F, B (input gradient), W
    program: list = field(default_factory=list)
    queued: list = field(default_factory=list)

    def _peer(self, phase: int, forward: bool, sending: bool) -> int | None:
        """The rank a message goes to / comes from, or None at a pipeline end (the reference's checks)."""
        phase ^= self.r >= self.p // 2
        downstream = (phase == 0) == forward  # direction of travel: to next rank when True
        first, last = self.r == 0, self.r == self.p - 1
        if sending and ((downstream and last) or (not downstream and first)):
            return None
        if not sending and ((downstream and first) or (not downstream and last)):
            return None
        return self.r + 1 if downstream == sending else self.r - 1

    def post(self, kind: str, phase: int, forward: bool) -> None:
        peer = self._peer(phase, forward, kind == "send")
        if peer is not None:
            self.queued.append((kind, peer))

    def commit(self) -> None:
        if self.queued:
            self.program.append(("commit", [q for q in self.queued if q[0] == "recv"], [q for q in self.queued if q[0] == "send"]))
        self.queued = []

    def chunk(self, ms: float, recv: list[tuple[int, bool]], send: list[tuple[int, bool]]) -> None:
        """Queue ``recv``, commit, compute, queue ``send`` (``(phase, forward?)`` pairs)."""
        for phase, forward in recv:
            self.post("recv", phase, forward)
        self.commit()
        self.program.append(("compute", ms))
        for phase, forward in send:
            self.post("send", phase, forward)


def _steps_1_to_4(k: Rank, n: int, h: int, half_m: int) -> None:
    f, b, w = k.times
    middle = h == n - 1
    for _ in range(2 * (n - h - 1)):
        k.chunk(f, [(0, True)], [(0, True)])
    k.post("recv", 0, True)
    for i in range(h + 1):
        k.chunk(f, [], [(0, True)] if middle else [])
        k.post("recv", 0, True)
        k.chunk(f, [(1, True)], [(1, True)] if (not middle or i < h) else [])
        if not middle:
            k.post("send", 0, True)
    for _ in range(n - h - 1):
        k.chunk(b, [(1, False)], [(1, False)])
        k.post("recv", 1, True)
        k.chunk(w, [], [])  # the weight chunk commits too
        k.chunk(f, [], [(1, True)])
    for i in range(half_m - 2 * n + h + 1):
        if i == 0 and middle:  # forward alone, then the backward; the sends follow both
            k.chunk(f, [], [])
            k.post("send", 1, True)
            k.chunk(b + w, [(1, False)], [(0, True), (1, False)])
        else:
            k.chunk(f + b + w, ([] if i == 0 else [(0, True)]) + [(1, False)], [(0, True), (1, False)])
        k.chunk(f + b + w, [(1, True), (0, False)], [(1, True), (0, False)])


def _steps_5_to_8(k: Rank, n: int, h: int) -> None:
    f, b, w = k.times
    for _ in range(n - h - 1):
        k.chunk(b + w, [(1, False)], [(1, False)])
        k.chunk(f + b + w, [(1, True), (0, False)], [(1, True), (0, False)])
    split = False
    for i in range(h + 1):
        split = split or (i == (h + 1) // 2 and h % 2 == 1)
        k.chunk(b if split else b + w, [(1, False)], [(1, False)])
        split = split or (i == (h + 1) // 2 and h % 2 == 0)
        k.chunk(b if split else b + w, [(0, False)], [(0, False)])
    for _ in range(n - h - 1):
        k.chunk(w, [], [])
        k.chunk(b, [(0, False)], [(0, False)])
    for _ in range(h + 1):
        k.chunk(w, [], [])
    k.commit()


def _numbered(program: list, r: int) -> list:
    """Name each message ``(src, dst, n)``: the n-th between a pair matches the n-th (in order)."""
    counts: dict = {}
    out = []
    for item in program:
        if item[0] == "commit":
            named = []
            for kind, peer in (*item[1], *item[2]):
                pair = (peer, r) if kind == "recv" else (r, peer)
                counts[kind, pair] = counts.get((kind, pair), 0) + 1
                named.append((kind, (*pair, counts[kind, pair])))
            item = ("commit", named)
        out.append(item)
    return out


def reference_makespan(p: int, m: int, times: tuple[float, float, float]) -> float:
    """Makespan of the reference's step() under batch_isend_irecv's waits (a fixed point)."""
    programs = []
    for r in range(p):
        k = Rank(r, p, times)
        _steps_1_to_4(k, p // 2, min(r, p - 1 - r), m // 2)
        _steps_5_to_8(k, p // 2, min(r, p - 1 - r))
        programs.append(_numbered(k.program, r))
    posted: dict = {}
    ends: list[float] = [0.0] * p
    for _ in range(10 * sum(len(prog) for prog in programs)):
        before = dict(posted)
        for r, program in enumerate(programs):
            t = 0.0
            for item in program:
                if item[0] == "compute":
                    t += item[1]
                    continue
                entry = t
                for kind, message in item[1]:
                    posted[kind, message] = entry
                other = {"recv": "send", "send": "recv"}
                t = max([entry, *(posted.get((other[kind], msg), float("inf")) for kind, msg in item[1])])
            ends[r] = t
        if posted == before:
            return max(ends)
    raise RuntimeError("no fixed point: the programs deadlock")
