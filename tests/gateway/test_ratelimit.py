"""course_utils.gateway.ratelimit: the token bucket, on a fake clock."""

from __future__ import annotations

import pytest
from helpers import NON_POSITIVE, FakeClock

from course_utils.gateway import TokenBucket


def test_token_bucket_starts_full_and_refills_at_rate_up_to_capacity():
    clock = FakeClock()
    bucket = TokenBucket(2.0, 5, clock=clock)
    assert all(bucket.try_acquire() for _ in range(5))
    assert not bucket.try_acquire()
    assert bucket.wait_time() == pytest.approx(0.5)
    assert bucket.wait_time(3) == pytest.approx(1.5)
    clock.advance(0.5)
    assert bucket.try_acquire() and not bucket.try_acquire()
    clock.advance(1000.0)
    assert bucket.tokens == pytest.approx(5.0)  # never above capacity
    assert bucket.try_acquire(5) and not bucket.try_acquire(0.5)
    assert bucket.wait_time(6) == float("inf")


def test_token_bucket_failed_acquire_takes_nothing():
    clock = FakeClock()
    bucket = TokenBucket(1.0, 3, clock=clock)
    assert not bucket.try_acquire(4)
    assert bucket.tokens == pytest.approx(3.0)


@pytest.mark.parametrize("rate,cap,match", [(0, 5, "rate_per_s"), (-1, 5, "rate_per_s"), (1, 0.5, "capacity")])
def test_token_bucket_rejects_bad_arguments(rate, cap, match):
    with pytest.raises(ValueError, match=match):
        TokenBucket(rate, cap)


@pytest.mark.parametrize("bad", NON_POSITIVE)
def test_token_bucket_rejects_non_finite_and_non_positive_numbers(bad):
    with pytest.raises(ValueError, match="rate_per_s"):
        TokenBucket(bad, 5)
    with pytest.raises(ValueError, match="capacity"):
        TokenBucket(1.0, bad)
    with pytest.raises(ValueError, match="n"):
        TokenBucket(1.0, 5).try_acquire(bad)
