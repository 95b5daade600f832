"""Chapter 2: attention from scratch.

    Attention(Q, K, V) = softmax(Q Kᵀ / √d + M) V          (Vaswani et al., 2017, eq. 1)

What lives here, each written so the maths reads off the code:

* :func:`scaled_dot_product_attention` — the formula above, with PyTorch's conventions for masks and causality,
  returning the attention weights too (PyTorch's fused kernel does not).
* :func:`causal_mask`, :func:`split_heads` / :func:`merge_heads`, :func:`repeat_kv` (grouped-query attention).
* :func:`online_softmax_attention` — the same result computed block by block with a running softmax
  (Milakov & Gimelshein, 2018; the idea behind FlashAttention, Dao et al., 2022): memory O(n·block), never n×n.
* Rotary position embeddings (Su et al., 2021) in the rotate-half layout used by Llama / Hugging Face:
  :func:`rope_frequencies`, :func:`apply_rope`.
* :class:`KVCache` and :class:`MultiHeadAttention` (causal, optional RoPE, grouped-query, KV cache), the block
  chapter 3's GPT is built from. The serving engine's paged, packed attention is chapter 8's, in
  :mod:`course_utils.serving.paged` (``PagedKVCache`` stays importable from here).

Shapes follow PyTorch: ``q`` is ``[..., Lq, d]``, ``k`` is ``[..., Lk, d]``, ``v`` is ``[..., Lk, dv]``; a model's
tensors are ``[B, H, T, head_dim]``.
"""

from __future__ import annotations

import importlib
import math
import time
import weakref

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from .validate import check_int, check_number, nonnegative_int, positive_float, positive_int

__all__ = [
    "scaled_dot_product_attention",
    "causal_mask",
    "split_heads",
    "merge_heads",
    "repeat_kv",
    "online_softmax_attention",
    "rope_frequencies",
    "rotate_half",
    "apply_rope",
    "KVCache",
    "combine_masks",
    "MultiHeadAttention",
    "TensorMemoryTracker",
    "ATTENTION_METHODS",
    "attention_cost",
]


# --------------------------------------------------------------------------------------------- input checks
def _check_tensor(name: str, x, min_dim: int = 2) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if x.dim() < min_dim:
        raise ValueError(f"{name} must have at least {min_dim} dimensions [..., L, d], got shape {tuple(x.shape)}")


def _check_qkv(q, k, v) -> None:
    for name, x in (("q", q), ("k", k), ("v", v)):
        _check_tensor(name, x)
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(
            f"q and k must have the same head dimension (last axis): q {tuple(q.shape)}, k {tuple(k.shape)}"
        )
    if k.shape[-2] != v.shape[-2]:
        raise ValueError(f"k and v must have the same number of keys (axis -2): k {tuple(k.shape)}, v {tuple(v.shape)}")
    try:
        torch.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    except RuntimeError:
        raise ValueError(
            "the batch/head dimensions of q, k, v must broadcast: "
            f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
        ) from None


# ---------------------------------------------------------------------------------------------------- masks
def causal_mask(n_q: int, n_k: int | None = None, *, offset: int = 0, device=None) -> torch.Tensor:
    """Boolean ``[n_q, n_k]`` mask, True where query ``i`` may attend to key ``j``: ``j <= i + offset``.

    ``offset=0`` is PyTorch's ``is_causal`` convention (top-left aligned ``tril(ones(n_q, n_k))``). When the
    queries are the *last* ``n_q`` positions of a sequence of ``n_k`` keys (decoding with a KV cache), use
    ``offset=n_k - n_q`` (bottom-right aligned).
    """
    n_q = positive_int("n_q", n_q)
    n_k = n_q if n_k is None else positive_int("n_k", n_k)
    offset = check_int("offset", offset)
    i = torch.arange(n_q, device=device)[:, None]
    j = torch.arange(n_k, device=device)[None, :]
    return j <= i + offset


def _check_mask(attn_mask, target_shape) -> None:
    """A bool or float tensor that broadcasts to ``target_shape``, else a TypeError/ValueError."""
    if not isinstance(attn_mask, torch.Tensor):
        raise TypeError(f"attn_mask must be a torch.Tensor or None, got {type(attn_mask).__name__}")
    shape, target = tuple(attn_mask.shape), tuple(target_shape)
    # plain Python: torch.broadcast_shapes costs ~0.3 ms a call (and imports sympy on its first one)
    if len(shape) > len(target) or any(s not in (1, t) for s, t in zip(reversed(shape), reversed(target))):
        raise ValueError(f"attn_mask of shape {shape} does not broadcast to the scores' shape {target} ([..., Lq, Lk])")
    if attn_mask.dtype != torch.bool and not attn_mask.is_floating_point():
        raise TypeError(f"attn_mask must be bool (True = may attend) or floating point, got {attn_mask.dtype}")


def _as_additive(attn_mask, target_shape, dtype) -> torch.Tensor:
    """Turn a boolean (True = may attend) or float mask into a float tensor added to the scores."""
    _check_mask(attn_mask, target_shape)
    if attn_mask.dtype == torch.bool:
        return torch.zeros(attn_mask.shape, dtype=dtype, device=attn_mask.device).masked_fill(~attn_mask, float("-inf"))
    return attn_mask.to(dtype)


def combine_masks(allowed: torch.Tensor, attn_mask, target_shape, dtype) -> torch.Tensor:
    """The boolean mask ``allowed`` (e.g. causal) and a caller's ``attn_mask``: bool, both must allow; float, added.

    ``attn_mask`` is checked against ``target_shape`` (the scores' ``[B, H, Lq, Lk]``); ``None`` leaves ``allowed``.
    """
    if attn_mask is None:
        return allowed
    _check_mask(attn_mask, target_shape)
    if attn_mask.dtype == torch.bool:
        return allowed & attn_mask
    return _as_additive(allowed, allowed.shape, dtype) + attn_mask.to(dtype)


# ------------------------------------------------------------------------------------------------ attention
def scaled_dot_product_attention(
    q, k, v, attn_mask=None, is_causal: bool = False, scale: float | None = None, enable_gqa: bool = False
):
    """softmax(q kᵀ · scale + mask) v, with ``torch.nn.functional.scaled_dot_product_attention``'s semantics.

    Args:
        q: ``[..., Lq, d]``; k: ``[..., Lk, d]``; v: ``[..., Lk, dv]`` (leading dimensions broadcast).
        attn_mask: boolean (True = may attend) or float (added to the scores), broadcastable to ``[..., Lq, Lk]``.
        is_causal: also apply :func:`causal_mask` ``(Lq, Lk)`` (top-left aligned, as PyTorch does); combined
            with ``attn_mask`` when both are given.
        scale: defaults to ``1/√d``.
        enable_gqa: allow k/v with fewer heads (axis -3) than q, shared by groups of query heads.

    Returns:
        ``(output [..., Lq, dv], weights [..., Lq, Lk])``. A query that may attend to nothing gets zero weights
        and a zero output (PyTorch does the same) instead of NaN.
    """
    if enable_gqa:
        for name, x in (("q", q), ("k", k), ("v", v)):
            _check_tensor(name, x, min_dim=3)
        if q.shape[-3] % k.shape[-3] or k.shape[-3] != v.shape[-3]:
            raise ValueError(
                "with enable_gqa the number of query heads (axis -3) must be a multiple of the key/value heads: "
                f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
            )
        n_rep = q.shape[-3] // k.shape[-3]
        k, v = repeat_kv(k, n_rep), repeat_kv(v, n_rep)
    _check_qkv(q, k, v)
    d, n_q, n_k = q.shape[-1], q.shape[-2], k.shape[-2]
    scale = 1.0 / math.sqrt(d) if scale is None else positive_float("scale", scale)

    scores = (q @ k.transpose(-2, -1)) * scale  # [..., Lq, Lk]: how well each query matches each key
    if attn_mask is not None:
        scores = scores + _as_additive(attn_mask, scores.shape, scores.dtype)
    if is_causal:
        scores = scores.masked_fill(~causal_mask(n_q, n_k, device=q.device), float("-inf"))
    weights = torch.softmax(scores, dim=-1)  # each query's weights over the keys sum to 1
    if attn_mask is not None:  # a fully masked row is all -inf, whose softmax is NaN; PyTorch returns zeros there
        weights = weights.masked_fill(torch.isneginf(scores).all(dim=-1, keepdim=True), 0.0)
    return weights @ v, weights


def online_softmax_attention(q, k, v, block_size: int = 128, is_causal: bool = False, scale: float | None = None):
    """Attention computed over blocks of keys with a running softmax: never builds the ``Lq × Lk`` matrix.

    For every query we keep the running maximum ``m`` of its scores, the running denominator
    ``ℓ = Σ exp(s − m)`` and the running numerator ``acc = Σ exp(s − m) v``. A new block of keys may raise the
    maximum; rescaling the old ``ℓ`` and ``acc`` by ``exp(m_old − m_new)`` keeps them exact. At the end,
    ``acc / ℓ`` is the softmax-weighted sum. Peak extra memory is ``Lq × block_size`` scores.
    Equal to :func:`scaled_dot_product_attention` (up to rounding); causal masking is top-left aligned.
    """
    _check_qkv(q, k, v)
    block_size = positive_int("block_size", block_size)
    d, n_q, n_k = q.shape[-1], q.shape[-2], k.shape[-2]
    scale = 1.0 / math.sqrt(d) if scale is None else positive_float("scale", scale)
    batch = torch.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    m = torch.full((*batch, n_q, 1), float("-inf"), dtype=q.dtype, device=q.device)  # running max
    ell = torch.zeros((*batch, n_q, 1), dtype=q.dtype, device=q.device)  # running Σ exp(s - m)
    acc = torch.zeros((*batch, n_q, v.shape[-1]), dtype=v.dtype, device=q.device)  # running Σ exp(s - m) v
    rows = torch.arange(n_q, device=q.device)[:, None]
    for start in range(0, n_k, block_size):
        if is_causal and start > n_q - 1:
            break  # every later key is in the future of every query
        kb, vb = k[..., start : start + block_size, :], v[..., start : start + block_size, :]
        s = (q @ kb.transpose(-2, -1)) * scale  # [..., Lq, block]: only this block's scores exist
        if is_causal:
            cols = torch.arange(start, start + kb.shape[-2], device=q.device)[None, :]
            s = s.masked_fill(cols > rows, float("-inf"))
        m_new = torch.maximum(m, s.amax(dim=-1, keepdim=True))
        m_safe = torch.where(torch.isneginf(m_new), torch.zeros_like(m_new), m_new)  # rows with nothing seen yet
        p = torch.exp(s - m_safe)
        correction = torch.exp(m - m_safe)  # rescales what was accumulated under the old maximum
        ell = ell * correction + p.sum(dim=-1, keepdim=True)
        acc = acc * correction + p @ vb
        m = m_new
    return acc / ell.clamp_min(torch.finfo(ell.dtype).tiny)


# -------------------------------------------------------------------------------------------------- heads
def split_heads(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """``[B, T, H·d]`` → ``[B, H, T, d]``: each head sees its own slice of the model dimension."""
    _check_tensor("x", x)
    n_heads = positive_int("n_heads", n_heads)
    if x.dim() != 3:
        raise ValueError(f"x must be [B, T, H*d], got shape {tuple(x.shape)}")
    B, T, D = x.shape
    if D % n_heads:
        raise ValueError(f"the last axis of x ({D}) must be divisible by n_heads={n_heads}; x {tuple(x.shape)}")
    return x.view(B, T, n_heads, D // n_heads).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """``[B, H, T, d]`` → ``[B, T, H·d]``, the inverse of :func:`split_heads`."""
    _check_tensor("x", x)
    if x.dim() != 4:
        raise ValueError(f"x must be [B, H, T, d], got shape {tuple(x.shape)}")
    B, H, T, d = x.shape
    return x.transpose(1, 2).reshape(B, T, H * d)


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """``[B, H_kv, T, d]`` → ``[B, H_kv·n_rep, T, d]``: each key/value head serves ``n_rep`` query heads (GQA).

    Head ``h`` of the result is key/value head ``h // n_rep``, the grouping Llama and Mixtral use.
    """
    _check_tensor("x", x)
    n_rep = positive_int("n_rep", n_rep)
    if x.dim() != 4:
        raise ValueError(f"x must be [B, H_kv, T, d], got shape {tuple(x.shape)}")
    if n_rep == 1:
        return x
    B, H, T, d = x.shape
    return x[:, :, None].expand(B, H, n_rep, T, d).reshape(B, H * n_rep, T, d)


# ---------------------------------------------------------------------------------------------------- RoPE
def rope_frequencies(
    head_dim: int, max_seq_len: int, base: float = 10000.0, *, device=None, dtype=torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(cos, sin)``, each ``[max_seq_len, head_dim]``: the angles ``p · θ_i`` with ``θ_i = base^(−2i/head_dim)``.

    Rotate-half layout (Llama / Hugging Face): dimension ``i`` is paired with ``i + head_dim/2``, so the angle
    table is the ``head_dim/2`` frequencies written twice.
    """
    head_dim = positive_int("head_dim", head_dim)
    max_seq_len = positive_int("max_seq_len", max_seq_len)
    if head_dim % 2:
        raise ValueError(f"head_dim must be even for rotary embeddings (pairs of dimensions), got {head_dim}")
    base = check_number("base", base, 1, low_open=True)
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float64, device=device) / head_dim))
    angles = torch.arange(max_seq_len, dtype=torch.float64, device=device)[:, None] * inv_freq[None, :]
    angles = torch.cat([angles, angles], dim=-1)  # [T, head_dim]
    return angles.cos().to(dtype), angles.sin().to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """``[x1, x2] → [−x2, x1]`` on the last axis: a 90° turn of every pair ``(x[i], x[i + d/2])``."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, offset: int = 0) -> torch.Tensor:
    """Rotate ``x`` ``[B, H, T, head_dim]`` by the angles of positions ``offset … offset+T−1``.

    ``x·cos + rotate_half(x)·sin`` turns each pair by its position's angle, so after RoPE the dot product of a
    query at position ``m`` and a key at position ``n`` depends on ``m − n`` only, and norms are unchanged.
    (Rows at different positions, as a serving engine batches them: :func:`course_utils.serving.paged.rope_at`.)
    """
    _check_tensor("x", x, min_dim=2)
    for name, t in (("cos", cos), ("sin", sin)):
        _check_tensor(name, t, min_dim=2)
    if cos.shape != sin.shape or cos.shape[-1] != x.shape[-1]:
        raise ValueError(
            f"cos and sin must be [max_seq_len, head_dim] with head_dim = x's last axis: x {tuple(x.shape)}, "
            f"cos {tuple(cos.shape)}, sin {tuple(sin.shape)}"
        )
    offset = nonnegative_int("offset", offset)
    T = x.shape[-2]
    if offset + T > cos.shape[0]:
        raise ValueError(
            f"positions {offset}..{offset + T - 1} exceed the {cos.shape[0]} positions of the RoPE table "
            "(raise max_seq_len)"
        )
    c = cos[offset : offset + T].to(x.dtype)
    s = sin[offset : offset + T].to(x.dtype)
    return x * c + rotate_half(x) * s


# ------------------------------------------------------------------------------------------------ KV cache
class KVCache:
    """Keys and values of one attention layer for the positions seen so far, ``[B, H_kv, length, head_dim]``.

    :meth:`update` appends the new positions along the time axis and returns everything cached. Storage grows by
    doubling, so appending one token at a time costs amortised O(1) copies instead of a full ``torch.cat``.
    """

    def __init__(self):
        self._k: torch.Tensor | None = None
        self._v: torch.Tensor | None = None
        self._length = 0

    @property
    def length(self) -> int:
        """How many positions are cached (the position of the next token)."""
        return self._length

    def __len__(self) -> int:
        return self._length

    def reset(self) -> None:
        """Forget everything (start a new sequence)."""
        self._k = self._v = None
        self._length = 0

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append ``k``/``v`` ``[B, H_kv, T_new, d]``; return all cached keys and values ``[B, H_kv, length, d]``."""
        _check_tensor("k", k)
        _check_tensor("v", v)
        if k.dim() != 4 or v.dim() != 4 or k.shape[:3] != v.shape[:3]:
            raise ValueError(
                f"k and v must be [B, H_kv, T, d] with the same B, H_kv, T: k {tuple(k.shape)}, v {tuple(v.shape)}"
            )
        n_new = k.shape[2]
        if self._k is None:
            cap = max(16, n_new)
            self._k = k.new_empty(k.shape[0], k.shape[1], cap, k.shape[3])
            self._v = v.new_empty(v.shape[0], v.shape[1], cap, v.shape[3])
        else:
            want = (self._k.shape[0], self._k.shape[1], self._k.shape[3])
            want_v = (self._v.shape[0], self._v.shape[1], self._v.shape[3])
            if (k.shape[0], k.shape[1], k.shape[3]) != want or (v.shape[0], v.shape[1], v.shape[3]) != want_v:
                raise ValueError(
                    f"k/v {tuple(k.shape)}/{tuple(v.shape)} do not match the cache's [B, H_kv, *, d] = "
                    f"{list(want)}/{list(want_v)}; call reset() to start a new sequence"
                )
            if self._length + n_new > self._k.shape[2]:
                cap = max(2 * self._k.shape[2], self._length + n_new)
                self._k, self._v = self._grow(self._k, cap), self._grow(self._v, cap)
        end = self._length + n_new
        self._k[:, :, self._length : end] = k
        self._v[:, :, self._length : end] = v
        self._length = end
        return self._k[:, :, :end], self._v[:, :, :end]

    def _grow(self, old: torch.Tensor, capacity: int) -> torch.Tensor:
        new = old.new_empty(old.shape[0], old.shape[1], capacity, old.shape[3])
        new[:, :, : self._length] = old[:, :, : self._length]
        return new

    def __repr__(self) -> str:
        shape = None if self._k is None else (self._k.shape[0], self._k.shape[1], self._length, self._k.shape[3])
        return f"KVCache(length={self._length}, shape={shape})"


# --------------------------------------------------------------------------------------------- the module
class MultiHeadAttention(nn.Module):
    """Causal multi-head attention with optional RoPE, grouped-query heads and a KV cache.

    ``n_heads`` query heads share ``n_kv_heads`` key/value heads (``n_kv_heads = n_heads``: classic multi-head;
    ``1``: multi-query; in between: grouped-query, e.g. Mixtral's 32/8). ``forward`` uses PyTorch's fused
    ``scaled_dot_product_attention``; when ``return_weights=True`` it uses :func:`scaled_dot_product_attention`
    from this module instead, which also returns the attention weights (a test proves the two paths agree).
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        n_kv_heads: int | None = None,
        *,
        rope: bool = True,
        rope_base: float = 10000.0,
        max_seq_len: int = 4096,
        dropout: float = 0.0,
        bias: bool = False,
    ):
        super().__init__()
        d_model = positive_int("d_model", d_model)
        n_heads = positive_int("n_heads", n_heads)
        n_kv_heads = n_heads if n_kv_heads is None else positive_int("n_kv_heads", n_kv_heads)
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} must be divisible by n_heads={n_heads}")
        if n_heads % n_kv_heads:
            raise ValueError(f"n_heads={n_heads} must be divisible by n_kv_heads={n_kv_heads}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.d_model, self.n_heads, self.n_kv_heads = d_model, n_heads, n_kv_heads
        self.head_dim = d_model // n_heads
        self.n_rep = n_heads // n_kv_heads
        self.dropout = dropout
        self.max_seq_len = positive_int("max_seq_len", max_seq_len)
        self.q_proj = nn.Linear(d_model, n_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(d_model, n_kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(d_model, n_kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(n_heads * self.head_dim, d_model, bias=bias)
        self.rope = bool(rope)
        if self.rope:
            cos, sin = rope_frequencies(self.head_dim, max_seq_len, rope_base)
            # Not parameters and not saved: recomputed from the config, so checkpoints stay small.
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, n_heads={self.n_heads}, n_kv_heads={self.n_kv_heads}, "
            f"head_dim={self.head_dim}, rope={self.rope}"
        )

    def forward(
        self,
        x: torch.Tensor,
        *,
        cache: KVCache | None = None,
        attn_mask: torch.Tensor | None = None,
        return_weights: bool = False,
    ):
        """``x`` ``[B, T, d_model]`` → ``[B, T, d_model]`` (and the weights ``[B, H, T, L]`` if asked).

        With a ``cache``, ``x`` holds positions ``cache.length … cache.length+T−1``; they attend to every cached
        position and causally to each other. ``attn_mask`` (bool, True = may attend, or float, added) broadcasts
        to ``[B, H, T, L]`` with ``L`` the number of keys (cached + new) and is combined with the causal mask,
        e.g. a padding mask ``[B, 1, 1, L]``. A cache of another kind that brings its own attention (``attend``:
        chapter 8's paged cache, :mod:`course_utils.serving.paged`) computes the layer's attention itself.
        """
        _check_tensor("x", x, min_dim=0)  # a float tensor, else a TypeError
        if x.dim() != 3 or x.shape[-1] != self.d_model:
            raise ValueError(f"x must be [B, T, d_model={self.d_model}], got shape {tuple(x.shape)}")
        if cache is not None and not isinstance(cache, KVCache):
            if not callable(getattr(cache, "attend", None)):
                raise TypeError(f"cache must be a KVCache, a cache with its own attend(), or None, got {cache!r}")
            return cache.attend(self, x, attn_mask)  # the serving engine's attention path, not this chapter's
        B, T, _ = x.shape
        offset = 0 if cache is None else cache.length  # absolute position of x's first token
        if offset + T > self.max_seq_len:
            raise ValueError(f"positions up to {offset + T} exceed max_seq_len={self.max_seq_len}")

        q = split_heads(self.q_proj(x), self.n_heads)  # [B, H, T, hd]
        k = split_heads(self.k_proj(x), self.n_kv_heads)  # [B, H_kv, T, hd]
        v = split_heads(self.v_proj(x), self.n_kv_heads)
        if self.rope:
            q = apply_rope(q, self.rope_cos, self.rope_sin, offset)
            k = apply_rope(k, self.rope_cos, self.rope_sin, offset)
        if cache is not None:
            k, v = cache.update(k, v)  # all positions so far, [B, H_kv, offset+T, hd]
        L = k.shape[2]

        # Causality: new query i (absolute position offset+i) sees keys 0..offset+i, i.e. bottom-right aligned.
        is_causal = attn_mask is None and offset == 0 and T > 1  # the common case: the fused kernel builds it
        mask = None  # one new token and no attn_mask: it may see every key, no mask at all
        if not is_causal and (T > 1 or attn_mask is not None):
            mask = combine_masks(
                causal_mask(T, L, offset=L - T, device=x.device), attn_mask, (B, self.n_heads, T, L), q.dtype
            )
        dropout_p = self.dropout if self.training else 0.0
        gqa = self.n_rep > 1  # each key/value head serves n_rep query heads (repeat_kv, without the copy)

        if return_weights:
            out, weights = scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, enable_gqa=gqa)
            if dropout_p:
                out = F.dropout(weights, dropout_p, training=True) @ repeat_kv(v, self.n_rep)
            return self.o_proj(merge_heads(out)), weights
        out = F.scaled_dot_product_attention(q, k, v, mask, dropout_p, is_causal, enable_gqa=gqa)
        return self.o_proj(merge_heads(out))


# ------------------------------------------------------------------------------------------- cost of context
class TensorMemoryTracker(TorchDispatchMode):
    """Peak bytes of the tensors that torch operations create inside ``with tracker:``.

    PyTorch has no allocator statistics on the CPU (``torch.cuda.max_memory_allocated`` is CUDA-only) and Python's
    ``tracemalloc`` does not see torch's buffers. This dispatch mode sees the output of every ATen operation, adds its
    storage's size while the tensor is alive and subtracts it when the tensor is freed. It counts tensors, not the
    private scratch space inside a fused kernel (PyTorch's SDPA tiles internally); ``benchmarks/attention.py``
    measures the process's peak RSS as well, which does include it.
    """

    def __init__(self):
        super().__init__()
        self._live: dict[int, list[int]] = {}  # storage address -> [bytes, tensors alive that use it]
        self.current = self.peak = 0

    def _release(self, ptr: int) -> None:
        entry = self._live.get(ptr)
        if entry is not None:
            entry[1] -= 1
            if entry[1] == 0:
                self.current -= entry[0]
                del self._live[ptr]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                ptr = storage.data_ptr()
                if ptr in self._live:  # a view or an in-place result: no new memory
                    self._live[ptr][1] += 1
                else:
                    self._live[ptr] = [storage.nbytes(), 1]
                    self.current += storage.nbytes()
                    self.peak = max(self.peak, self.current)
                weakref.finalize(t, self._release, ptr)
        return out


def _naive(q, k, v, is_causal, block_size):
    return scaled_dot_product_attention(q, k, v, is_causal=is_causal)[0]


def _chunked(q, k, v, is_causal, block_size):
    return online_softmax_attention(q, k, v, block_size=block_size, is_causal=is_causal)


def _torch_sdpa(q, k, v, is_causal, block_size):
    return F.scaled_dot_product_attention(q, k, v, is_causal=is_causal)


#: The three ways of computing the same attention that chapter 2 compares.
ATTENTION_METHODS = {"naive": _naive, "chunked": _chunked, "torch_sdpa": _torch_sdpa}


def attention_cost(
    method: str,
    n: int,
    *,
    batch: int = 1,
    n_heads: int = 4,
    head_dim: int = 64,
    block_size: int = 128,
    is_causal: bool = True,
    repeats: int = 3,
    dtype=torch.float32,
) -> dict:
    """Time (best of ``repeats``) and peak tensor memory of one causal self-attention over ``n`` positions.

    Returns ``{"method", "n", "seconds", "peak_bytes", "scores_bytes"}`` where ``scores_bytes`` is the size of one
    ``batch × n_heads × n × n`` score matrix in ``dtype`` (what naive attention materialises, several times).
    """
    if method not in ATTENTION_METHODS:
        raise ValueError(f"method must be one of {sorted(ATTENTION_METHODS)}, got {method!r}")
    n = positive_int("n", n)
    repeats = positive_int("repeats", repeats)
    fn = ATTENTION_METHODS[method]
    g = torch.Generator().manual_seed(n)
    q, k, v = (torch.randn(batch, n_heads, n, head_dim, generator=g, dtype=dtype) for _ in range(3))
    with torch.no_grad():
        tracker = TensorMemoryTracker()
        with tracker:
            fn(q, k, v, is_causal, block_size)
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            fn(q, k, v, is_causal, block_size)
            best = min(best, time.perf_counter() - start)
    scores_bytes = batch * n_heads * n * n * torch.tensor([], dtype=dtype).element_size()
    return {"method": method, "n": n, "seconds": best, "peak_bytes": tracker.peak, "scores_bytes": scores_bytes}


def __getattr__(name: str):
    """``PagedKVCache`` moved to the serving engine's attention path (:mod:`course_utils.serving.paged`, which
    imports this module); ``from course_utils.attention import PagedKVCache`` keeps working."""
    if name == "PagedKVCache":
        return importlib.import_module("course_utils.serving.paged").PagedKVCache
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
