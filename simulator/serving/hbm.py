"""HBM bandwidth per device type and the fraction of it memory-bound kernels achieve.

Decode is memory-bound: each step reads every weight and the whole KV cache once
(the roofline's bandwidth roof, Williams et al., CACM 2009). These figures live in one
place so that a hardware profile can carry them later (``device.hbm_bandwidth_GBps``,
``device.hbm_efficiency``); a scenario may override both under ``workload.serving``.
"""

from __future__ import annotations

from simulator.errors import InputError

__all__ = ["HBM_BANDWIDTH", "HBM_EFFICIENCY", "hbm_bandwidth"]

#: Datasheet HBM bandwidth in bytes/s, keyed by the hardware profiles' ``device.type``.
HBM_BANDWIDTH: dict[str, float] = {
    "H100-SXM5": 3.35e12,  # NVIDIA H100 Tensor Core GPU datasheet, SXM5: 3.35 TB/s HBM3
    "H800-SXM": 3.35e12,  # NVIDIA H800 SXM5 product brief: 3.35 TB/s HBM3 (as H100 SXM5)
    "A100-SXM-80GB": 2.039e12,  # NVIDIA A100 datasheet, 80 GB SXM: 2,039 GB/s HBM2e
}

#: Achieved fraction of datasheet HBM bandwidth for large streaming reads. Device-to-device
#: copies and STREAM-triad runs on H100 SXM5 sustain about 3.0 of 3.35 TB/s (0.9); paged-KV
#: and small-GEMV decode kernels reach less. 0.8 sits between the copy figure and what
#: end-to-end decode measurements report (Databricks/MosaicML, "LLM Inference Performance
#: Engineering: Best Practices", 2023, model bandwidth utilisation of 50-70 %). Override
#: with ``workload.serving.hbm_efficiency``.
HBM_EFFICIENCY = 0.8


def hbm_bandwidth(device_type: str, override: float | None = None) -> float:
    """Datasheet HBM bytes/s of ``device_type`` (or ``override``); one-line error when unknown."""
    if override is not None:
        return override
    try:
        return HBM_BANDWIDTH[device_type]
    except KeyError:
        known = ", ".join(sorted(HBM_BANDWIDTH))
        raise InputError(f"no HBM bandwidth known for device type {device_type!r} (known: {known});"
                         " set workload.serving.hbm_bandwidth_GBps", field="workload.serving.hbm_bandwidth_GBps") from None
