"""Chapter-3 lab checks accept the reference and reject plausible wrong implementations."""
import math

import torch
import torch.nn.functional as F

from helpers import assert_check_accepts, assert_check_rejects

from course_utils.attention import apply_rope as ref_apply_rope, rope_frequencies
from course_utils.checks import (check_apply_rope, check_kv_cache_step, check_rms_norm, check_sample_next_token,
                                 check_swiglu)
from course_utils.model import kv_cache_step, rms_norm, sample_next_token, swiglu


# ----------------------------------------------------------------------------------------------- rms_norm
def test_rms_norm_check(capsys):
    assert_check_accepts(check_rms_norm, rms_norm, capsys)

    def layer_norm_instead(x, weight, eps=1e-6):  # subtracts the mean: that is LayerNorm, not RMSNorm
        return F.layer_norm(x, x.shape[-1:], weight, eps=eps)

    def eps_outside_sqrt(x, weight, eps=1e-6):
        return x / (x.pow(2).mean(-1, keepdim=True).sqrt() + eps) * weight

    assert_check_rejects(check_rms_norm, layer_norm_instead, match="subtracts no mean")
    assert_check_rejects(check_rms_norm, eps_outside_sqrt, match="values differ")


# ----------------------------------------------------------------------------------------------- RoPE
def _rope_ref(x, offset=0, base=10000.0):
    cos, sin = rope_frequencies(x.shape[-1], offset + x.shape[-2], base)
    return ref_apply_rope(x, cos, sin, offset)


def test_apply_rope_check(capsys):
    assert_check_accepts(check_apply_rope, _rope_ref, capsys)

    def adjacent_pairs(x, offset=0, base=10000.0):  # GPT-J / original-paper layout: pairs (0,1), (2,3), ...
        d, T = x.shape[-1], x.shape[-2]
        theta = base ** (-torch.arange(0, d, 2).float() / d)
        ang = torch.arange(offset, offset + T).float()[:, None] * theta
        x1, x2 = x[..., 0::2], x[..., 1::2]
        out = torch.stack([x1 * ang.cos() - x2 * ang.sin(), x1 * ang.sin() + x2 * ang.cos()], -1)
        return out.flatten(-2)

    def ignores_offset(x, offset=0, base=10000.0):
        return _rope_ref(x, 0, base)

    assert_check_rejects(check_apply_rope, adjacent_pairs, match="rotate half")
    assert_check_rejects(check_apply_rope, ignores_offset, match="offset=7")


# ----------------------------------------------------------------------------------------------- SwiGLU
def test_swiglu_check(capsys):
    assert_check_accepts(check_swiglu, swiglu, capsys)

    def gate_on_wrong_branch(x, w1, w3, w2):
        return F.linear(F.silu(F.linear(x, w3)) * F.linear(x, w1), w2)

    def gelu_instead_of_silu(x, w1, w3, w2):
        return F.linear(F.gelu(F.linear(x, w1)) * F.linear(x, w3), w2)

    assert_check_rejects(check_swiglu, gate_on_wrong_branch, match="gate w1 goes through SiLU")
    assert_check_rejects(check_swiglu, gelu_instead_of_silu, match="values differ")


# ----------------------------------------------------------------------------------------------- KV cache
def test_kv_cache_step_check(capsys):
    assert_check_accepts(check_kv_cache_step, kv_cache_step, capsys)

    def unshifted_causal_mask(q, k_new, v_new, k_cache=None, v_cache=None):
        # top-left aligned triangle: a single new query sees only the *first* cached key
        k = k_new if k_cache is None else torch.cat([k_cache, k_new], 2)
        v = v_new if v_cache is None else torch.cat([v_cache, v_new], 2)
        mask = torch.ones(q.shape[2], k.shape[2], dtype=torch.bool).tril()
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask), k, v

    def forgets_the_cache(q, k_new, v_new, k_cache=None, v_cache=None):
        return F.scaled_dot_product_attention(q, k_new, v_new, is_causal=True), k_new, v_new

    def no_scaling(q, k_new, v_new, k_cache=None, v_cache=None):
        out, k, v = kv_cache_step(q * math.sqrt(q.shape[-1]), k_new, v_new, k_cache, v_cache)
        return out, k, v

    assert_check_rejects(check_kv_cache_step, unshifted_causal_mask, match="shifted by the cache length")
    assert_check_rejects(check_kv_cache_step, forgets_the_cache, match="k_cache: expected shape")
    assert_check_rejects(check_kv_cache_step, no_scaling, match="1/sqrt")


# ----------------------------------------------------------------------------------------------- sampling
def test_sample_next_token_check(capsys):
    assert_check_accepts(check_sample_next_token, sample_next_token, capsys)

    def top_p_excludes_crossing_token(logits, temperature=1.0, top_k=None, top_p=None, generator=None):
        if temperature == 0 or top_p is None or top_p >= 1.0:
            return sample_next_token(logits, temperature, top_k, top_p, generator)
        logits = logits / temperature
        if top_k is not None:
            logits = logits.masked_fill(logits < torch.topk(logits, top_k).values[:, -1:], float("-inf"))
        sorted_logits, order = logits.sort(-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum > top_p  # wrong: drops the token whose probability crosses top_p
        drop[:, 0] = False
        logits = logits.masked_fill(torch.zeros_like(drop).scatter(-1, order, drop), float("-inf"))
        return torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(-1)

    def temperature_multiplies(logits, temperature=1.0, top_k=None, top_p=None, generator=None):
        if temperature == 0:
            return logits.argmax(-1)
        return sample_next_token(logits * temperature ** 2, 1.0 if temperature else 0.0, top_k, top_p, generator)

    def greedy_samples_anyway(logits, temperature=1.0, top_k=None, top_p=None, generator=None):
        return sample_next_token(logits, temperature or 1.0, top_k, top_p, generator)

    def keeps_shape_b1(logits, temperature=1.0, top_k=None, top_p=None, generator=None):
        return sample_next_token(logits, temperature, top_k, top_p, generator)[:, None]

    assert_check_rejects(check_sample_next_token, top_p_excludes_crossing_token, match="including the one that crosses")
    assert_check_rejects(check_sample_next_token, temperature_multiplies, match="temperature=0.5")
    assert_check_rejects(check_sample_next_token, greedy_samples_anyway, match="greedy")
    assert_check_rejects(check_sample_next_token, keeps_shape_b1, match=r"shape \[B\]|expected shape")
