"""The serving timeline on SimPy: arrivals, queueing, batching, prefill and decode steps, KV admission.

One engine is a ``tp x pp`` group of devices. Its pipeline stages are SimPy resources;
with ``pp > 1`` it runs ``pp`` *virtual engines* (vLLM's pipeline-parallel scheduler),
each with its own batch and the same limits (vLLM V0 gives every virtual engine's
scheduler the same ``max_num_seqs``), sharing one KV pool, so while one batch is on
stage 1 the next can be on stage 0.
Each virtual engine repeats: pick a batch, push it through the stages
(:meth:`StepModel.stage_time`), update every sequence.

Batch policies:

- ``continuous`` (Orca / vLLM / TensorRT-LLM in-flight batching): every step decodes one
  token of every running sequence and admits waiting requests, first come first
  served, while the batch stays within ``max_num_seqs`` sequences and
  ``max_num_batched_tokens`` tokens (a decode is one token, a prefill its whole prompt);
  a finished sequence leaves at once;
- ``static``: a batch is formed only when the previous one has finished; it is
  prefilled together and decoded until its longest output is done.

``chunked_prefill`` (vLLM's ``--enable-chunked-prefill``, Sarathi-Serve, Agrawal et al. 2024):
decodes are scheduled first, then prompts fill what is left of the token budget, a long
prompt over several steps; without it a prompt must fit one step's budget.

KV admission reserves a request's ``prompt + output`` tokens when it is admitted and
frees them when it finishes — TensorRT-LLM's ``GUARANTEED_NO_EVICT`` capacity policy —
so no sequence is ever preempted. A request that must wait for memory while the batch
has room is counted as *queued for memory*; one that can never fit (longer than the
model's context, more KV than the engine holds, a prompt over the token budget) is
*rejected*. With disaggregation a prefill engine runs the prompts, the KV cache travels
to the decode engine (``prompt x KV bytes`` over the cluster's links), and the decode
engine admits it like a request whose prompt is already cached.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import simpy

from simulator.serving.step import StepModel
from simulator.serving.workload import BatchPolicy, Request

__all__ = ["Outcome", "Engine", "Running"]


@dataclass
class Outcome:
    """What happened to one request (times in seconds; None when it never got there)."""

    request: Request
    first_token: float | None = None
    finish: float | None = None
    rejected: str = ""
    queued_for_memory: bool = False


@dataclass
class Running:
    request: Request
    generated: int = 0  # tokens produced so far (the first comes out of the prefill)
    prefilled: int = 0  # prompt tokens already run through the model

    @property
    def context(self) -> int:
        return self.request.prompt + self.generated


@dataclass
class Engine:
    """One engine's queue, KV pool and virtual engines on a SimPy environment."""

    env: simpy.Environment
    step: StepModel
    policy: BatchPolicy
    max_model_len: int
    outcomes: dict[int, Outcome]
    role: str = "both"  # both | prefill | decode
    on_prefilled: Callable[[Request], None] | None = None
    waiting: deque = field(default_factory=deque)
    occupancy: list = field(default_factory=list)  # (time, used KV tokens)
    steps: int = 0

    def __post_init__(self) -> None:
        self.capacity = self.step.kv_capacity_tokens()
        self.used = 0
        self.stages = [simpy.Resource(self.env, capacity=1) for _ in self.step.stages]
        self.wakeup = self.env.event()
        self.arrivals_left = 0
        self.occupancy.append((0.0, 0))

    # -- requests in --------------------------------------------------------------------
    def expect(self, count: int) -> None:
        self.arrivals_left += count

    def submit(self, request: Request) -> None:
        self.arrivals_left -= 1
        self.waiting.append(request)
        self._wake()

    def _wake(self) -> None:
        if not self.wakeup.triggered:
            self.wakeup.succeed()
        self.wakeup = self.env.event()

    def start(self) -> None:
        for _ in range(len(self.stages)):
            self.env.process(self._virtual_engine())

    # -- admission ------------------------------------------------------------------------
    def _reject_reason(self, r: Request) -> str:
        need = r.prompt if self.role == "prefill" else r.prompt + r.output
        if r.prompt + r.output > self.max_model_len:
            return f"prompt + output {r.prompt + r.output} > the model's context {self.max_model_len}"
        if need > self.capacity:
            return f"needs {need} KV tokens, the engine holds {self.capacity}"
        if self.role != "decode" and not self.policy.chunked_prefill and r.prompt > self.policy.max_num_batched_tokens:
            return f"prompt {r.prompt} > max_num_batched_tokens {self.policy.max_num_batched_tokens}"
        return ""

    def _admit(self, running: list[Running]) -> list[Running]:
        """Waiting requests joining this step, first come first served."""
        admitted: list[Running] = []
        tokens = self._planned_tokens(running)
        while self.waiting and len(running) + len(admitted) < self.policy.max_num_seqs:
            r = self.waiting[0]
            reason = self._reject_reason(r)
            if reason:
                self.waiting.popleft()
                self.outcomes[r.id].rejected = reason
                continue
            prompt = 1 if self.role == "decode" else r.prompt  # an arriving prefilled request decodes one token
            room = self.policy.max_num_batched_tokens - tokens
            if room <= 0 or (prompt > room and not self.policy.chunked_prefill):
                break
            need = r.prompt if self.role == "prefill" else r.prompt + r.output
            if self.used + need > self.capacity:
                self.outcomes[r.id].queued_for_memory = True
                break
            self.waiting.popleft()
            self.used += need
            tokens += min(prompt, room)
            decode = self.role == "decode"
            admitted.append(Running(r, generated=1 if decode else 0, prefilled=r.prompt if decode else 0))
        return admitted

    # -- one virtual engine -----------------------------------------------------------------
    def _virtual_engine(self):
        running: list[Running] = []
        while True:
            if self.policy.policy == "continuous" or not running:
                running = running + self._admit(running)
            if not running:
                if self.arrivals_left <= 0 and not self.waiting:
                    return
                yield self.wakeup
                continue
            yield from self._run_step(running)
            running = self._retire(running)

    def _chunks(self, running: list[Running]) -> tuple[list[Running], list[tuple[Running, int]]]:
        """The step's work: every prefilled sequence decodes one token; sequences still prefilling get
        the rest of their prompt, or with chunked prefill as much of it as the token budget leaves."""
        decoding = [s for s in running if s.prefilled >= s.request.prompt]
        budget = self.policy.max_num_batched_tokens - len(decoding)
        chunks = []
        for s in running:
            left = s.request.prompt - s.prefilled
            if left > 0 and budget > 0:
                take = min(left, budget) if self.policy.chunked_prefill else left
                chunks.append((s, take))
                budget -= take
        return decoding, chunks

    def _planned_tokens(self, running: list[Running]) -> int:
        decoding, chunks = self._chunks(running)
        return len(decoding) + sum(take for _, take in chunks)

    def _run_step(self, running: list[Running]):
        self.occupancy.append((self.env.now, self.used))
        decoding, chunks = self._chunks(running)
        context = sum(s.context for s in decoding)
        spans = tuple((s.prefilled, take) for s, take in chunks)
        for index, stage in enumerate(self.stages):
            with stage.request() as turn:
                yield turn
                yield self.env.timeout(self.step.stage_time(index, spans, len(decoding), context))
        self.steps += 1
        for s in decoding:
            s.generated += 1
        for s, take in chunks:
            s.prefilled += take
            if s.prefilled == s.request.prompt:
                s.generated = 1
                self.outcomes[s.request.id].first_token = self.env.now

    def _retire(self, running: list[Running]) -> list[Running]:
        """Drop finished sequences (static: only when the whole batch is done) and free their KV."""
        def done(s: Running) -> bool:
            return s.generated >= (1 if self.role == "prefill" else s.request.output)
        if self.policy.policy == "static" and not all(done(s) for s in running):
            return running
        kept = []
        for s in running:
            if not done(s):
                kept.append(s)
                continue
            self.used -= s.request.prompt if self.role == "prefill" else s.request.prompt + s.request.output
            if self.role == "prefill" and self.on_prefilled is not None:
                self.on_prefilled(s.request)
            else:
                self.outcomes[s.request.id].finish = self.env.now
        self.occupancy.append((self.env.now, self.used))
        if len(kept) < len(running):
            self._wake()
        return kept
