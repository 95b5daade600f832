"""The layers a transformer block is built from and that every chapter shares (Chapter 3).

- :func:`rms_norm` / :class:`RMSNorm` — scale by the root mean square, no mean subtraction, no bias
  (Zhang & Sennrich, 2019).
- :func:`swiglu` / :class:`SwiGLU` — ``w2(silu(w1 x) * w3 x)`` (Shazeer, 2020), with Llama's names:
  ``w1`` = gate, ``w3`` = up, ``w2`` = down.

The dense model (:mod:`course_utils.model`) and the Mixture-of-Experts layer (:mod:`course_utils.moe`, whose shared
expert is a SwiGLU) both import them from here, so neither has to import the other for them.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .validate import check_number, positive_float, positive_int

__all__ = ["rms_norm", "RMSNorm", "swiglu", "SwiGLU"]


# ----------------------------------------------------------------------------------------------- normalization
def rms_norm(x: torch.Tensor, weight: torch.Tensor | None = None, eps: float = 1e-6) -> torch.Tensor:
    """``x / sqrt(mean(x²) + eps) * weight`` over the last dimension (computed in float32, returned in x's dtype)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() < 1 or not x.is_floating_point():
        raise ValueError(
            f"x must be a floating-point tensor with at least 1 dimension, got dtype {x.dtype}, shape {tuple(x.shape)}"
        )
    positive_float("eps", eps)
    if weight is not None and (not isinstance(weight, torch.Tensor) or not weight.is_floating_point()):
        raise TypeError(f"weight must be a floating-point tensor or None, got {getattr(weight, 'dtype', weight)!r}")
    if weight is not None and tuple(weight.shape) != (x.shape[-1],):
        raise ValueError(
            f"weight must have shape ({x.shape[-1]},) to match x's last dimension, got {tuple(weight.shape)}"
        )
    x32 = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    y = (x32 * torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + eps)).to(x.dtype)
    return y if weight is None else y * weight


class RMSNorm(nn.Module):
    """Root-mean-square normalization with a learned gain (initialised to 1)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        positive_int("dim", dim)
        self.eps = positive_float("eps", eps)
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)


# ----------------------------------------------------------------------------------------------- feed-forward
def swiglu(x: torch.Tensor, w1: torch.Tensor, w3: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
    """SwiGLU feed-forward: ``(silu(x w1ᵀ) ⊙ x w3ᵀ) w2ᵀ``; weights in ``nn.Linear``'s [out, in] layout.

    ``w1`` is the gate (it goes through SiLU), ``w3`` the up projection, ``w2`` the down projection.
    """
    if w1.shape != w3.shape:
        raise ValueError(f"w1 (gate) and w3 (up) must have the same shape, got {tuple(w1.shape)} and {tuple(w3.shape)}")
    if x.shape[-1] != w1.shape[1] or tuple(w2.shape) != (w1.shape[1], w1.shape[0]):
        raise ValueError(
            f"shapes do not fit: x {tuple(x.shape)}, w1 {tuple(w1.shape)}, w2 {tuple(w2.shape)}; "
            "expected w1/w3 [d_ff, d_model] and w2 [d_model, d_ff]"
        )
    return F.linear(F.silu(F.linear(x, w1)) * F.linear(x, w3), w2)


class SwiGLU(nn.Module):
    """The dense feed-forward block of Llama/Mixtral: gate ``w1``, up ``w3``, down ``w2``, no biases."""

    def __init__(self, d_model: int, d_ff: int, dropout: float = 0.0):
        super().__init__()
        positive_int("d_model", d_model)
        positive_int("d_ff", d_ff)
        dropout = check_number("dropout", dropout, 0, 1, high_open=True)
        self.w1 = nn.Linear(d_model, d_ff, bias=False)  # gate
        self.w3 = nn.Linear(d_model, d_ff, bias=False)  # up
        self.w2 = nn.Linear(d_ff, d_model, bias=False)  # down
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the layers are called, not their weights read, so a swapped-in layer (LoRA, quantized, float16) runs its
        # own forward; with plain nn.Linear layers this is exactly swiglu(x, w1.weight, w3.weight, w2.weight)
        return self.dropout(self.w2(F.silu(self.w1(x)) * self.w3(x)))
