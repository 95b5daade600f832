"""Benchmark chapter 1's BPE: incremental vs naive training, and from-scratch encoding vs tiktoken.

    python benchmarks/tokenizer.py            # full run (the naive trainer alone takes about a minute)
    python benchmarks/tokenizer.py --quick    # fewer merges for the naive trainer, for a smoke test

Prints a Markdown table. Ratios are measured in one run on the same machine, so background load affects both
sides alike; absolute seconds are only indicative.
"""

from __future__ import annotations

import argparse
import os
import platform

os.environ.setdefault("COURSE_OFFLINE", "1")

from course_utils.data import course_corpus, prose_documents  # noqa: E402
from course_utils.timing import best_of  # noqa: E402
from course_utils.tokenization import GPT4_SPLIT_PATTERN, BPETokenizer, bpe_with_ranks, get_encoding, train_bpe_naive  # noqa: E402


def timed(fn, *args, repeat: int = 1, **kwargs):
    """Best of ``repeat`` wall-clock timings and the result (:func:`course_utils.timing.best_of`)."""
    return best_of(lambda: fn(*args, **kwargs), repeat, with_result=True)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="naive trainer does 64 merges instead of 512")
    args = parser.parse_args(argv)
    rows = []

    # 1. training on the first 200 KB to 256 + 512 tokens: naive recount vs incremental (same merges)
    text = course_corpus(200_000)
    vocab = 256 + (64 if args.quick else 512)
    t_naive, naive = timed(train_bpe_naive, text, vocab, GPT4_SPLIT_PATTERN)
    t_inc, tok = timed(lambda: BPETokenizer().train(text, vocab), repeat=3)
    assert tok.merges == naive, "the two trainers must learn the same merges"
    rows.append((f"train 200 KB → vocab {vocab}", "naive recount per merge", t_naive, "1.0×"))
    rows.append(
        (f"train 200 KB → vocab {vocab}", "incremental (BPETokenizer.train)", t_inc, f"{t_naive / t_inc:.0f}× faster")
    )

    # 2. the whole course corpus (~1 MB) to 4096 tokens
    big = course_corpus()
    t_big, tok4k = timed(lambda: BPETokenizer().train(big, 4096))
    ratio = len(big.encode("utf-8")) / len(tok4k.encode(big))
    rows.append(
        (
            f"train {len(big.encode()) / 1e6:.2f} MB → vocab 4096",
            "incremental",
            t_big,
            f"target ≤ 30 s; {ratio:.2f} bytes/token",
        )
    )

    # 3. encoding 200 KB of English prose: from-scratch cl100k_base vs tiktoken (both single-threaded)
    english = "\n\n".join(d.text for d in prose_documents()).encode("utf-8")[:200_000].decode("utf-8", "ignore")
    enc = get_encoding("cl100k_base")
    t_tik, ids_tik = timed(enc.encode_ordinary, english, repeat=5)
    scratch = BPETokenizer.from_tiktoken("cl100k_base")  # loading 100k ranks is not part of encoding

    def cold(t):  # an empty cache: every distinct chunk is BPE-merged once, as on a first call
        scratch.clear_cache()
        return scratch.encode(t)

    t_cold, ids_cold = timed(cold, english, repeat=3)
    t_warm, ids_warm = timed(scratch.encode, english, repeat=5)  # cache filled by the calls above
    assert ids_cold == ids_warm == ids_tik, "from-scratch ids must equal tiktoken's"
    rows.append(("encode 200 KB English", "tiktoken encode_ordinary (Rust)", t_tik, "1.0×"))
    rows.append(("encode 200 KB English", "from_tiktoken, empty cache", t_cold, f"{t_cold / t_tik:.1f}× slower"))
    rows.append(("encode 200 KB English", "from_tiktoken, warm cache", t_warm, f"{t_warm / t_tik:.1f}× slower"))

    # 4. one 100,000-character pre-token chunk (a run of letters): the textbook loop is quadratic in it
    for name, chunk in (
        ("100,000 × 'a'", "a" * 100_000),
        ("100,000 letters, cycled", "".join(chr(97 + (i * 7) % 26) for i in range(100_000))),
    ):
        t_tik, ids_tik = timed(enc.encode_ordinary, chunk, repeat=3)
        t_ours, ids_ours = timed(cold, chunk, repeat=3)
        assert ids_ours == ids_tik, "from-scratch ids must equal tiktoken's"
        rows.append((f"encode one chunk: {name}", "tiktoken encode_ordinary (Rust)", t_tik, "1.0×"))
        rows.append(
            (
                f"encode one chunk: {name}",
                "from_tiktoken (heap merge)",
                t_ours,
                f"{t_ours / t_tik:.1f}× slower; target ≤ 10×",
            )
        )
    t_text, _ = timed(bpe_with_ranks, b"a" * 8000, scratch.ranks)
    rows.append(
        (
            "encode one chunk: 8,000 × 'a'",
            "textbook bpe_with_ranks (rescans every pair)",
            t_text,
            "quadratic: why the class uses the heap",
        )
    )

    print(
        f"\nMachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}\n"
    )
    print("| task | implementation | seconds | ratio |")
    print("|---|---|---:|---|")
    for task, impl, secs, note in rows:
        print(f"| {task} | {impl} | {secs:.3f} | {note} |")


if __name__ == "__main__":
    main()
