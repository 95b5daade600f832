"""Chapter 6's lab checks accept the reference and reject plausible wrong implementations."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
from helpers import assert_check_accepts, assert_check_rejects

from course_utils import rag
from course_utils.checks import (
    check_bm25_scores,
    check_chunk_text,
    check_cosine_top_k,
    check_mrr,
    check_recall_at_k,
    check_reciprocal_rank_fusion,
    check_retrieval_design,
)
from course_utils.tokenization import get_encoding


@pytest.mark.parametrize(
    "check, right",
    [
        (check_chunk_text, lambda text, size, overlap=0: rag.chunk_text(text, size, overlap)),
        (check_bm25_scores, rag.bm25_scores),
        (check_cosine_top_k, rag.cosine_top_k),
        (check_reciprocal_rank_fusion, rag.reciprocal_rank_fusion),
        (check_recall_at_k, rag.recall_at_k),
        (check_mrr, rag.mrr),
    ],
)
def test_checks_accept_the_reference(check, right, capsys):
    assert_check_accepts(check, right, capsys)


# --- chunk_text -------------------------------------------------------------------------------------------------
def _windows(text, size, overlap, *, stop_at_end=True, step=None):
    if overlap >= size:
        raise ValueError("overlap")
    enc = get_encoding()
    ids = enc.encode(text)
    step = step or size - overlap
    out = []
    for start in range(0, len(ids), step):
        out.append(enc.decode(ids[start : start + size]))
        if stop_at_end and start + size >= len(ids):
            break
    return out


def test_chunk_text_rejects_ignoring_overlap():
    assert_check_rejects(check_chunk_text, lambda t, s, o=0: _windows(t, s, o, step=s), match="chunks")


def test_chunk_text_rejects_repeated_tail_windows():
    assert_check_rejects(
        check_chunk_text, lambda t, s, o=0: _windows(t, s, o, stop_at_end=False), match="extra ones repeat the end"
    )


def test_chunk_text_rejects_no_validation():
    def no_check(text, size, overlap=0):
        return _windows(text, size, overlap) if overlap < size else [text]

    assert_check_rejects(check_chunk_text, no_check, match="ValueError")


def test_chunk_text_rejects_characters_instead_of_tokens():
    assert_check_rejects(
        check_chunk_text, lambda t, s, o=0: [t[i : i + s] for i in range(0, len(t), s - o)], match="chunks"
    )


# --- bm25_scores -------------------------------------------------------------------------------------------------
def _bm25(query, docs, k1=1.5, b=0.75, *, idf_plus_one=True):
    n, avgdl = len(docs), sum(map(len, docs)) / len(docs)
    counts = [Counter(d) for d in docs]
    scores = np.zeros(n)
    for term in query:
        df = sum(term in c for c in counts)
        if not df:
            continue
        ratio = (n - df + 0.5) / (df + 0.5)
        idf = math.log(1 + ratio) if idf_plus_one else math.log(ratio)
        for i, c in enumerate(counts):
            tf = c[term]
            scores[i] += idf * tf / (tf + k1 * (1 - b + b * len(docs[i]) / avgdl))
    return scores


def test_own_bm25_matches_reference():
    for query, docs, k1, b in __import__("course_utils.checks.ch06", fromlist=["_bm25_cases"])._bm25_cases():
        np.testing.assert_allclose(_bm25(query, docs, k1, b), rag.bm25_scores(query, docs, k1, b), atol=1e-12)


def test_bm25_rejects_no_length_normalisation():
    assert_check_rejects(check_bm25_scores, lambda q, d, k1=1.5, b=0.75: _bm25(q, d, k1, 0.0), match="scores")


def test_bm25_rejects_idf_without_plus_one():
    assert_check_rejects(
        check_bm25_scores, lambda q, d, k1=1.5, b=0.75: _bm25(q, d, k1, b, idf_plus_one=False), match="scores"
    )


def test_bm25_rejects_deduplicated_query():
    assert_check_rejects(
        check_bm25_scores, lambda q, d, k1=1.5, b=0.75: _bm25(list(dict.fromkeys(q)), d, k1, b), match="exit"
    )


# --- cosine_top_k ------------------------------------------------------------------------------------------------
def test_cosine_rejects_unnormalised_dot_product():
    def dot_top_k(q, m, k):
        s = m @ q
        order = np.argsort(-s)[:k]
        return order, s[order]

    assert_check_rejects(check_cosine_top_k, dot_top_k, match="indices")


def test_cosine_rejects_worst_first():
    def ascending(q, m, k):
        idx, sims = rag.cosine_top_k(q, m, len(m))
        return idx[::-1][:k], sims[::-1][:k]

    assert_check_rejects(check_cosine_top_k, ascending, match="indices")


def test_cosine_rejects_a_bare_array():
    assert_check_rejects(check_cosine_top_k, lambda q, m, k: rag.cosine_top_k(q, m, k)[0], match="tuple")


# --- reciprocal_rank_fusion ----------------------------------------------------------------------------------------
def _rrf(rankings, k=60, *, use_k=True, start=1):
    scores = {}
    for ranking in rankings:
        for rank, item in enumerate(ranking, start=start):
            scores[item] = scores.get(item, 0.0) + 1.0 / ((k if use_k else 0) + rank)
    return sorted(scores.items(), key=lambda kv: -kv[1])


def test_rrf_rejects_missing_k_constant():
    assert_check_rejects(check_reciprocal_rank_fusion, lambda r, k=60: _rrf(r, k, use_k=False), match="fused ranking")


def test_rrf_rejects_zero_based_ranks():
    assert_check_rejects(check_reciprocal_rank_fusion, lambda r, k=60: _rrf(r, k, start=0), match="fused ranking")


def test_rrf_rejects_alphabetical_tie_break():
    def alphabetical(rankings, k=60):
        return sorted(_rrf(rankings, k), key=lambda kv: (-kv[1], kv[0]))

    assert_check_rejects(check_reciprocal_rank_fusion, alphabetical, match=r"(?s)wrong order.*first seen")


def test_rrf_rejects_reversed_ascending_sort():
    def reversed_ascending(rankings, k=60):  # ascending then reversed: ties come out last-seen first
        return sorted(_rrf(rankings, k), key=lambda kv: kv[1])[::-1]

    assert_check_rejects(check_reciprocal_rank_fusion, reversed_ascending, match=r"wrong order")


def test_rrf_accepts_a_different_correct_implementation(capsys):
    def by_first_seen(rankings, k=60):
        seen, score = [], {}
        for ranking in rankings:
            for i, item in enumerate(ranking):
                if item not in score:
                    seen.append(item)
                    score[item] = 0.0
                score[item] += 1 / (k + i + 1)
        best = max(score.values()) if score else 0
        # selection by score, scanning in first-seen order: equal scores keep that order
        out, left = [], list(seen)
        while left:
            top = max(score[x] for x in left)
            pick = next(x for x in left if score[x] == top)
            out.append((pick, score[pick]))
            left.remove(pick)
        assert not score or out[0][1] == best
        return out

    assert_check_accepts(check_reciprocal_rank_fusion, by_first_seen, capsys)


# --- recall_at_k and mrr -------------------------------------------------------------------------------------------
def test_recall_rejects_hits_beyond_k():
    def beyond_k(rankings, relevant, k):
        return sum(bool(set(r) & set(ranked)) for ranked, r in zip(rankings, relevant)) / len(rankings)

    assert_check_rejects(check_recall_at_k, beyond_k, match="recall@k")


def test_recall_rejects_fraction_of_relevant_found():
    def fraction(rankings, relevant, k):
        return float(np.mean([len(set(r) & set(ranked[:k])) / len(r) for ranked, r in zip(rankings, relevant)]))

    assert_check_rejects(check_recall_at_k, fraction, match="recall@k")


def test_recall_rejects_counting_relevant_hits():
    def hits(rankings, relevant, k):  # two relevant ids in the top k count twice
        return sum(len(set(r) & set(ranked[:k])) for ranked, r in zip(rankings, relevant)) / len(rankings)

    assert_check_rejects(check_recall_at_k, hits, match=r"counts relevant hits, not questions")


def test_recall_rejects_counting_relevant_chunks():
    def chunk_hits(rankings, relevant, k):  # two chunks of one relevant document count twice
        return sum(sum(x in r for x in ranked[:k]) for ranked, r in zip(rankings, relevant)) / len(rankings)

    assert_check_rejects(check_recall_at_k, chunk_hits, match=r"above 1|recall@k")


def test_recall_accepts_a_loop(capsys):
    def loop(rankings, relevant, k):
        found = 0
        for ranked, r in zip(rankings, relevant):
            for x in ranked[:k]:
                if x in r:
                    found += 1
                    break
        return found / len(rankings)

    assert_check_accepts(check_recall_at_k, loop, capsys)


def test_mrr_rejects_averaging_only_found_questions():
    def only_found(rankings, relevant):
        found = [
            next((1 / i for i, x in enumerate(ranked, 1) if x in r), None) for ranked, r in zip(rankings, relevant)
        ]
        found = [f for f in found if f is not None]
        return sum(found) / len(found)

    assert_check_rejects(check_mrr, only_found, match="MRR")


def test_mrr_rejects_last_relevant_hit():
    def last_hit(rankings, relevant):
        vals = []
        for ranked, r in zip(rankings, relevant):
            ranks = [i for i, x in enumerate(ranked, 1) if x in r]
            vals.append(1 / ranks[-1] if ranks else 0.0)
        return sum(vals) / len(vals)

    assert_check_rejects(check_mrr, last_hit, match="MRR")


# --- the open exercise: recall@5 >= 0.93 within a context budget --------------------------------------------------
@pytest.fixture(scope="module")
def corpus():
    chunks = rag.default_chunks()
    return chunks, rag.BM25Index().add(chunks), {q.text: q.topics for q in rag.load_questions()}


def test_retrieval_design_rejects_plain_bm25(corpus):
    chunks, bm25, _ = corpus

    def bm25_search(question, k):  # below the target on the held-out half
        return [chunks[i] for i, _ in bm25._ranked(question, k)]

    assert_check_rejects(
        check_retrieval_design, bm25_search, match=r"recall@5 = 0\.\d+, MRR = .* 47 held-out questions: recall@5 below"
    )


def test_retrieval_design_rejects_the_right_topic_ranked_last(corpus):
    chunks, _, topics = corpus
    first_chunk, every_topic = {}, []
    for c in chunks:
        if c.doc_id not in first_chunk:
            first_chunk[c.doc_id] = c
            every_topic.append(c.doc_id)

    def right_topic_last(question, k):  # recall@5 = 1.0, but the answer sits in 5th place
        wrong = [t for t in every_topic if t not in topics[question]][: k - 1]
        return [first_chunk[t] for t in wrong] + [first_chunk[topics[question][0]]]

    assert_check_rejects(
        check_retrieval_design, right_topic_last, match=r"recall@5 = 1\.000, MRR = 0\.200 .*ranked low"
    )


def test_retrieval_design_rejects_whole_documents():
    docs = rag.load_python_reference()

    def whole_documents(question, k):  # recall is easy when the "passage" is a 50 KB topic
        return [rag.Chunk(d.id, d.title, d.text) for d in docs[:k]]

    assert_check_rejects(check_retrieval_design, whole_documents, match=r"over the budget of 640")


def test_retrieval_design_rejects_more_than_k(corpus):
    chunks, bm25, _ = corpus
    assert_check_rejects(
        check_retrieval_design,
        lambda q, k: [chunks[i] for i, _ in bm25._ranked(q, 2 * k)],
        match=r"returned 10 passages for k=5",
    )


def test_retrieval_design_accepts_a_search_that_reaches_the_target(corpus, capsys):
    chunks, _, topics = corpus
    first_chunk = {}
    for c in chunks:
        first_chunk.setdefault(c.doc_id, c)

    def oracle(question, k):  # reads the labels: not a design, but it shows what passing looks like
        return [first_chunk[t] for t in topics[question][:k]]

    assert_check_accepts(check_retrieval_design, oracle, capsys)
