"""Chapter 8: the serving engine's own attention path — a paged KV cache and packed, ragged batches.

Chapter 2's :class:`~course_utils.attention.MultiHeadAttention` attends over one sequence per row, all rows at the
same positions (with chapter 3's contiguous :class:`~course_utils.attention.KVCache`). A continuous-batching engine
(:mod:`course_utils.serving.engine`) needs more, and keeps it here, apart from the model — as vLLM keeps its
attention backends apart from its model code:

* rows at their **own positions** (``positions`` ``[B, T]``): RoPE rotates each row by its positions
  (:func:`rope_at`) and the causal mask compares positions ("key position ≤ query position");
* :class:`PagedKVCache` — keys and values in fixed-size blocks of one shared pool (PagedAttention; Kwon et al.,
  SOSP 2023), read back through each sequence's block table;
* **packed** rows (several sequences' tokens in one row, each reading its own keys) attended per group — Orca's
  selective batching (Yu et al., OSDI 2022).

:func:`paged_attention` computes a layer's attention from a :class:`MultiHeadAttention` module's projections and
RoPE table. The model's own forward pass runs it: a :class:`PagedKVCache` carries the pass's positions and slots
and brings its own ``attend``, which chapter 2's forward hands the layer to, so ``GPT.forward`` and ``Block``
know nothing of paging (as a transformers model hands its layers to a ``Cache`` object).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..attention import MultiHeadAttention, combine_masks, merge_heads, rotate_half, split_heads

__all__ = ["PagedKVCache", "paged_attention", "rope_at", "check_positions"]


def check_positions(positions, B: int, T: int, limit: int) -> torch.Tensor:
    """``positions`` as a LongTensor ``[B, T]`` of ints in ``[0, limit)``, else a ValueError/TypeError."""
    if not isinstance(positions, torch.Tensor):
        raise TypeError(f"positions must be a LongTensor [B, T], got {type(positions).__name__}")
    if positions.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"positions must hold integer positions, got dtype {positions.dtype}")
    if tuple(positions.shape) != (B, T):
        raise ValueError(f"positions must have shape [B={B}, T={T}], got {tuple(positions.shape)}")
    if positions.numel() and (int(positions.min()) < 0 or int(positions.max()) >= limit):
        raise ValueError(
            f"positions must lie in [0, {limit}) (max_seq_len), got {int(positions.min())}..{int(positions.max())}"
        )
    return positions.long()


def rope_at(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """RoPE for rows at their own positions: ``x`` ``[B, H, T, d]`` rotated by ``positions`` ``[B, T]``.

    :func:`course_utils.attention.apply_rope` with a per-row angle table: ``cos[positions]`` is ``[B, T, d]``, the
    same angle for every head. ``positions`` are trusted (:func:`check_positions` checks them once per pass).
    """
    c = cos[positions].to(x.dtype)[:, None]  # [B, 1, T, head_dim]
    s = sin[positions].to(x.dtype)[:, None]
    return x * c + rotate_half(x) * s


def paged_attention(
    attn: MultiHeadAttention,
    x: torch.Tensor,
    positions: torch.Tensor,
    *,
    cache: PagedKVCache | None = None,
    attn_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """``attn``'s attention for rows at their own ``positions`` ``[B, T]``: ``x`` ``[B, T, d_model]`` → the same.

    The keys are the new tokens themselves (``cache=None``: key ``j`` at ``positions[:, j]``) or everything a
    :class:`PagedKVCache` reads (key ``j`` at position ``j``, or at ``cache.key_positions`` for a packed row);
    query ``i`` sees the keys at positions ≤ its own, combined with ``attn_mask`` (bool or float, broadcasting to
    ``[B, H, T, L]``) — which keeps a packed row's sequences apart. With ``cache.groups`` attention runs per group.
    """
    if not isinstance(attn, MultiHeadAttention):
        raise TypeError(f"attn must be a MultiHeadAttention, got {type(attn).__name__}")
    if not isinstance(x, torch.Tensor) or x.dim() != 3 or x.shape[-1] != attn.d_model:
        raise ValueError(f"x must be [B, T, d_model={attn.d_model}], got {getattr(x, 'shape', type(x).__name__)}")
    if cache is not None and not isinstance(cache, PagedKVCache):
        raise TypeError(f"cache must be a PagedKVCache or None, got {type(cache).__name__}")
    B, T, _ = x.shape
    positions = check_positions(positions, B, T, attn.max_seq_len)
    q = split_heads(attn.q_proj(x), attn.n_heads)  # [B, H, T, hd]
    k = split_heads(attn.k_proj(x), attn.n_kv_heads)  # [B, H_kv, T, hd]
    v = split_heads(attn.v_proj(x), attn.n_kv_heads)
    if attn.rope:
        q, k = rope_at(q, attn.rope_cos, attn.rope_sin, positions), rope_at(k, attn.rope_cos, attn.rope_sin, positions)
    if cache is not None:
        k, v = cache.update(k, v)  # every key the rows read, in position order [B, H_kv, L, hd]
    L = k.shape[2]
    if cache is None:
        key_pos = positions
    elif cache.key_positions is not None:
        key_pos = cache.key_positions  # a packed batch: each key at its own sequence's position
    else:
        key_pos = torch.arange(L, device=x.device)[None, :]
    allowed = (key_pos[:, None, :] <= positions[:, :, None])[:, None]  # [B, 1, T, L]
    mask = combine_masks(allowed, attn_mask, (B, attn.n_heads, T, L), q.dtype)
    gqa = attn.n_rep > 1
    if cache is not None and cache.groups:  # a packed batch: attention per group, no query scored off its group
        parts = [
            F.scaled_dot_product_attention(
                q[:, :, qa:qb], k[:, :, ka:kb], v[:, :, ka:kb], mask[..., qa:qb, ka:kb], enable_gqa=gqa
            )
            for qa, qb, ka, kb in cache.groups
        ]
        out = torch.cat(parts, dim=2)
    else:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
    return attn.o_proj(merge_heads(out))


class PagedKVCache:
    """Keys and values of one layer for a batch of sequences, stored in fixed-size blocks of a shared pool.

    The idea of PagedAttention (Kwon et al., 2023, vLLM): the cache is one pool of ``num_blocks × block_size``
    slots per layer, ``k_pool``/``v_pool`` ``[slots, H_kv, head_dim]``; a sequence owns a list of blocks (its
    *block table*), so position ``p`` lives in slot ``table[p // block_size] · block_size + p % block_size``. Memory
    is taken one block at a time as a sequence grows and given back the moment it finishes.

    One instance describes one forward pass: ``write_slots`` ``[B, T]`` are the slots of the ``T`` new positions of
    every row, ``read_slots`` ``[B, L]`` the slots of positions ``0 … L−1`` (rows shorter than ``L`` point past
    their end at any slot; the position mask hides them). :meth:`update` stores the new keys/values and returns
    every row's keys/values in position order ``[B, H_kv, L, head_dim]`` — a gather, where vLLM's kernel reads
    the blocks in place. Used with ``positions`` in :meth:`MultiHeadAttention.forward`; the block tables are kept
    by :class:`course_utils.batching.Engine`. ``positions`` (LongTensor ``[B, T]``) are the absolute positions of
    the new tokens: RoPE rotates by them and the causal mask is "key position ≤ query position".

    ``key_positions`` (LongTensor ``[B, L]``, optional) gives the position of every key that ``read_slots`` reads,
    for a *packed* batch: several sequences' tokens concatenated in one row, each reading its own keys (the
    causal mask then compares these positions; an ``attn_mask`` keeps the sequences apart). Without it, key ``j``
    is at position ``j``. ``groups`` (optional, with ``key_positions``): ``(q_start, q_end, k_start, k_end)``
    ranges that cover the packed row, queries in a range attending only keys in its range — Orca's *selective
    batching*: the linear layers run over every token at once, attention runs per group (e.g. all decoding
    sequences together, each prompt alone), so no query is scored against another sequence's keys.
    """

    def __init__(
        self,
        k_pool: torch.Tensor,
        v_pool: torch.Tensor,
        write_slots: torch.Tensor,
        read_slots: torch.Tensor,
        key_positions: torch.Tensor | None = None,
        groups: list[tuple[int, int, int, int]] | None = None,
        *,
        positions: torch.Tensor | None = None,
    ):
        for name, t in (("k_pool", k_pool), ("v_pool", v_pool)):
            if not isinstance(t, torch.Tensor) or t.dim() != 3:
                raise ValueError(
                    f"{name} must be a 3-D tensor [slots, H_kv, head_dim], got {getattr(t, 'shape', type(t).__name__)}"
                )
        if k_pool.shape != v_pool.shape:
            raise ValueError(
                f"k_pool and v_pool must have the same shape, got {tuple(k_pool.shape)} and {tuple(v_pool.shape)}"
            )
        for name, t in (("write_slots", write_slots), ("read_slots", read_slots)):
            if not isinstance(t, torch.Tensor) or t.dim() != 2 or t.dtype != torch.long:
                raise ValueError(f"{name} must be a LongTensor [B, T], got {getattr(t, 'shape', type(t).__name__)}")
        if write_slots.shape[0] != read_slots.shape[0]:
            raise ValueError(
                f"write_slots and read_slots must have the same batch size, got "
                f"{write_slots.shape[0]} and {read_slots.shape[0]}"
            )
        if key_positions is not None and (
            not isinstance(key_positions, torch.Tensor) or key_positions.shape != read_slots.shape
        ):
            raise ValueError(
                f"key_positions must be a LongTensor shaped like read_slots {tuple(read_slots.shape)}, got "
                f"{getattr(key_positions, 'shape', type(key_positions).__name__)}"
            )
        self.k_pool, self.v_pool = k_pool, v_pool
        self.write_slots, self.read_slots, self.key_positions = write_slots, read_slots, key_positions
        if groups and (key_positions is None or groups[-1][1] != write_slots.shape[1]):
            raise ValueError("groups need key_positions and must cover every new token of the packed row")
        self.groups = groups
        self.positions = positions  # checked against x in attend(): it is x that gives B and T

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store ``k``/``v`` ``[B, H_kv, T, d]`` in their slots; return all keys/values ``[B, H_kv, L, d]``."""
        B, H, T, d = k.shape
        if v.shape != k.shape or tuple(self.write_slots.shape) != (B, T) or self.k_pool.shape[1:] != (H, d):
            raise ValueError(
                f"k/v {tuple(k.shape)}/{tuple(v.shape)} do not fit write_slots "
                f"{tuple(self.write_slots.shape)} and the pool's [slots, H_kv, d] = "
                f"{list(self.k_pool.shape)}"
            )
        slots, read = self.write_slots.reshape(-1), self.read_slots.reshape(-1)
        L = self.read_slots.shape[1]
        # index_copy_/index_select: the same as pool[slots] = … / pool[read], about 5× faster on the CPU (advanced
        # indexing takes a general path; this gather is the largest cost of a small model's decode step)
        self.k_pool.index_copy_(0, slots, k.transpose(1, 2).reshape(B * T, H, d).to(self.k_pool.dtype))
        self.v_pool.index_copy_(0, slots, v.transpose(1, 2).reshape(B * T, H, d).to(self.v_pool.dtype))
        keys = self.k_pool.index_select(0, read).view(B, L, H, d).transpose(1, 2)
        return keys, self.v_pool.index_select(0, read).view(B, L, H, d).transpose(1, 2)

    def attend(self, attn: MultiHeadAttention, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """:func:`paged_attention` of ``attn``'s weights over this cache: what ``attn(x, cache=self)`` computes."""
        if self.positions is None:
            raise ValueError("a PagedKVCache needs positions [B, T] (each row's absolute positions) to attend")
        return paged_attention(attn, x, self.positions, cache=self, attn_mask=attn_mask)
