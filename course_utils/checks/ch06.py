"""Checks for chapter 6 (retrieval-augmented generation): each compares the learner's function with
:mod:`course_utils.rag` on several inputs, edge cases included."""

from __future__ import annotations

import numpy as np
from tqdm.auto import tqdm

from .. import rag as ref
from ..rag import load_questions, mrr, recall_at_k, split_questions
from ..tokenization import get_encoding
from ._core import call, compare, exercise, fail, passed

__all__ = [
    "check_chunk_text",
    "check_bm25_scores",
    "check_cosine_top_k",
    "check_reciprocal_rank_fusion",
    "check_recall_at_k",
    "check_mrr",
    "check_retrieval_design",
    "RECALL_TARGET",
    "CONTEXT_BUDGET",
]

_TEXT = (
    "The with statement is used to wrap the execution of a block with methods defined by a context manager. "
    "This allows common try/except/finally usage patterns to be encapsulated for convenient reuse."
)


@exercise("6.1")
def check_chunk_text(chunk_text) -> None:
    """``chunk_text(text, chunk_size, overlap)``: token windows of ``chunk_size``, each ``chunk_size - overlap``
    tokens after the previous one, stopping at the first window that reaches the end."""

    name = "check_chunk_text"
    n = len(get_encoding().encode(_TEXT))
    cases = [
        (_TEXT, 8, 0),
        (_TEXT, 8, 3),
        (_TEXT, 5, 4),
        (_TEXT, n, 0),
        (_TEXT, n // 2, 0),
        (_TEXT, 1000, 10),
        ("short", 16, 4),
        ("", 8, 0),
    ]
    for text, size, overlap in cases:
        inputs = {"text": text, "chunk_size": size, "overlap": overlap}
        got = call(name, chunk_text, text, size, overlap, inputs=inputs)
        expected = ref.chunk_text(text, size, overlap)
        if isinstance(got, list) and len(got) > len(expected) and got[: len(expected)] == expected:
            fail(
                name,
                f"expected {len(expected)} chunks, got {len(got)}: the extra ones repeat the end of the text",
                inputs=inputs,
                hint="stop after the first window that reaches the last token",
            )
        compare(
            name,
            got,
            expected,
            inputs=inputs,
            what="chunks",
            hint="windows of chunk_size token ids, each starting chunk_size - overlap ids after the previous "
            "one, decoded with the same encoding; an empty text gives []",
        )
    try:
        chunk_text(_TEXT, 8, 8)
    except ValueError:
        pass
    except Exception as err:  # noqa: BLE001 - any other error is the learner's to see
        fail(
            name,
            f"overlap >= chunk_size should raise ValueError, got {type(err).__name__}: {err}",
            inputs={"chunk_size": 8, "overlap": 8},
        )
    else:
        fail(
            name,
            "overlap >= chunk_size should raise ValueError (the window would never move forward)",
            inputs={"chunk_size": 8, "overlap": 8},
            hint="check the arguments before the loop",
        )
    passed(name, len(cases) + 1)


def _bm25_cases():
    docs = [
        "the with statement calls enter and exit on a context manager".split(),
        "a for loop iterates over an iterable with a for statement and an else clause and more words here".split(),
        "exit".split(),
        "with with with".split(),
        "context manager protocol enter exit enter exit and the with statement".split(),
    ]
    return [
        (["with", "statement"], docs, 1.5, 0.75),
        (["exit", "exit", "manager"], docs, 1.5, 0.75),  # a repeated query term counts twice
        (["for", "nowhere"], docs, 1.2, 0.5),  # a term in no document adds nothing
        (["statement", "exit"], docs, 0.9, 1.0),
        (["with"], [["a"], ["with", "b", "c", "d", "e", "f"]], 1.5, 0.75),
    ]


@exercise("6.2")
def check_bm25_scores(bm25_scores) -> None:
    """``bm25_scores(query_tokens, docs_tokens, k1, b)``: BM25 (Lucene variant) of the query against every doc."""

    name = "check_bm25_scores"
    cases = _bm25_cases()
    for query, docs, k1, b in cases:
        inputs = {"query_tokens": query, "docs_tokens": docs, "k1": k1, "b": b}
        got = call(name, bm25_scores, query, docs, k1=k1, b=b, inputs=inputs)
        compare(
            name,
            np.asarray(got, dtype=float) if isinstance(got, (list, np.ndarray)) else got,
            ref.bm25_scores(query, docs, k1=k1, b=b),
            inputs=inputs,
            what="scores",
            atol=1e-6,
            hint="idf = ln(1 + (N - df + 0.5) / (df + 0.5)); term part tf / (tf + k1·(1 - b + b·len(doc)/avgdl)); "
            "sum over the query tokens, repeats included",
        )
    passed(name, len(cases))


@exercise("6.3")
def check_cosine_top_k(cosine_top_k) -> None:
    """``cosine_top_k(query, matrix, k)`` -> (indices, similarities) of the k most cosine-similar rows."""

    name = "check_cosine_top_k"
    rng = np.random.default_rng(6)
    matrix = rng.normal(size=(12, 5)) * rng.uniform(0.1, 10.0, size=(12, 1))  # rows of very different lengths
    query = rng.normal(size=5) * 3.0
    cases = [(query, matrix, 3), (query, matrix, 1), (query, matrix, 12), (-query, matrix[:4], 2)]
    for q, m, k in cases:
        inputs = {"query": q, "matrix": m, "k": k}
        got = call(name, cosine_top_k, q, m, k, inputs=inputs)
        if not isinstance(got, tuple) or len(got) != 2:
            fail(name, f"expected a tuple (indices, similarities), got {type(got).__name__}", inputs=inputs)
        idx, sims = ref.cosine_top_k(q, m, k)
        compare(
            name,
            [int(i) for i in np.asarray(got[0]).ravel()],
            idx.tolist(),
            inputs=inputs,
            what="indices",
            hint="cosine = (m/|m|)·(q/|q|): divide both by their norms before the dot product; best first",
        )
        compare(
            name,
            np.asarray(got[1], dtype=float),
            sims,
            inputs=inputs,
            what="similarities",
            atol=1e-6,
            hint="return the cosine similarities of the chosen rows, in [-1, 1]",
        )
    passed(name, len(cases))


@exercise("6.4")
def check_reciprocal_rank_fusion(reciprocal_rank_fusion) -> None:
    """``reciprocal_rank_fusion(rankings, k=60)`` -> [(item, score), ...] best first, score = Σ 1/(k + rank);
    items with equal scores keep the order in which they were first seen (list by list, best first)."""

    name = "check_reciprocal_rank_fusion"
    cases = [
        ([["a", "b", "c", "d"], ["c", "a", "e"]], 60),
        ([["a", "b", "c"], ["d", "e", "b"], ["b", "f"]], 60),
        ([["x", "y", "z"]], 60),
        ([["a", "b", "c", "d"], ["d", "c", "e", "b", "a"]], 1),
        ([["a", "b"], ["c", "b"]], 0),
        ([["z", "x"], ["y", "w"]], 60),  # ties: z and y share 1/61, x and w 1/62; first seen wins, not the alphabet
        ([["m", "k"], ["k", "m"], ["q"]], 60),  # m and k tie exactly; m was seen first
    ]
    for rankings, k in cases:
        inputs = {"rankings": rankings, "k": k}
        got = call(name, reciprocal_rank_fusion, rankings, k=k, inputs=inputs)
        expected = ref.reciprocal_rank_fusion(rankings, k=k)
        got = [tuple(pair) for pair in got] if isinstance(got, list) else got
        if isinstance(got, list) and sorted(map(repr, got)) == sorted(map(repr, expected)) and got != expected:
            fail(
                name,
                f"the right items and scores in the wrong order: expected {[i for i, _ in expected]}, got "
                f"{[p[0] if p else p for p in got]}",
                inputs=inputs,
                hint="sort by score, best first; items with equal scores keep the order in which they were first "
                "seen (a stable sort on the score alone does this; no second sort key, no reversed ascending sort)",
            )
        compare(
            name,
            got,
            expected,
            inputs=inputs,
            what="fused ranking",
            atol=1e-9,
            hint="ranks start at 1; each list adds 1/(k + rank); sort by total score, best first",
        )
    passed(name, len(cases), "ties in first-seen order")


_RANKINGS = [["b", "a", "c"], ["x", "y", "z", "q"], ["a", "a", "b"], ["z", "y", "x"], ["c", "d", "e", "f", "g"]]
_RELEVANT = [{"a"}, {"q"}, {"b", "c"}, {"z", "w"}, {"h"}]
# two relevant ids in the top k, and one relevant id twice (two chunks of one document): still one question each
_TWO_HITS = [["c", "b", "x"], ["p", "p", "r"], ["u", "w", "t"]]
_TWO_HITS_RELEVANT = [{"b", "c"}, {"p"}, {"w", "t"}]


@exercise("6.5")
def check_recall_at_k(recall_at_k) -> None:
    """``recall_at_k(rankings, relevant, k)``: the fraction of questions with a relevant id in their top k."""

    name = "check_recall_at_k"
    cases = [(_RANKINGS, _RELEVANT, k) for k in (1, 2, 3, 10)] + [([["a"]], [{"a"}], 1), ([["b", "a"]], [{"a"}], 1)]
    cases += [(_TWO_HITS, _TWO_HITS_RELEVANT, k) for k in (1, 2, 3)]
    for rankings, relevant, k in cases:
        inputs = {"rankings": rankings, "relevant": relevant, "k": k}
        got = call(name, recall_at_k, rankings, relevant, k, inputs=inputs)
        expected = ref.recall_at_k(rankings, relevant, k)
        if isinstance(got, (int, float)) and got > 1 + 1e-9:
            fail(
                name,
                f"recall@k = {got:.6g} is above 1: it counts relevant hits, not questions",
                inputs=inputs,
                hint="a question with two relevant ids (or two chunks of one relevant document) in its top k is "
                "one success, not two",
            )
        compare(
            name,
            got,
            expected,
            inputs=inputs,
            what="recall@k",
            atol=1e-9,
            hint="look only at ranking[:k]; a question counts once if any of its relevant ids is there "
            "(however many are), then divide by the number of questions",
        )
    passed(name, len(cases), "one success per question")


@exercise("6.6")
def check_mrr(mrr) -> None:
    """``mrr(rankings, relevant)``: mean over questions of 1/rank of the first relevant result (0 when none)."""

    name = "check_mrr"
    cases = [
        (_RANKINGS, _RELEVANT),
        ([["a", "b"]], [{"a"}]),
        ([["a", "b", "c"]], [{"c", "b"}]),
        ([["a"], ["b"]], [{"x"}, {"b"}]),
    ]
    for rankings, relevant in cases:
        inputs = {"rankings": rankings, "relevant": relevant}
        got = call(name, mrr, rankings, relevant, inputs=inputs)
        compare(
            name,
            got,
            ref.mrr(rankings, relevant),
            inputs=inputs,
            what="MRR",
            atol=1e-9,
            hint="rank counts from 1; use the first relevant hit; a question with none adds 0 but still counts",
        )
    passed(name, len(cases))


# The open exercise is scored on the held-out half of the 94 questions (rag.split_questions: 47 and 47, by a hash
# of the ids), so that a design tuned on the dev half is measured on questions it was not tuned on. Measured on the
# held-out half (2026-12-07): reference dense recall@5 0.957 (45/47), MRR 0.799; hybrid RRF 0.915, MRR 0.769.
RECALL_TARGET = 0.97  # 46 of 47 held-out questions: above both references
MRR_TARGET = 0.75  # order counts too: a design that finds the topic but ranks it low does not pass
CONTEXT_BUDGET = 640  # cl100k tokens for the top 5: what five of the reference's 128-token chunks take


@exercise("6.7")
def check_retrieval_design(search, k: int = 5) -> None:
    """Open exercise: ``search(question, k)`` -> up to ``k`` passages (objects with ``.doc_id`` and ``.text``, e.g.
    :class:`course_utils.rag.Chunk`), best first. Scored on the held-out half of the chapter's labelled questions
    only: passes when recall@5 reaches :data:`RECALL_TARGET` and MRR :data:`MRR_TARGET`, with the ``k`` passages'
    texts within :data:`CONTEXT_BUDGET` tokens in all."""

    name = "check_retrieval_design"
    enc = get_encoding()
    _, questions = split_questions(load_questions())  # the held-out half: design on the dev half
    ranked, worst = [], 0
    for q in tqdm(questions, desc="your search", unit="question"):
        inputs = {"question": q.text, "k": k}
        hits = call(name, search, q.text, k, inputs=inputs)
        if not isinstance(hits, (list, tuple)):
            fail(
                name,
                f"expected a list of passages, got {type(hits).__name__}",
                inputs=inputs,
                hint="return a list of rag.Chunk (or anything with .doc_id and .text), best first",
            )
        if len(hits) > k:
            fail(name, f"returned {len(hits)} passages for k={k}", inputs=inputs, hint="return at most k passages")
        if not all(hasattr(h, "doc_id") and hasattr(h, "text") for h in hits):
            fail(
                name,
                "every passage needs .doc_id (the topic it comes from) and .text (what the model would read)",
                inputs=inputs,
                hint="rag.Chunk has both; build your own chunks with rag.Chunk(doc_id, title, text)",
            )
        tokens = sum(len(enc.encode(h.text)) for h in hits)
        worst = max(worst, tokens)
        if tokens > CONTEXT_BUDGET:
            fail(
                name,
                f"the {len(hits)} passages take {tokens} tokens, over the budget of {CONTEXT_BUDGET}",
                inputs=inputs,
                hint="returning whole documents would make recall trivial; keep passages short "
                f"enough that {k} of them fit in {CONTEXT_BUDGET} tokens",
            )
        ranked.append([h.doc_id for h in hits])
    relevant = [q.topics for q in questions]
    score, order = recall_at_k(ranked, relevant, k), mrr(ranked, relevant)
    scores = f"recall@{k} = {score:.3f}, MRR = {order:.3f} on the {len(questions)} held-out questions"
    if score < RECALL_TARGET:
        fail(
            name,
            f"{scores}: recall@{k} below the target {RECALL_TARGET}",
            hint="ideas: fuse BM25 and dense rankings, let one document take at most one of the k places, "
            "prefix chunks with their title, try other chunk sizes and overlaps; compare designs on the dev half",
        )
    if order < MRR_TARGET:
        fail(
            name,
            f"{scores}: MRR below the target {MRR_TARGET} — the right topic is found but ranked low",
            hint="the passages go best first: a model reads the top of the context most reliably; keep the "
            "fused order when you fill the k places",
        )
    passed(
        name,
        len(questions),
        f"{scores} (targets {RECALL_TARGET} and {MRR_TARGET}; reference dense 0.957 / 0.799, hybrid 0.915 / 0.769); "
        f"largest context {worst} tokens (budget {CONTEXT_BUDGET})",
    )
