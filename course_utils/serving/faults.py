"""Fault injection: a seeded wrapper that makes a backend fail (429/503 with ``Retry-After``) or slow, to replay
an outage against the client-side machinery of :mod:`course_utils.gateway` (retries, breakers, fallbacks)."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterable

from ..validate import nonnegative_float, probability
from .backends import GenRequest, OneRequest


class FaultError(RuntimeError):
    """An injected failure, as an HTTP status (429 or 503) with the ``Retry-After`` seconds the server suggests."""

    def __init__(self, status: int, retry_after: float | None = None):
        super().__init__(f"injected fault: HTTP {status}" + (f", retry after {retry_after}s" if retry_after else ""))
        self.status, self.retry_after = status, retry_after


class FaultInjector(OneRequest):
    """Wrap a backend; each request fails with probability ``error_rate`` (seeded) and every call is slowed by
    ``latency_s``. Failures are 429 or 503 (``statuses``) carrying ``Retry-After: retry_after_s``.

    Change ``error_rate``/``latency_s`` on the fly to replay an outage. ``injected`` counts the faults.
    """

    def __init__(
        self,
        backend,
        *,
        error_rate: float = 0.0,
        statuses: Iterable[int] = (429, 503),
        retry_after_s: float | None = 0.1,
        latency_s: float = 0.0,
        seed: int = 0,
        sleep: Callable[[float], None] = time.sleep,
    ):
        if not hasattr(backend, "generate_batch"):
            raise TypeError(f"backend must have generate_batch(reqs), got {type(backend).__name__}")
        statuses = tuple(statuses)
        if not statuses or any(s not in (429, 500, 502, 503, 504) for s in statuses):
            raise ValueError(f"statuses must be HTTP error codes among 429/500/502/503/504, got {statuses!r}")
        self.backend, self.statuses, self.retry_after_s, self.sleep = backend, statuses, retry_after_s, sleep
        self.error_rate, self.latency_s = error_rate, latency_s
        self._check()
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self.injected = 0
        self.calls = 0

    def _check(self) -> None:
        probability("error_rate", self.error_rate)
        nonnegative_float("latency_s", self.latency_s)

    def __getattr__(self, name):  # name, tokenizer, max_context, ... come from the wrapped backend
        if name == "backend":
            raise AttributeError(name)
        return getattr(self.backend, name)

    def draw(self) -> FaultError | None:
        """Decide one request's fate (seeded). Settings changed on the fly to invalid values are the server's
        fault, not the request's: a RuntimeError (HTTP 500), never a ValueError (which would blame the client)."""
        try:
            self._check()
        except ValueError as err:
            raise RuntimeError(f"FaultInjector is misconfigured: {err}") from None
        with self._lock:
            self.calls += 1
            if self._rng.random() < self.error_rate:
                self.injected += 1
                return FaultError(self._rng.choice(self.statuses), self.retry_after_s)
        return None

    def generate_batch(self, reqs: list[GenRequest], on_token=None) -> list:
        faults = [self.draw() for _ in reqs]
        if self.latency_s:
            self.sleep(self.latency_s)
        ok = [i for i, f in enumerate(faults) if f is None]
        results: list = list(faults)
        if ok:
            remap = (lambda row, *a: on_token(ok[row], *a)) if on_token else None
            for i, r in zip(ok, self.backend.generate_batch([reqs[i] for i in ok], remap)):
                results[i] = r
        return results
