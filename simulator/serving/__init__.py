"""Serving (inference) on a layout: requests, KV cache, prefill and decode steps, a SimPy timeline.

:mod:`.workload` reads ``workload: {mode: inference, requests: ...}``; :mod:`.kv` the KV
cache bytes per token; :mod:`.step` the time of a prefill or decode step on a layout;
:mod:`.engine` replays arrivals, batching and KV admission; :mod:`.report` the latency
percentiles and throughput.
"""
