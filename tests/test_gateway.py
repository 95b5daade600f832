"""course_utils.gateway: retries, token bucket, circuit breaker, semantic cache — all on a fake clock."""

from __future__ import annotations

import random

import numpy as np
import pytest

import course_utils.gateway as facade
from course_utils.gateway import caches, cascade, ratelimit, resilience
from course_utils.gateway.caches import (
    INTENTS,
    ExactCache,
    SemanticCache,
    intent_text,
    paraphrase_stream,
    simulate_cache,
    tail_intent,
)
from course_utils.gateway.cascade import (
    cascade_curve,
    cascade_outcome,
    fit_logistic,
    pick_cascade_threshold,
    predict_logistic,
)
from course_utils.gateway.ratelimit import TokenBucket
from course_utils.gateway.resilience import (
    CircuitBreaker,
    CircuitOpenError,
    RetryableError,
    backoff_delay,
    call_with_fallback,
    retry_after_of,
    retry_call,
)
from course_utils.timing import percentile


def test_facade_reexports_the_modules_own_objects():
    """Notebooks and learners import ``course_utils.gateway``; the library imports its modules: both see one object."""
    homes = {
        caches: (
            "INTENTS",
            "PARAPHRASES",
            "ExactCache",
            "SemanticCache",
            "intent_text",
            "paraphrase_stream",
            "simulate_cache",
            "tail_intent",
        ),
        cascade: ("cascade_curve", "cascade_outcome", "fit_logistic", "pick_cascade_threshold", "predict_logistic"),
        ratelimit: ("TokenBucket",),
        resilience: (
            "CircuitBreaker",
            "CircuitOpenError",
            "RetryableError",
            "backoff_delay",
            "call_with_fallback",
            "retry_after_of",
            "retry_call",
        ),
    }
    named = [n for names in homes.values() for n in names] + ["percentile"]
    assert sorted(named) == sorted(facade.__all__)  # a new name in the facade needs a home here too
    for module, names in homes.items():
        for n in names:
            assert getattr(facade, n) is getattr(module, n), n
    assert facade.percentile is percentile


class FakeClock:
    def __init__(self, t: float = 100.0):
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, dt: float) -> None:
        self.t += dt


def flaky(n_failures: int, exc=RuntimeError):
    calls = {"n": 0}

    def fn():
        calls["n"] += 1
        if calls["n"] <= n_failures:
            raise exc(f"failure {calls['n']}")
        return "ok"

    return fn, calls


# ---------------------------------------------------------------- retry_call
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


# ---------------------------------------------------------------- TokenBucket
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


# ---------------------------------------------------------------- CircuitBreaker
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


# ---------------------------------------------------------------- SemanticCache
def bag_of_words(text: str, dim: int = 64) -> np.ndarray:
    """A cheap deterministic embedder: hashed word counts (crc32, stable across runs)."""
    import zlib

    v = np.zeros(dim, np.float32)
    for w in text.lower().split():
        v[zlib.crc32(w.encode()) % dim] += 1.0
    return v


def test_semantic_cache_hits_paraphrases_above_threshold_only():
    cache = SemanticCache(bag_of_words, threshold=0.9)
    cache.put("what is the capital of france", "Paris")
    assert cache.get("What is the capital of France") == "Paris"  # identical after lowercasing
    assert cache.get("the capital of france is what") == "Paris"  # same bag of words
    assert cache.get("how do I bake bread") is None
    value, sim = cache.lookup("what is the capital of spain")
    assert value is None and 0.5 < sim < 0.9
    assert cache.stats() == {"hits": 2, "misses": 1, "hit_rate": pytest.approx(2 / 3), "entries": 1}


def test_semantic_cache_never_answers_across_scopes():
    cache = SemanticCache(bag_of_words, threshold=0.9)
    cache.put("hello there", "small says hi", scope={"model": "small", "temperature": 0})
    assert cache.get("hello there", scope={"model": "large", "temperature": 0}) is None
    assert cache.get("hello there", scope={"temperature": 0, "model": "small"}) == "small says hi"
    assert cache.get("hello there") is None  # no scope is a scope of its own


def test_semantic_cache_ttl_and_eviction():
    clock = FakeClock()
    cache = SemanticCache(bag_of_words, threshold=0.99, ttl_s=5.0, max_entries=3, clock=clock)
    cache.put("alpha", 1)
    clock.advance(5.01)
    assert cache.get("alpha") is None
    for i, w in enumerate(["beta", "gamma", "delta", "epsilon"]):
        cache.put(w, i)
    assert len(cache) == 3
    assert cache.get("beta") is None and cache.get("epsilon") == 3  # oldest evicted first


def test_semantic_cache_compacts_instead_of_growing_forever():
    cache = SemanticCache(bag_of_words, threshold=0.99, max_entries=10)
    for i in range(500):
        cache.put(f"query number {i}", i)
    assert len(cache) == 10
    assert cache._scopes[None]["vecs"].shape[0] <= 64
    assert cache.get("query number 499") == 499 and cache.get("query number 480") is None


@pytest.mark.parametrize("bad", [0, -0.1, 1.01])
def test_semantic_cache_rejects_bad_threshold(bad):
    with pytest.raises(ValueError, match="threshold"):
        SemanticCache(bag_of_words, threshold=bad)


def test_semantic_cache_rejects_non_string_query():
    with pytest.raises(TypeError, match="query"):
        SemanticCache(bag_of_words).get(123)


def test_exact_cache_matches_the_exact_text_or_token_ids_only():
    # issue 27: the cache lowercased and folded whitespace, so "hello world" got "Hello World"'s answer
    cache = ExactCache()
    cache.put("Hello  World", "x", scope="m")
    assert cache.get("Hello  World", scope="m") == "x"
    for other in ("hello world", "Hello World", "Hello  World ", "hello world!"):
        assert cache.get(other, scope="m") is None, other
    assert cache.get("Hello  World", scope="other") is None
    # token ids are keys of their own: ids that decode alike (255 and 254 both to U+FFFD) never share an entry
    cache.put([104, 105, 255], "ids-255", scope="m")
    assert cache.get((104, 105, 255), scope="m") == "ids-255" and cache.get([104, 105, 254], scope="m") is None
    assert cache.get("hi\ufffd", scope="m") is None  # nor the text they decode to
    for bad in (None, 3.5, [1, "a"], [True]):
        with pytest.raises(TypeError, match="query"):
            cache.get(bad)


@pytest.mark.parametrize(
    "vector,match",
    [
        ([float("nan"), 1.0, 0.0], "NaN"),
        ([0.0, 0.0, 0.0], "zeros"),
        ([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], "1-D"),
        ([], "1-D"),
        (np.ones((2, 3, 1)), "1-D"),
    ],
)
def test_semantic_cache_refuses_vectors_without_a_direction_by_name(vector, match):
    cache = SemanticCache(bag_of_words)
    for call in (lambda: cache.put("q", 1, vector=vector), lambda: cache.get("q", vector=vector)):
        with pytest.raises(ValueError, match=f"vector.*{match}|{match}.*vector|vector must be"):
            call()
    assert len(cache) == 0
    # an embedder that returns such a vector is refused the same way, naming it
    with pytest.raises(ValueError, match="embed"):
        SemanticCache(lambda q: np.asarray(vector, dtype=float)).put("q", 1)


def test_semantic_cache_normalises_vectors_not_text():
    cache = SemanticCache(lambda q: np.array([1.0, 0.0]) if q == "a" else np.array([0.0, 1.0]), threshold=0.99)
    cache.put("a", "A", vector=[5.0, 0.0])  # length does not matter: only the direction
    assert cache.get("a") == "A" and cache.get("A") is None  # the text reaches the embedder as given
    with pytest.raises(ValueError, match="dimensions"):
        cache.get("a", vector=[1.0, 0.0, 0.0])


# ---------------------------------------------------------------- fallback, query stream, cascades
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


def test_paraphrase_stream_is_seeded_zipfian_and_labelled():
    stream = paraphrase_stream(3000, seed=0)
    assert stream == paraphrase_stream(3000, seed=0) and stream != paraphrase_stream(3000, seed=1)
    counts = np.bincount([i for _, i in stream], minlength=len(INTENTS))
    top = np.sort(counts)[::-1]
    assert top[0] > 5 * top[-1]  # popularity is skewed
    assert all(INTENTS[i] in text for text, i in stream)


def test_paraphrase_stream_long_tail():
    stream = paraphrase_stream(4000, seed=0, tail_fraction=0.5)
    tail = [i for _, i in stream if i >= len(INTENTS)]
    assert 0.45 < len(tail) / len(stream) < 0.55
    assert len(set(tail)) > 0.4 * len(tail)  # 2,000 draws of 1,200 tail intents: about half are repeats
    assert all(intent_text(i) in text for text, i in stream)
    assert paraphrase_stream(100, seed=3) == paraphrase_stream(100, seed=3, tail_fraction=0.0)
    with pytest.raises(ValueError, match="tail_fraction"):
        paraphrase_stream(10, tail_fraction=1.5)
    for bad in (-1, 1200, 2.0, True):
        with pytest.raises(ValueError, match="i must be"):
            tail_intent(bad)
    with pytest.raises(ValueError, match="intent_id"):
        intent_text(-1)
    with pytest.raises(ValueError, match="i must be"):
        intent_text(len(INTENTS) + 1200)


def test_simulate_cache_counts_false_hits():
    stream = [("reset my password", 0), ("reset my username", 1), ("reset my password", 0)]
    exact = simulate_cache(ExactCache(), stream)
    assert (exact["hits"], exact["false_hits"]) == (1, 0)
    loose = simulate_cache(SemanticCache(bag_of_words, threshold=0.5), stream)
    assert loose["hits"] == 2 and loose["false_hits"] == 1  # "username" answered with "password"'s answer


def test_cascade_threshold_and_curve():
    conf = np.array([-3.0, -2.0, -1.0, -0.5])
    small = np.array([False, False, True, True])
    large = np.array([True, True, True, False])
    assert pick_cascade_threshold(conf, small, large, 0.5) == -np.inf  # the small model alone reaches 50%
    assert pick_cascade_threshold(conf, small, large, 1.0) == -1.0  # escalate the two unsure ones
    assert pick_cascade_threshold(conf, small, large, 1.01) == np.inf  # unreachable: always escalate
    out = cascade_outcome(conf, small, large, -1.0, cost_small=1, cost_large=10)
    assert out == {"threshold": -1.0, "accuracy": 1.0, "escalation_rate": 0.5, "cost": 6.0}
    curve = cascade_curve(conf, small, large)
    assert [c["escalation_rate"] for c in curve] == [0.0, 0.0, 0.25, 0.5, 0.75, 1.0]
    with pytest.raises(ValueError, match="1-D"):
        cascade_outcome(conf, small[:2], large, 0.0)


def test_logistic_router_learns_a_separable_rule():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 3))
    y = X[:, 0] + 0.5 * X[:, 2] > 0
    params = fit_logistic(X, y)
    acc = ((predict_logistic(params, X) > 0.5) == y).mean()
    assert acc > 0.95


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


def test_gateway_reexports_every_name_from_its_one_home():
    import importlib

    from course_utils import gateway

    homes = {
        name: importlib.import_module(f"course_utils.{name}")
        for name in ("resilience", "ratelimit", "caches", "cascade", "timing")
    }
    owner = {}
    for mod in homes.values():
        for name in mod.__all__:
            obj = getattr(mod, name)
            if callable(obj):  # defined there, not imported from elsewhere
                assert obj.__module__ == mod.__name__, name
            owner[name] = mod
    for name in gateway.__all__:
        assert name in owner, f"{name} has no home module"
        assert getattr(gateway, name) is getattr(owner[name], name)


# ---------------------------------------------------------------- hardening (issue 18): caps and bad numbers
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


NON_POSITIVE = [0, -1, float("nan"), float("inf"), -float("inf")]


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
def test_token_bucket_rejects_non_finite_and_non_positive_numbers(bad):
    with pytest.raises(ValueError, match="rate_per_s"):
        TokenBucket(bad, 5)
    with pytest.raises(ValueError, match="capacity"):
        TokenBucket(1.0, bad)
    with pytest.raises(ValueError, match="n"):
        TokenBucket(1.0, 5).try_acquire(bad)


@pytest.mark.parametrize("bad", NON_POSITIVE)
def test_circuit_breaker_rejects_bad_reset_timeout(bad):
    with pytest.raises(ValueError, match="reset_timeout_s"):
        CircuitBreaker(3, bad)


@pytest.mark.parametrize("bad", NON_POSITIVE)
def test_caches_reject_bad_ttl_and_threshold(bad):
    with pytest.raises(ValueError, match="ttl_s"):
        SemanticCache(bag_of_words, ttl_s=bad)
    with pytest.raises(ValueError, match="ttl_s"):
        ExactCache(ttl_s=bad)
    if bad != float("inf") and bad == bad:  # nan and inf are not in (0, 1] either
        return
    with pytest.raises(ValueError, match="threshold"):
        SemanticCache(bag_of_words, threshold=bad)


@pytest.mark.parametrize("arg", ["cost_small", "cost_large"])
@pytest.mark.parametrize("bad", NON_POSITIVE)
def test_cascade_rejects_bad_costs(arg, bad):
    conf, ok = np.array([0.1, 0.9]), np.array([True, False])
    with pytest.raises(ValueError, match=arg):
        cascade_outcome(conf, ok, ok, 0.5, **{arg: bad})
    with pytest.raises(ValueError, match=arg):
        cascade_curve(conf, ok, ok, **{arg: bad})


def test_cascade_rejects_nan_threshold_confidence_and_target_but_takes_infinite_thresholds():
    conf, ok = np.array([0.1, 0.9]), np.array([True, False])
    assert cascade_outcome(conf, ok, ok, float("inf"))["escalation_rate"] == 1.0
    with pytest.raises(ValueError, match="threshold"):
        cascade_outcome(conf, ok, ok, float("nan"))
    with pytest.raises(ValueError, match="confidence"):
        cascade_outcome(np.array([0.1, np.nan]), ok, ok, 0.5)
    for bad in (float("nan"), float("inf"), -0.1):
        with pytest.raises(ValueError, match="target_accuracy"):
            pick_cascade_threshold(conf, ok, ok, bad)


@pytest.mark.parametrize(
    "arg,bad", [("lr", float("nan")), ("lr", -0.5), ("lr", 0), ("steps", 0), ("l2", -1.0), ("l2", float("inf"))]
)
def test_fit_logistic_rejects_bad_hyperparameters(arg, bad):
    X, y = np.eye(3), np.array([0, 1, 1])
    with pytest.raises(ValueError, match=arg):
        fit_logistic(X, y, **{arg: bad})


def test_predict_logistic_rejects_params_of_another_width():
    params = fit_logistic(np.eye(3), np.array([0, 1, 1]), steps=5)
    with pytest.raises(ValueError, match="params"):
        predict_logistic(params, np.ones((2, 4)))
