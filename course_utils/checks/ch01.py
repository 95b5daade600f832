"""Chapter 1 checks: the pieces of byte-level BPE, compared with course_utils.tokenization on edge cases, then
GPT-4's pre-splitting and special tokens compared with tiktoken's ``cl100k_base``, and an open compression target."""

from __future__ import annotations

import regex

from .. import tokenization as ref
from ..data import course_corpus
from ..tokenization import (
    GPT2_SPLIT_PATTERN,
    GPT4_SPLIT_PATTERN,
    bpe_with_ranks,
    decode_bytes,
    encode_with_merges,
    get_encoding,
    get_stats,
    merge,
    train_bpe_naive,
    vocab_from_merges,
)
from ._core import call, compare, describe, exercise, fail, passed

__all__ = [
    "check_get_stats",
    "check_merge",
    "check_train_bpe",
    "check_encode",
    "check_decode",
    "check_encode_with_ranks",
    "check_train_bpe_regex",
    "check_gpt4_encode",
    "check_compression",
]

# Short texts that exercise ties, repeats, multi-byte characters and the empty case.
_TEXTS = ["aaabdaaabac", "hello hello hello world", "abababab", "naïve café, 東京 🤖🤖", "x", ""]
_TRAIN_TEXT = (
    "the cat sat on the mat; the bat sat on the hat. " * 4 + "ünïcödé ünïcödé 東京 東京 🤖🤖🤖 1234 1234 1234\n"
)


def _same_as_reference(name: str, fn, reference, cases, hint: str, note: str = "") -> None:
    """Run ``fn`` and ``reference`` on each ``(args, shown_inputs)`` case; fail on the first difference."""
    for args, inputs in cases:
        expected = reference(*args)  # before the learner's function, in case it modifies its arguments
        got = call(name, fn, *args, inputs=inputs)
        compare(name, got, expected, inputs=inputs, hint=hint)
    passed(name, len(cases), note)


@exercise("1.1")
def check_get_stats(get_stats) -> None:
    """``get_stats(ids) -> {pair: count}`` for adjacent pairs (overlapping pairs count: [5, 5, 5] has two)."""

    cases = [[1, 2, 1, 2, 3], [5, 5, 5], [], [7], list(b"hello world"), list("naïve 🤖".encode())]
    _same_as_reference(
        "check_get_stats",
        get_stats,
        ref.get_stats,
        [((ids,), {"ids": ids}) for ids in cases],
        hint="every adjacent pair counts, even overlapping ones ([5, 5, 5] has (5, 5) twice): look at each "
        "element with the next one and add 1 for that pair",
    )


@exercise("1.2")
def check_merge(merge) -> None:
    """``merge(ids, pair, idx)`` replaces each non-overlapping occurrence, scanning left to right."""

    cases = [
        ([1, 2, 3, 1, 2], (1, 2), 99),
        ([5, 5, 5], (5, 5), 9),
        ([5, 5, 5, 5], (5, 5), 9),
        ([1, 2, 3], (3, 4), 9),
        ([], (1, 2), 9),
        ([4], (4, 4), 9),
        ([1, 2, 1, 2, 1], (2, 1), 7),
    ]
    _same_as_reference(
        "check_merge",
        merge,
        ref.merge,
        [(c, dict(zip(("ids", "pair", "idx"), c))) for c in cases],
        hint="scan left to right: where the pair starts, emit the new id and jump past both; elsewhere copy "
        "one id and step once (the last id too)",
    )


@exercise("1.3")
def check_train_bpe(train_bpe) -> None:
    """``train_bpe(text, vocab_size) -> {pair: new_id}`` on the UTF-8 bytes of ``text`` (no pre-splitting).

    Ties between equally frequent pairs may be broken either way, so the check replays your merges and verifies
    that each one was a most frequent pair at its step and got the next id.
    """

    name = "check_train_bpe"
    cases = [("aaabdaaabac", 259), (_TRAIN_TEXT, 256 + 30), ("hello", 256), ("abcabcabc", 258)]
    for text, vocab_size in cases:
        inputs = {"text": text, "vocab_size": vocab_size}
        got = call(name, train_bpe, text, vocab_size, inputs=inputs)
        if not isinstance(got, dict):
            fail(name, f"expected a dict {{(a, b): new_id}}, got {type(got).__name__}", inputs=inputs)
        n = len(train_bpe_naive(text, vocab_size))
        if len(got) != n:
            fail(
                name,
                f"expected {n} merges (vocab_size - 256), got {len(got)}",
                inputs=inputs,
                hint="loop `for idx in range(256, vocab_size)`: one merge per new id",
            )
        ids = list(text.encode("utf-8"))
        for step, (pair, idx) in enumerate(got.items()):
            if idx != 256 + step:
                fail(
                    name,
                    f"merge #{step} {pair} got id {idx}, expected {256 + step}",
                    inputs=inputs,
                    hint="new ids start at 256 (after the bytes) and go up by one per merge, in order",
                )
            stats = get_stats(ids)
            best = max(stats.values())
            if stats.get(tuple(pair), 0) != best:
                fail(
                    name,
                    f"merge #{step} {pair} occurs {stats.get(tuple(pair), 0)} times at that step, but the "
                    f"most frequent pair then occurs {best} times",
                    inputs=inputs,
                    hint="recount pairs on the *current* ids (after earlier merges) and pick the most frequent",
                )
            ids = merge(ids, tuple(pair), idx)
    passed(name, len(cases), "every merge was a most frequent pair")


def _trained_merges():

    return train_bpe_naive(_TRAIN_TEXT, 256 + 40)


@exercise("1.4")
def check_encode(encode) -> None:
    """``encode(text, merges) -> ids``: apply the learned merges, earliest learned first, to the UTF-8 bytes."""

    merges = _trained_merges()
    texts = ["the cat sat on the mat", "the hat", "ünïcödé 東京 🤖", "1234", "zzz never seen", "t", ""]
    cases = [(t, merges, f"<{len(merges)} merges trained on a short text>") for t in texts]
    # order matters: "bc" was learned before "ab", so "abc" must become [a, bc], not [ab, c]
    toy = {(98, 99): 256, (97, 98): 257, (97, 256): 258}
    cases += [("abc", toy, repr(toy)), ("xabcab", toy, repr(toy))]
    _same_as_reference(
        "check_encode",
        encode,
        encode_with_merges,
        [((text, table), {"text": text, "merges": label}) for text, table, label in cases],
        hint="start from the text's UTF-8 bytes; repeatedly merge the present pair with the lowest merge id "
        "(the earliest learned); stop when no present pair was learned",
    )


@exercise("1.5")
def check_decode(decode) -> None:
    """``decode(ids, vocab) -> str``: join the tokens' bytes first, then decode UTF-8 with errors="replace"."""

    merges = _trained_merges()
    vocab = vocab_from_merges(merges)
    snowman = list("☃".encode())  # three bytes; each alone is not valid UTF-8
    cases = [encode_with_merges(t, merges) for t in ("the cat sat", "東京 🤖", "")]
    cases += [snowman, snowman[:2], [0xFF, 104, 105]]
    _same_as_reference(
        "check_decode",
        decode,
        decode_bytes,
        [((ids, vocab), {"ids": ids, "vocab": f"<{len(vocab)} tokens>"}) for ids in cases],
        hint="a character's bytes can be split over tokens: join all the tokens' bytes first, decode "
        "once, and let invalid UTF-8 become U+FFFD (errors='replace') instead of raising",
    )


@exercise("1.6")
def check_encode_with_ranks(encode_with_ranks) -> None:
    """``encode_with_ranks(piece: bytes, ranks) -> ids``: tiktoken's rule, merge the lowest-rank pair first."""

    # "abcd": lowest rank first gives [a, bcd]; merging left to right would give [abc, d]
    toy = {bytes([i]): i for i in range(256)} | {b"bc": 256, b"ab": 257, b"bcd": 258, b"cd": 259, b"abc": 260}
    cases = [(b"abcd", toy, "toy ranks"), (b"abc", toy, "toy ranks"), (b"", toy, "toy ranks")]
    ranks = get_encoding("cl100k_base")._mergeable_ranks
    text = "Hello world! Tokenization isn't trivial: 12345 東京タワー 🤖 naïveté supercalifragilistic"
    cases += [(c.encode("utf-8"), ranks, "cl100k_base ranks") for c in regex.findall(GPT4_SPLIT_PATTERN, text)]
    _same_as_reference(
        "check_encode_with_ranks",
        encode_with_ranks,
        bpe_with_ranks,
        [((piece, table), {"piece": piece, "ranks": label}) for piece, table, label in cases],
        hint="start from single bytes; each round find the adjacent pair whose concatenation has the "
        "lowest rank in `ranks` and merge only that one; stop when no concatenation is in `ranks`",
        note="same ids as tiktoken's cl100k_base",
    )


def _replay(name: str, got, chunks: list[list[int]], inputs: dict, hint: str) -> None:
    """Fail unless each merge in ``got`` was a most frequent pair *within the chunks* at its step, with the next id."""

    for step, (pair, idx) in enumerate(got.items()):
        if idx != 256 + step:
            fail(
                name,
                f"merge #{step} {pair} got id {idx}, expected {256 + step}",
                inputs=inputs,
                hint="new ids start at 256 (after the bytes) and go up by one per merge, in order",
            )
        stats: dict = {}
        for ids in chunks:
            get_stats(ids, stats)
        best = max(stats.values())
        count = stats.get(tuple(pair), 0)
        if count != best:
            extra = " (it crosses a chunk boundary: no chunk contains it)" if count == 0 else ""
            fail(
                name,
                f"merge #{step} {pair} occurs {count} times within the chunks at that step{extra}, but the "
                f"most frequent pair then occurs {best} times",
                inputs=inputs,
                hint=hint,
            )
        chunks = [merge(ids, tuple(pair), idx) for ids in chunks]


@exercise("1.7")
def check_train_bpe_regex(train_bpe_regex) -> None:
    """``train_bpe_regex(text, vocab_size, pattern) -> {pair: new_id}``: BPE that never merges across the chunks
    the regex cuts the text into (minbpe's ``RegexTokenizer``; GPT-2 and GPT-4 train this way).

    Ties may be broken either way: the check replays your merges on the chunks and verifies each was a most
    frequent pair there, at its step.
    """

    name = "check_train_bpe_regex"
    cases = [
        (_TRAIN_TEXT, 256 + 30, GPT4_SPLIT_PATTERN, "GPT-4"),
        ("the theme then the thesis", 256 + 8, GPT4_SPLIT_PATTERN, "GPT-4"),
        ("hello world 1234567 hello", 256 + 6, GPT2_SPLIT_PATTERN, "GPT-2"),
        ("aaaa aaaa", 256 + 10, GPT4_SPLIT_PATTERN, "GPT-4"),
    ]
    for text, vocab_size, pattern, label in cases:
        inputs = {"text": text, "vocab_size": vocab_size, "pattern": f"<{label} split pattern>"}
        got = call(name, train_bpe_regex, text, vocab_size, pattern, inputs=inputs)
        if not isinstance(got, dict):
            fail(name, f"expected a dict {{(a, b): new_id}}, got {type(got).__name__}", inputs=inputs)
        n = len(train_bpe_naive(text, vocab_size, pattern))
        if len(got) != n:
            fail(
                name,
                f"expected {n} merges, got {len(got)}",
                inputs=inputs,
                hint="one merge per new id from 256 up to vocab_size - 1; stop early only when no chunk has two "
                "tokens left",
            )
        chunks = [list(c.encode("utf-8")) for c in regex.findall(pattern, text)]
        _replay(
            name,
            got,
            chunks,
            inputs,
            hint="cut the text with regex.findall(pattern, text) first; count pairs inside each chunk only "
            "(never across two chunks), summed over all chunks; merge the winner in every chunk and recount",
        )
    passed(name, len(cases), "no merge crosses a chunk; every merge was a most frequent pair")


_SPECIAL_TEXTS = [
    "Hello world!<|endoftext|>Next document: 1234567 ünïcödé 東京 🤖",
    "<|fim_prefix|>def add(a, b):\n    <|fim_suffix|>\n<|fim_middle|>return a + b<|endoftext|>",
    "<|endoftext|><|endoftext|>  two in a row, then spaces   and\n\nnewlines\t<|endofprompt|>",
    "no special token at all, isn't it? It's 2026.",
    "almost special: <|endoftext| and <|unknown|> stay text",
    "",
]


@exercise("1.8")
def check_gpt4_encode(gpt4_encode) -> None:
    """``gpt4_encode(text, ranks, special_tokens, pattern) -> ids`` equals tiktoken's
    ``cl100k_base.encode(text, allowed_special="all")``: special tokens first, then the split pattern, then
    rank-based BPE of each chunk."""

    name = "check_gpt4_encode"
    enc = get_encoding("cl100k_base")
    ranks, special = enc._mergeable_ranks, dict(enc._special_tokens)
    for text in _SPECIAL_TEXTS:
        inputs = {
            "text": text,
            "ranks": "<cl100k_base ranks>",
            "special_tokens": special,
            "pattern": "<GPT-4 split pattern>",
        }
        got = call(name, gpt4_encode, text, ranks, special, GPT4_SPLIT_PATTERN, inputs=inputs)
        want = enc.encode(text, allowed_special="all")
        if isinstance(got, list) and got != want:
            lost = [s for s in special if s in text and special[s] in want and special[s] not in got]
            if lost:
                fail(
                    name,
                    f"the special token {lost[0]!r} should be the single id {special[lost[0]]}, "
                    f"but your ids do not contain it",
                    inputs=inputs,
                    hint="cut the text around the special tokens first (a regex of the escaped special strings, in "
                    "a capturing group, keeps them); each special token becomes its id, and only the text "
                    "between them goes through the split pattern and BPE",
                )
        compare(
            name,
            got,
            want,
            inputs=inputs,
            what="ids",
            hint="special tokens first, as single ids; the text between them is cut by the split pattern and "
            "each chunk's UTF-8 bytes go through your encode_with_ranks",
        )
    passed(name, len(_SPECIAL_TEXTS), "same ids as tiktoken's cl100k_base, special tokens included")


COMPRESSION_TARGET = 2.1  # bytes per token on the held-out text
COMPRESSION_VOCAB = 512  # at most 256 merges on top of the 256 bytes
HELD_OUT_CHARS = 30_000  # the last characters of the course corpus; train only on what comes before them


def held_out_text() -> str:
    """The open exercise's test text: the last :data:`HELD_OUT_CHARS` characters of the course corpus."""

    return course_corpus()[-HELD_OUT_CHARS:]


@exercise("1.9")
def check_compression(build_tokenizer) -> None:
    """Open exercise: ``build_tokenizer() -> (encode, decode, vocab_size)``, a lossless tokenizer with
    ``vocab_size ≤ 512`` ids reaching :data:`COMPRESSION_TARGET` bytes per token on the held-out end of the course
    corpus. ``encode(text) -> ids``, ``decode(ids) -> text``; every id must be below ``vocab_size``.

    The check cannot see what you trained on: train on ``course_corpus()[:-HELD_OUT_CHARS]`` only.
    """
    name = "check_compression"
    built = call(name, build_tokenizer)
    if not (isinstance(built, tuple) and len(built) == 3):
        fail(
            name,
            f"build_tokenizer() should return (encode, decode, vocab_size), got {describe(built)}",
            hint="return the two functions and the int, in that order",
        )
    encode, decode, vocab_size = built
    if not isinstance(vocab_size, int) or isinstance(vocab_size, bool):
        fail(name, f"vocab_size must be an int, got {type(vocab_size).__name__}")
    if not 256 <= vocab_size <= COMPRESSION_VOCAB:
        fail(
            name,
            f"vocab_size is {vocab_size}; the exercise allows 256..{COMPRESSION_VOCAB} "
            f"(at most {COMPRESSION_VOCAB - 256} merges)",
            hint="train with fewer merges",
        )
    held = held_out_text()
    probe = "Unseen text still round-trips: naïve café, 東京, 🤖, tabs\tand\r\nnewlines."
    for label, text in (("a short unseen text", probe), (f"the held-out {HELD_OUT_CHARS:,} characters", held)):
        inputs = {"text": label}
        ids = call(name, encode, text, inputs=inputs)
        if not isinstance(ids, list) or not all(isinstance(i, int) for i in ids):
            fail(name, f"encode should return a list of ints, got {describe(ids)}", inputs=inputs)
        bad = [i for i in ids if not 0 <= i < vocab_size]
        if bad:
            fail(
                name,
                f"id {bad[0]} is outside 0..{vocab_size - 1} ({len(bad)} such ids)",
                inputs=inputs,
                hint="every id must fit the vocabulary size you declare",
            )
        back = call(name, decode, ids, inputs=inputs)
        if back != text:
            at = next((i for i, (a, b) in enumerate(zip(back, text)) if a != b), min(len(back), len(text)))
            fail(
                name,
                f"decode(encode(text)) differs from text at character {at}: "
                f"{text[at : at + 20]!r} became {back[at : at + 20]!r}",
                inputs=inputs,
                hint="a tokenizer must be lossless: every byte of the text has to survive encode then decode",
            )
    ratio = len(held.encode("utf-8")) / max(1, len(ids))
    if ratio < COMPRESSION_TARGET:
        fail(
            name,
            f"your tokenizer reaches {ratio:.3f} bytes/token on the held-out text; the target is "
            f"{COMPRESSION_TARGET} with vocab_size ≤ {COMPRESSION_VOCAB} (you used {vocab_size})",
            inputs={"held-out": f"last {HELD_OUT_CHARS:,} characters of the course corpus", "tokens": len(ids)},
            hint="more training text helps most, and the GPT-4 split pattern keeps merges inside words; training "
            "on 100k+ characters needs a faster trainer: count each distinct chunk once, weighted by how "
            "often it occurs",
        )
    passed(
        name,
        2,
        f"your tokenizer: {ratio:.3f} bytes/token on the held-out text (target ≥ {COMPRESSION_TARGET}, "
        f"vocab_size {vocab_size})",
    )
