"""course_utils.gateway.caches: the semantic and the exact cache, and the paraphrase workload that measures them."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import NON_POSITIVE, FakeClock

from course_utils.gateway import INTENTS, ExactCache, SemanticCache, paraphrase_stream, simulate_cache


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


def test_paraphrase_stream_is_seeded_zipfian_and_labelled():
    stream = paraphrase_stream(3000, seed=0)
    assert stream == paraphrase_stream(3000, seed=0) and stream != paraphrase_stream(3000, seed=1)
    counts = np.bincount([i for _, i in stream], minlength=len(INTENTS))
    top = np.sort(counts)[::-1]
    assert top[0] > 5 * top[-1]  # popularity is skewed
    assert all(INTENTS[i] in text for text, i in stream)


def test_paraphrase_stream_long_tail():
    from course_utils.gateway import intent_text, tail_intent

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
