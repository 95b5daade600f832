"""Weight-only quantization from scratch: symmetric absmax int8 per output row, int4 per group packed two per byte.

For a weight row (or a group of ``group_size`` consecutive weights in a row) ``w``:

    scale = max|w| / q_max          (q_max = 127 for int8, 7 for int4)
    q     = clamp(round(w / scale), -q_max, q_max)
    ŵ     = q · scale               (|w - ŵ| ≤ scale / 2: half a quantization step)

One large weight inflates its row's scale and wipes out the small weights next to it; a group of 32–128 weights
keeps that damage local (the reason GPTQ/AWQ and llama.cpp's Q4_0/Q8_0 blocks use groups). Scales are stored in
float16 (as llama.cpp does), int4 values as ``q + 8`` in a nibble, two per byte. :class:`QuantLinear`
dequantizes on the fly in ``forward`` — memory is saved, compute is not: without a fused int4 kernel the
unpacking costs time on CPU.

:class:`Float16Linear` (:func:`float16_weights`) is the variant that saves time here: float16 weights (half the
bytes, no scales), read by PyTorch's own float16 matrix-vector kernel when one token is decoded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from .model import verify_sha256
from .validate import check_int, positive_int

__all__ = [
    "QuantizedTensor",
    "absmax_quantize",
    "group_dequantize",
    "quantize_tensor",
    "pack_int4",
    "unpack_int4",
    "QuantLinear",
    "quantize_model",
    "Float16Linear",
    "float16_weights",
    "fake_quantize_experts_",
    "model_nbytes",
    "stored_nbytes",
    "SMOLLM2_RESULTS",
    "load_smollm2_results",
    "QMAX",
]

QMAX = {8: 127, 4: 7}
# Chapter 8's SmolLM2-135M quantization study (bytes and held-out perplexity per variant), shipped by a script.
SMOLLM2_RESULTS = Path(__file__).resolve().parent / "assets" / "ch8_smollm2_quant.json"


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """Pack int values in [-8, 7] two per byte (element 2i in the low nibble, 2i+1 in the high); pads odd lengths."""
    flat = (q.reshape(-1).to(torch.int16) + 8).to(torch.uint8)
    if flat.numel() % 2:
        flat = torch.cat([flat, flat.new_full((1,), 8)])  # pad with an encoded zero
    return flat[0::2] | (flat[1::2] << 4)


def unpack_int4(packed: torch.Tensor, numel: int) -> torch.Tensor:
    """Inverse of :func:`pack_int4`: the first ``numel`` int8 values."""
    low = (packed & 0x0F).to(torch.int8) - 8
    high = (packed >> 4).to(torch.int8) - 8
    return torch.stack([low, high], dim=-1).reshape(-1)[:numel]


@dataclass
class QuantizedTensor:
    """Packed integer weights plus float16 scales, one per row (or per group of ``group_size`` in a row)."""

    data: torch.Tensor  # int8 values (bits=8) or uint8 with two int4 nibbles per byte (bits=4)
    scales: torch.Tensor  # float16, shape (rows, groups_per_row)
    shape: tuple
    bits: int
    group_size: int | None

    @property
    def nbytes(self) -> int:
        """Bytes of storage: the packed integers plus the scales."""
        return self.data.numel() * self.data.element_size() + self.scales.numel() * self.scales.element_size()

    def int_values(self) -> torch.Tensor:
        """The integers q as int8, in the tensor's shape."""
        numel = 1
        for d in self.shape:
            numel *= d
        q = unpack_int4(self.data, numel) if self.bits == 4 else self.data.reshape(-1)
        return q.reshape(self.shape)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """ŵ = q · scale, in ``dtype`` and the original shape."""
        return group_dequantize(self.int_values(), self.scales, dtype)


def _check_bits(bits) -> int:
    check_int("bits", bits)
    if bits not in QMAX:
        raise ValueError(f"bits must be 4 or 8, got {bits!r}")
    return bits


def _check_quant_args(w, bits, group_size) -> int:
    if not isinstance(w, torch.Tensor):
        raise TypeError(f"w must be a torch.Tensor, got {type(w).__name__}")
    if not w.is_floating_point() or w.ndim < 1 or w.numel() == 0:
        raise ValueError(f"w must be a non-empty floating-point tensor, got dtype={w.dtype}, shape={tuple(w.shape)}")
    if not torch.isfinite(w).all():  # absmax of a NaN group is NaN, and round(NaN) casts to int8 as 0: silent loss
        raise ValueError(f"w must be finite: it holds {int((~torch.isfinite(w)).sum())} NaN/inf values")
    _check_bits(bits)
    cols = w.shape[-1]
    if group_size is not None:
        positive_int("group_size (or None)", group_size)
        if cols % group_size:
            raise ValueError(f"the last dimension of w ({cols}) must be divisible by group_size={group_size}")
    return group_size or cols


def absmax_quantize(
    w: torch.Tensor, bits: int = 8, group_size: int | None = None, scale_dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(q, scales)``: int8 values ``q`` shaped like ``w`` and one scale per row (``[rows, 1]``) or per group
    (``[rows, cols // group_size]``), rows being everything but the last dimension. An all-zero group gets
    scale 1 (any positive scale encodes zeros exactly; 0 would divide by zero)."""
    g = _check_quant_args(w, bits, group_size)
    qmax = QMAX[bits]
    cols = w.shape[-1]
    groups = w.detach().float().reshape(-1, cols // g, g)  # (rows, groups per row, group)
    scales = (groups.abs().amax(dim=-1) / qmax).to(scale_dtype)
    # fp16 can also flush a tiny scale to 0; such a group is all ~0, so scale 1 loses nothing.
    scales = torch.where(scales > 0, scales, torch.ones_like(scales))
    q = torch.round(groups / scales.float().unsqueeze(-1)).clamp_(-qmax, qmax).to(torch.int8)
    return q.reshape(w.shape), scales


def group_dequantize(q: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """ŵ = q · scale, each scale covering ``cols // scales.shape[-1]`` consecutive values of a row."""
    rows, n_groups = scales.shape
    w_hat = q.reshape(rows, n_groups, -1).to(dtype) * scales.to(dtype).unsqueeze(-1)
    return w_hat.reshape(q.shape)


def quantize_tensor(w: torch.Tensor, bits: int = 8, group_size: int | None = None) -> QuantizedTensor:
    """Symmetric absmax quantization of ``w`` per output row (its last dimension), or per group of that row."""
    q, scales = absmax_quantize(w, bits, group_size, scale_dtype=torch.float16)
    data = pack_int4(q) if bits == 4 else q.reshape(-1).contiguous()
    return QuantizedTensor(data=data, scales=scales, shape=tuple(w.shape), bits=bits, group_size=group_size)


class QuantLinear(nn.Module):
    """``nn.Linear`` with quantized weights, dequantized on the fly in every forward pass."""

    def __init__(self, qweight: QuantizedTensor, bias: torch.Tensor | None = None):
        super().__init__()
        if len(qweight.shape) != 2:
            raise ValueError(f"qweight must be 2-D (out_features, in_features), got shape {qweight.shape}")
        self.out_features, self.in_features = qweight.shape
        self.bits, self.group_size = qweight.bits, qweight.group_size
        # Buffers, not parameters: they are saved in the state dict but never trained.
        self.register_buffer("qdata", qweight.data)
        self.register_buffer("scales", qweight.scales)
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    @classmethod
    def from_linear(cls, linear: nn.Linear, bits: int = 8, group_size: int | None = None) -> QuantLinear:
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be an nn.Linear, got {type(linear).__name__}")
        return cls(quantize_tensor(linear.weight, bits, group_size), linear.bias)

    @property
    def qweight(self) -> QuantizedTensor:
        return QuantizedTensor(
            self.qdata, self.scales, (self.out_features, self.in_features), self.bits, self.group_size
        )

    @property
    def weight(self) -> torch.Tensor:
        """The dequantized float32 weight, for code that reads ``layer.weight`` directly (e.g. a fused SwiGLU)."""
        return self.qweight.dequantize()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.qweight.dequantize(x.dtype)
        return F.linear(x, w, None if self.bias is None else self.bias.to(x.dtype))

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}, "
            f"group_size={self.group_size}, bias={self.bias is not None}"
        )


def quantize_model(model: nn.Module, bits: int, group_size: int | None = None) -> nn.Module:
    """Replace every ``nn.Linear`` in ``model`` (recursively, in place) by a :class:`QuantLinear`; return it.

    Embeddings stay in float. A linear whose weight is tied to an embedding (GPT's ``lm_head``) becomes a
    separate quantized copy; the embedding keeps its float weights.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    _check_bits(bits)
    if group_size is not None:
        positive_int("group_size (or None)", group_size)
    if isinstance(model, nn.Linear):
        raise TypeError("model is itself an nn.Linear: use QuantLinear.from_linear(linear, bits, group_size)")
    return _replace_linears(model, lambda linear: QuantLinear.from_linear(linear, bits, group_size))


def _replace_linears(model: nn.Module, make) -> nn.Module:
    """Replace every ``nn.Linear`` below ``model`` (in place) by ``make(linear)``; return ``model``."""
    for parent in list(model.modules()):  # listed first: the replacements are not walked into
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear):
                setattr(parent, name, make(child))
    return model


class Float16Linear(nn.Module):
    """``nn.Linear`` whose weights are stored in float16: half the bytes of float32, no scales.

    Generating one token reads every weight once to do two flops per weight, so decoding is bound by memory
    traffic, not arithmetic. A single row (batch 1, one new token) goes through float16 end to end: PyTorch's CPU
    float16 matrix-vector kernel accumulates in float32 and reads half the bytes. Several rows (a prompt, a batch)
    upcast the weight and run a float32 matrix product: CPUs without float16 arithmetic are slow at float16
    matrix-matrix products (``benchmarks/smollm2.py`` measures both). Activations stay float32 between layers.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None):
        super().__init__()
        if not isinstance(weight, torch.Tensor) or weight.dim() != 2 or not weight.is_floating_point():
            raise ValueError(f"weight must be a 2-D float tensor (out_features, in_features), got {weight!r:.80}")
        self.out_features, self.in_features = weight.shape
        self.register_buffer("weight16", weight.detach().to(torch.float16).contiguous())
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Float16Linear:
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be an nn.Linear, got {type(linear).__name__}")
        return cls(linear.weight, linear.bias)

    @property
    def weight(self) -> torch.Tensor:
        """The weight as float32, for code that reads ``layer.weight`` directly."""
        return self.weight16.float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"x must end in in_features={self.in_features}, got shape {tuple(x.shape)}")
        bias = None if self.bias is None else self.bias.to(x.dtype)
        if x.numel() == self.in_features:  # one row: a float16 GEMV reading half the bytes
            return F.linear(x.to(torch.float16), self.weight16).to(x.dtype) + (0 if bias is None else bias)
        return F.linear(x, self.weight16.to(x.dtype), bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def float16_weights(model: nn.Module) -> nn.Module:
    """Replace every ``nn.Linear`` in ``model`` (recursively, in place) by a :class:`Float16Linear`; return it.

    As in :func:`quantize_model`, embeddings keep their float32 weights (a lookup reads one row per token) and a
    linear tied to an embedding (GPT's ``lm_head``) gets its own float16 copy.
    """
    if not isinstance(model, nn.Module) or isinstance(model, nn.Linear):
        raise TypeError(f"model must be an nn.Module holding nn.Linear layers, got {type(model).__name__}")
    return _replace_linears(model, Float16Linear.from_linear)


def model_nbytes(model: nn.Module) -> int:
    """Bytes of every distinct parameter and buffer (shared tensors counted once): the weights' memory."""
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        if t.data_ptr() in seen:
            continue
        seen.add(t.data_ptr())
        total += t.numel() * t.element_size()
    return total


def _tensor_nbytes(t: torch.Tensor) -> int:
    """Bytes a tensor stores; a tensor subclass (torchao's quantized weights) by the plain tensors it holds."""
    if type(t) not in (torch.Tensor, nn.Parameter) and hasattr(t, "__tensor_flatten__"):
        names, _ = t.__tensor_flatten__()
        return sum(_tensor_nbytes(getattr(t, n)) for n in names)
    return t.numel() * t.element_size()


def stored_nbytes(module: nn.Module) -> int:
    """Bytes of ``module``'s state dict, what a checkpoint stores: shared (tied) tensors count once, buffers that
    are not saved (RoPE tables, recomputed from the config) not at all, torchao's quantized weights by their parts."""
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be an nn.Module, got {type(module).__name__}")
    seen, total = set(), 0
    for t in module.state_dict(keep_vars=True).values():
        if id(t) not in seen:
            seen.add(id(t))
            total += _tensor_nbytes(t)
    return total


def load_smollm2_results(path: str | Path = SMOLLM2_RESULTS) -> dict:
    """Chapter 8's SmolLM2 quantization results (sha256-checked): ``meta`` and one entry per variant with its
    bytes, perplexity and per-chunk mean NLL (``scripts/quant_smollm2.py`` rebuilds them)."""
    return json.loads(verify_sha256(path, rebuild="python scripts/quant_smollm2.py").read_text(encoding="utf-8"))


@torch.no_grad()
def fake_quantize_experts_(model: nn.Module, bits: int, group_size: int | None = None) -> tuple[int, int]:
    """Round every fused expert tensor (a 3-D ``nn.Parameter`` ``[experts, out, in]``, as in an MoE layer) to
    its quantized value in place; return ``(float32 bytes, packed bytes)`` of those tensors.

    MoE layers keep their experts in fused tensors, not ``nn.Linear``s, so :func:`quantize_model` does not see
    them; this measures what quantizing them does to the loss (storage is reported, not saved).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    _check_bits(bits)
    if group_size is not None:
        positive_int("group_size (or None)", group_size)
    before = after = 0
    for p in model.parameters():
        if p.dim() == 3:
            qt = quantize_tensor(p, bits, group_size)
            p.copy_(qt.dequantize(p.dtype))
            before += p.numel() * 4
            after += qt.nbytes
    return before, after
