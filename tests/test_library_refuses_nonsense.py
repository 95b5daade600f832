"""Library functions refuse nonsense by name instead of answering it (issue 27): each case below used to return a
plausible-looking result (character pairs, an empty ranking, '')."""

from __future__ import annotations

import numpy as np
import pytest

from course_utils.rag import cosine_top_k, reciprocal_rank_fusion
from course_utils.serving import EchoBackend
from course_utils.tokenization import get_stats


@pytest.mark.parametrize("ids", ["abc", b"abc", 42, ["a", "b"], [1.5, 2.5]])
def test_get_stats_refuses_what_is_not_token_ids(ids):
    with pytest.raises(TypeError, match="ids"):
        get_stats(ids)


def test_get_stats_still_counts_ids_lists_tuples_and_arrays():
    want = {(1, 2): 2, (2, 1): 1}
    assert get_stats([1, 2, 1, 2]) == want and get_stats((1, 2, 1, 2)) == want
    assert get_stats(np.array([1, 2, 1, 2])) == want and get_stats([]) == {}
    with pytest.raises(TypeError, match="counts"):
        get_stats([1, 2], counts=[])


@pytest.mark.parametrize(
    "query,matrix,match",
    [
        ([np.nan, 1.0], np.eye(2), "query"),
        ([np.inf, 1.0], np.eye(2), "query"),
        ([0.0, 0.0], np.eye(2), "query"),
        ([1.0, 0.0], [[np.nan, 0.0], [0.0, 1.0]], "matrix"),
    ],
)
def test_cosine_top_k_refuses_nan_and_zero_queries(query, matrix, match):
    with pytest.raises(ValueError, match=match):
        cosine_top_k(np.asarray(query), np.asarray(matrix), 1)


def test_cosine_top_k_still_ranks():
    order, sims = cosine_top_k(np.array([1.0, 0.1]), np.eye(2), 2)
    assert order.tolist() == [0, 1] and sims[0] > sims[1]


@pytest.mark.parametrize("rankings", ["abc", b"abc", ["abc", "def"], [[1, 2], "xy"], 5])
def test_reciprocal_rank_fusion_refuses_strings_for_rankings(rankings):
    with pytest.raises(TypeError, match="rankings"):
        reciprocal_rank_fusion(rankings)


def test_reciprocal_rank_fusion_still_fuses():
    fused = reciprocal_rank_fusion([["a", "b"], ("b", "c")], k=0)
    assert [d for d, _ in fused] == ["b", "a", "c"] and fused[0][1] == pytest.approx(1 / 2 + 1)


@pytest.mark.parametrize("max_tokens", [-3, 0, 2.5, "4"])
def test_echo_backend_refuses_bad_max_tokens(max_tokens):
    with pytest.raises(ValueError, match="max_tokens"):
        EchoBackend().generate("hi", max_tokens=max_tokens)
    assert EchoBackend().generate("hi", max_tokens=3).text == "hih"
