"""Rate limiting: a token bucket (``rate_per_s`` tokens drip into a bucket of ``capacity``; a request takes ``n``).

The clock is a parameter, so tests drive the bucket with a fake clock instead of waiting. The serving app uses
one bucket per API key.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from ..validate import check_number, positive_float

__all__ = ["TokenBucket"]


class TokenBucket:
    """``capacity`` tokens, refilled continuously at ``rate_per_s``; starts full. Thread-safe."""

    def __init__(self, rate_per_s: float, capacity: float, *, clock: Callable[[], float] = time.monotonic):
        positive_float("rate_per_s", rate_per_s)
        check_number("capacity", capacity, 1)
        self.rate_per_s, self.capacity, self.clock = float(rate_per_s), float(capacity), clock
        self._tokens, self._last = float(capacity), clock()
        self._lock = threading.Lock()

    def _refill(self) -> None:
        now = self.clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._last) * self.rate_per_s)
        self._last = now

    @property
    def tokens(self) -> float:
        with self._lock:
            self._refill()
            return self._tokens

    def _check_n(self, n) -> float:
        return positive_float("n", n)

    def try_acquire(self, n: float = 1) -> bool:
        """Take ``n`` tokens if they are there (True), else take nothing (False)."""
        n = self._check_n(n)
        with self._lock:
            self._refill()
            if self._tokens >= n:
                self._tokens -= n
                return True
            return False

    def wait_time(self, n: float = 1) -> float:
        """Seconds until ``n`` tokens are available (0 if they are now; ``inf`` if ``n`` exceeds the capacity)."""
        n = self._check_n(n)
        with self._lock:
            self._refill()
            if n > self.capacity:
                return float("inf")
            return max(0.0, (n - self._tokens) / self.rate_per_s)
