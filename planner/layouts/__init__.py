"""Hybrid-parallel layouts replayed by the simulator.

- :mod:`.build`: (scenario, layout) -> the problem and schedule the engine replays, and
  what was reduced to keep it fast;
- :mod:`.context`, :mod:`.expand`: the pipeline schedule of stages expanded into per-rank
  layer tasks with their TP / CP / EP collectives;
- :mod:`.dataparallel`: gradient buckets and ZeRO-3 gathers on the comm stream;
- :mod:`.step`: one training step (optimizer, ZeRO-1/2 gather) reduced to step time,
  tokens/s, MFU, memory and communication exposed vs hidden;
- :mod:`.presets`: ``ddp``, ``zero1``, ``fsdp``, ``megatron``, ``megatron-interleaved``,
  ``megatron-moe`` and the built-in pipeline schedules as layouts;
- :mod:`.compare`: their rows in ``opplan compare``.
"""
