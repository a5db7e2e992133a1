"""How long one engine step takes on a tensor x pipeline layout.

Each pipeline stage of a step runs the forward of every token in the step — the whole
prompt of each request being prefilled, one token of each request being decoded —
and is bounded by the two roofs of the roofline (Williams et al., CACM 2009):

- compute: the prompts' forward as the cost model prices it (the training ``F`` pass
  of that many tokens, :class:`PrefillCosts`, divided by ``tp``) plus the decode
  tokens' ``2 x params`` FLOPs and their attention over the cached context, at the
  device's achieved FLOP/s;
- memory: every weight of the rank and the KV cache of every decoded sequence read
  once, ``(weight bytes + KV bytes) / (HBM bandwidth x efficiency)``;

the larger of the two, plus Megatron's two tensor-parallel all-reduces per layer of
``tokens x hidden x 2`` bytes (Shoeybi et al. 2019), priced by
:func:`simulator.collectives.collective_time` on the cluster's links, and between
stages a send/recv of the same activation. A single sequence's decode step is thus
``(W + KV) / (B_hbm x eff) + 2 L x all_reduce(h x 2)``.

Weight bytes are all weights the rank holds (the embedding table, 0.4 % of LLaMA-2-70B,
is counted although a step reads only its rows).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from simulator.cluster import Cluster
from simulator.collectives import Collective, collective_time
from simulator.errors import InputError
from simulator.layout import Layout, read_layout
from simulator.memory_model import WEIGHT_BYTES, layout_memory
from simulator.models import build_model, moe
from simulator.problem import Problem, Task, Workload
from simulator.serving.hbm import HBM_EFFICIENCY, hbm_bandwidth
from simulator.serving.kv import KVShape
from simulator.serving.workload import ServingOptions
from simulator.shapes import ModelShape
from simulator.yamlio import Section

__all__ = ["PrefillCosts", "Stage", "StepModel", "step_model"]

ACTIVATION_BYTES = 2  # bf16 activations on the wire
_LAYER = re.compile(r"^layer(\d+)")


class PrefillCosts:
    """Seconds of the forward (``F``) of one prompt of ``n`` tokens on one device, per model part.

    The operator graph is rebuilt at ``seq_len = n`` (one sequence) and each operator's
    F priced by :meth:`simulator.problem.Problem.duration`, the same cost model the
    training replay uses. Keys: ``"embed"``, ``"head"`` and the layer index. Cached per
    ``n``; shared by every layout of the same model and device.
    """

    def __init__(self, model: Section, cluster: Cluster, device: str):
        self._data = {k: v for k, v in model.data.items() if k not in ("measured", "recompute")}
        self._file, self._cluster, self._device = model.file, cluster, device
        self._cache: dict[int, dict[object, float]] = {}

    def parts(self, tokens: int) -> dict[object, float]:
        if tokens == 0:
            return {}
        cached = self._cache.get(tokens)
        if cached is None:
            section = Section({**self._data, "seq_len": tokens, "micro_batch_size": 1}, self._file, "model")
            problem = Problem(build_model(section, Path(".")), self._cluster, Workload(1, "inference"))
            cached, device = {}, self._cluster.by_name[self._device]
            for op in problem.graph.operators:
                if op.stream == "comm":
                    continue  # expert all-to-alls: not priced for serving (see README)
                match = _LAYER.match(op.group)
                key = int(match.group(1)) if match else op.group
                cached[key] = cached.get(key, 0.0) + problem.duration(Task(op.name, 0, "F"), device)
            self._cache[tokens] = cached
        return cached


@dataclass(frozen=True)
class Stage:
    """One pipeline stage as one of its ranks sees it."""

    devices: tuple[str, ...]  # its tensor-parallel group
    parts: tuple[object, ...]  # PrefillCosts keys it runs
    layers: int
    params: float  # per rank
    weight_bytes: float  # per rank
    kv_bytes_per_token: float  # per rank
    activation_reserve: float  # per rank, at max_num_batched_tokens
    expert_bytes: float = 0.0  # the routed experts' part of weight_bytes


@dataclass(frozen=True)
class StepModel:
    """Step times of one engine (a ``tp x pp`` group of devices)."""

    stages: tuple[Stage, ...]
    cluster: Cluster
    tp: int
    hidden: int
    attention_width: int  # heads x head_dim: decode attention FLOPs per cached token per layer = 4 x this
    hbm: float  # achieved bytes/s
    flops: float  # achieved FLOP/s
    prefill: PrefillCosts
    memory_bytes: float  # usable HBM per device (x gpu_memory_utilization)
    experts: int = 0  # routed experts per MoE layer (0: dense)
    top_k: int = 0

    @cached_property
    def _priced(self) -> dict:
        return {}

    def _collective(self, op: str, group: tuple[str, ...], size: float) -> float:
        key = (op, group, size)
        if key not in self._priced:
            self._priced[key] = collective_time(Collective(op, group, size), self.cluster) if len(group) > 1 else 0.0
        return self._priced[key]

    def tp_allreduce(self, stage: Stage, tokens: int) -> float:
        """Megatron's two all-reduces per layer of ``tokens x hidden`` activations (F only)."""
        return 2 * stage.layers * self._collective("all_reduce", stage.devices, tokens * self.hidden * ACTIVATION_BYTES)

    def send(self, index: int, tokens: int) -> float:
        """Activations from stage ``index`` to the next (rank i to rank i, in parallel)."""
        pair = (self.stages[index].devices[0], self.stages[index + 1].devices[0])
        return self._collective("send_recv", pair, tokens * self.hidden * ACTIVATION_BYTES)

    def chunk(self, stage: Stage, offset: int, length: int) -> float:
        """Forward of prompt tokens ``offset .. offset + length`` on one device: F(offset + length) - F(offset),
        so a prompt cut into chunks costs what it costs whole (chunked prefill, Agrawal et al. 2024)."""
        whole, before = self.prefill.parts(offset + length), self.prefill.parts(offset)
        return sum(whole[p] - before.get(p, 0.0) for p in stage.parts)

    def compute(self, stage: Stage, chunks: tuple[tuple[int, int], ...], decodes: int, context: int) -> float:
        prefill = sum(self.chunk(stage, offset, length) for offset, length in chunks) / self.tp
        decode = 2 * stage.params * decodes + 4 * stage.layers * self.attention_width / self.tp * context
        return prefill + decode / self.flops

    def touched(self, tokens: int) -> float:
        """Expected share of a layer's routed experts that ``tokens`` tokens activate, routing uniform and
        independent: ``1 - (1 - k / E)^tokens`` (one decode token reads ``k`` of ``E`` experts, a prompt nearly all)."""
        return 1.0 - (1.0 - self.top_k / self.experts) ** tokens if self.experts else 1.0

    def memory(self, stage: Stage, context: int, tokens: int = 1) -> float:
        """Bytes the stage reads once per step / achieved HBM bandwidth: its weights (of the routed experts
        only those the step's tokens activate) and the KV cache of ``context`` tokens."""
        weights = stage.weight_bytes - stage.expert_bytes * (1.0 - self.touched(tokens))
        return (weights + stage.kv_bytes_per_token * context) / self.hbm

    def stage_time(self, index: int, chunks: tuple[tuple[int, int], ...], decodes: int, context: int) -> float:
        """Stage ``index`` of a step: max(compute, memory) + its TP all-reduces (+ the send onward).

        ``chunks``: ``(offset, length)`` of the prompt tokens prefilled (``(0, prompt)`` for a whole
        prompt); ``context``: cached tokens the decoded sequences attend to (and whose KV is read);
        a chunk after the first also reads its prompt's earlier KV (``offset`` tokens).
        """
        stage = self.stages[index]
        tokens = sum(length for _, length in chunks) + decodes
        read = context + sum(offset for offset, _ in chunks)
        seconds = max(self.compute(stage, chunks, decodes, context), self.memory(stage, read, tokens))
        seconds += self.tp_allreduce(stage, tokens)
        if index + 1 < len(self.stages):
            seconds += self.send(index, tokens)
        return seconds

    def kv_capacity_tokens(self) -> int:
        """Tokens of KV cache the engine holds: the tightest stage's free memory / its bytes per token."""
        return int(min((self.memory_bytes - s.weight_bytes - s.activation_reserve) / s.kv_bytes_per_token for s in self.stages))


def _layout(shape: ModelShape, tp: int, pp: int, devices: int, file: str | None) -> Layout:
    """The ``tp x pp`` layout of one engine, checked as a ``parallel:`` section would be."""
    section = Section({"tp": tp, "pp": pp, "dp": 1, "micro_batch_size": shape.micro_batch_size}, file, "parallel")
    return read_layout(section, devices, shape)


def _stages(shape: ModelShape, kv: KVShape, layout: Layout, devices: tuple[str, ...], options: ServingOptions,
            max_tokens: int) -> tuple[Stage, ...]:
    """Per pipeline stage: its TP group, parts, layers, and per-rank weights, KV bytes and activation reserve."""
    ranks = layout_memory(shape, layout, training=False)
    ranges = layout.stage_layer_ranges(len(shape.layers))
    layer = shape.layers[0]
    # vLLM sizes the KV pool after a profiling forward of max_num_batched_tokens: one layer's
    # activations at that many tokens (inference frees each layer's before the next).
    reserve = (layer.outside + layer.inside / layout.tp + layer.score / layout.tp) / shape.seq_len * max_tokens
    out = []
    for stage in range(layout.pp):
        group = tuple(devices[layout.rank_of(tp=t, pp=stage)] for t in range(layout.tp))
        memory = ranks[layout.rank_of(pp=stage)]
        parts = (("embed",) if stage == 0 else ()) + tuple(ranges[stage]) + (("head",) if stage == layout.pp - 1 else ())
        experts = sum(shape.layers[i].expert_params for i in ranges[stage]) / (layout.ep * layout.tp) * options.weight_bytes
        out.append(Stage(group, parts, len(ranges[stage]), memory.params, memory.weights * options.weight_bytes / WEIGHT_BYTES,
                         kv.bytes_per_token(options.kv_bytes, layers=len(ranges[stage]), tp=layout.tp), reserve, experts))
    return tuple(out)


def step_model(model: Section, shape: ModelShape, kv: KVShape, cluster: Cluster, devices: tuple[str, ...], *, tp: int, pp: int,
               options: ServingOptions, max_tokens: int, prefill: PrefillCosts | None = None) -> StepModel:
    """The step model of an engine on ``devices`` (``tp x pp`` of them) — raises one line when the weights do not fit."""
    layout = _layout(shape, tp, pp, len(devices), model.file)
    first = cluster.by_name[devices[0]]
    usable = first.memory_bytes * options.gpu_memory_utilization
    stages = _stages(shape, kv, layout, devices, options, max_tokens)
    worst = max(stages, key=lambda s: s.weight_bytes + s.activation_reserve)
    if worst.weight_bytes + worst.activation_reserve >= usable:
        raise InputError(
            f"weights {worst.weight_bytes / 1e9:.1f} GB per device at tp {tp} x pp {pp} do not leave room for a KV cache in"
            f" {usable / 1e9:.1f} GB ({first.memory_bytes / 1e9:.0f} GB x gpu_memory_utilization {options.gpu_memory_utilization:g});"
            f" the model needs more devices", file=model.file, field="parallel")
    tower = shape.towers[0]
    top_k = moe.config_from_section(model).top_k if shape.experts else 0
    return StepModel(
        stages=stages, cluster=cluster, tp=tp, hidden=tower.hidden, attention_width=tower.hidden,
        hbm=hbm_bandwidth(first.type, options.hbm_bandwidth) * (options.hbm_efficiency or HBM_EFFICIENCY),
        flops=first.effective_flops, prefill=prefill or PrefillCosts(model, cluster, devices[0]), memory_bytes=usable,
        experts=shape.experts, top_k=top_k,
    )
