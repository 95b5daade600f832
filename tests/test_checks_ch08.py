"""Chapter 8 checks accept the reference and reject plausible wrong implementations."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import assert_check_accepts, assert_check_rejects

from course_utils.checks import (check_backoff_delays, check_cache_lookup, check_dequantize, check_pick_cascade_threshold,
                                 check_quantize_int8, check_token_bucket_acquire)
from course_utils.gateway import backoff_delay, pick_cascade_threshold
from course_utils.quantize import absmax_quantize, group_dequantize


# ---------------------------------------------------------------- references, written as a learner would
def quantize_int8(w):
    return absmax_quantize(w, 8)


def dequantize(q, scales):
    return group_dequantize(q, scales)


def backoff_delays(n, base_delay, max_delay):
    return [backoff_delay(i, base_delay=base_delay, max_delay=max_delay, jitter="none") for i in range(1, n + 1)]


def token_bucket_acquire(tokens, last, now, rate, capacity, n):
    tokens = min(capacity, tokens + (now - last) * rate)
    return (True, tokens - n) if tokens >= n else (False, tokens)


def cache_lookup(query_vec, keys, scopes, values, scope, threshold):
    best, best_sim = None, -np.inf
    q = query_vec / np.linalg.norm(query_vec)
    for k, s, v in zip(keys, scopes, values):
        sim = float(k @ q / np.linalg.norm(k))
        if s == scope and sim > best_sim:
            best, best_sim = v, sim
    return best if best_sim >= threshold else None


@pytest.mark.parametrize("check, impl", [
    (check_quantize_int8, quantize_int8), (check_dequantize, dequantize), (check_backoff_delays, backoff_delays),
    (check_token_bucket_acquire, token_bucket_acquire), (check_cache_lookup, cache_lookup),
    (check_pick_cascade_threshold, pick_cascade_threshold),
])
def test_reference_passes(check, impl, capsys):
    assert_check_accepts(check, impl, capsys)


# ---------------------------------------------------------------- plausible wrong versions
def test_quantize_rejects_scale_by_max_instead_of_absmax():
    def wrong(w):
        scales = w.amax(dim=-1, keepdim=True) / 127
        scales = torch.where(scales > 0, scales, torch.ones_like(scales))
        return torch.round(w / scales).clamp(-127, 127).to(torch.int8), scales

    assert_check_rejects(check_quantize_int8, wrong, match=r"(?s)scales: .*absmax")


def test_quantize_rejects_nan_on_a_zero_row():
    def wrong(w):
        scales = w.abs().amax(dim=-1, keepdim=True) / 127  # 0 for an all-zero row: 0/0 = NaN
        return torch.round(w / scales).clamp(-127, 127).to(torch.int8), scales

    assert_check_rejects(check_quantize_int8, wrong, match=r"positive finite")


def test_quantize_rejects_truncation_instead_of_rounding():
    def wrong(w):
        q, s = absmax_quantize(w, 8)
        return torch.trunc(w.float() / s).clamp(-127, 127).to(torch.int8), s

    assert_check_rejects(check_quantize_int8, wrong, match=r"values differ")


def test_dequantize_rejects_repeat_instead_of_repeat_interleave():
    def wrong(q, scales):
        g = q.shape[1] // scales.shape[1]
        return q.float() * scales.repeat(1, g)  # tiles [s0 s1 s0 s1 ...] instead of [s0 s0 ... s1 s1 ...]

    assert_check_rejects(check_dequantize, wrong, match=r"w_hat: \d+ of \d+ values differ")


def test_dequantize_rejects_int8_arithmetic():
    assert_check_rejects(check_dequantize, lambda q, s: group_dequantize(q, s).half(), match=r"float32")


def test_backoff_rejects_a_missing_cap():
    assert_check_rejects(check_backoff_delays, lambda n, b, m: [b * 2 ** i for i in range(n)],
                         match=r"waits\[\d+\]: expected")


def test_backoff_rejects_starting_at_twice_the_base():
    assert_check_rejects(check_backoff_delays, lambda n, b, m: [min(m, b * 2 ** i) for i in range(1, n + 1)],
                         match=r"waits\[0\]")


def test_token_bucket_rejects_refill_without_cap():
    def wrong(tokens, last, now, rate, capacity, n):
        tokens = tokens + (now - last) * rate
        return (True, tokens - n) if tokens >= n else (False, tokens)

    assert_check_rejects(check_token_bucket_acquire, wrong, match=r"tokens_after: expected 0, got 99")


def test_token_bucket_rejects_taking_tokens_on_refusal():
    def wrong(tokens, last, now, rate, capacity, n):
        tokens = min(capacity, tokens + (now - last) * rate)
        return tokens >= n, max(0.0, tokens - n)

    assert_check_rejects(check_token_bucket_acquire, wrong, match=r"tokens_after")


def test_cache_lookup_rejects_ignoring_scope():
    def wrong(query_vec, keys, scopes, values, scope, threshold):
        return cache_lookup(query_vec, keys, [scope] * len(scopes), values, scope, threshold)

    assert_check_rejects(check_cache_lookup, wrong, match=r"another model")


def test_cache_lookup_rejects_unnormalised_dot_product():
    def wrong(query_vec, keys, scopes, values, scope, threshold):
        sims = [float(k @ query_vec) if s == scope else -np.inf for k, s in zip(keys, scopes)]
        if not sims:
            return None
        best = int(np.argmax(sims))
        return values[best] if sims[best] >= threshold else None

    assert_check_rejects(check_cache_lookup, wrong, match=r"expected")


def test_cascade_rejects_most_accurate_threshold():
    def wrong(confidence, small_correct, large_correct, target_accuracy):  # maximises accuracy, ignores cost
        cands = [-np.inf, *np.unique(confidence), np.inf]
        accs = [np.where(confidence < t, large_correct, small_correct).mean() for t in cands]
        return float(cands[int(np.argmax(accs))])

    assert_check_rejects(check_pick_cascade_threshold, wrong, match=r"escalating")


def test_cascade_rejects_missing_never_escalate_candidate():
    def wrong(confidence, small_correct, large_correct, target_accuracy):
        for t in [*np.unique(confidence), np.inf]:  # forgot -inf: always escalates the least confident query
            if np.where(confidence < t, large_correct, small_correct).mean() >= target_accuracy:
                return float(t)
        return float("inf")

    assert_check_rejects(check_pick_cascade_threshold, wrong, match=r"expected threshold -inf")
