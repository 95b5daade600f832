"""Chapter 2 checks accept the reference and reject the mistakes learners actually make."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from helpers import assert_check_accepts, assert_check_rejects

from course_utils import attention as ref
from course_utils.checks import (
    check_causal_mask,
    check_causal_self_attention,
    check_grouped_query_attention,
    check_long_context_attention,
    check_merge_heads,
    check_online_softmax_attention,
    check_repeat_kv,
    check_scaled_dot_product_attention,
    check_split_heads,
)


def _mask_to_additive(scores, attn_mask):
    if attn_mask is None:
        return scores
    if attn_mask.dtype == torch.bool:
        return scores.masked_fill(~attn_mask, float("-inf"))
    return scores + attn_mask


# ------------------------------------------------------------------------------------------------------ SDPA
def _sdpa(q, k, v, attn_mask=None):
    return ref.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)


def _sdpa_no_scale(q, k, v, attn_mask=None):
    w = torch.softmax(_mask_to_additive(q @ k.transpose(-2, -1), attn_mask), dim=-1)
    return w @ v, w


def _sdpa_wrong_axis(q, k, v, attn_mask=None):
    scores = _mask_to_additive(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), attn_mask)
    w = torch.softmax(scores, dim=-2)  # normalises over queries instead of keys
    return w @ v, w


def _sdpa_inverted_mask(q, k, v, attn_mask=None):
    if attn_mask is not None and attn_mask.dtype == torch.bool:
        attn_mask = ~attn_mask  # True read as "blocked"
    return ref.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)


def _sdpa_ignores_float_mask(q, k, v, attn_mask=None):
    if attn_mask is not None and attn_mask.dtype != torch.bool:
        attn_mask = None
    return ref.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)


def _sdpa_output_only(q, k, v, attn_mask=None):
    return ref.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)[0]


def test_sdpa_check(capsys):
    assert_check_accepts(check_scaled_dot_product_attention, _sdpa, capsys)
    assert_check_rejects(check_scaled_dot_product_attention, _sdpa_no_scale, match=r"weights: \d+ of \d+ values differ")
    assert_check_rejects(check_scaled_dot_product_attention, _sdpa_wrong_axis, match="sum to 1 over the keys")
    assert_check_rejects(check_scaled_dot_product_attention, _sdpa_inverted_mask, match="boolean mask")
    assert_check_rejects(check_scaled_dot_product_attention, _sdpa_ignores_float_mask, match="float mask")
    assert_check_rejects(check_scaled_dot_product_attention, _sdpa_output_only, match="expected a tuple")


def test_sdpa_check_reports_unfinished_exercise():
    def todo(q, k, v, attn_mask=None):
        raise NotImplementedError("Exercise 2.1: scores = q @ k^T / sqrt(d)")

    assert_check_rejects(check_scaled_dot_product_attention, todo, match="NotImplementedError")


# ------------------------------------------------------------------------------------------------ causal mask
def test_causal_mask_check(capsys):
    assert_check_accepts(check_causal_mask, lambda n_q, n_k=None: ref.causal_mask(n_q, n_k), capsys)
    sees_future = lambda n_q, n_k=None: torch.ones(n_q, n_k or n_q, dtype=torch.bool).triu()  # noqa: E731
    assert_check_rejects(check_causal_mask, sees_future, match="in its future")
    no_self = lambda n_q, n_k=None: torch.ones(n_q, n_k or n_q, dtype=torch.bool).tril(-1)  # noqa: E731
    assert_check_rejects(check_causal_mask, no_self, match="or itself")
    as_floats = lambda n_q, n_k=None: torch.ones(n_q, n_k or n_q).tril()  # noqa: E731
    assert_check_rejects(check_causal_mask, as_floats, match="boolean mask")
    square_only = lambda n_q, n_k=None: torch.ones(n_q, n_q, dtype=torch.bool).tril()  # noqa: E731
    assert_check_rejects(check_causal_mask, square_only, match=r"expected shape \(3, 5\)")


# ---------------------------------------------------------------------------------------------------- heads
def test_split_heads_check(capsys):
    assert_check_accepts(check_split_heads, ref.split_heads, capsys)

    def plain_view(x, n_heads):
        B, T, D = x.shape
        return x.view(B, n_heads, T, D // n_heads)  # right shape, wrong layout

    assert_check_rejects(check_split_heads, plain_view, match="view\\(B, H, T, d\\) mixes positions")


def test_merge_heads_check(capsys):
    assert_check_accepts(check_merge_heads, ref.merge_heads, capsys)

    def plain_reshape(x):
        B, H, T, d = x.shape
        return x.reshape(B, T, H * d)  # forgets to move the head axis back

    assert_check_rejects(check_merge_heads, plain_reshape, match="values differ")


# ------------------------------------------------------------------------------------------ online softmax
def _online_ref(q, k, v, block_size=64):
    return ref.online_softmax_attention(q, k, v, block_size=block_size)


def _online_no_rescale(q, k, v, block_size=64):
    """Keeps a running max but forgets to rescale what was accumulated under the old one."""
    scale = 1 / math.sqrt(q.shape[-1])
    m = torch.full((*q.shape[:-1], 1), float("-inf"), dtype=q.dtype)
    ell = torch.zeros_like(m)
    acc = torch.zeros(*q.shape[:-1], v.shape[-1], dtype=q.dtype)
    for s0 in range(0, k.shape[-2], block_size):
        s = q @ k[..., s0 : s0 + block_size, :].transpose(-2, -1) * scale
        m = torch.maximum(m, s.amax(-1, keepdim=True))
        p = torch.exp(s - m)
        ell = ell + p.sum(-1, keepdim=True)
        acc = acc + p @ v[..., s0 : s0 + block_size, :]
    return acc / ell


def _online_no_max(q, k, v, block_size=64):
    """Blockwise sums of exp(s) without subtracting a maximum: exact for small scores, overflows for large."""
    scale = 1 / math.sqrt(q.shape[-1])
    ell = torch.zeros(*q.shape[:-1], 1, dtype=q.dtype)
    acc = torch.zeros(*q.shape[:-1], v.shape[-1], dtype=q.dtype)
    for s0 in range(0, k.shape[-2], block_size):
        p = torch.exp(q @ k[..., s0 : s0 + block_size, :].transpose(-2, -1) * scale)
        ell, acc = ell + p.sum(-1, keepdim=True), acc + p @ v[..., s0 : s0 + block_size, :]
    return acc / ell


def _online_naive(q, k, v, block_size=64):
    """Right numbers, but builds the whole n × n matrix."""
    return ref.scaled_dot_product_attention(q, k, v)[0]


def test_online_softmax_check(capsys):
    assert_check_accepts(check_online_softmax_attention, _online_ref, capsys)
    assert_check_rejects(check_online_softmax_attention, _online_no_rescale, match="exp\\(m_old - m_new\\)")
    assert_check_rejects(check_online_softmax_attention, _online_no_max, match="inf/NaN")
    assert_check_rejects(check_online_softmax_attention, _online_naive, match="256×256 score matrix")


# ------------------------------------------------------------------------------------- grouped-query attention
def test_repeat_kv_check(capsys):
    assert_check_accepts(check_repeat_kv, ref.repeat_kv, capsys)
    # written differently from the solution: repeat_interleave along the head axis
    assert_check_accepts(check_repeat_kv, lambda x, n_rep: torch.repeat_interleave(x, n_rep, dim=1), capsys)
    tiled = lambda x, n_rep: x.repeat(1, n_rep, 1, 1)  # noqa: E731 - kv heads 0, 1, 0, 1 instead of 0, 0, 1, 1
    assert_check_rejects(check_repeat_kv, tiled, match=r"heads are tiled.*h % 2")
    wrong_axis = lambda x, n_rep: torch.repeat_interleave(x, n_rep, dim=2)  # noqa: E731 - repeats positions
    assert_check_rejects(check_repeat_kv, wrong_axis, match=r"expected shape \(2, 6, 3, 4\), got \(2, 2, 9, 4\)")
    assert_check_rejects(check_repeat_kv, lambda x, n_rep: x, match="expected shape")


def _gqa_loop(q, k, v, is_causal=False):
    """Correct, and unlike the solution: loops over kv groups, each group's query heads at once."""
    Hq, Hkv = q.shape[1], k.shape[1]
    if Hq % Hkv:
        raise ValueError(f"n_heads={Hq} is not a multiple of n_kv_heads={Hkv}")
    g = Hq // Hkv
    mask = ref.causal_mask(q.shape[-2], k.shape[-2]) if is_causal else None
    outs = [
        ref.scaled_dot_product_attention(q[:, h * g : (h + 1) * g], k[:, h : h + 1], v[:, h : h + 1], attn_mask=mask)[0]
        for h in range(Hkv)
    ]
    return torch.cat(outs, dim=1)


def _gqa_tiled(q, k, v, is_causal=False):
    n_rep = q.shape[1] // k.shape[1]
    if q.shape[1] % k.shape[1]:
        raise ValueError("heads")
    return F.scaled_dot_product_attention(q, k.repeat(1, n_rep, 1, 1), v.repeat(1, n_rep, 1, 1), is_causal=is_causal)


def _gqa_ignores_causal(q, k, v, is_causal=False):
    return F.scaled_dot_product_attention(q, k, v, enable_gqa=True)


def _gqa_no_validation(q, k, v, is_causal=False):
    n_rep = max(1, q.shape[1] // k.shape[1])
    return F.scaled_dot_product_attention(q, ref.repeat_kv(k, n_rep), ref.repeat_kv(v, n_rep), is_causal=is_causal)


def _gqa_bottom_right(q, k, v, is_causal=False):
    """The KV-cache alignment: query i sees keys j <= i + Lk - Lq. Same as top-left whenever Lq == Lk."""
    Lq, Lk = q.shape[-2], k.shape[-2]
    mask = ref.causal_mask(Lq, Lk, offset=Lk - Lq) if is_causal else None
    return _gqa_loop(q, k, v) if mask is None else _gqa_masked(q, k, v, mask)


def _gqa_masked(q, k, v, mask):
    if q.shape[1] % k.shape[1]:
        raise ValueError("heads")
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)


def test_grouped_query_attention_check(capsys):
    assert_check_accepts(check_grouped_query_attention, _gqa_loop, capsys)
    # the bottom-right mask passes every square case and fails the 3-queries-5-keys one, naming the convention
    assert_check_rejects(
        check_grouped_query_attention, _gqa_bottom_right, match=r"bottom-right aligned(.*\n)*.*top-left aligned"
    )
    assert_check_rejects(check_grouped_query_attention, _gqa_tiled, match=r"output: \d+ of \d+ values differ")
    assert_check_rejects(
        check_grouped_query_attention, _gqa_ignores_causal, match=r"is_causal=True.*\n(.*\n)*.*mask keys"
    )
    assert_check_rejects(
        check_grouped_query_attention, _gqa_no_validation, match="expected a ValueError, got RuntimeError"
    )


class _Attention(torch.nn.Module):
    """Correct, and unlike the solution: one fused kv projection split in two, and PyTorch's SDPA inside."""

    def __init__(self, d_model, n_heads, n_kv_heads, fuse_kv=False, causal=True, bias=False, kv_heads_shape=None):
        super().__init__()
        self.h, self.kv, self.hd, self.causal = n_heads, n_kv_heads, d_model // n_heads, causal
        kv_out = (kv_heads_shape or n_kv_heads) * self.hd
        self.q_proj = torch.nn.Linear(d_model, n_heads * self.hd, bias=bias)
        self.k_proj = torch.nn.Linear(d_model, kv_out, bias=False)
        self.v_proj = torch.nn.Linear(d_model, kv_out, bias=False)
        self.o_proj = torch.nn.Linear(n_heads * self.hd, d_model, bias=False)

    def forward(self, x):
        B, T, _ = x.shape
        q = self.q_proj(x).unflatten(-1, (self.h, self.hd)).transpose(1, 2)
        k = self.k_proj(x).unflatten(-1, (self.kv, self.hd)).transpose(1, 2)
        v = self.v_proj(x).unflatten(-1, (self.kv, self.hd)).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal, enable_gqa=True)
        return self.o_proj(out.transpose(1, 2).flatten(2))


def test_causal_self_attention_check(capsys):
    assert_check_accepts(check_causal_self_attention, _Attention, capsys)

    class NotCausal(_Attention):
        def __init__(self, *a):
            super().__init__(*a, causal=False)

    class FullKV(_Attention):  # classic multi-head sizes: k and v projections as wide as q
        def __init__(self, d_model, n_heads, n_kv_heads):
            super().__init__(d_model, n_heads, n_kv_heads, kv_heads_shape=n_heads)

    class WithBias(_Attention):
        def __init__(self, *a):
            super().__init__(*a, bias=True)

    assert_check_rejects(check_causal_self_attention, NotCausal, match=r"forward\(x\): \d+ of \d+ values differ")
    assert_check_rejects(
        check_causal_self_attention, FullKV, match=r"k_proj.weight has shape \(32, 32\).*expected \(16, 32\)"
    )
    assert_check_rejects(check_causal_self_attention, WithBias, match="q_proj.weight .* and a bias")


def _long_blocks(q, k, v, block=128):
    """Correct, and unlike the solution: causal online softmax over key blocks (course reference)."""
    return ref.online_softmax_attention(q, k, v, block_size=block, is_causal=True)


def test_long_context_attention_check(capsys):
    assert_check_accepts(check_long_context_attention, _long_blocks, capsys)
    naive = lambda q, k, v: ref.scaled_dot_product_attention(q, k, v, is_causal=True)[0]  # noqa: E731
    assert_check_rejects(check_long_context_attention, naive, match=r"your peak is \d+\.\d MiB .* budget is 24 MiB")
    not_causal = lambda q, k, v: ref.online_softmax_attention(q, k, v, block_size=128)  # noqa: E731
    assert_check_rejects(check_long_context_attention, not_causal, match=r"output: \d+ of \d+ values differ")

    def shifted_mask(q, k, v, block=512):  # blocks of queries, each masked as if it started at position 0
        outs = [
            F.scaled_dot_product_attention(
                q[..., s : s + block, :], k[..., : s + block, :], v[..., : s + block, :], is_causal=True
            )
            for s in range(0, q.shape[-2], block)
        ]
        return torch.cat(outs, dim=-2)

    assert_check_rejects(check_long_context_attention, shifted_mask, match=r"values differ")
