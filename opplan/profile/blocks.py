"""The scenario's operators as PyTorch modules, written as the measured reference writes them.

Plain PyTorch blocks (``shared/reference/h100-llama7b-measured.md``): pre-norm
attention with a fused or separate QKV projection, rotate-half rotary and
``scaled_dot_product_attention`` on the chosen backend; SwiGLU (``silu(gate) * up``) or
GELU MLPs; a head with fp32 cross-entropy; an embedding lookup. The implementation
choices come from the model section (``attention_kernel``, ``norm``, ``qkv``), so a
measurement and the cost model describe the same code. ``tp`` divides heads, the FFN
width, the vocabulary and the experts as Megatron's tensor parallelism splits them (one
rank's share; the collectives are not in these modules).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F  # noqa: N812 (PyTorch's convention)
from torch import nn

__all__ = ["Norm", "Attention", "MLP", "Head", "Embedding", "Router", "sdpa_backend"]

_BACKENDS = {"cudnn": "CUDNN_ATTENTION", "flash-attention-3": "CUDNN_ATTENTION", "flash-attention-2": "FLASH_ATTENTION", "math": "MATH"}


@contextlib.contextmanager
def sdpa_backend(kernel: str, device: torch.device) -> Iterator[None]:
    """Force SDPA's backend on a GPU; a CPU runs PyTorch's own CPU kernel whatever is asked."""
    if device.type != "cuda":
        yield
        return
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(getattr(SDPBackend, _BACKENDS[kernel])):
        yield


class Norm(nn.Module):
    """RMSNorm: ``fused`` = ``F.rms_norm``; ``hf`` = HF transformers' fp32-upcast module."""

    def __init__(self, width: int, style: str, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(width))
        self.style, self.eps = style, eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.style == "fused":
            return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)
        x32 = x.to(torch.float32)
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class Attention(nn.Module):
    """Pre-norm self-attention (or cross-attention with ``kv_input``) with its residual add."""

    def __init__(self, hidden: int, heads: int, kv_heads: int, *, kernel: str, norm: str, qkv: str,
                 causal: bool = True, rope: bool = True, seq_len: int = 1, tp: int = 1):
        super().__init__()
        self.heads, self.kv_heads, self.d = heads // tp, kv_heads // tp, hidden // heads
        self.kernel, self.causal, self.qkv_style = kernel, causal, qkv
        q, kv = self.heads * self.d, self.kv_heads * self.d
        self.norm = Norm(hidden, norm)
        if qkv == "fused":
            self.qkv = nn.Linear(hidden, q + 2 * kv, bias=False)
        else:
            self.q, self.k, self.v = (nn.Linear(hidden, w, bias=False) for w in (q, kv, kv))
        self.out = nn.Linear(q, hidden, bias=False)
        inv = 1.0 / (10000 ** (torch.arange(0, self.d, 2, dtype=torch.float32) / self.d))
        angles = torch.outer(torch.arange(seq_len, dtype=torch.float32), inv)
        emb = torch.cat((angles, angles), dim=-1)
        self.rope = rope
        self.register_buffer("cos", emb.cos(), persistent=False)
        self.register_buffer("sin", emb.sin(), persistent=False)

    def _project(self, h: torch.Tensor) -> tuple[torch.Tensor, ...]:
        b, s, _ = h.shape
        if self.qkv_style == "fused":
            q, k, v = self.qkv(h).split([self.heads * self.d, self.kv_heads * self.d, self.kv_heads * self.d], dim=-1)
        else:
            q, k, v = self.q(h), self.k(h), self.v(h)
        shape = (b, s, -1, self.d)
        return tuple(t.view(shape).transpose(1, 2) for t in (q, k, v))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self._project(self.norm(x))
        if self.rope:
            cos, sin = self.cos.to(q.dtype), self.sin.to(q.dtype)
            q = q * cos + _rotate_half(q) * sin
            k = k * cos + _rotate_half(k) * sin
        with sdpa_backend(self.kernel, x.device):
            o = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal, enable_gqa=self.kv_heads != self.heads)
        return x + self.out(o.transpose(1, 2).reshape(x.shape[0], x.shape[1], -1))


class MLP(nn.Module):
    """SwiGLU (``silu(gate) * up``) or GELU feed-forward; with its norm and residual unless an expert."""

    def __init__(self, hidden: int, ffn: int, *, kind: str = "swiglu", norm: str = "fused", with_norm: bool = True, tp: int = 1):
        super().__init__()
        width = ffn // tp
        self.kind, self.with_norm = kind, with_norm
        self.norm = Norm(hidden, norm) if with_norm else nn.Identity()
        self.gate = nn.Linear(hidden, width, bias=False) if kind == "swiglu" else None
        self.up = nn.Linear(hidden, width, bias=False)
        self.down = nn.Linear(width, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        inner = F.silu(self.gate(h)) * self.up(h) if self.gate is not None else F.gelu(self.up(h))
        out = self.down(inner)
        return x + out if self.with_norm else out


class Head(nn.Module):
    """Final norm, LM head, fp32 cross-entropy against ``targets`` (a buffer set by the caller)."""

    def __init__(self, hidden: int, vocab: int, *, norm: str = "fused", tp: int = 1):
        super().__init__()
        self.norm = Norm(hidden, norm)
        self.proj = nn.Linear(hidden, vocab // tp, bias=False)
        self.targets: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.proj(self.norm(x))
        return F.cross_entropy(logits.float().flatten(0, 1), self.targets.flatten())


class Embedding(nn.Module):
    def __init__(self, vocab: int, hidden: int, *, tp: int = 1):
        super().__init__()
        self.table = nn.Embedding(vocab // tp, hidden)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.table(ids)


class Router(nn.Module):
    """Pre-norm gate ``h -> experts`` with fp32 softmax scores and the top-k weights, plus the residual."""

    def __init__(self, hidden: int, experts: int, top_k: int, *, norm: str = "fused"):
        super().__init__()
        self.norm, self.gate, self.top_k = Norm(hidden, norm), nn.Linear(hidden, experts, bias=False), top_k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scores = self.gate(self.norm(x)).float().softmax(-1)
        weights, _ = scores.topk(self.top_k, dim=-1)
        return x + weights.sum(-1, keepdim=True).to(x.dtype)
