"""FLOP, parameter and memory formulas for transformer building blocks.

The model builders (dense transformer, MoE, two-tower) describe each operator as a
sum of small pieces (a norm, a linear layer, the attention core, ...); this module
says what each piece costs for one micro-batch of ``T = b * s`` tokens. The numbers
are the usual back-of-the-envelope ones (Narayanan et al. 2021 for FLOPs, Korthikanti
et al. 2022 for activations), so that a schedule planned on them is comparable with
published throughput and memory figures.

FLOPs (a multiply-add is 2 FLOPs; only matrix multiplications are counted, norms,
softmax and activation functions are memory-bound and small next to them):

- a matmul ``(m x k) @ (k x n)`` costs ``2 m k n``;
- a linear layer ``d_in -> d_out`` on ``T`` tokens costs ``F = 2 T d_in d_out``; its
  backward costs the same again for the input gradient (``B``, ``dX = dY W^T``) and
  again for the weight gradient (``W``, ``dW = X^T dY``): ``F : B : W = 1 : 1 : 1``;
- the attention core (scores ``Q K^T`` and the weighted sum ``P V``) costs
  ``F = 2 b a s_q s_kv (d_qk + d_v)``, i.e. ``4 b s^2 h`` for ordinary self-attention;
  the full square is counted even for causal masks, as Megatron-LM's accounting does.
  Its backward is four matmuls of the same sizes (``B = 2 F``), plus the recomputed
  scores when flash attention is used; it has no weights, so ``W = 0``.

Memory (bytes per micro-batch; ``e`` bytes per element, 2 for bf16/fp16):

- every piece *saves* the tensors its backward needs, normally its inputs
  (a linear layer saves ``T d_in e``); the sum is the operator's ``activation_bytes``;
- the *weight inputs* are the part of that still needed after ``B`` by ``W``: the
  inputs of the matmuls (``w_retained_bytes``);
- with full recomputation an operator keeps only its input and re-runs its forward
  inside ``B`` (``B += F``); what it would have saved becomes transient workspace.

Static memory: :data:`STATIC_BYTES_PER_PARAM` bytes per parameter.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

__all__ = [
    "STATIC_BYTES_PER_PARAM",
    "ELEMENT_BYTES",
    "Cost",
    "matmul_flops",
    "linear",
    "norm",
    "attention_core",
    "elementwise",
    "embedding",
    "cross_entropy",
]

#: Mixed-precision Adam, as in the ZeRO paper (Rajbhandari et al. 2020, section 3.1):
#: bf16 weights (2) + bf16 gradients (2) + fp32 master weights (4) + Adam first (4) and
#: second (4) moments = 16 bytes per parameter, held for the whole iteration.
STATIC_BYTES_PER_PARAM = 2 + 2 + 4 + 4 + 4

#: Bytes per activation element by training precision.
ELEMENT_BYTES = {"bf16": 2, "fp16": 2}

#: Token ids are int64 in PyTorch's embedding lookup.
TOKEN_ID_BYTES = 8
#: Softmax statistics and loss logits are kept in fp32.
FP32_BYTES = 4


@dataclass(frozen=True)
class Cost:
    """What one operator (or a piece of one) costs for one micro-batch.

    ``forward`` / ``backward_input`` / ``backward_weight`` are FLOPs of the F, B and W
    passes; ``saved`` the bytes kept from F for the backward; ``weight_inputs`` the
    part of ``saved`` that W still needs after B; ``workspace`` transient bytes while a
    pass runs. Costs add up piece by piece.

    >>> c = linear(tokens=4, d_in=8, d_out=16, elem=2) + norm(tokens=4, width=8, elem=2)
    >>> c.flops, c.params, c.saved
    ({'F': 1024.0, 'B': 1024.0, 'W': 1024.0}, 136, 128)
    """

    forward: float = 0.0
    backward_input: float = 0.0
    backward_weight: float = 0.0
    params: float = 0.0
    saved: float = 0.0
    weight_inputs: float = 0.0
    workspace: float = 0.0

    def __add__(self, other: Cost) -> Cost:
        return Cost(
            forward=self.forward + other.forward,
            backward_input=self.backward_input + other.backward_input,
            backward_weight=self.backward_weight + other.backward_weight,
            params=self.params + other.params,
            saved=self.saved + other.saved,
            weight_inputs=self.weight_inputs + other.weight_inputs,
            # Pieces of one operator run one after another: transient needs do not stack.
            workspace=max(self.workspace, other.workspace),
        )

    @property
    def flops(self) -> dict[str, float]:
        """The ``Operator.flops`` mapping: ``{"F": ..., "B": ..., "W": ...}``."""
        return {"F": self.forward, "B": self.backward_input, "W": self.backward_weight}

    @property
    def static_bytes(self) -> float:
        """Weights, gradients and optimizer state (:data:`STATIC_BYTES_PER_PARAM`)."""
        return self.params * STATIC_BYTES_PER_PARAM

    def recomputed(self, kept: float) -> Cost:
        """Full activation recomputation: keep only ``kept`` bytes (the input).

        B re-runs the forward first (``B += F``). What the forward would have saved is
        rebuilt during B and is transient workspace. W needs the rebuilt matmul inputs;
        the memory model keeps ``kept`` until W and assumes W follows its B (as in a
        fused backward), so a deferred W under recomputation is not charged extra.

        >>> c = linear(tokens=4, d_in=8, d_out=8, elem=2).recomputed(kept=16)
        >>> c.backward_input == 2 * c.forward, c.saved, c.weight_inputs, c.workspace
        (True, 16, 16, 64)
        """
        if kept >= self.saved:
            return self
        return replace(
            self,
            backward_input=self.backward_input + self.forward,
            saved=kept,
            weight_inputs=kept,
            workspace=max(self.workspace, self.saved),
        )


def matmul_flops(m: float, k: float, n: float) -> float:
    """FLOPs of ``(m x k) @ (k x n)``: ``2 m k n`` (one multiply and one add each).

    >>> matmul_flops(2, 3, 4)
    48
    """
    return 2 * m * k * n


def linear(tokens: float, d_in: float, d_out: float, elem: float) -> Cost:
    """A bias-free linear layer ``d_in -> d_out`` on ``tokens`` tokens.

    ``F = B = W = 2 T d_in d_out``; saves its input (``T d_in e`` bytes), which W needs.

    >>> linear(tokens=10, d_in=4, d_out=2, elem=2).flops
    {'F': 160, 'B': 160, 'W': 160}
    """
    flops = matmul_flops(tokens, d_in, d_out)
    saved = tokens * d_in * elem
    return Cost(flops, flops, flops, params=d_in * d_out, saved=saved, weight_inputs=saved)


def norm(tokens: float, width: float, elem: float) -> Cost:
    """RMSNorm / LayerNorm over ``width``: ``width`` parameters, saves its input.

    Its FLOPs are negligible next to the matmuls; its tiny weight gradient is taken in
    B, so W needs nothing from it.

    >>> norm(tokens=10, width=4, elem=2).saved
    80
    """
    return Cost(params=width, saved=tokens * width * elem)


def elementwise(tokens: float, width: float, tensors: int, elem: float) -> Cost:
    """An activation function or gate that saves ``tensors`` tensors of ``width`` per token.

    >>> elementwise(tokens=10, width=4, tensors=2, elem=2).saved
    160
    """
    return Cost(saved=tokens * width * tensors * elem)


def attention_core(
    batch: float,
    heads: float,
    s_q: float,
    s_kv: float,
    d_qk: float,
    d_v: float,
    elem: float,
    *,
    flash: bool = True,
) -> Cost:
    """Scores ``Q K^T``, softmax, and ``P V`` for ``heads`` heads; no parameters.

    ``F = 2 b a s_q s_kv (d_qk + d_v)``; ``B = 2 F`` (gradients of both matmuls with
    respect to both operands) plus, with flash attention, the recomputed scores
    ``2 b a s_q s_kv d_qk``; ``W = 0``. Saves Q, K and V; without flash attention
    also the softmax probabilities (``b a s_q s_kv e``, quadratic in ``s``), with it only
    the fp32 log-sum-exp per row (the output it also needs is the next linear layer's
    saved input, so it is not counted twice).

    >>> c = attention_core(batch=1, heads=2, s_q=8, s_kv=8, d_qk=4, d_v=4, elem=2, flash=False)
    >>> c.forward, c.backward_input, c.backward_weight
    (2048, 4096.0, 0.0)
    """
    scores = matmul_flops(batch * heads * s_q, d_qk, s_kv)
    values = matmul_flops(batch * heads * s_q, s_kv, d_v)
    forward = scores + values
    backward = 2 * forward + (scores if flash else 0.0)
    qkv = batch * heads * (s_q * d_qk + s_kv * (d_qk + d_v)) * elem
    if flash:
        stats = batch * heads * s_q * FP32_BYTES
    else:
        stats = batch * heads * s_q * s_kv * elem
    return Cost(forward=forward, backward_input=backward, saved=qkv + stats)


def embedding(tokens: float, vocab: float, hidden: float) -> Cost:
    """Token embedding lookup: ``vocab x hidden`` parameters, no matmul FLOPs.

    Saves the token ids (int64), which the weight gradient (a scatter-add) needs.

    >>> embedding(tokens=4, vocab=10, hidden=3).params
    30
    """
    ids = tokens * TOKEN_ID_BYTES
    return Cost(params=vocab * hidden, saved=ids, weight_inputs=ids)


def cross_entropy(tokens: float, vocab: float) -> Cost:
    """Softmax cross-entropy over ``vocab``: keeps the logits in fp32 for the backward.

    >>> cross_entropy(tokens=2, vocab=10).saved
    80
    """
    return Cost(saved=tokens * vocab * FP32_BYTES)
