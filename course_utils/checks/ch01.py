"""Chapter 1 checks: the pieces of byte-level BPE, compared with course_utils.tokenization on edge cases."""
from __future__ import annotations

from ._core import call, compare, fail, passed

__all__ = ["check_get_stats", "check_merge", "check_train_bpe", "check_encode", "check_decode",
           "check_encode_with_ranks"]

# Short texts that exercise ties, repeats, multi-byte characters and the empty case.
_TEXTS = ["aaabdaaabac", "hello hello hello world", "abababab", "naïve café, 東京 🤖🤖", "x", ""]
_TRAIN_TEXT = ("the cat sat on the mat; the bat sat on the hat. " * 4
               + "ünïcödé ünïcödé 東京 東京 🤖🤖🤖 1234 1234 1234\n")


def _same_as_reference(name: str, fn, reference, cases, hint: str, note: str = "") -> None:
    """Run ``fn`` and ``reference`` on each ``(args, shown_inputs)`` case; fail on the first difference."""
    for args, inputs in cases:
        expected = reference(*args)  # before the learner's function, in case it modifies its arguments
        got = call(name, fn, *args, inputs=inputs)
        compare(name, got, expected, inputs=inputs, hint=hint)
    passed(name, len(cases), note)


def check_get_stats(get_stats) -> None:
    """``get_stats(ids) -> {pair: count}`` for adjacent pairs (overlapping pairs count: [5, 5, 5] has two)."""
    from course_utils.tokenization import get_stats as ref

    cases = [[1, 2, 1, 2, 3], [5, 5, 5], [], [7], list("hello world".encode()), list("naïve 🤖".encode())]
    _same_as_reference("check_get_stats", get_stats, ref, [((ids,), {"ids": ids}) for ids in cases],
                       hint="walk zip(ids, ids[1:]) and add 1 per pair; every adjacent pair counts, even overlapping ones")

def check_merge(merge) -> None:
    """``merge(ids, pair, idx)`` replaces each non-overlapping occurrence, scanning left to right."""
    from course_utils.tokenization import merge as ref

    cases = [([1, 2, 3, 1, 2], (1, 2), 99), ([5, 5, 5], (5, 5), 9), ([5, 5, 5, 5], (5, 5), 9),
             ([1, 2, 3], (3, 4), 9), ([], (1, 2), 9), ([4], (4, 4), 9), ([1, 2, 1, 2, 1], (2, 1), 7)]
    _same_as_reference("check_merge", merge, ref, [(c, dict(zip(("ids", "pair", "idx"), c))) for c in cases],
                       hint="when ids[i:i+2] == pair, append idx and skip 2; otherwise append ids[i] and move 1 "
                            "(do not forget the last element)")

def check_train_bpe(train_bpe) -> None:
    """``train_bpe(text, vocab_size) -> {pair: new_id}`` on the UTF-8 bytes of ``text`` (no pre-splitting).

    Ties between equally frequent pairs may be broken either way, so the check replays your merges and verifies
    that each one was a most frequent pair at its step and got the next id.
    """
    from course_utils.tokenization import get_stats, merge, train_bpe_naive

    name = "check_train_bpe"
    cases = [("aaabdaaabac", 259), (_TRAIN_TEXT, 256 + 30), ("hello", 256), ("abcabcabc", 258)]
    for text, vocab_size in cases:
        inputs = {"text": text, "vocab_size": vocab_size}
        got = call(name, train_bpe, text, vocab_size, inputs=inputs)
        if not isinstance(got, dict):
            fail(name, f"expected a dict {{(a, b): new_id}}, got {type(got).__name__}", inputs=inputs)
        n = len(train_bpe_naive(text, vocab_size))
        if len(got) != n:
            fail(name, f"expected {n} merges (vocab_size - 256), got {len(got)}", inputs=inputs,
                 hint="loop `for idx in range(256, vocab_size)`: one merge per new id")
        ids = list(text.encode("utf-8"))
        for step, (pair, idx) in enumerate(got.items()):
            if idx != 256 + step:
                fail(name, f"merge #{step} {pair} got id {idx}, expected {256 + step}", inputs=inputs,
                     hint="new ids start at 256 (after the bytes) and go up by one per merge, in order")
            stats = get_stats(ids)
            best = max(stats.values())
            if stats.get(tuple(pair), 0) != best:
                fail(name, f"merge #{step} {pair} occurs {stats.get(tuple(pair), 0)} times at that step, but the "
                           f"most frequent pair then occurs {best} times", inputs=inputs,
                     hint="recount pairs on the *current* ids (after earlier merges) and pick the most frequent")
            ids = merge(ids, tuple(pair), idx)
    passed(name, len(cases), "every merge was a most frequent pair")


def _trained_merges():
    from course_utils.tokenization import train_bpe_naive

    return train_bpe_naive(_TRAIN_TEXT, 256 + 40)


def check_encode(encode) -> None:
    """``encode(text, merges) -> ids``: apply the learned merges, earliest learned first, to the UTF-8 bytes."""
    from course_utils.tokenization import encode_with_merges

    merges = _trained_merges()
    texts = ["the cat sat on the mat", "the hat", "ünïcödé 東京 🤖", "1234", "zzz never seen", "t", ""]
    cases = [(t, merges, f"<{len(merges)} merges trained on a short text>") for t in texts]
    # order matters: "bc" was learned before "ab", so "abc" must become [a, bc], not [ab, c]
    toy = {(98, 99): 256, (97, 98): 257, (97, 256): 258}
    cases += [("abc", toy, repr(toy)), ("xabcab", toy, repr(toy))]
    _same_as_reference("check_encode", encode, encode_with_merges,
                       [((text, table), {"text": text, "merges": label}) for text, table, label in cases],
                       hint="start from list(text.encode('utf-8')); repeatedly merge the present pair with the lowest "
                            "merge id (min over pairs by merges.get(p, inf)); stop when no present pair was learned")

def check_decode(decode) -> None:
    """``decode(ids, vocab) -> str``: join the tokens' bytes first, then decode UTF-8 with errors="replace"."""
    from course_utils.tokenization import decode_bytes, encode_with_merges, vocab_from_merges

    merges = _trained_merges()
    vocab = vocab_from_merges(merges)
    snowman = list("☃".encode("utf-8"))  # three bytes; each alone is not valid UTF-8
    cases = [encode_with_merges(t, merges) for t in ("the cat sat", "東京 🤖", "")]
    cases += [snowman, snowman[:2], [0xFF, 104, 105]]
    _same_as_reference("check_decode", decode, decode_bytes,
                       [((ids, vocab), {"ids": ids, "vocab": f"<{len(vocab)} tokens>"}) for ids in cases],
                       hint="b''.join(vocab[i] for i in ids).decode('utf-8', errors='replace'): a character's bytes "
                            "can be split over tokens, so decode after joining, and replace invalid bytes")

def check_encode_with_ranks(encode_with_ranks) -> None:
    """``encode_with_ranks(piece: bytes, ranks) -> ids``: tiktoken's rule, merge the lowest-rank pair first."""
    import regex

    from course_utils.tokenization import GPT4_SPLIT_PATTERN, bpe_with_ranks, get_encoding

    # "abcd": lowest rank first gives [a, bcd]; merging left to right would give [abc, d]
    toy = {bytes([i]): i for i in range(256)} | {b"bc": 256, b"ab": 257, b"bcd": 258, b"cd": 259, b"abc": 260}
    cases = [(b"abcd", toy, "toy ranks"), (b"abc", toy, "toy ranks"), (b"", toy, "toy ranks")]
    ranks = get_encoding("cl100k_base")._mergeable_ranks
    text = "Hello world! Tokenization isn't trivial: 12345 東京タワー 🤖 naïveté supercalifragilistic"
    cases += [(c.encode("utf-8"), ranks, "cl100k_base ranks") for c in regex.findall(GPT4_SPLIT_PATTERN, text)]
    _same_as_reference("check_encode_with_ranks", encode_with_ranks, bpe_with_ranks,
                       [((piece, table), {"piece": piece, "ranks": label}) for piece, table, label in cases],
                       hint="start from single bytes; each round find the adjacent pair whose concatenation has the "
                            "lowest rank in `ranks` and merge only that one; stop when no concatenation is in `ranks`",
                       note="same ids as tiktoken's cl100k_base")
