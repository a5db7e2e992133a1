"""A planned layout as what practitioners launch: Megatron-LM arguments, a ``parallel:``
block for a scenario, and the DeepSpeed config fields — a starting point to check on the
cluster, not a guarantee."""

from __future__ import annotations

import yaml

from simulator.layout import ORDER, Layout

__all__ = ["megatron_arguments", "parallel_block", "deepspeed_config"]


def megatron_arguments(layout: Layout, layers: int) -> list[str]:
    """Megatron-LM ``pretrain_gpt.py`` arguments for ``layout`` on a model of ``layers`` layers."""
    args = [f"--tensor-model-parallel-size {layout.tp}", f"--pipeline-model-parallel-size {layout.pp}",
            f"--context-parallel-size {layout.cp}", f"--expert-model-parallel-size {layout.ep}",
            f"--micro-batch-size {layout.micro_batch_size}", f"--global-batch-size {layout.global_batch_size}"]
    if layout.sequence_parallel:
        args.append("--sequence-parallel")
    if layout.zero >= 1:
        args.append("--use-distributed-optimizer")
    if layout.recompute != "none":
        args.append(f"--recompute-granularity {layout.recompute}")
        if layout.recompute == "full":
            args += ["--recompute-method uniform", "--recompute-num-layers 1"]
    if layout.vpp > 1:
        args.append(f"--num-layers-per-virtual-pipeline-stage {layers // layout.stages}")
    if layout.stage_layers and len(set(layout.stage_layers)) > 1:
        args.append(f"# uneven stages {list(layout.stage_layers)}: --decoder-first-pipeline-num-layers"
                    f" {layout.stage_layers[0]} --decoder-last-pipeline-num-layers {layout.stage_layers[-1]}")
    if layout.zero in (2, 3):
        args.append(f"# ZeRO-{layout.zero}: Megatron's distributed optimizer is ZeRO-1; use DeepSpeed or FSDP (below)")
    if layout.pp > 1 and layout.schedule not in ("1f1b", "interleaved-1f1b"):
        args.append(f"# pipeline schedule {layout.schedule}: not a Megatron-LM flag")
    return args


def parallel_block(layout: Layout) -> str:
    """The scenario ``parallel:`` section that replays ``layout``."""
    block = {"dp": layout.dp, "tp": layout.tp, "pp": layout.pp, "cp": layout.cp, "ep": layout.ep,
             "sequence_parallel": layout.sequence_parallel, "zero": layout.zero, "vpp": layout.vpp,
             "recompute": layout.recompute, "micro_batch_size": layout.micro_batch_size,
             "global_batch_size": layout.global_batch_size, "schedule": layout.schedule}
    if layout.order != ORDER:
        block["order"] = layout.order
    if layout.stage_layers and len(set(layout.stage_layers)) > 1:
        block["stage_layers"] = list(layout.stage_layers)
    return yaml.safe_dump({"parallel": block}, sort_keys=False, default_flow_style=None)


def deepspeed_config(layout: Layout) -> dict:
    """DeepSpeed's ``zero_optimization.stage`` / micro-batch / accumulation fields."""
    return {"zero_optimization": {"stage": layout.zero}, "train_micro_batch_size_per_gpu": layout.micro_batch_size,
            "gradient_accumulation_steps": layout.micro_batches, "train_batch_size": layout.global_batch_size}
