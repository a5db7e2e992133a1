"""What each piece of a transformer costs: FLOPs, bytes moved, bytes kept — a roofline per part.

The model builders (dense transformer, MoE, two-tower) describe each operator as a sum of
small pieces (a norm, a linear layer, rotary, the attention core, ...); this module says
what each piece costs for one micro-batch of ``T = b * s`` tokens, pass by pass (F, B, W).

Time is a roofline per part: every piece is either compute-bound or memory-bound, and its
work is recorded in the *work class* whose rate bounds it (:attr:`Cost.work`):

- ``gemm``: FLOPs of matrix multiplications, run at the device's achieved GEMM rate
  (peak x GEMM efficiency; Narayanan et al. 2021 for the FLOP counts). A linear layer
  ``d_in -> d_out`` on ``T`` tokens costs ``2 T d_in d_out`` in each of F, B (``dX = dY W^T``)
  and W (``dW = X^T dY``). GEMMs are taken as compute-bound: with ``T`` in the thousands
  their arithmetic intensity (~``T`` FLOP/byte) is above the ridge point (H100: 989 TFLOP/s
  / 3.35 TB/s ≈ 295 FLOP/byte).
- ``hbm``: bytes a memory-bound kernel reads and writes (norms, rotary, activation
  functions, residual adds, casts, softmax / cross-entropy over fp32 logits, the embedding's
  gather and scatter-add), run at HBM bandwidth x HBM efficiency. The byte counts follow the
  kernels an eager PyTorch block launches (see each function).
- ``attention.<kernel>``: the fused attention kernel's FLOPs at that kernel family's
  achieved rate on the device (:data:`ATTENTION_KERNELS`). Its backward is the forward's
  work times the family's measured B/F time ratio.

A device turns work into seconds in :meth:`simulator.cluster.Device.work_time`; an operator
without work falls back to FLOPs / achieved FLOP/s. ``forward`` / ``backward_input`` /
``backward_weight`` stay the true FLOPs (for MFU reports).

Memory (bytes per micro-batch, ``e`` bytes per element) is what autograd keeps: each piece
*saves* the tensors its backward reads (``saved``, summed to ``activation_bytes``; a tensor
two pieces save is counted once, by the piece that produces it). W, run later than B, still
needs each linear's input ``X`` **and** its output gradient ``dY`` (``weight_inputs``).
The numbers are checked against a measured LLaMA-2-7B layer on an H100
(``tests/test_costs_calibration.py``; the method is in ``benchmarks/calibration.py``).

Static memory: :data:`STATIC_BYTES_PER_PARAM` bytes per parameter.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

__all__ = [
    "STATIC_BYTES_PER_PARAM",
    "ELEMENT_BYTES",
    "ATTENTION_KERNELS",
    "NORM_STYLES",
    "AttentionKernel",
    "Cost",
    "matmul_flops",
    "linear",
    "norm",
    "pointwise",
    "residual",
    "rotary",
    "swiglu",
    "gelu",
    "attention_core",
    "embedding",
    "cross_entropy",
    "optimizer_step",
]

#: Mixed-precision Adam, as in the ZeRO paper (Rajbhandari et al. 2020, section 3.1):
#: bf16 weights (2) + bf16 gradients (2) + fp32 master weights (4) + Adam first (4) and
#: second (4) moments = 16 bytes per parameter, held for the whole iteration.
STATIC_BYTES_PER_PARAM = 2 + 2 + 4 + 4 + 4

#: Bytes per activation element by training precision.
ELEMENT_BYTES = {"bf16": 2, "fp16": 2}

#: Token ids are int64 in PyTorch's embedding lookup.
TOKEN_ID_BYTES = 8
#: Softmax statistics, norm statistics and loss logits are kept in fp32.
FP32_BYTES = 4

#: RMSNorm implementations: one fused kernel (``torch.nn.functional.rms_norm``, Apex, TE)
#: or the HF-transformers module (upcast to fp32, pow, mean, rsqrt, two multiplies, downcast).
NORM_STYLES = ("fused", "hf")

Work = Mapping[str, Mapping[str, float]]


@dataclass(frozen=True)
class AttentionKernel:
    """A fused attention kernel family: does it skip masked blocks, and its backward / forward time.

    ``backward_ratio`` is measured (time of the input-gradient kernel over the forward's);
    the forward's achieved rate is a per-GPU figure in ``hardware_profiles`` (its work class
    is ``attention.<name>``). ``fused: False`` is PyTorch's math path: GEMMs over the full
    square plus a materialised softmax.
    """

    name: str
    fused: bool
    causal_skip: bool
    backward_ratio: float
    source: str


ATTENTION_KERNELS: Mapping[str, AttentionKernel] = {
    "cudnn": AttentionKernel(
        "cudnn", True, True, 3.04,
        "H100, LLaMA-2-7B causal SDPA at 4096 tokens: 0.787 / 0.259 ms (shared/reference/h100-llama7b-measured.md, C)",
    ),
    "flash-attention-2": AttentionKernel(
        "flash-attention-2", True, True, 2.36,
        "H100, LLaMA-2-7B causal SDPA at 4096 tokens: 1.383 / 0.587 ms (shared/reference/h100-llama7b-measured.md, A)",
    ),
    "math": AttentionKernel("math", False, False, 2.0, "two GEMMs forward, four backward (Dao et al. 2022, section 2.2)"),
}
# cuDNN's fused attention and FlashAttention-3 are both Hopper warp-specialised TMA/WGMMA
# kernels and reach similar speed (Shah et al. 2024, FlashAttention-3, figures 5-7 compare
# them); they are one family here.
ATTENTION_KERNELS = {**ATTENTION_KERNELS, "flash-attention-3": replace(ATTENTION_KERNELS["cudnn"], name="cudnn")}


def _merge_work(a: Work, b: Work) -> dict[str, dict[str, float]]:
    out = {kind: dict(classes) for kind, classes in a.items()}
    for kind, classes in b.items():
        target = out.setdefault(kind, {})
        for name, amount in classes.items():
            target[name] = target.get(name, 0.0) + amount
    return out


def _hbm(
    forward: float = 0.0, backward: float = 0.0, weight: float = 0.0, kernels: tuple[int, int, int] = (1, 1, 1)
) -> dict[str, dict[str, float]]:
    """Memory-bound bytes moved by F, B and W, and the kernels that move them (``launch``)."""
    return {
        kind: {"hbm": amount, "launch": count}
        for kind, amount, count in zip("FBW", (forward, backward, weight), kernels, strict=True)
        if amount
    }


@dataclass(frozen=True)
class Cost:
    """What one operator (or a piece of one) costs for one micro-batch.

    ``forward`` / ``backward_input`` / ``backward_weight`` are FLOPs of the F, B and W
    passes; ``work`` the same passes' work by class (``gemm`` FLOPs, ``hbm`` bytes,
    ``attention.<kernel>`` FLOPs) that a device turns into time; ``saved`` the bytes kept
    from F for the backward; ``weight_inputs`` what W still needs after B; ``workspace``
    transient bytes while a pass runs. Costs add up piece by piece.

    >>> c = linear(tokens=4, d_in=8, d_out=16, elem=2) + norm(tokens=4, width=8, elem=2)
    >>> c.flops, c.params, c.saved, c.work["F"]
    ({'F': 1024.0, 'B': 1024.0, 'W': 1024.0}, 136, 144, {'gemm': 1024, 'launch': 2, 'hbm': 128.0})
    """

    forward: float = 0.0
    backward_input: float = 0.0
    backward_weight: float = 0.0
    params: float = 0.0
    saved: float = 0.0
    weight_inputs: float = 0.0
    workspace: float = 0.0
    work: Work = field(default_factory=dict)

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
            work=_merge_work(self.work, other.work),
        )

    @property
    def flops(self) -> dict[str, float]:
        """The ``Operator.flops`` mapping: ``{"F": ..., "B": ..., "W": ...}``."""
        return {"F": self.forward, "B": self.backward_input, "W": self.backward_weight}

    @property
    def static_bytes(self) -> float:
        """Weights, gradients and optimizer state (:data:`STATIC_BYTES_PER_PARAM`)."""
        return self.params * STATIC_BYTES_PER_PARAM

    @property
    def retained(self) -> float:
        """Bytes held from B until W: ``weight_inputs``, at most what F saved.

        The engine releases ``saved - retained`` at B; the output gradients ``dY`` that W
        reads are new tensors, so the cap only matters for an operator whose gradients
        outweigh everything it saved (rare: a wide linear on its own).
        """
        return min(self.weight_inputs, self.saved)

    def recomputed(self, kept: float) -> Cost:
        """Full activation recomputation: keep only ``kept`` bytes (the input).

        B re-runs the forward first (``B += F``, FLOPs and work). What the forward would
        have saved is rebuilt during B and is transient workspace. W needs the rebuilt
        matmul inputs; the memory model keeps ``kept`` until W and assumes W follows its B
        (as in a fused backward), so a deferred W under recomputation is not charged extra.

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
            work=_merge_work(self.work, {"B": self.work.get("F", {})}),
        )


def matmul_flops(m: float, k: float, n: float) -> float:
    """FLOPs of ``(m x k) @ (k x n)``: ``2 m k n`` (one multiply and one add each).

    >>> matmul_flops(2, 3, 4)
    48
    """
    return 2 * m * k * n


def linear(tokens: float, d_in: float, d_out: float, elem: float, *, saves_input: bool = True) -> Cost:
    """A bias-free linear layer ``d_in -> d_out`` on ``tokens`` tokens: three GEMMs.

    ``F = B = W = 2 T d_in d_out``. Saves its input ``X`` (``saves_input=False`` when a
    sibling linear already saved the same tensor, as q, k and v projections do). W needs
    ``X`` and the output gradient ``dY`` (``T d_out e``) from B until it runs.

    >>> c = linear(tokens=10, d_in=4, d_out=2, elem=2)
    >>> c.flops, c.saved, c.weight_inputs
    ({'F': 160, 'B': 160, 'W': 160}, 80, 120)
    """
    flops = matmul_flops(tokens, d_in, d_out)
    x, dy = tokens * d_in * elem, tokens * d_out * elem
    gemm = {"F": {"gemm": flops, "launch": 1}, "B": {"gemm": flops, "launch": 1}, "W": {"gemm.weight": flops, "launch": 1}}
    x = x if saves_input else 0.0
    return Cost(flops, flops, flops, params=d_in * d_out, saved=x, weight_inputs=x + dy, work=gemm)


def norm(tokens: float, width: float, elem: float, *, style: str = "fused") -> Cost:
    """RMSNorm over ``width``: ``width`` parameters.

    ``fused`` (one kernel each way): F reads x and writes y (``2e`` bytes per element);
    B reads x and dy and writes dx (``3e``); W reduces ``dy * x_hat`` for the weight
    (``2e``). Saves x and the fp32 ``rstd`` per token.

    ``hf`` (HF transformers' ``LlamaRMSNorm``): F upcasts to fp32, squares, means,
    multiplies by ``rstd``, downcasts and multiplies by the weight: ``4e + 28`` bytes per
    element; its backward walks the same kernels back (``4e + 48``). Autograd saves the
    fp32 input and the normalised bf16 tensor (``4 + e`` bytes per element).

    >>> norm(tokens=10, width=4, elem=2).saved, norm(tokens=10, width=4, elem=2, style="hf").saved
    (120, 280)
    """
    n = tokens * width
    if style == "hf":
        work = _hbm(n * (4 * elem + 28), n * (4 * elem + 48), n * 2 * elem, (7, 9, 1))
        return Cost(params=width, saved=n * (FP32_BYTES + elem) + tokens * FP32_BYTES, work=work)
    return Cost(params=width, saved=n * elem + tokens * FP32_BYTES, work=_hbm(2 * elem * n, 3 * elem * n, 2 * elem * n))


def pointwise(
    elements: float, elem: float, forward_passes: float, backward_passes: float, saved_tensors: int = 0, kernels: tuple[int, int] = (1, 1)
) -> Cost:
    """A memory-bound elementwise piece: ``passes`` = tensors read plus written, each ``elements`` long.

    ``kernels`` = how many kernels eager PyTorch launches for it in F and in B.

    >>> pointwise(elements=10, elem=2, forward_passes=3, backward_passes=3).work["F"]
    {'hbm': 60, 'launch': 1}
    """
    work = _hbm(elements * elem * forward_passes, elements * elem * backward_passes, 0.0, (*kernels, 0))
    return Cost(saved=elements * elem * saved_tensors, work=work)


def residual(tokens: float, width: float, elem: float) -> Cost:
    """``x + f(x)``: F reads two tensors and writes one; B adds the two gradients reaching x.

    Autograd saves nothing for an addition.
    """
    return pointwise(tokens * width, elem, 3, 3)


def rotary(tokens: float, width: float, elem: float) -> Cost:
    """Rotary embedding, rotate-half form (HF LLaMA): ``x * cos + cat(-x2, x1) * sin``.

    Eager PyTorch launches five kernels per tensor: ``x * cos`` (2 passes), ``-x2`` (half a
    tensor read and written: 1), ``cat`` (2), ``* sin`` (2), the sum (3) = 10 passes over
    ``T width`` elements. The backward walks them back: ``dy * cos`` and ``dy * sin`` (2 + 2),
    the negation (1), the two slice gradients of ``cat`` (each writes a zero tensor and
    copies half: 2 + 2), their sum (3) and the sum of both paths (3) = 15 passes. ``cos`` and
    ``sin`` are shared buffers: nothing is saved per micro-batch.
    """
    return pointwise(tokens * width, elem, 10, 15, kernels=(5, 8))


def swiglu(tokens: float, ffn: float, elem: float) -> Cost:
    """``silu(gate) * up``: silu (2 passes) and the product (3); saves gate, ``silu(gate)`` and up.

    Backward: the product's two gradients (3 + 3) and silu's (gate and its gradient in, one
    out: 3) = 9 passes over ``T ffn``. Autograd keeps ``silu(gate)`` as the product's input,
    next to ``gate`` (silu's input) and ``up``; the product itself is the down projection's
    saved input.
    """
    return pointwise(tokens * ffn, elem, 5, 9, saved_tensors=3, kernels=(2, 3))


def gelu(tokens: float, ffn: float, elem: float) -> Cost:
    """``gelu(up)``: 2 passes forward, 3 backward; saves its input (the output is the next linear's)."""
    return pointwise(tokens * ffn, elem, 2, 3, saved_tensors=1)


def attention_core(
    batch: float,
    heads: float,
    s_q: float,
    s_kv: float,
    d_qk: float,
    d_v: float,
    elem: float,
    *,
    kernel: str = "cudnn",
    causal: bool = True,
) -> Cost:
    """Scores ``Q K^T``, softmax, and ``P V`` for ``heads`` heads; no parameters.

    Full-square FLOPs are ``F = 2 b a s_q s_kv (d_qk + d_v)``; a fused kernel that skips
    masked blocks does half of them under a causal mask (FlashAttention-2 paper, Dao 2023,
    section 3.1.1; Megatron-LM's accounting counts the full square). The fused backward
    recomputes the scores (``B = 2.5 F`` FLOPs) and takes the family's measured B/F time.
    Saves the fp32 log-sum-exp per row; Q, K, V and the output are saved tensors the block
    accounts for (they are other pieces' outputs).

    ``math`` (unfused): both matmuls on the full square as GEMMs, the mask and softmax
    over ``b a s_q s_kv`` elements (4 passes), the softmax backward (3); saves the
    probabilities, quadratic in ``s``.

    >>> c = attention_core(batch=1, heads=2, s_q=8, s_kv=8, d_qk=4, d_v=4, elem=2, kernel="math")
    >>> c.forward, c.backward_input, c.backward_weight
    (2048, 4096, 0.0)
    """
    family = ATTENTION_KERNELS[kernel]
    scores = matmul_flops(batch * heads * s_q, d_qk, s_kv)
    values = matmul_flops(batch * heads * s_q, s_kv, d_v)
    stats = batch * heads * s_q * FP32_BYTES
    if not family.fused:
        square = batch * heads * s_q * s_kv
        forward, backward = scores + values, 2 * (scores + values)
        gemms = {"F": {"gemm": forward, "launch": 2}, "B": {"gemm": backward, "launch": 4}}
        work = _merge_work(gemms, _hbm(4 * elem * square, 3 * elem * square, 0.0, (2, 1, 0)))
        return Cost(forward=forward, backward_input=backward, saved=square * elem + stats, work=work)
    share = 0.5 if causal and family.causal_skip else 1.0
    forward = share * (scores + values)
    name = f"attention.{family.name}"
    work = {"F": {name: forward, "launch": 1}, "B": {name: forward * family.backward_ratio, "launch": 1}}
    return Cost(forward=forward, backward_input=forward * 2.5, saved=stats, work=work)


def embedding(tokens: float, vocab: float, hidden: float, elem: float = 2) -> Cost:
    """Token embedding: a gather forward, a sort-and-scatter-add for the weight gradient (W).

    F reads and writes ``T h`` elements. W (PyTorch's ``embedding_dense_backward``, sort
    path for more than 3072 indices) zeroes the ``V h`` gradient, reads dY, sums it per
    distinct token in fp32 partial rows (written and read back) and adds the rows into the
    gradient (read and write): ``V h e`` plus ``T h (e + 4 + 4 + 2e)`` bytes, in about 20
    kernels (radix sort of the ids, unique-by-key, scans for segment offsets, partial sums,
    scatter, zero fill; from ``EmbeddingBackwardKernel.cu``) whose launch cost dominates at
    these sizes. There is no input gradient (B = 0). Saves the token ids (int64).

    >>> embedding(tokens=4, vocab=10, hidden=3).params
    30
    """
    ids = tokens * TOKEN_ID_BYTES
    rows = tokens * hidden
    work = _hbm(2 * elem * rows, 0.0, vocab * hidden * elem + rows * (3 * elem + 2 * FP32_BYTES), (1, 0, 20))
    return Cost(params=vocab * hidden, saved=ids, weight_inputs=ids, work=work)


def cross_entropy(tokens: float, vocab: float, elem: float = 2) -> Cost:
    """Softmax cross-entropy in fp32: ``F.cross_entropy(logits.float(), targets)``.

    F: the upcast (read ``e``, write 4 bytes per logit) and log-softmax (two reads and one
    write of fp32: 12). B: the NLL gradient (written in fp32: 4), the log-softmax backward
    (12) and the downcast (4 + e). Saves the fp32 log-probabilities and the int64 targets;
    the bf16 and fp32 logits are transient (``workspace``: measured 1.25-1.35 GiB peak on
    LLaMA-2-7B at 4096 tokens, shared/reference/h100-llama7b-measured.md).

    >>> cross_entropy(tokens=2, vocab=10).saved
    96
    """
    n = tokens * vocab
    peak = n * (elem + 2 * FP32_BYTES)
    return Cost(
        saved=n * FP32_BYTES + tokens * TOKEN_ID_BYTES,
        workspace=peak,
        work=_hbm(n * (elem + 4 + 12), n * (4 + 12 + 4 + elem), 0.0, (3, 4, 0)),
    )


def optimizer_step(params: float) -> Cost:
    """Mixed-precision Adam step over ``params``: memory-bound, once per iteration (outside F/B/W).

    Reads the fp32 master weight, both moments and the bf16 gradient (4 + 4 + 4 + 2) and
    writes the master, the moments and the bf16 weight (4 + 4 + 4 + 2) = 28 bytes per
    parameter (fused Adam, as in Apex / PyTorch ``foreach``/``fused``). Recorded as W work
    so that a device's :meth:`~simulator.cluster.Device.work_time` can price it.

    >>> optimizer_step(10).work["W"]
    {'hbm': 280}
    """
    return Cost(work={"W": {"hbm": 28 * params}})
