"""What a layout is checked against and per-rank memory is computed from: a model's shape.

A :class:`ModelShape` lists, per transformer layer, the parameters by how tensor and
expert parallelism treat them, and the activation bytes one sample (one sequence, or
one image-text pair) keeps for the backward, split as Korthikanti et al. (2022, section
4) split them:

- ``outside``: tensors outside the tensor-parallel regions, replicated on every TP rank
  unless sequence parallelism shards them (norm inputs, the inputs of the first linear
  layer of each block, dropout masks);
- ``inside``: tensors inside the column/row-parallel regions, divided by ``tp``
  (Q, K, V, the output projection's input, the MLP's hidden activations);
- ``score``: the attention scores, softmax and dropout tensors, quadratic in the
  sequence, divided by ``tp`` and dropped by selective recomputation (zero with flash
  attention, which keeps only per-row statistics);
- ``input``: the layer input, all that full recomputation keeps.

For a GPT layer (:func:`gpt_layer`) this gives Korthikanti's ``outside = 10 s h``,
``inside = 24 s h``, ``score = 5 a s^2`` bytes. For the models opplan builds the split
is derived the same way from the cost pieces the operator graph uses
(:mod:`simulator.costs`), so the memory report and the graph agree: the inputs of
each norm and of each block's first linear layer are ``outside``, the rest ``inside``.
A LLaMA layer (RMSNorm, SwiGLU, no dropout, flash attention) gets
``outside = 8 s h``, ``inside = 8 s h + 6 s f + 4 a s`` (the last the fp32 log-sum-exp).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from simulator.costs import Cost

__all__ = ["LayerMemory", "Tower", "ModelShape", "gpt_layer", "gpt_model", "block"]


@dataclass(frozen=True)
class LayerMemory:
    """One layer (or the embedding / head): parameters and activation bytes per sample."""

    name: str
    tp_params: float = 0.0
    replicated_params: float = 0.0
    expert_params: float = 0.0
    outside: float = 0.0
    inside: float = 0.0
    score: float = 0.0
    input: float = 0.0
    weight_inputs: float = 0.0

    @property
    def params(self) -> float:
        return self.tp_params + self.replicated_params + self.expert_params

    @property
    def activations(self) -> float:
        """Bytes per sample without any parallelism or recomputation."""
        return self.outside + self.inside + self.score


@dataclass(frozen=True)
class Tower:
    """Attention / MLP widths a tensor-parallel degree must divide."""

    name: str
    hidden: int
    heads: int
    kv_heads: int
    ffn: int


@dataclass(frozen=True)
class ModelShape:
    """Layers in model order plus the parts pinned to the first and last pipeline stage."""

    layers: tuple[LayerMemory, ...]
    pre: LayerMemory
    post: LayerMemory
    towers: tuple[Tower, ...]
    seq_len: int
    micro_batch_size: int
    recompute: bool = False
    experts: int = 0
    expert_ffn: int = 0

    @property
    def params(self) -> float:
        return sum(layer.params for layer in self.layers) + self.pre.params + self.post.params


def gpt_layer(seq_len: int, hidden: int, heads: int) -> LayerMemory:
    """A GPT-3 layer as Korthikanti et al. count it (LayerNorm, 4h GELU MLP, dropout, biases, 16-bit).

    Parameters ``12 h^2 + 13 h``: the column-parallel weights and biases (QKV, fc1)
    and the row-parallel weights are split by TP, the LayerNorms and row-parallel
    biases replicated.

    >>> layer = gpt_layer(seq_len=2048, hidden=12288, heads=96)
    >>> layer.outside / (2048 * 12288), layer.inside / (2048 * 12288), layer.score == 5 * 96 * 2048**2
    (10.0, 24.0, True)
    """
    s, h, a = seq_len, hidden, heads
    return LayerMemory(
        name="gpt",
        tp_params=12 * h * h + 7 * h,
        replicated_params=6 * h,
        outside=10 * s * h,
        inside=24 * s * h,
        score=5 * a * s * s,
        input=2 * s * h,
        weight_inputs=(2 + 2 + 2 + 8) * s * h,  # inputs of QKV, out-proj, fc1, fc2
    )


def gpt_model(layers: int, seq_len: int, hidden: int, heads: int, vocab: int, micro_batch_size: int = 1) -> ModelShape:
    """A GPT-3-shaped model as Megatron-LM's theoretical-memory report counts it.

    ``megatron/training/theoretical_memory_usage.py``: the embedding keeps the int64
    token ids (``8 s b``) and its dropout mask (``s b h``); the output layer and loss keep
    ``4 s b h (1 + V / h)`` bytes (the final LayerNorm's and the output projection's
    inputs, fp32 logits); embeddings are tied, so the head adds no parameters (Megatron's
    most-loaded-shard count leaves the last stage's copy out too).

    >>> round(gpt_model(96, 2048, 12288, 96, 51200).params / 1e9, 1)  # GPT-3 175B
    174.6
    """
    s, h, v = seq_len, hidden, vocab
    return ModelShape(
        layers=tuple(replace(gpt_layer(s, h, heads), name=f"L{i}") for i in range(layers)),
        pre=LayerMemory(name="embed", tp_params=v * h, outside=8 * s + s * h, input=8 * s),
        post=LayerMemory(name="head", replicated_params=2 * h, outside=4 * s * h, inside=4 * s * v, input=2 * s * h),
        towers=(Tower("model", h, heads, heads, 4 * h),),
        seq_len=s,
        micro_batch_size=micro_batch_size,
    )


def block(name: str, cost: Cost, *, outside: float, input_bytes: float, replicated: float, score: float = 0.0, expert: Cost | None = None,
          expert_outside: float = 0.0) -> LayerMemory:
    """A layer from the cost pieces of its blocks (one sample's tokens).

    ``outside`` bytes of ``cost.saved`` stay replicated across TP, ``score`` bytes are
    the quadratic attention tensors, the rest is inside the TP regions. ``replicated``
    parameters (norms, routers) are not split; ``expert`` adds routed experts, whose
    parameters EP splits and whose fc1 inputs (``expert_outside``) are outside.
    """
    expert = expert or Cost()
    return LayerMemory(
        name=name,
        tp_params=cost.params - replicated,
        replicated_params=replicated,
        expert_params=expert.params,
        outside=outside + expert_outside,
        inside=cost.saved + expert.saved - outside - expert_outside - score,
        score=score,
        input=input_bytes,
        weight_inputs=cost.weight_inputs + expert.weight_inputs,
    )
