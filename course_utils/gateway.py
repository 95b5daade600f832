"""The client side of serving: retries with backoff, rate limits, circuit breakers and a semantic cache.

Each piece is a few lines of arithmetic around a clock, and every one takes its clock (and ``sleep``) as a
parameter, so tests drive them with a fake clock instead of waiting.

- :func:`retry_call` — exponential backoff with "full jitter" (AWS Architecture Blog, *Exponential Backoff And
  Jitter*, 2015: ``sleep = uniform(0, min(cap, base · 2^attempt))``), honouring a server's ``Retry-After``.
- :class:`TokenBucket` — ``rate_per_s`` tokens drip into a bucket of ``capacity``; a request takes ``n``.
- :class:`CircuitBreaker` — closed → open after ``failure_threshold`` consecutive failures → half-open after
  ``reset_timeout_s`` (one trial call) → closed on success, open again on failure.
- :class:`SemanticCache` — answers a query with a stored value when a cached query's embedding has cosine
  similarity ≥ ``threshold`` *within the same scope* (model + settings) and has not expired.
"""
from __future__ import annotations

import random
import threading
import time
from collections import OrderedDict
from typing import Any, Callable, Iterable

import numpy as np

__all__ = ["RetryableError", "retry_after_of", "backoff_delay", "retry_call", "call_with_fallback", "TokenBucket",
           "CircuitBreaker", "CircuitOpenError", "SemanticCache", "ExactCache", "percentile", "INTENTS",
           "PARAPHRASES", "paraphrase_stream", "tail_intent", "intent_text", "simulate_cache", "cascade_outcome",
           "pick_cascade_threshold", "cascade_curve", "fit_logistic", "predict_logistic"]


class RetryableError(Exception):
    """An error a server asked us to retry (429/503), optionally with the seconds it wants us to wait."""

    def __init__(self, message: str = "", *, status: int = 503, retry_after: float | None = None):
        super().__init__(message or f"HTTP {status}")
        self.status = status
        self.retry_after = retry_after


def _seconds(value, scale: float = 1.0) -> float | None:
    try:
        return None if value is None else max(0.0, float(value) / scale)
    except (TypeError, ValueError):
        return None  # e.g. an HTTP-date Retry-After: fall back to our own backoff


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


def backoff_delay(n: int, *, base_delay: float = 0.1, max_delay: float = 2.0, jitter: str = "full",
                  rng: random.Random | None = None) -> float:
    """The wait before retry number ``n`` (1, 2, ...): ``min(max_delay, base_delay·2^(n-1))``, full jitter → U[0, that]."""
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an int >= 1 (the retry number), got {n!r}")
    if jitter not in ("full", "none"):
        raise ValueError(f"jitter must be 'full' or 'none', got {jitter!r}")
    cap = min(max_delay, base_delay * 2.0 ** (n - 1))
    return cap if jitter == "none" else (rng or random).uniform(0.0, cap)


def retry_call(fn: Callable[[], Any], *, max_attempts: int = 3, base_delay: float = 0.1, max_delay: float = 2.0,
               retry_on: tuple = (Exception,), jitter: str = "full", sleep: Callable[[float], None] = time.sleep,
               rng: random.Random | None = None, on_retry: Callable[[int, BaseException, float], None] | None = None):
    """Call ``fn()`` up to ``max_attempts`` times, sleeping with exponential backoff between tries.

    Errors outside ``retry_on`` propagate at once; after the last attempt the last error is re-raised. When the
    error carries a ``Retry-After`` (see :func:`retry_after_of`) we wait at least that long: the server knows
    better than our formula when it will have capacity again.
    """
    if not isinstance(max_attempts, int) or max_attempts < 1:
        raise ValueError(f"max_attempts must be an int >= 1, got {max_attempts!r}")
    if base_delay < 0 or max_delay < 0:
        raise ValueError(f"base_delay and max_delay must be >= 0, got {base_delay}, {max_delay}")
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
                delay = max(delay, hinted)
            if on_retry is not None:
                on_retry(attempt, err, delay)
            sleep(delay)


class TokenBucket:
    """``capacity`` tokens, refilled continuously at ``rate_per_s``; starts full. Thread-safe."""

    def __init__(self, rate_per_s: float, capacity: float, *, clock: Callable[[], float] = time.monotonic):
        if not isinstance(rate_per_s, (int, float)) or isinstance(rate_per_s, bool) or rate_per_s <= 0:
            raise ValueError(f"rate_per_s must be a number > 0, got {rate_per_s!r}")
        if not isinstance(capacity, (int, float)) or isinstance(capacity, bool) or capacity < 1:
            raise ValueError(f"capacity must be a number >= 1, got {capacity!r}")
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
        if not isinstance(n, (int, float)) or isinstance(n, bool) or n <= 0:
            raise ValueError(f"n must be a number > 0, got {n!r}")
        return float(n)

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


class CircuitOpenError(RuntimeError):
    """Raised by :meth:`CircuitBreaker.call` while the circuit is open: the call was not attempted."""


class CircuitBreaker:
    """Stop calling a failing dependency for ``reset_timeout_s``, then let one trial call through.

    States: ``"closed"`` (calls go through, consecutive failures counted), ``"open"`` (calls fail fast with
    :class:`CircuitOpenError`), ``"half-open"`` (the next call is a trial: success closes, failure re-opens).
    """

    def __init__(self, failure_threshold: int = 5, reset_timeout_s: float = 30.0, *,
                 clock: Callable[[], float] = time.monotonic):
        if not isinstance(failure_threshold, int) or failure_threshold < 1:
            raise ValueError(f"failure_threshold must be an int >= 1, got {failure_threshold!r}")
        if not isinstance(reset_timeout_s, (int, float)) or reset_timeout_s < 0:
            raise ValueError(f"reset_timeout_s must be a number >= 0, got {reset_timeout_s!r}")
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
            raise CircuitOpenError(f"circuit open after {self.failures} failures; retry in "
                                   f"{self.reset_timeout_s - (self.clock() - self._opened_at):.2f}s")
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


def _unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=np.float32).reshape(-1)
    norm = float(np.linalg.norm(v))
    return v / norm if norm > 0 else v


def _scope_key(scope) -> Any:
    if isinstance(scope, dict):
        return tuple(sorted((k, _scope_key(v)) for k, v in scope.items()))
    if isinstance(scope, (list, tuple)):
        return tuple(_scope_key(v) for v in scope)
    return scope


class SemanticCache:
    """Nearest-neighbour cache: a query hits when a stored query in the same scope has cosine ≥ ``threshold``.

    ``embed(text) -> vector`` (or ``embed(list_of_texts) -> matrix``; both are accepted) is a parameter so the
    chapter uses MiniLM and tests a cheap deterministic embedder. Vectors are kept unit-normalised in one
    matrix per scope, so a lookup is a single matrix-vector product. Oldest entries are evicted first past
    ``max_entries``; entries older than ``ttl_s`` never hit.
    """

    def __init__(self, embed: Callable, *, threshold: float = 0.9, ttl_s: float | None = None,
                 max_entries: int = 10_000, clock: Callable[[], float] = time.monotonic):
        if not callable(embed):
            raise TypeError(f"embed must be a function text -> vector, got {type(embed).__name__}")
        if not isinstance(threshold, (int, float)) or isinstance(threshold, bool) or not 0 < threshold <= 1:
            raise ValueError(f"threshold must be in (0, 1], got {threshold!r}")
        if ttl_s is not None and (not isinstance(ttl_s, (int, float)) or ttl_s <= 0):
            raise ValueError(f"ttl_s must be None or a number > 0, got {ttl_s!r}")
        if not isinstance(max_entries, int) or max_entries < 1:
            raise ValueError(f"max_entries must be an int >= 1, got {max_entries!r}")
        self.embed, self.threshold, self.ttl_s, self.max_entries, self.clock = embed, float(threshold), ttl_s, max_entries, clock
        self._scopes: dict = {}  # scope -> {"vecs": (cap, d) array, "n": int, "values": list, "times": list, "queries": list}
        self._order: OrderedDict = OrderedDict()  # (scope, slot) in insertion order, for eviction
        self.hits = self.misses = 0
        self._lock = threading.Lock()

    def _embed_one(self, query: str) -> np.ndarray:
        if not isinstance(query, str):
            raise TypeError(f"query must be a str, got {type(query).__name__}")
        return _unit(self.embed(query))

    def __len__(self) -> int:
        return len(self._order)

    def lookup(self, query: str, scope=None, *, vector=None) -> tuple[Any, float]:
        """``(value or None, best similarity in scope)`` — ``get`` without touching the statistics."""
        v = _unit(vector) if vector is not None else self._embed_one(query)
        with self._lock:
            s = self._scopes.get(_scope_key(scope))
            if s is None or not s["alive"].any():
                return None, float("-inf")
            sims = s["vecs"][: s["n"]] @ v
            ok = s["alive"][: s["n"]].copy()
            if self.ttl_s is not None:
                ok &= (self.clock() - s["times"][: s["n"]]) <= self.ttl_s
            if not ok.any():
                return None, float("-inf")
            sims = np.where(ok, sims, -np.inf)
            best = int(np.argmax(sims))
            sim = float(sims[best])
            return (s["values"][best] if sim >= self.threshold - 1e-6 else None), sim

    def get(self, query: str, scope=None, *, vector=None):
        value, _ = self.lookup(query, scope, vector=vector)
        with self._lock:
            if value is None:
                self.misses += 1
            else:
                self.hits += 1
        return value

    def put(self, query: str, value, scope=None, *, vector=None) -> None:
        v = _unit(vector) if vector is not None else self._embed_one(query)
        key = _scope_key(scope)
        with self._lock:
            s = self._scopes.get(key)
            if s is None:
                s = self._scopes[key] = {"vecs": np.zeros((16, v.size), np.float32), "n": 0, "values": [],
                                         "times": np.zeros(16), "alive": np.zeros(16, bool)}
            if v.size != s["vecs"].shape[1]:
                raise ValueError(f"embedding dimension changed: got {v.size}, cache holds {s['vecs'].shape[1]}")
            if s["n"] == len(s["vecs"]) and 2 * int(s["alive"][: s["n"]].sum()) <= s["n"]:
                self._compact(key, s)  # half the slots are evicted: reuse them instead of growing
            if s["n"] == len(s["vecs"]):  # grow by doubling: amortised O(1) inserts
                s["vecs"] = np.concatenate([s["vecs"], np.zeros_like(s["vecs"])])
                s["times"] = np.concatenate([s["times"], np.zeros_like(s["times"])])
                s["alive"] = np.concatenate([s["alive"], np.zeros_like(s["alive"])])
            slot = s["n"]
            s["vecs"][slot], s["times"][slot], s["alive"][slot] = v, self.clock(), True
            s["values"].append(value)
            s["n"] += 1
            self._order[(key, slot)] = None
            while len(self._order) > self.max_entries:
                (old_key, old_slot), _ = self._order.popitem(last=False)
                self._scopes[old_key]["alive"][old_slot] = False
                self._scopes[old_key]["values"][old_slot] = None

    def _compact(self, key, s) -> None:
        keep = np.flatnonzero(s["alive"][: s["n"]])
        new_slot = {int(old): i for i, old in enumerate(keep)}
        s["vecs"][: len(keep)] = s["vecs"][keep]
        s["times"][: len(keep)] = s["times"][keep]
        s["alive"][:] = False
        s["alive"][: len(keep)] = True
        s["values"] = [s["values"][i] for i in keep]
        s["n"] = len(keep)
        self._order = OrderedDict(((k, new_slot[slot]) if k == key else (k, slot), None) for k, slot in self._order)

    def stats(self) -> dict:
        total = self.hits + self.misses
        return {"hits": self.hits, "misses": self.misses, "hit_rate": self.hits / total if total else 0.0,
                "entries": len(self)}


class ExactCache:
    """The baseline: a dict keyed by (scope, normalised query text). Same ``get``/``put``/``stats`` as above."""

    def __init__(self, *, ttl_s: float | None = None, clock: Callable[[], float] = time.monotonic):
        self.ttl_s, self.clock, self._d = ttl_s, clock, {}
        self.hits = self.misses = 0

    @staticmethod
    def _norm(query: str) -> str:
        return " ".join(query.lower().split())

    def get(self, query: str, scope=None):
        item = self._d.get((_scope_key(scope), self._norm(query)))
        if item is not None and (self.ttl_s is None or self.clock() - item[1] <= self.ttl_s):
            self.hits += 1
            return item[0]
        self.misses += 1
        return None

    def put(self, query: str, value, scope=None) -> None:
        self._d[(_scope_key(scope), self._norm(query))] = (value, self.clock())

    def stats(self) -> dict:
        total = self.hits + self.misses
        return {"hits": self.hits, "misses": self.misses, "hit_rate": self.hits / total if total else 0.0,
                "entries": len(self._d)}


def percentile(values: Iterable[float], q: float) -> float:
    """The ``q``-th percentile (0–100) of ``values``; NaN when empty."""
    values = list(values)
    return float(np.percentile(values, q)) if values else float("nan")


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


# ----------------------------------------------------------------------------------------------- a query stream
# Support-desk intents; neighbours differ by one word ("cancel" vs "pause my subscription"), the kind of pair a
# semantic cache must *not* merge. Each intent is asked through the same paraphrase templates.
INTENTS = (
    "reset my password", "change my password", "reset my username", "cancel my subscription",
    "pause my subscription", "upgrade my subscription", "downgrade my plan", "delete my account",
    "deactivate my account", "change my email address", "verify my email address", "update my billing address",
    "update my credit card", "get a refund", "download my invoice", "change the invoice currency",
    "enable two-factor authentication", "disable two-factor authentication", "export my data", "import contacts",
    "add a team member", "remove a team member", "change my username", "recover a deleted file",
    "share a folder", "stop sharing a folder", "change the language", "turn on dark mode",
    "turn off email notifications", "turn on email notifications", "contact customer support",
    "report a bug", "install the desktop app", "uninstall the desktop app", "sync my phone",
    "change my time zone", "set up single sign-on", "transfer ownership of the workspace",
    "increase my storage limit", "see my usage statistics",
)
PARAPHRASES = (
    "How do I {}?", "how can I {}", "What are the steps to {}?", "I need to {}. How?", "Can you help me {}?",
    "Is there a way to {}?", "Please explain how to {}.", "I want to {} — what should I do?",
)


# The long tail: one-off requests built from three slots (10 x 12 x 10 = 1,200 intents). Neighbours differ in one
# slot ("export my calendar on Android" / "... on an iPhone"), so a loose threshold answers them wrongly.
TAIL_ACTIONS = ("export", "import", "share", "delete", "rename", "archive", "restore", "duplicate", "print", "sync")
TAIL_OBJECTS = ("my calendar", "a spreadsheet", "the photo album", "a shared drive", "my contacts", "the project board",
                "a PDF invoice", "my playlists", "an old backup", "the team wiki", "my browser bookmarks",
                "a video call recording")
TAIL_CONTEXTS = ("on Android", "on an iPhone", "from the web app", "on Linux", "in the admin console",
                 "on a Chromebook", "without losing comments", "in bulk", "for a guest user", "while offline")


def tail_intent(i: int) -> str:
    """The ``i``-th long-tail intent (0 <= i < 1,200), e.g. ``"export my calendar on Android"``."""
    n_tail = len(TAIL_ACTIONS) * len(TAIL_OBJECTS) * len(TAIL_CONTEXTS)
    if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < n_tail:
        raise ValueError(f"i must be an int in [0, {n_tail}), got {i!r}")
    a, rest = divmod(i, len(TAIL_OBJECTS) * len(TAIL_CONTEXTS))
    o, c = divmod(rest, len(TAIL_CONTEXTS))
    return f"{TAIL_ACTIONS[a]} {TAIL_OBJECTS[o]} {TAIL_CONTEXTS[c]}"


def intent_text(intent_id: int) -> str:
    """The words of an intent id from :func:`paraphrase_stream` (head intents first, then the tail)."""
    if isinstance(intent_id, bool) or not isinstance(intent_id, int) or intent_id < 0:
        raise ValueError(f"intent_id must be an int >= 0, got {intent_id!r}")
    return INTENTS[intent_id] if intent_id < len(INTENTS) else tail_intent(intent_id - len(INTENTS))


def paraphrase_stream(n: int, *, seed: int = 0, zipf_s: float = 1.1, tail_fraction: float = 0.0) -> list[tuple[str, int]]:
    """``n`` queries ``(text, intent_id)``: intents drawn with Zipf popularity (rank r has weight r^-s), each
    phrased with a random template. The intent id is the ground truth a cache hit must match.

    ``tail_fraction`` of the queries instead ask a uniformly drawn long-tail intent (ids from ``len(INTENTS)``):
    real traffic is a popular head plus many requests seen once, which no cache can save.
    """
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an int >= 1, got {n!r}")
    if not 0.0 <= tail_fraction <= 1.0:
        raise ValueError(f"tail_fraction must be in [0, 1], got {tail_fraction!r}")
    rng = random.Random(seed)
    order = list(range(len(INTENTS)))
    rng.shuffle(order)  # popularity rank is not alphabetical
    weights = [1.0 / (r + 1) ** zipf_s for r in range(len(INTENTS))]
    picks = rng.choices(order, weights=weights, k=n)
    n_tail = len(TAIL_ACTIONS) * len(TAIL_OBJECTS) * len(TAIL_CONTEXTS)
    out = []
    for i in picks:  # the head pick is drawn either way, so tail_fraction=0 gives the same stream as before
        if tail_fraction and rng.random() < tail_fraction:
            i = len(INTENTS) + rng.randrange(n_tail)
        out.append((rng.choice(PARAPHRASES).format(intent_text(i)), i))
    return out


def simulate_cache(cache, stream: list[tuple[str, int]], vectors: dict | None = None) -> dict:
    """Replay ``stream`` through ``cache``: look up each query, store the answer (its intent) on a miss.

    A hit whose stored intent differs from the query's is a **false hit**: the user gets someone else's answer.
    ``vectors`` (text -> embedding) skips re-embedding for a :class:`SemanticCache`.
    """
    hits = false_hits = 0
    for text, intent in stream:
        kw = {"vector": vectors[text]} if vectors is not None else {}
        got = cache.get(text, **kw)
        if got is None:
            cache.put(text, intent, **kw)
        else:
            hits += 1
            false_hits += got != intent
    n = len(stream)
    return {"queries": n, "hits": hits, "false_hits": false_hits, "hit_rate": hits / n,
            "false_hit_rate": false_hits / n, "correct_hit_rate": (hits - false_hits) / n}


# ----------------------------------------------------------------------------------------------- cascades
def _arrays(confidence, small_correct, large_correct):
    c = np.asarray(confidence, dtype=float)
    s = np.asarray(small_correct, dtype=bool)
    l = np.asarray(large_correct, dtype=bool)
    if c.ndim != 1 or c.shape != s.shape or c.shape != l.shape or c.size == 0:
        raise ValueError(f"confidence, small_correct and large_correct must be 1-D of one non-zero length, got "
                         f"{c.shape}, {s.shape}, {l.shape}")
    return c, s, l


def cascade_outcome(confidence, small_correct, large_correct, threshold: float, *,
                    cost_small: float = 1.0, cost_large: float = 10.0) -> dict:
    """Small model first; escalate to the large one where ``confidence < threshold``.

    Returns ``accuracy``, ``escalation_rate`` and mean ``cost`` per query (an escalated query pays for both).
    """
    c, s, l = _arrays(confidence, small_correct, large_correct)
    up = c < threshold
    return {"threshold": float(threshold), "accuracy": float(np.where(up, l, s).mean()),
            "escalation_rate": float(up.mean()), "cost": float(cost_small + cost_large * up.mean())}


def pick_cascade_threshold(confidence, small_correct, large_correct, target_accuracy: float) -> float:
    """The threshold with the fewest escalations whose cascade accuracy reaches ``target_accuracy``.

    Candidates are ``-inf`` (never escalate), every observed confidence, and ``+inf`` (always escalate); when
    none reaches the target, ``+inf``.
    """
    c, s, l = _arrays(confidence, small_correct, large_correct)
    for t in [-np.inf, *np.unique(c), np.inf]:  # escalation grows with t: the first that works escalates least
        if np.where(c < t, l, s).mean() >= target_accuracy - 1e-12:
            return float(t)
    return float("inf")


def cascade_curve(confidence, small_correct, large_correct, *, cost_small: float = 1.0,
                  cost_large: float = 10.0) -> list[dict]:
    """:func:`cascade_outcome` at every candidate threshold: the cost-accuracy curve."""
    c, s, l = _arrays(confidence, small_correct, large_correct)
    return [cascade_outcome(c, s, l, t, cost_small=cost_small, cost_large=cost_large)
            for t in [-np.inf, *np.unique(c), np.inf]]


def fit_logistic(X, y, *, l2: float = 1e-3, steps: int = 500, lr: float = 0.5) -> np.ndarray:
    """Logistic regression by gradient descent on standardised features: returns weights ``[mean, std, w, b]``."""
    X = np.asarray(X, dtype=float)
    y = np.asarray(y, dtype=float)
    if X.ndim != 2 or y.shape != (X.shape[0],):
        raise ValueError(f"X must be [n, d] and y [n], got {X.shape} and {y.shape}")
    mu, sd = X.mean(0), X.std(0) + 1e-9
    Z = (X - mu) / sd
    w, b = np.zeros(X.shape[1]), 0.0
    for _ in range(steps):
        p = 1 / (1 + np.exp(-(Z @ w + b)))
        w -= lr * (Z.T @ (p - y) / len(y) + l2 * w)
        b -= lr * float(np.mean(p - y))
    return np.concatenate([mu, sd, w, [b]])


def predict_logistic(params: np.ndarray, X) -> np.ndarray:
    """Probabilities from :func:`fit_logistic`'s parameters."""
    X = np.asarray(X, dtype=float)
    d = X.shape[1]
    mu, sd, w, b = params[:d], params[d:2 * d], params[2 * d:3 * d], params[-1]
    return 1 / (1 + np.exp(-(((X - mu) / sd) @ w + b)))
