"""Chapter 8 checks accept the reference and reject plausible wrong implementations."""

from __future__ import annotations

import random

import numpy as np
import openai
import pytest
import torch
from helpers import assert_check_accepts, assert_check_rejects

from course_utils.checks import (
    check_backoff_delays,
    check_cache_lookup,
    check_dequantize,
    check_full_jitter_delay,
    check_pick_cascade_threshold,
    check_quantize_int8,
    check_resilient_client,
    check_token_bucket_acquire,
    check_ttl_cache,
)
from course_utils.checks.ch08 import cascade_data, check_cascade_policy
from course_utils.gateway.cascade import pick_cascade_threshold
from course_utils.gateway.resilience import (
    CircuitBreaker,
    CircuitOpenError,
    backoff_delay,
    call_with_fallback,
    retry_call,
)
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


@pytest.mark.parametrize(
    "check, impl",
    [
        (check_quantize_int8, quantize_int8),
        (check_dequantize, dequantize),
        (check_backoff_delays, backoff_delays),
        (check_token_bucket_acquire, token_bucket_acquire),
        (check_cache_lookup, cache_lookup),
        (check_pick_cascade_threshold, pick_cascade_threshold),
    ],
)
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
    assert_check_rejects(
        check_backoff_delays, lambda n, b, m: [b * 2**i for i in range(n)], match=r"waits\[\d+\]: expected"
    )


def test_backoff_rejects_starting_at_twice_the_base():
    assert_check_rejects(
        check_backoff_delays, lambda n, b, m: [min(m, b * 2**i) for i in range(1, n + 1)], match=r"waits\[0\]"
    )


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


def test_cache_lookup_rejects_the_first_key_above_the_threshold():
    def first(query_vec, keys, scopes, values, scope, threshold):
        q = query_vec / np.linalg.norm(query_vec)
        for k, s, v in zip(keys, scopes, values):
            if s == scope and float(k @ q / np.linalg.norm(k)) >= threshold:
                return v
        return None

    assert_check_rejects(check_cache_lookup, first, match=r"the first key above the threshold answered")


# ---------------------------------------------------------------- full jitter
def full_jitter_delay(n, base_delay, max_delay, rng):  # a different correct version: scale rng.random()
    return rng.random() * min(max_delay, base_delay * 2 ** (n - 1))


def test_full_jitter_accepts_reference_and_variant(capsys):
    assert_check_accepts(check_full_jitter_delay, full_jitter_delay, capsys)
    assert_check_accepts(
        check_full_jitter_delay,
        lambda n, b, m, rng: backoff_delay(n, base_delay=b, max_delay=m, jitter="full", rng=rng),
        capsys,
    )


def test_full_jitter_rejects_equal_jitter():
    def equal(n, b, m, rng):
        c = min(m, b * 2 ** (n - 1))
        return c / 2 + rng.uniform(0, c / 2)

    assert_check_rejects(check_full_jitter_delay, equal, match=r"mean wait")


def test_full_jitter_rejects_no_jitter():
    assert_check_rejects(check_full_jitter_delay, lambda n, b, m, rng: min(m, b * 2 ** (n - 1)), match=r"mean wait")


def test_full_jitter_rejects_capping_after_the_draw():
    assert_check_rejects(
        check_full_jitter_delay,
        lambda n, b, m, rng: min(m, rng.uniform(0, b * 2 ** (n - 1))),
        match=r"mean wait|not uniform",
    )


def test_full_jitter_rejects_an_exponent_off_by_one():
    assert_check_rejects(
        check_full_jitter_delay, lambda n, b, m, rng: rng.uniform(0, min(m, b * 2**n)), match=r"must lie in \[0, "
    )


def test_full_jitter_rejects_ignoring_the_rng():
    assert_check_rejects(
        check_full_jitter_delay,
        lambda n, b, m, rng: random.uniform(0, min(m, b * 2 ** (n - 1))),
        match=r"does not come from `rng`",
    )


# ---------------------------------------------------------------- TTL cache
class TTLCache:  # a different correct version: a list of entries, filtered then max()
    def __init__(self, threshold, ttl_s, clock):
        self.threshold, self.ttl_s, self.clock, self.entries = threshold, ttl_s, clock, []

    def put(self, vector, value):
        self.entries.append((self.clock(), np.asarray(vector, float) / np.linalg.norm(vector), value))

    def get(self, vector):
        q = np.asarray(vector, float) / np.linalg.norm(vector)
        live = [(float(v @ q), value) for t, v, value in self.entries if self.clock() - t <= self.ttl_s]
        if not live:
            return None
        sim, value = max(live, key=lambda p: p[0])
        return value if sim >= self.threshold else None


def _ttl_variant(get):
    return type("Wrong", (TTLCache,), {"get": get})


def test_ttl_cache_accepts_a_correct_version(capsys):
    assert_check_accepts(check_ttl_cache, TTLCache, capsys)


def test_ttl_cache_rejects_the_first_match():
    def first(self, vector):
        q = np.asarray(vector, float) / np.linalg.norm(vector)
        for t, v, value in self.entries:
            if self.clock() - t <= self.ttl_s and float(v @ q) >= self.threshold:
                return value
        return None

    assert_check_rejects(check_ttl_cache, _ttl_variant(first), match=r"less similar entry answered")


def test_ttl_cache_rejects_an_unnormalised_query():
    def stored_normalised_only(self, vector):  # right for unit queries only: q·k/|k| is not the cosine
        q = np.asarray(vector, float)
        live = [(float(v @ q), value) for t, v, value in self.entries if self.clock() - t <= self.ttl_s]
        if not live:
            return None
        sim, value = max(live, key=lambda p: p[0])
        return value if sim >= self.threshold else None

    assert_check_rejects(check_ttl_cache, _ttl_variant(stored_normalised_only), match=r"query's length is 0.5")


def test_ttl_cache_rejects_expiry_checked_after_choosing():
    def best_then_expire(self, vector):
        q = np.asarray(vector, float) / np.linalg.norm(vector)
        if not self.entries:
            return None
        t, v, value = max(self.entries, key=lambda e: float(e[1] @ q))
        return value if self.clock() - t <= self.ttl_s and float(v @ q) >= self.threshold else None

    assert_check_rejects(check_ttl_cache, _ttl_variant(best_then_expire), match=r"before\* choosing the best")


def test_ttl_cache_rejects_no_expiry():
    class Forever(TTLCache):
        def get(self, vector):
            self.ttl_s = float("inf")  # forgets the TTL: a stale answer is served forever
            return TTLCache.get(self, vector)

    assert_check_rejects(check_ttl_cache, Forever, match=r"expired entry answered")


def test_ttl_cache_rejects_a_raw_dot_product():
    class Dot(TTLCache):
        def put(self, vector, value):
            self.entries.append((self.clock(), np.asarray(vector, float), value))

    assert_check_rejects(check_ttl_cache, Dot, match=r"get returned")


# ---------------------------------------------------------------- the capstone
class GatewayClient:
    """A correct client built on course_utils.gateway (the solution writes the same by hand)."""

    def __init__(
        self,
        url,
        models,
        *,
        max_attempts=3,
        base_delay=0.05,
        max_delay=1.0,
        failure_threshold=5,
        reset_timeout_s=30.0,
        rng=None,
        sleep=None,
        clock=None,
        retry=True,
        breaker=True,
        fallback=True,
        retry_on=(openai.RateLimitError, openai.InternalServerError),  # 429 and 5xx: faults, not bugs
        jitter="full",
    ):
        self.client = openai.OpenAI(base_url=url + "/v1", api_key="-", max_retries=0)
        self.models = list(models) if fallback else list(models)[:1]
        self.kw = dict(
            max_attempts=max_attempts if retry else 1,
            base_delay=base_delay,
            max_delay=max_delay,
            rng=rng,
            sleep=sleep,
            retry_on=retry_on,
            jitter=jitter,
        )
        self.fallback_on = (*retry_on, CircuitOpenError)
        self.breakers = {
            m: CircuitBreaker(failure_threshold if breaker else 10**9, reset_timeout_s, clock=clock)
            for m in self.models
        }

    def complete(self, prompt, max_tokens=4):
        def one(m):
            ask = lambda: self.client.completions.create(model=m, prompt=prompt, max_tokens=max_tokens)
            return lambda: self.breakers[m].call(lambda: retry_call(ask, **self.kw)).choices[0].text

        try:
            return call_with_fallback(*(one(m) for m in self.models), errors=self.fallback_on)
        except self.fallback_on as err:
            raise RuntimeError("every model failed") from err


def _variant(**flags):
    return lambda *a, **kw: GatewayClient(*a, **kw, **flags)


def test_resilient_client_accepts_a_gateway_client(capsys):
    assert_check_accepts(check_resilient_client, GatewayClient, capsys)


def test_resilient_client_rejects_no_retry():
    assert_check_rejects(check_resilient_client, _variant(retry=False), match=r"answered \d+/200 = 9\d\.\d% at 20%")


def test_resilient_client_rejects_no_breaker():
    assert_check_rejects(check_resilient_client, _variant(breaker=False), match=r"calls reached the dead model")


def test_resilient_client_rejects_no_fallback():
    assert_check_rejects(check_resilient_client, _variant(fallback=False), match=r"second model was healthy|answered")


def test_resilient_client_rejects_retrying_client_errors():
    # retries every HTTP error: a 401 (bad key) is sent max_attempts times, to each model
    wrong = _variant(retry_on=(openai.APIStatusError,))
    assert_check_rejects(check_resilient_client, wrong, match=r"answered 401 and your client sent it \d+ requests")


def test_resilient_client_rejects_waits_without_jitter():
    assert_check_rejects(check_resilient_client, _variant(jitter="none"), match=r"no jitter")


def test_resilient_client_rejects_never_waiting():
    def no_sleep(*a, sleep=None, **kw):  # retries at once: the check's sleep is never called
        return GatewayClient(*a, sleep=lambda s: None, **kw)

    assert_check_rejects(check_resilient_client, no_sleep, match=r"without ever calling self.sleep")


def test_resilient_client_rejects_waits_beyond_the_cap():
    def long_waits(*a, sleep=None, **kw):
        return GatewayClient(*a, sleep=lambda s: sleep(s + kw["max_delay"]), **kw)

    assert_check_rejects(check_resilient_client, long_waits, match=r"outside \[0, max_delay")


def test_resilient_client_rejects_silence_when_both_models_are_down():
    class Quiet(GatewayClient):
        def complete(self, prompt, max_tokens=4):
            try:
                return super().complete(prompt, max_tokens)
            except RuntimeError:
                return ""  # swallows the failure: the caller cannot tell it from an empty answer

    assert_check_rejects(check_resilient_client, Quiet, match=r"both models down, complete returned ''")


def test_resilient_client_rejects_a_breaker_that_never_closes():
    class Stuck(GatewayClient):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            for b in self.breakers.values():
                b.reset_timeout_s = float("inf")

    assert_check_rejects(check_resilient_client, Stuck, match=r"never tried it again")


# ---------------------------------------------------------------- the open cascade exercise
@pytest.fixture(scope="module")
def reference_threshold():
    _, s_val, c_val, l_val, _ = cascade_data("val")
    return pick_cascade_threshold(c_val, s_val, l_val, 0.96 * l_val.mean())


def _carries(prompt):
    a, b = prompt[:-1].split("+")
    return sum(int(x) + int(y) >= 9 for x, y in zip(a[::-1], b[::-1]))


def test_cascade_policy_accepts_direct_routing_of_many_carries(reference_threshold, capsys):
    # a design other than the solution's: three or more carries go straight to the large model
    assert_check_accepts(
        check_cascade_policy, lambda p: float("inf") if _carries(p) >= 3 else reference_threshold, capsys
    )


def test_cascade_policy_rejects_the_reference_itself(reference_threshold):
    assert_check_rejects(check_cascade_policy, lambda p: reference_threshold, match=r"not cheaper than the reference")


def test_cascade_policy_rejects_never_escalating():
    assert_check_rejects(check_cascade_policy, lambda p: float("-inf"), match=r"less accurate than the reference")


def test_cascade_policy_rejects_too_much_direct_routing(reference_threshold):
    two_digits = lambda p: float("inf") if len(p.split("+")[0]) >= 2 else reference_threshold
    assert_check_rejects(check_cascade_policy, two_digits, match=r"not cheaper")


def test_cascade_policy_rejects_a_non_number():
    assert_check_rejects(check_cascade_policy, lambda p: "large", match=r"expected a float threshold")
