"""course_utils.gateway.resilience: retries with backoff and Retry-After, the circuit breaker, the fallback —
on a fake clock."""

from __future__ import annotations

import random

import numpy as np
import pytest
from helpers import NON_POSITIVE, FakeClock

from course_utils.gateway import (
    CircuitBreaker,
    CircuitOpenError,
    RetryableError,
    backoff_delay,
    call_with_fallback,
    retry_after_of,
    retry_call,
)


def flaky(n_failures: int, exc=RuntimeError):
    calls = {"n": 0}

    def fn():
        calls["n"] += 1
        if calls["n"] <= n_failures:
            raise exc(f"failure {calls['n']}")
        return "ok"

    return fn, calls


def test_retry_waits_follow_capped_exponential_without_jitter():
    fn, calls = flaky(5)
    waits = []
    assert retry_call(fn, max_attempts=6, base_delay=0.1, max_delay=0.5, jitter="none", sleep=waits.append) == "ok"
    assert calls["n"] == 6
    assert waits == pytest.approx([0.1, 0.2, 0.4, 0.5, 0.5])


def test_retry_full_jitter_is_uniform_below_the_cap():
    rng = random.Random(0)
    draws = [backoff_delay(3, base_delay=0.1, max_delay=2.0, rng=rng) for _ in range(4000)]
    assert 0.0 <= min(draws) and max(draws) <= 0.4
    assert np.mean(draws) == pytest.approx(0.2, abs=0.01)  # mean of U[0, 0.4]
    fn, _ = flaky(3)
    waits = []
    retry_call(fn, max_attempts=4, base_delay=1.0, max_delay=3.0, sleep=waits.append, rng=random.Random(1))
    assert all(0 <= w <= c for w, c in zip(waits, [1.0, 2.0, 3.0])) and len(waits) == 3


def test_retry_reraises_last_error_and_never_retries_other_errors():
    fn, calls = flaky(10)
    with pytest.raises(RuntimeError, match="failure 3"):
        retry_call(fn, max_attempts=3, sleep=lambda s: None)
    assert calls["n"] == 3
    fn, calls = flaky(10, exc=KeyError)
    with pytest.raises(KeyError):
        retry_call(fn, max_attempts=5, retry_on=(RuntimeError,), sleep=lambda s: None)
    assert calls["n"] == 1


def test_retry_honours_retry_after():
    state = {"n": 0}

    def fn():
        state["n"] += 1
        if state["n"] == 1:
            raise RetryableError("busy", status=429, retry_after=1.5)
        return 42

    waits = []
    assert retry_call(fn, base_delay=0.01, jitter="none", sleep=waits.append) == 42
    assert waits == [1.5]


@pytest.mark.parametrize("bad", [0, -1, 1.5])
def test_retry_rejects_bad_max_attempts(bad):
    with pytest.raises(ValueError, match="max_attempts"):
        retry_call(lambda: 1, max_attempts=bad)


def test_retry_rejects_bad_jitter():
    with pytest.raises(ValueError, match="jitter"):
        retry_call(lambda: 1, jitter="equal")


def test_circuit_breaker_opens_half_opens_and_closes():
    clock = FakeClock()
    breaker = CircuitBreaker(3, 10.0, clock=clock)
    boom, _ = flaky(100)
    for _ in range(3):
        with pytest.raises(RuntimeError):
            breaker.call(boom)
    assert breaker.state == "open"
    calls = []
    with pytest.raises(CircuitOpenError):
        breaker.call(lambda: calls.append(1))
    assert calls == []  # open means the dependency is not even called
    clock.advance(10.0)
    assert breaker.state == "half-open"
    with pytest.raises(RuntimeError):
        breaker.call(boom)  # a failed trial re-opens at once
    assert breaker.state == "open"
    clock.advance(10.0)
    assert breaker.call(lambda: "fine") == "fine"
    assert breaker.state == "closed" and breaker.failures == 0


def test_circuit_breaker_counts_consecutive_failures_only():
    breaker = CircuitBreaker(2, 1.0, clock=FakeClock())
    boom, _ = flaky(100)
    with pytest.raises(RuntimeError):
        breaker.call(boom)
    breaker.call(lambda: 1)
    with pytest.raises(RuntimeError):
        breaker.call(boom)
    assert breaker.state == "closed"


def test_call_with_fallback_uses_the_first_success_and_reraises_the_last_error():
    def boom():
        raise RetryableError("down")

    assert call_with_fallback(boom, lambda: "backup") == "backup"
    with pytest.raises(RetryableError):
        call_with_fallback(boom, boom)
    with pytest.raises(KeyError):  # not in `errors`: no fallback
        call_with_fallback(lambda: {}["x"], lambda: "backup", errors=(RetryableError,))
    with pytest.raises(ValueError):
        call_with_fallback()


def test_retry_after_of_reads_attributes_and_headers():
    class Resp:
        def __init__(self, headers):
            self.headers = headers

    class Err(Exception):
        def __init__(self, headers):
            super().__init__()
            self.response = Resp(headers)

    assert retry_after_of(RetryableError(retry_after=2.5)) == 2.5
    assert retry_after_of(Err({"retry-after-ms": "250", "retry-after": "1"})) == 0.25
    assert retry_after_of(Err({"retry-after": "3"})) == 3.0
    assert retry_after_of(Err({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"})) is None
    assert retry_after_of(ValueError()) is None


@pytest.mark.parametrize("hint", [86_400_000, float("inf"), "86400000", "inf"])
def test_retry_never_sleeps_longer_than_max_delay_whatever_retry_after_says(hint):
    state = {"n": 0}

    def fn():
        state["n"] += 1
        if state["n"] == 1:
            raise RetryableError("busy", status=429, retry_after=hint)
        return "ok"

    waits = []
    assert retry_call(fn, base_delay=0.1, max_delay=2.0, jitter="none", sleep=waits.append) == "ok"
    assert waits == [2.0]


def test_retry_after_nan_is_ignored_not_slept():
    assert retry_after_of(RetryableError(retry_after=float("nan"))) is None
    assert retry_after_of(RetryableError(retry_after="nan")) is None


@pytest.mark.parametrize("arg", ["base_delay", "max_delay"])
@pytest.mark.parametrize("bad", NON_POSITIVE[1:])  # zero is a valid delay: retry at once
def test_retry_and_backoff_reject_bad_delays(arg, bad):
    with pytest.raises(ValueError, match=arg):
        retry_call(lambda: 1, **{arg: bad})
    with pytest.raises(ValueError, match=arg):
        backoff_delay(1, **{arg: bad})


def test_retry_call_with_zero_delays_retries_at_once():
    # issue 27: base_delay=0 (tenacity's wait_none) was refused after a validation change
    waits, calls = [], iter([RetryableError("busy"), RetryableError("busy"), "ok"])

    def fn():
        out = next(calls)
        if isinstance(out, Exception):
            raise out
        return out

    assert retry_call(fn, max_attempts=3, base_delay=0, sleep=waits.append) == "ok"
    assert waits == [0.0, 0.0]
    assert backoff_delay(4, base_delay=0.5, max_delay=0, jitter="none") == 0.0


@pytest.mark.parametrize("bad", NON_POSITIVE)
def test_circuit_breaker_rejects_bad_reset_timeout(bad):
    with pytest.raises(ValueError, match="reset_timeout_s"):
        CircuitBreaker(3, bad)
