"""Who may call the server, and how often: Bearer keys compared in constant time (a FastAPI dependency), token
buckets per key (requests and tokens per second), and a bucket per client address for *failed* attempts, so that
guessing keys is slow."""

from __future__ import annotations

import hmac
import math
import threading
from dataclasses import dataclass

from fastapi import Request

from ..gateway.ratelimit import TokenBucket
from ..validate import check_number, positive_float
from .protocol import ApiError

MIN_KEY_LENGTH = 8


@dataclass
class RateLimit:
    """Per-API-key limits: ``requests_per_s`` (burst ``burst``) and optionally ``tokens_per_s`` (burst
    ``token_burst``, default ``tokens_per_s``), where a request costs its prompt tokens plus ``max_tokens``.

    Checked here, where the setting enters the library (NaN, 0, negatives or a burst below one request are a
    ``ValueError`` naming the field), so a bad limit never builds an app whose every request is a 500.
    """

    requests_per_s: float
    burst: float = 1.0
    tokens_per_s: float | None = None
    token_burst: float | None = None

    def __post_init__(self):
        self.requests_per_s = positive_float("RateLimit.requests_per_s", self.requests_per_s)
        self.burst = check_number("RateLimit.burst", self.burst, 1)  # a request costs one: a smaller burst admits none
        if self.tokens_per_s is not None:
            self.tokens_per_s = positive_float("RateLimit.tokens_per_s", self.tokens_per_s)
        if self.token_burst is not None:
            if self.tokens_per_s is None:
                raise ValueError("RateLimit.token_burst needs tokens_per_s (a token bucket to hold it)")
            self.token_burst = check_number("RateLimit.token_burst", self.token_burst, 1)


def as_keys(api_keys) -> dict | None:
    """``None`` (no authentication), or ``{key: client name}`` from a dict or a list of keys."""
    if api_keys is None:
        return None
    if isinstance(api_keys, str):
        raise TypeError("api_keys must be a dict {key: client name} or a list of keys, not a single str")
    keys = dict(api_keys) if isinstance(api_keys, dict) else {k: f"client-{i}" for i, k in enumerate(api_keys)}
    if not keys or any(not isinstance(k, str) or len(k) < MIN_KEY_LENGTH for k in keys):
        raise ValueError(f"api_keys must hold at least one key, each a str of at least {MIN_KEY_LENGTH} characters")
    return keys


def _too_many(message: str, wait: float, code: str = "rate_limit_exceeded") -> ApiError:
    return ApiError(
        429,
        message,
        code=code,
        type_="rate_limit_error",
        headers={"Retry-After": str(max(1, math.ceil(wait))), "retry-after-ms": str(max(1, int(wait * 1000)))},
    )


class Auth:
    """``client = Depends(auth)`` in a route: the client's name for a valid key, else a 401.

    The key is checked first: a valid key is always accepted. After ``failed_burst`` failed attempts from one
    address, its further *failed* attempts are answered 429 (not 401) until its bucket refills (``failed_per_s``),
    so guessing keys is slow while valid clients behind the same address (a proxy, a NAT) are never locked out.
    """

    def __init__(self, api_keys=None, *, failed_per_s: float = 1.0, failed_burst: float = 10):
        self.keys = as_keys(api_keys)
        self.failed_per_s = positive_float("failed_auth_per_s", failed_per_s)
        self.failed_burst = check_number("failed_auth_burst", failed_burst, 1)
        self._failures: dict[str, TokenBucket] = {}
        self._lock = threading.Lock()

    def _bucket(self, address: str) -> TokenBucket:
        with self._lock:
            if address not in self._failures:
                if len(self._failures) > 10_000:  # bounded memory: forget the oldest addresses
                    for old in list(self._failures)[:1000]:
                        del self._failures[old]
                self._failures[address] = TokenBucket(self.failed_per_s, self.failed_burst)
            return self._failures[address]

    def __call__(self, request: Request) -> str:
        if self.keys is None:
            return "anonymous"
        # the key first: a valid key is never refused for what other clients (behind the same address) did
        client = self.check(request.headers.get("authorization", ""))
        if client is not None:
            return client
        address = request.client.host if request.client else "unknown"
        bucket = self._bucket(address)
        if not bucket.try_acquire(1):
            wait = bucket.wait_time(1)
            raise _too_many(
                f"too many failed authentication attempts from {address}; retry in {wait:.1f}s",
                wait,
                code="too_many_auth_failures",
            )
        raise ApiError(
            401,
            "invalid or missing API key: send 'Authorization: Bearer <key>'",
            code="invalid_api_key",
            type_="authentication_error",
        )

    def check(self, header: str) -> str | None:
        """The client named by ``Authorization: Bearer <key>``, or None."""
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return None
        token_b = token.strip().encode("utf-8", "surrogateescape")
        found = None
        for key, client in self.keys.items():  # compare with every key, in constant time: no early exit to time
            if hmac.compare_digest(token_b, key.encode()):
                found = client
        return found


class RateLimiter:
    """A :class:`RateLimit` applied per client: ``check(client, cost_tokens)`` raises a 429 with ``Retry-After``."""

    def __init__(self, limit: RateLimit | None):
        if limit is not None and not isinstance(limit, RateLimit):
            raise TypeError(f"rate_limit must be a RateLimit or None, got {type(limit).__name__}")
        self.limit = limit
        self._buckets: dict = {}
        self._lock = threading.Lock()

    def _buckets_of(self, client: str):
        lim = self.limit
        with self._lock:
            if client not in self._buckets:
                rq = TokenBucket(lim.requests_per_s, lim.burst)
                tk = TokenBucket(lim.tokens_per_s, lim.token_burst or lim.tokens_per_s) if lim.tokens_per_s else None
                self._buckets[client] = (rq, tk)
            return self._buckets[client]

    def check(self, client: str, cost_tokens: int) -> None:
        if self.limit is None:
            return
        rq, tk = self._buckets_of(client)
        wait = rq.wait_time(1)
        if tk is not None:
            if cost_tokens > tk.capacity:
                raise ApiError(
                    400,
                    f"this request needs {cost_tokens} tokens, more than your token burst "
                    f"({int(tk.capacity)}); lower max_tokens",
                    param="max_tokens",
                )
            wait = max(wait, tk.wait_time(cost_tokens))
        if wait > 0 or not rq.try_acquire(1) or (tk is not None and not tk.try_acquire(cost_tokens)):
            raise _too_many(f"rate limit exceeded for {client}; retry in {wait:.2f}s", wait)
