"""Client-side resilience for calls to a model server: retries with backoff, a circuit breaker, a fallback.

- :func:`retry_call` — exponential backoff with "full jitter" (AWS Architecture Blog, *Exponential Backoff And
  Jitter*, 2015: ``sleep = uniform(0, min(cap, base · 2^attempt))``), honouring a server's ``Retry-After``
  (:func:`retry_after_of`); :func:`backoff_delay` is one wait; :class:`RetryableError` a 429/503 to retry.
- :class:`CircuitBreaker` — closed → open after ``failure_threshold`` consecutive failures → half-open after
  ``reset_timeout_s`` (one trial call) → closed on success, open again on failure (:class:`CircuitOpenError`).
- :func:`call_with_fallback` — the first of several calls that succeeds (primary model, then a fallback).

Every piece takes its clock (and ``sleep``) as a parameter, so tests drive them with a fake clock instead of
waiting. Rate limiting is in :mod:`course_utils.ratelimit`, caches in :mod:`course_utils.caches`.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Callable
from typing import Any

from ..validate import check_int, nonnegative_float, positive_float

__all__ = [
    "RetryableError",
    "retry_after_of",
    "backoff_delay",
    "retry_call",
    "CircuitBreaker",
    "CircuitOpenError",
    "call_with_fallback",
]


class RetryableError(Exception):
    """An error a server asked us to retry (429/503), optionally with the seconds it wants us to wait."""

    def __init__(self, message: str = "", *, status: int = 503, retry_after: float | None = None):
        super().__init__(message or f"HTTP {status}")
        self.status = status
        self.retry_after = retry_after


def _seconds(value, scale: float = 1.0) -> float | None:
    try:
        seconds = None if value is None else float(value) / scale
    except (TypeError, ValueError):
        return None  # e.g. an HTTP-date Retry-After: fall back to our own backoff
    if seconds is None or math.isnan(seconds):
        return None
    return max(0.0, seconds)  # +inf stays inf here: retry_call caps every wait at max_delay


def retry_after_of(err: BaseException) -> float | None:
    """The seconds a server asked us to wait: an error's ``retry_after`` attribute, or its HTTP response's
    ``retry-after-ms`` header (finer than whole seconds; the openai client reads it too) or ``retry-after``."""
    if getattr(err, "retry_after", None) is not None:
        return _seconds(err.retry_after)
    headers = getattr(getattr(err, "response", None), "headers", None)
    if headers is None:
        return None
    ms = _seconds(headers.get("retry-after-ms"), 1000.0)
    return ms if ms is not None else _seconds(headers.get("retry-after"))


def backoff_delay(
    n: int, *, base_delay: float = 0.1, max_delay: float = 2.0, jitter: str = "full", rng: random.Random | None = None
) -> float:
    """The wait before retry number ``n`` (1, 2, ...): ``min(max_delay, base_delay·2^(n-1))``; full jitter draws
    from U[0, that]."""
    check_int("n (the retry number)", n, 1)
    # zero is allowed (retry at once, as tenacity's wait_none): only NaN, inf and negatives are nonsense
    base_delay = nonnegative_float("base_delay", base_delay)
    max_delay = nonnegative_float("max_delay", max_delay)
    if jitter not in ("full", "none"):
        raise ValueError(f"jitter must be 'full' or 'none', got {jitter!r}")
    cap = min(max_delay, base_delay * 2.0 ** (n - 1))
    return cap if jitter == "none" else (rng or random).uniform(0.0, cap)


def retry_call(
    fn: Callable[[], Any],
    *,
    max_attempts: int = 3,
    base_delay: float = 0.1,
    max_delay: float = 2.0,
    retry_on: tuple = (Exception,),
    jitter: str = "full",
    sleep: Callable[[float], None] = time.sleep,
    rng: random.Random | None = None,
    on_retry: Callable[[int, BaseException, float], None] | None = None,
):
    """Call ``fn()`` up to ``max_attempts`` times, sleeping with exponential backoff between tries.

    Errors outside ``retry_on`` propagate at once; after the last attempt the last error is re-raised. When the
    error carries a ``Retry-After`` (see :func:`retry_after_of`) we wait at least that long, but never longer than
    ``max_delay``: the server knows better than our formula when it will have capacity again, yet a hostile or
    broken header (``Retry-After: 86400000``, ``inf``) must not park the client for days.
    """
    check_int("max_attempts", max_attempts, 1)
    # zero is allowed (retry at once, as tenacity's wait_none): only NaN, inf and negatives are nonsense
    base_delay = nonnegative_float("base_delay", base_delay)
    max_delay = nonnegative_float("max_delay", max_delay)
    if jitter not in ("full", "none"):
        raise ValueError(f"jitter must be 'full' or 'none', got {jitter!r}")
    retry_on = tuple(retry_on) if isinstance(retry_on, (list, tuple)) else (retry_on,)
    for attempt in range(1, max_attempts + 1):
        try:
            return fn()
        except retry_on as err:
            if attempt == max_attempts:
                raise
            delay = backoff_delay(attempt, base_delay=base_delay, max_delay=max_delay, jitter=jitter, rng=rng)
            hinted = retry_after_of(err)
            if hinted is not None:
                delay = min(max_delay, max(delay, hinted))
            if on_retry is not None:
                on_retry(attempt, err, delay)
            sleep(delay)


class CircuitOpenError(RuntimeError):
    """Raised by :meth:`CircuitBreaker.call` while the circuit is open: the call was not attempted."""


class CircuitBreaker:
    """Stop calling a failing dependency for ``reset_timeout_s``, then let one trial call through.

    States: ``"closed"`` (calls go through, consecutive failures counted), ``"open"`` (calls fail fast with
    :class:`CircuitOpenError`), ``"half-open"`` (the next call is a trial: success closes, failure re-opens).
    """

    def __init__(
        self, failure_threshold: int = 5, reset_timeout_s: float = 30.0, *, clock: Callable[[], float] = time.monotonic
    ):
        check_int("failure_threshold", failure_threshold, 1)
        positive_float("reset_timeout_s", reset_timeout_s)
        self.failure_threshold, self.reset_timeout_s, self.clock = failure_threshold, float(reset_timeout_s), clock
        self.failures, self._opened_at, self._state = 0, None, "closed"
        self._lock = threading.Lock()

    @property
    def state(self) -> str:
        with self._lock:
            if self._state == "open" and self.clock() - self._opened_at >= self.reset_timeout_s:
                self._state = "half-open"
            return self._state

    def call(self, fn: Callable[[], Any]):
        state = self.state
        if state == "open":
            raise CircuitOpenError(
                f"circuit open after {self.failures} failures; retry in "
                f"{self.reset_timeout_s - (self.clock() - self._opened_at):.2f}s"
            )
        try:
            result = fn()
        except Exception:
            with self._lock:
                self.failures += 1
                if self._state == "half-open" or self.failures >= self.failure_threshold:
                    self._state, self._opened_at = "open", self.clock()
            raise
        with self._lock:
            self.failures, self._state = 0, "closed"
        return result


def call_with_fallback(*fns: Callable[[], Any], errors: tuple = (Exception,)):
    """Return the first of ``fns()`` that does not raise one of ``errors``; re-raise the last error if all do.

    Pass ``lambda: retry_call(primary)`` first and the fallback model second for "retry, then fall back".
    """
    if not fns:
        raise ValueError("call_with_fallback needs at least one function")
    last = None
    for fn in fns:
        try:
            return fn()
        except errors as err:
            last = err
    raise last
