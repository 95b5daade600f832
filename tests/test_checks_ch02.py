"""Chapter 2 checks accept the reference and reject the mistakes learners actually make."""
from __future__ import annotations

import math

import torch
from helpers import assert_check_accepts, assert_check_rejects

from course_utils import attention as ref
from course_utils.checks import (
    check_causal_mask,
    check_merge_heads,
    check_online_softmax_attention,
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
        s = q @ k[..., s0:s0 + block_size, :].transpose(-2, -1) * scale
        m = torch.maximum(m, s.amax(-1, keepdim=True))
        p = torch.exp(s - m)
        ell = ell + p.sum(-1, keepdim=True)
        acc = acc + p @ v[..., s0:s0 + block_size, :]
    return acc / ell


def _online_no_max(q, k, v, block_size=64):
    """Blockwise sums of exp(s) without subtracting a maximum: exact for small scores, overflows for large."""
    scale = 1 / math.sqrt(q.shape[-1])
    ell = torch.zeros(*q.shape[:-1], 1, dtype=q.dtype)
    acc = torch.zeros(*q.shape[:-1], v.shape[-1], dtype=q.dtype)
    for s0 in range(0, k.shape[-2], block_size):
        p = torch.exp(q @ k[..., s0:s0 + block_size, :].transpose(-2, -1) * scale)
        ell, acc = ell + p.sum(-1, keepdim=True), acc + p @ v[..., s0:s0 + block_size, :]
    return acc / ell


def _online_naive(q, k, v, block_size=64):
    """Right numbers, but builds the whole n × n matrix."""
    return ref.scaled_dot_product_attention(q, k, v)[0]


def test_online_softmax_check(capsys):
    assert_check_accepts(check_online_softmax_attention, _online_ref, capsys)
    assert_check_rejects(check_online_softmax_attention, _online_no_rescale, match="exp\\(m_old - m_new\\)")
    assert_check_rejects(check_online_softmax_attention, _online_no_max, match="inf/NaN")
    assert_check_rejects(check_online_softmax_attention, _online_naive, match="256×256 score matrix")
