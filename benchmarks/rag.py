"""Chapter 6 benchmark: index build time, query latency p50/p95 per retrieval method, and ANN recall vs exact
search, on the course corpus (128-token windows overlapping by 32 of the Python Language Reference) and on a 10x
synthetic enlargement of it. Prints Markdown tables; every ratio is measured within this one run.

    python benchmarks/rag.py            # everything, incl. dense retrieval over the other chunkings (two more
                                        # embedding passes, ~1 min each on two cores the first time, then cached)
    python benchmarks/rag.py --quick    # skip those passes

Dense latencies are for search given the query vector; embedding the query is timed on its own row, since
every dense method pays it once per query.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("COURSE_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402

from course_utils import rag  # noqa: E402


def _percentiles(seconds: list[float]) -> tuple[float, float]:
    ms = np.array(seconds) * 1e3
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 95))


def _time_queries(fn, items, repeats: int) -> tuple[float, float]:
    times = []
    for _ in range(repeats):
        for item in items:
            t = time.perf_counter()
            fn(item)
            times.append(time.perf_counter() - t)
    return _percentiles(times)


def _build(make):
    t = time.perf_counter()
    index = make()
    return index, time.perf_counter() - t


def bench_corpus(name: str, chunks, vectors, questions, query_vectors, repeats: int, efs=(16, 64, 128)):
    """Rows (corpus, method, n, build s, p50 ms, p95 ms) and ANN rows (corpus, ef, recall@10, p50 ms)."""
    texts = [q.text for q in questions]
    bm25, t_bm25 = _build(lambda: rag.BM25Index().add(chunks))
    exact, t_exact = _build(lambda: rag.DenseIndex().add_vectors(chunks, vectors))
    hnsw, t_hnsw = _build(lambda: rag.DenseIndex(exact=False, ef_search=64).add_vectors(chunks, vectors))
    hybrid = rag.HybridIndex(bm25, exact).add(chunks)  # both parts already hold these chunks: nothing rebuilt
    rows = [
        (name, "BM25", len(chunks), t_bm25, *_time_queries(lambda q: bm25.search(q, 10), texts, repeats)),
        (
            name,
            "dense exact (numpy)",
            len(chunks),
            t_exact,
            *_time_queries(lambda v: exact.ranked_by_vector(v, 10), query_vectors, repeats),
        ),
        (
            name,
            "dense HNSW (faiss, ef=64)",
            len(chunks),
            t_hnsw,
            *_time_queries(lambda v: hnsw.ranked_by_vector(v, 10), query_vectors, repeats),
        ),
        (
            name,
            "hybrid RRF (BM25 + exact)",
            len(chunks),
            t_bm25 + t_exact,
            *_time_queries(lambda q: hybrid.search(q, 10), texts, repeats),
        ),
    ]
    ann = []
    for ef in efs:
        hnsw.ef_search = ef
        p50, _ = _time_queries(lambda v: hnsw.ranked_by_vector(v, 10), query_vectors, repeats)
        ann.append((name, ef, rag.ann_recall(exact, hnsw, query_vectors, 10), p50))
    return rows, ann


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--factor", type=int, default=10, help="synthetic enlargement factor (default 10)")
    parser.add_argument("--repeats", type=int, default=3, help="passes over the 94 questions per timing")
    parser.add_argument("--quick", action="store_true", help="skip the extra embedding passes (other chunkings)")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(max(1, min(os.cpu_count() or 1, 8)))
    documents, questions = rag.load_python_reference(), rag.load_questions()
    chunks = rag.default_chunks()
    vectors = rag.embed([c.text for c in chunks], progress=True)  # cached on disk after the first run
    dense = rag.DenseIndex().add_vectors(chunks, vectors)
    rag.load_model()  # the corpus vectors may come from the cache: load the model before timing queries
    t = time.perf_counter()
    query_vectors = dense.query_vectors([q.text for q in questions])
    per_query_embed = (time.perf_counter() - t) / len(questions)
    sample = [c.text for c in chunks[:64]]
    t = time.perf_counter()
    rag.embed(sample, cache=False)
    chunks_per_s = len(sample) / (time.perf_counter() - t)
    single = _time_queries(lambda q: rag.embed([q], cache=False), [q.text for q in questions[:20]], 1)

    big_chunks, big_vectors = rag.synthetic_enlargement(chunks, vectors, factor=args.factor, seed=0)
    rows, ann = bench_corpus("corpus", chunks, vectors, questions, query_vectors, args.repeats)
    rows_big, ann_big = bench_corpus(
        f"{args.factor}x synthetic", big_chunks, big_vectors, questions, query_vectors, args.repeats
    )

    print(
        f"\n### Chapter 6 retrieval benchmark ({os.cpu_count()} CPU cores, torch threads {torch.get_num_threads()})\n"
    )
    print("| corpus | method | chunks | index build [s] | query p50 [ms] | query p95 [ms] |")
    print("|---|---|---:|---:|---:|---:|")
    for corpus, method, n, build, p50, p95 in rows + rows_big:
        print(f"| {corpus} | {method} | {n:,} | {build:.3f} | {p50:.3f} | {p95:.3f} |")
    print(f"| both | embed one query (MiniLM, CPU) | – | – | {single[0]:.1f} | {single[1]:.1f} |")
    print(
        f"\nEmbedding throughput: {chunks_per_s:.1f} chunks/s (cold corpus embedding ≈ "
        f"{len(chunks) / chunks_per_s:.0f} s for {len(chunks):,} chunks); batched query embedding "
        f"{per_query_embed * 1e3:.1f} ms/query.\n"
    )
    print("| corpus | HNSW efSearch | recall@10 vs exact | query p50 [ms] |")
    print("|---|---:|---:|---:|")
    for corpus, ef, recall, p50 in ann + ann_big:
        print(f"| {corpus} | {ef} | {recall:.3f} | {p50:.3f} |")

    if not args.quick:
        print("\n| chunking (dense, exact) | chunks | recall@1 | recall@5 | recall@10 | MRR | answer in context@640 |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for label, kw in [
            ("structure-aware 128", dict(chunk_size=128, strategy="paragraphs")),
            ("fixed 128", dict(chunk_size=128, overlap=0, strategy="tokens")),
            ("fixed 128 + overlap 32", dict(chunk_size=128, overlap=32, strategy="tokens")),
        ]:
            cks = rag.chunk_documents(documents, **kw)
            index = rag.DenseIndex(progress=True).add(cks)
            s = rag.evaluate(index, questions)
            print(
                f"| {label} | {len(cks):,} | {s['recall@1']:.3f} | {s['recall@5']:.3f} | {s['recall@10']:.3f} "
                f"| {s['mrr']:.3f} | {rag.answer_in_context(index, questions):.3f} |"
            )


if __name__ == "__main__":
    main()
