"""Run a serving scenario on a layout: build the engines, replay the requests, report.

``devices / (tp x pp)`` engine replicas share the cluster (data parallelism for
serving: requests are dealt round-robin); with disaggregation the first
``prefill_devices`` devices run prefill engines and the rest decode engines.
"""

from __future__ import annotations

from dataclasses import dataclass

import simpy

from simulator.cluster import Cluster
from simulator.collectives import Collective, collective_time
from simulator.errors import InputError
from simulator.layout import Layout
from simulator.model_shapes import model_shape
from simulator.serving.engine import Engine, Outcome
from simulator.serving.kv import KVShape, kv_shape
from simulator.serving.report import ServingReport, serving_report
from simulator.serving.step import PrefillCosts, step_model
from simulator.serving.workload import BatchPolicy, Request, ServingWorkload
from simulator.shapes import ModelShape
from simulator.yamlio import Section

__all__ = ["ServingSetup", "serving_setup", "simulate_serving", "engine_groups", "default_layout"]


@dataclass(frozen=True)
class ServingSetup:
    """What every layout of one serving scenario shares (the prefill cost cache among it)."""

    model: Section
    shape: ModelShape
    kv: KVShape
    cluster: Cluster
    workload: ServingWorkload
    prefill: PrefillCosts

    @property
    def max_model_len(self) -> int:
        return self.shape.seq_len


def serving_setup(model: Section, cluster: Cluster, workload: ServingWorkload) -> ServingSetup:
    shape = model_shape(str(model.raw("type", "")), model)
    kv = kv_shape(model)  # raises for model types serving does not cover
    assert shape is not None
    return ServingSetup(model, shape, kv, cluster, workload, PrefillCosts(model, cluster, cluster.device_names[0]))


def default_layout(parallel: Layout | None, cluster: Cluster) -> tuple[int, int]:
    """``(tp, pp)`` of a scenario's ``parallel:`` section, else TP over the first node's devices."""
    if parallel is not None:
        return parallel.tp, parallel.pp
    return sum(1 for d in cluster.devices if d.node == cluster.devices[0].node), 1


def engine_groups(devices: tuple[str, ...], size: int, *, file: str | None, field: str) -> list[tuple[str, ...]]:
    """``devices`` cut into engines of ``size`` devices (adjacent devices: TP inside a node)."""
    if size < 1 or len(devices) % size:
        raise InputError(f"tp x pp = {size} does not divide the {len(devices)} devices available", file=file, field=field)
    return [devices[i:i + size] for i in range(0, len(devices), size)]


def _engines(setup: ServingSetup, env: simpy.Environment, outcomes: dict, tp: int, pp: int, policy: BatchPolicy) -> tuple[list, list]:
    """(engines requests arrive at, all engines)."""
    s, names = setup, setup.cluster.device_names
    d = s.workload.disaggregation

    def build(devices: tuple[str, ...], t: int, p: int, role: str) -> Engine:
        model = step_model(s.model, s.shape, s.kv, s.cluster, devices, tp=t, pp=p, options=s.workload.options,
                           max_tokens=policy.max_num_batched_tokens, prefill=s.prefill)
        return Engine(env, model, policy, s.max_model_len, outcomes, role=role)

    if d is None:
        engines = [build(g, tp, pp, "both") for g in engine_groups(names, tp * pp, file=s.model.file, field="parallel.tp")]
        return engines, engines
    where = {"file": s.model.file, "field": "workload.disaggregation"}
    decoders = [build(g, d.decode_tp, 1, "decode") for g in engine_groups(names[d.prefill_devices:], d.decode_tp, **where)]
    prefillers = [build(g, d.prefill_tp, 1, "prefill") for g in engine_groups(names[:d.prefill_devices], d.prefill_tp, **where)]
    for k, engine in enumerate(prefillers):
        engine.on_prefilled = _shipper(setup, env, engine, decoders, k)
    return prefillers, prefillers + decoders


def _shipper(setup: ServingSetup, env: simpy.Environment, source: Engine, decoders: list[Engine], k: int):
    """Callback: send a prefilled request's KV cache to a decode engine, then queue it there.

    The prompt's KV (all layers, ``prompt x KV bytes per token``) moves as ``min(tp)``
    parallel send/recv pairs, rank i of the prefill engine to rank i of the decode engine.
    """
    options = setup.workload.options

    def ship(request: Request) -> None:
        target = decoders[request.id % len(decoders)]
        pairs = min(len(source.step.stages[0].devices), len(target.step.stages[0].devices))
        size = request.prompt * setup.kv.bytes_per_token(options.kv_bytes) / pairs
        pair = (source.step.stages[0].devices[0], target.step.stages[0].devices[0])
        seconds = collective_time(Collective("send_recv", pair, size), setup.cluster)
        env.process(_deliver(env, target, request, seconds))

    return ship


def _deliver(env: simpy.Environment, target: Engine, request: Request, seconds: float):
    yield env.timeout(seconds)
    target.submit(request)


def _arrive(env: simpy.Environment, engine: Engine, request: Request):
    yield env.timeout(request.arrival)
    engine.submit(request)


def _merged_occupancy(engines: list[Engine]) -> list[tuple[float, float]]:
    """The engines' reserved KV tokens summed over time."""
    deltas = []
    for engine in engines:
        previous = 0
        for t, used in engine.occupancy:
            deltas.append((t, used - previous))
            previous = used
    total, out = 0.0, []
    for t, delta in sorted(deltas):
        total += delta
        out.append((t, total))
    return out


def simulate_serving(setup: ServingSetup, *, tp: int, pp: int = 1, policy: BatchPolicy | None = None) -> ServingReport:
    """Replay the scenario's requests on ``tp x pp`` engines (or its disaggregated split) and report."""
    policy = policy or setup.workload.batching
    env = simpy.Environment()
    requests = setup.workload.requests
    outcomes = {r.id: Outcome(r) for r in requests}
    entry, engines = _engines(setup, env, outcomes, tp, pp, policy)
    for k, engine in enumerate(entry):
        engine.expect(sum(1 for r in requests if r.id % len(entry) == k))
    for engine in engines[len(entry):]:
        engine.expect(sum(1 for r in requests if r.id % (len(engines) - len(entry)) == engines.index(engine) - len(entry)))
    for r in requests:
        env.process(_arrive(env, entry[r.id % len(entry)], r))
    for engine in engines:
        engine.start()
    env.run()
    decode_side = engines[len(entry):] or engines
    capacity = sum(e.capacity for e in decode_side)
    return serving_report(list(outcomes.values()), _merged_occupancy(decode_side), capacity, sum(e.steps for e in engines))
