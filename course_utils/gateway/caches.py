"""Response caches for a model gateway, and the workload that measures them.

- :class:`SemanticCache` — answers a query with a stored value when a cached query's embedding has cosine
  similarity ≥ ``threshold`` *within the same scope* (model + settings) and has not expired.
- :class:`ExactCache` — the baseline: a hit only for the exact same text (or token ids).
- the workload simulator: support-desk :data:`INTENTS` asked through :data:`PARAPHRASES` with Zipf popularity, plus
  a long tail (:func:`tail_intent`, :func:`intent_text`, :func:`paraphrase_stream`), replayed through a cache by
  :func:`simulate_cache`, which counts hits and *false* hits (someone else's answer).
"""

from __future__ import annotations

import random
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np

from ..validate import check_int, check_number, nonnegative_float, positive_float, positive_int, probability

__all__ = [
    "SemanticCache",
    "ExactCache",
    "INTENTS",
    "PARAPHRASES",
    "TAIL_ACTIONS",
    "TAIL_OBJECTS",
    "TAIL_CONTEXTS",
    "tail_intent",
    "intent_text",
    "paraphrase_stream",
    "simulate_cache",
]


def _unit(v, name: str = "vector", *, allow_row: bool = False) -> np.ndarray:
    """``v / ||v||`` as float32: a 1-D, finite, non-zero vector (``allow_row``: a (1, d) matrix too, what a batch
    embedder returns for one text). Anything else is refused by ``name``: a NaN or zero vector has no direction and
    would hit nothing (or everything), and flattening a matrix would mix several vectors into one."""
    try:
        v = np.asarray(v, dtype=np.float32)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a 1-D array of numbers, got {type(v).__name__}") from None
    if allow_row and v.ndim == 2 and v.shape[0] == 1:
        v = v[0]
    if v.ndim != 1 or v.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D vector, got shape {tuple(v.shape)}")
    if not np.isfinite(v).all():
        raise ValueError(f"{name} holds NaN or inf")
    norm = float(np.linalg.norm(v))
    if norm == 0.0:
        raise ValueError(f"{name} is all zeros: it has no direction, so no cosine similarity")
    return v / norm


def _ttl(ttl_s) -> float | None:
    """``ttl_s`` (None: entries never expire) as a finite float > 0."""
    return None if ttl_s is None else positive_float("ttl_s", ttl_s)


def _scope_key(scope) -> Any:
    if isinstance(scope, dict):
        return tuple(sorted((k, _scope_key(v)) for k, v in scope.items()))
    if isinstance(scope, (list, tuple)):
        return tuple(_scope_key(v) for v in scope)
    return scope


class SemanticCache:
    """Nearest-neighbour cache: a query hits when a stored query in the same scope has cosine ≥ ``threshold``.

    ``embed(text) -> vector`` (or ``embed(list_of_texts) -> matrix``; both are accepted) is a parameter so the
    chapter uses MiniLM and tests a cheap deterministic embedder.

    Normalisation: the query *text* is passed to ``embed`` exactly as given (no lowercasing, no whitespace
    folding: that is the embedder's business); the *vector* is L2-normalised (``v / ||v||``) on the way in, so
    the cosine similarity is a dot product and a vector's length never matters. A vector must be 1-D (or one
    (1, d) row from ``embed``), finite and non-zero: NaN, zero and matrix "vectors" are a ``ValueError``. Vectors
    are kept in one matrix per scope, so a lookup is a single matrix-vector product. Oldest entries are evicted
    first past ``max_entries``; entries older than ``ttl_s`` never hit.
    """

    def __init__(
        self,
        embed: Callable,
        *,
        threshold: float = 0.9,
        ttl_s: float | None = None,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ):
        if not callable(embed):
            raise TypeError(f"embed must be a function text -> vector, got {type(embed).__name__}")
        threshold = check_number("threshold", threshold, 0, 1, low_open=True)
        ttl_s = _ttl(ttl_s)
        check_int("max_entries", max_entries, 1)
        self.embed, self.threshold, self.ttl_s = embed, threshold, ttl_s
        self.max_entries, self.clock = max_entries, clock
        # scope -> {"vecs": (cap, d) array, "n": int, "values": list, "times": list, "queries": list}
        self._scopes: dict = {}
        self._order: OrderedDict = OrderedDict()  # (scope, slot) in insertion order, for eviction
        self.hits = self.misses = 0
        self._lock = threading.Lock()

    def _embed_one(self, query: str) -> np.ndarray:
        if not isinstance(query, str):
            raise TypeError(f"query must be a str, got {type(query).__name__}")
        return _unit(self.embed(query), "embed(query)", allow_row=True)

    def __len__(self) -> int:
        return len(self._order)

    def lookup(self, query: str, scope=None, *, vector=None) -> tuple[Any, float]:
        """``(value or None, best similarity in scope)`` — ``get`` without touching the statistics."""
        v = _unit(vector) if vector is not None else self._embed_one(query)
        with self._lock:
            s = self._scopes.get(_scope_key(scope))
            if s is not None and v.size != s["vecs"].shape[1]:
                raise ValueError(f"vector has {v.size} dimensions, the cache holds {s['vecs'].shape[1]}")
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
                s = self._scopes[key] = {
                    "vecs": np.zeros((16, v.size), np.float32),
                    "n": 0,
                    "values": [],
                    "times": np.zeros(16),
                    "alive": np.zeros(16, bool),
                }
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
        return {
            "hits": self.hits,
            "misses": self.misses,
            "hit_rate": self.hits / total if total else 0.0,
            "entries": len(self),
        }


class ExactCache:
    """The baseline: a dict keyed by (scope, the exact query). Same ``get``/``put``/``stats`` as above.

    The query is a ``str``, used exactly as given (no lowercasing or whitespace folding: "hello world" and "Hello
    World" are different prompts with different answers), or a sequence of token ids (kept as a tuple, so ids that
    decode to the same text never share an entry).
    """

    def __init__(self, *, ttl_s: float | None = None, clock: Callable[[], float] = time.monotonic):
        self.ttl_s, self.clock, self._d = _ttl(ttl_s), clock, {}
        self.hits = self.misses = 0
        self._lock = threading.Lock()

    @staticmethod
    def _key(query, scope):
        if isinstance(query, str):
            return (_scope_key(scope), "text", query)
        if isinstance(query, (list, tuple, np.ndarray)) and all(
            isinstance(t, (int, np.integer)) and not isinstance(t, bool) for t in query
        ):
            return (_scope_key(scope), "ids", tuple(int(t) for t in query))
        raise TypeError(f"query must be a str or a sequence of token ids, got {type(query).__name__}")

    def get(self, query, scope=None):
        key = self._key(query, scope)
        with self._lock:
            item = self._d.get(key)
            if item is not None and (self.ttl_s is None or self.clock() - item[1] <= self.ttl_s):
                self.hits += 1
                return item[0]
            self.misses += 1
            return None

    def put(self, query, value, scope=None) -> None:
        key = self._key(query, scope)
        with self._lock:
            self._d[key] = (value, self.clock())

    def stats(self) -> dict:
        total = self.hits + self.misses
        return {
            "hits": self.hits,
            "misses": self.misses,
            "hit_rate": self.hits / total if total else 0.0,
            "entries": len(self._d),
        }


# ----------------------------------------------------------------------------------------------- a query stream
# Support-desk intents; neighbours differ by one word ("cancel" vs "pause my subscription"), the kind of pair a
# semantic cache must *not* merge. Each intent is asked through the same paraphrase templates.
INTENTS = (
    "reset my password",
    "change my password",
    "reset my username",
    "cancel my subscription",
    "pause my subscription",
    "upgrade my subscription",
    "downgrade my plan",
    "delete my account",
    "deactivate my account",
    "change my email address",
    "verify my email address",
    "update my billing address",
    "update my credit card",
    "get a refund",
    "download my invoice",
    "change the invoice currency",
    "enable two-factor authentication",
    "disable two-factor authentication",
    "export my data",
    "import contacts",
    "add a team member",
    "remove a team member",
    "change my username",
    "recover a deleted file",
    "share a folder",
    "stop sharing a folder",
    "change the language",
    "turn on dark mode",
    "turn off email notifications",
    "turn on email notifications",
    "contact customer support",
    "report a bug",
    "install the desktop app",
    "uninstall the desktop app",
    "sync my phone",
    "change my time zone",
    "set up single sign-on",
    "transfer ownership of the workspace",
    "increase my storage limit",
    "see my usage statistics",
)
PARAPHRASES = (
    "How do I {}?",
    "how can I {}",
    "What are the steps to {}?",
    "I need to {}. How?",
    "Can you help me {}?",
    "Is there a way to {}?",
    "Please explain how to {}.",
    "I want to {} — what should I do?",
)


# The long tail: one-off requests built from three slots (10 x 12 x 10 = 1,200 intents). Neighbours differ in one
# slot ("export my calendar on Android" / "... on an iPhone"), so a loose threshold answers them wrongly.
TAIL_ACTIONS = ("export", "import", "share", "delete", "rename", "archive", "restore", "duplicate", "print", "sync")
TAIL_OBJECTS = (
    "my calendar",
    "a spreadsheet",
    "the photo album",
    "a shared drive",
    "my contacts",
    "the project board",
    "a PDF invoice",
    "my playlists",
    "an old backup",
    "the team wiki",
    "my browser bookmarks",
    "a video call recording",
)
TAIL_CONTEXTS = (
    "on Android",
    "on an iPhone",
    "from the web app",
    "on Linux",
    "in the admin console",
    "on a Chromebook",
    "without losing comments",
    "in bulk",
    "for a guest user",
    "while offline",
)


def tail_intent(i: int) -> str:
    """The ``i``-th long-tail intent (0 <= i < 1,200), e.g. ``"export my calendar on Android"``."""
    n_tail = len(TAIL_ACTIONS) * len(TAIL_OBJECTS) * len(TAIL_CONTEXTS)
    check_int("i", i, 0, n_tail - 1)
    a, rest = divmod(i, len(TAIL_OBJECTS) * len(TAIL_CONTEXTS))
    o, c = divmod(rest, len(TAIL_CONTEXTS))
    return f"{TAIL_ACTIONS[a]} {TAIL_OBJECTS[o]} {TAIL_CONTEXTS[c]}"


def intent_text(intent_id: int) -> str:
    """The words of an intent id from :func:`paraphrase_stream` (head intents first, then the tail)."""
    check_int("intent_id", intent_id, 0)
    return INTENTS[intent_id] if intent_id < len(INTENTS) else tail_intent(intent_id - len(INTENTS))


def paraphrase_stream(
    n: int, *, seed: int = 0, zipf_s: float = 1.1, tail_fraction: float = 0.0
) -> list[tuple[str, int]]:
    """``n`` queries ``(text, intent_id)``: intents drawn with Zipf popularity (rank r has weight r^-s), each
    phrased with a random template. The intent id is the ground truth a cache hit must match.

    ``tail_fraction`` of the queries instead ask a uniformly drawn long-tail intent (ids from ``len(INTENTS)``):
    real traffic is a popular head plus many requests seen once, which no cache can save.
    """
    positive_int("n", n)
    probability("tail_fraction", tail_fraction)
    zipf_s = nonnegative_float("zipf_s", zipf_s)
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
    return {
        "queries": n,
        "hits": hits,
        "false_hits": false_hits,
        "hit_rate": hits / n,
        "false_hit_rate": false_hits / n,
        "correct_hit_rate": (hits - false_hits) / n,
    }
