"""Chapter 1 checks accept the reference and reject plausible wrong implementations."""

import pytest
from helpers import assert_check_accepts, assert_check_rejects

from course_utils import tokenization as ref
from course_utils.checks import (
    check_compression,
    check_decode,
    check_encode,
    check_encode_with_ranks,
    check_get_stats,
    check_gpt4_encode,
    check_merge,
    check_train_bpe,
    check_train_bpe_regex,
)


@pytest.mark.parametrize(
    "check, impl",
    [
        (check_get_stats, ref.get_stats),
        (check_merge, ref.merge),
        (check_train_bpe, ref.train_bpe_naive),
        (check_encode, ref.encode_with_merges),
        (check_decode, ref.decode_bytes),
        (check_encode_with_ranks, ref.bpe_with_ranks),
    ],
)
def test_reference_passes(check, impl, capsys):
    assert_check_accepts(check, impl, capsys)


def test_get_stats_rejects_set_counting():
    # counts each distinct pair once
    assert_check_rejects(check_get_stats, lambda ids: {p: 1 for p in zip(ids, ids[1:])}, match=r"expected 2, got 1")


def test_get_stats_rejects_non_overlapping_counting():
    def wrong(ids):
        counts, i = {}, 0
        while i + 1 < len(ids):
            counts[(ids[i], ids[i + 1])] = counts.get((ids[i], ids[i + 1]), 0) + 1
            i += 2  # skips every other pair
        return counts

    assert_check_rejects(check_get_stats, wrong, match=r"input: ids=")


def test_merge_rejects_dropping_the_last_element():
    def wrong(ids, pair, idx):  # a loop `while i < len(ids) - 1` never copies the final element
        return ref.merge(ids[:-1], pair, idx)

    assert_check_rejects(check_merge, wrong, match=r"expected 99, got 1")


def test_merge_rejects_overlapping_replacement():
    def wrong(ids, pair, idx):  # replaces at every position, so [5, 5, 5] -> [9, 9]
        return [idx if (a, b) == tuple(pair) else a for a, b in zip(ids, ids[1:])] + ids[-1:] if ids else []

    assert_check_rejects(check_merge, wrong, match=r"hint: scan left to right")


def test_train_bpe_rejects_counting_only_the_original_bytes():
    def wrong(text, vocab_size):
        ids = list(text.encode())
        stats = ref.get_stats(ids)  # counted once, never updated after merges
        ranked = sorted(stats, key=lambda p: -stats[p])
        return {p: 256 + i for i, p in enumerate(ranked[: vocab_size - 256])}

    assert_check_rejects(check_train_bpe, wrong, match=r"most frequent pair|expected \d+ merges")


def test_train_bpe_rejects_ids_starting_at_255():
    def wrong(text, vocab_size):
        return {p: i - 1 for p, i in ref.train_bpe_naive(text, vocab_size).items()}

    assert_check_rejects(check_train_bpe, wrong, match=r"got id 255, expected 256")


def test_encode_rejects_a_single_pass():
    def wrong(text, merges):  # merges only the first pair it finds, once
        ids = list(text.encode())
        for p in zip(ids, ids[1:]):
            if p in merges:
                return ref.merge(ids, p, merges[p])
        return ids

    assert_check_rejects(check_encode, wrong, match=r"check_encode \(Exercise 1\.4\): result")


def test_encode_rejects_latest_merge_first():
    def wrong(text, merges):
        ids = list(text.encode())
        while len(ids) >= 2:
            present = [p for p in zip(ids, ids[1:]) if p in merges]
            if not present:
                break
            p = max(present, key=merges.get)
            ids = ref.merge(ids, p, merges[p])
        return ids

    assert_check_rejects(check_encode, wrong, match=r"lowest merge id")


def test_decode_rejects_per_token_decoding():
    def wrong(ids, vocab):
        return "".join(vocab[i].decode("utf-8", errors="replace") for i in ids)

    assert_check_rejects(check_decode, wrong, match=r"join all the tokens. bytes first")


def test_decode_rejects_strict_utf8():
    def wrong(ids, vocab):
        return b"".join(vocab[i] for i in ids).decode("utf-8")

    assert_check_rejects(check_decode, wrong, match=r"raised UnicodeDecodeError")


def test_encode_with_ranks_rejects_left_to_right_merging():
    def wrong(piece, ranks):
        parts = [piece[i : i + 1] for i in range(len(piece))]
        merged = True
        while merged and len(parts) > 1:
            merged = False
            for i in range(len(parts) - 1):
                if parts[i] + parts[i + 1] in ranks:  # first mergeable pair, not the lowest rank
                    parts[i : i + 2] = [parts[i] + parts[i + 1]]
                    merged = True
                    break
        return [ranks[p] for p in parts]

    assert_check_rejects(check_encode_with_ranks, wrong, match=r"toy ranks")


def test_checks_reject_a_stub():
    def stub(*args):
        raise NotImplementedError("Exercise 1.1: ...")

    assert_check_rejects(check_get_stats, stub, match="NotImplementedError")


# ---------------------------------------------------------------------- 1.7 training with regex pre-splitting
def _train_regex_weighted(text, vocab_size, pattern):
    """Correct, and unlike the solution: each distinct chunk counted once, weighted by how often it occurs."""
    from collections import Counter

    import regex

    chunks = [[list(w.encode("utf-8")), n] for w, n in Counter(regex.findall(pattern, text)).items()]
    merges = {}
    for idx in range(256, vocab_size):
        stats = Counter()
        for ids, n in chunks:
            for pair in zip(ids, ids[1:]):
                stats[pair] += n
        if not stats:
            break
        pair = max(stats, key=stats.get)
        for c in chunks:
            c[0] = ref.merge(c[0], pair, idx)
        merges[pair] = idx
    return merges


def test_train_bpe_regex_check(capsys):
    assert_check_accepts(check_train_bpe_regex, _train_regex_weighted, capsys)
    assert_check_accepts(check_train_bpe_regex, ref.train_bpe_naive, capsys)
    no_split = lambda text, vocab_size, pattern: ref.train_bpe_naive(text, vocab_size)  # noqa: E731
    assert_check_rejects(check_train_bpe_regex, no_split, match=r"0 times within the chunks.*crosses a chunk boundary")

    def whitespace_split(text, vocab_size, pattern):  # str.split drops the spaces GPT-4's chunks keep
        return _train_regex_weighted(" ".join(text.split()), vocab_size, r"\S+")

    assert_check_rejects(check_train_bpe_regex, whitespace_split, match=r"but the most frequent pair then occurs")

    def counts_once(text, vocab_size, pattern):  # counts the pairs once, then merges them in that order
        import regex

        stats = {}
        for c in regex.findall(pattern, text):
            ref.get_stats(list(c.encode()), stats)
        order = sorted(stats, key=stats.get, reverse=True)[: vocab_size - 256]
        return {pair: 256 + i for i, pair in enumerate(order)}

    assert_check_rejects(check_train_bpe_regex, counts_once, match=r"merge #\d+ .* occurs \d+ times")


# ------------------------------------------------------------------------ 1.8 special tokens, GPT-4's encoder
def _gpt4_encode_scan(text, ranks, special_tokens, pattern):
    """Correct, and unlike the solution: finds special tokens with str.find, longest first at each position."""
    import regex

    ids, start = [], 0
    ordered = sorted(special_tokens, key=len, reverse=True)

    def ordinary(part):
        return [i for chunk in regex.findall(pattern, part) for i in ref.bpe_with_ranks(chunk.encode("utf-8"), ranks)]

    while True:
        hits = [(text.find(s, start), -len(s), s) for s in ordered if text.find(s, start) >= 0]
        if not hits:
            return ids + ordinary(text[start:])
        at, _, s = min(hits)
        ids += ordinary(text[start:at]) + [special_tokens[s]]
        start = at + len(s)


def test_gpt4_encode_check(capsys):
    import regex

    assert_check_accepts(check_gpt4_encode, _gpt4_encode_scan, capsys)

    def ignores_specials(text, ranks, special_tokens, pattern):
        return _gpt4_encode_scan(text, ranks, {}, pattern)

    assert_check_rejects(check_gpt4_encode, ignores_specials, match=r"'<\|endoftext\|>' should be the single id 100257")

    def drops_specials(text, ranks, special_tokens, pattern):  # splits on them without a capturing group
        rx = "|".join(regex.escape(s) for s in special_tokens)
        return [i for part in regex.split(rx, text) for i in _gpt4_encode_scan(part, ranks, {}, pattern)]

    assert_check_rejects(check_gpt4_encode, drops_specials, match=r"should be the single id")

    def no_pre_split(text, ranks, special_tokens, pattern):  # BPE over each whole stretch between special tokens
        return _gpt4_encode_scan(text, ranks, special_tokens, r"(?s).+")

    assert_check_rejects(check_gpt4_encode, no_pre_split, match=r"ids(\[\d+\])?: .*\n(.*\n)*.*split pattern")


# ------------------------------------------------------------------------------ 1.9 open: compression target
@pytest.fixture(scope="module")
def corpus_tokenizer():
    """A tokenizer trained like the lab's solution: 256 merges with the GPT-4 pattern on 100k training chars."""
    from course_utils.checks.ch01 import HELD_OUT_CHARS
    from course_utils.data import course_corpus

    tok = ref.BPETokenizer()
    tok.train(course_corpus()[:-HELD_OUT_CHARS][:100_000], 512)
    return tok


def test_compression_check_accepts_a_good_tokenizer(corpus_tokenizer, capsys):
    check_compression(lambda: (corpus_tokenizer.encode_ordinary, corpus_tokenizer.decode, 512))
    out = capsys.readouterr().out
    assert "✅" in out and "bytes/token on the held-out text (target ≥ 2.1" in out


def test_compression_check_rejects_weak_lossy_or_oversized_tokenizers(corpus_tokenizer):
    from course_utils.data import course_corpus

    small = ref.BPETokenizer()
    small.train(course_corpus()[:8_000], 512)  # too little text: the merges do not generalise
    assert_check_rejects(
        check_compression,
        lambda: (small.encode_ordinary, small.decode, 512),
        match=r"reaches 1\.\d+ bytes/token on the held-out text; the target is 2.1",
    )
    lossy = lambda text: corpus_tokenizer.encode_ordinary(text.lower())  # noqa: E731
    assert_check_rejects(
        check_compression,
        lambda: (lossy, corpus_tokenizer.decode, 512),
        match=r"decode\(encode\(text\)\) differs from text at character 0: 'Unseen",
    )
    assert_check_rejects(
        check_compression,
        lambda: (corpus_tokenizer.encode_ordinary, corpus_tokenizer.decode, 400),
        match=r"id \d+ is outside 0\.\.399",
    )
    assert_check_rejects(
        check_compression,
        lambda: (corpus_tokenizer.encode_ordinary, corpus_tokenizer.decode, 4096),
        match=r"allows 256\.\.512",
    )
    assert_check_rejects(
        check_compression,
        lambda: (corpus_tokenizer.encode_ordinary, corpus_tokenizer.decode),
        match=r"should return \(encode, decode, vocab_size\)",
    )
