"""Chapter 1 checks accept the reference and reject plausible wrong implementations."""
import pytest
from helpers import assert_check_accepts, assert_check_rejects

from course_utils import tokenization as ref
from course_utils.checks import (check_decode, check_encode, check_encode_with_ranks, check_get_stats, check_merge,
                                 check_train_bpe)


@pytest.mark.parametrize("check, impl", [
    (check_get_stats, ref.get_stats), (check_merge, ref.merge), (check_train_bpe, ref.train_bpe_naive),
    (check_encode, ref.encode_with_merges), (check_decode, ref.decode_bytes),
    (check_encode_with_ranks, ref.bpe_with_ranks),
])
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
    assert_check_rejects(check_merge, wrong, match=r"hint: when ids\[i:i\+2\] == pair")


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
    assert_check_rejects(check_encode, wrong, match=r"check_encode: result")


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
    assert_check_rejects(check_decode, wrong, match=r"decode after joining")


def test_decode_rejects_strict_utf8():
    def wrong(ids, vocab):
        return b"".join(vocab[i] for i in ids).decode("utf-8")
    assert_check_rejects(check_decode, wrong, match=r"raised UnicodeDecodeError")


def test_encode_with_ranks_rejects_left_to_right_merging():
    def wrong(piece, ranks):
        parts = [piece[i:i + 1] for i in range(len(piece))]
        merged = True
        while merged and len(parts) > 1:
            merged = False
            for i in range(len(parts) - 1):
                if parts[i] + parts[i + 1] in ranks:  # first mergeable pair, not the lowest rank
                    parts[i:i + 2] = [parts[i] + parts[i + 1]]
                    merged = True
                    break
        return [ranks[p] for p in parts]
    assert_check_rejects(check_encode_with_ranks, wrong, match=r"toy ranks")


def test_checks_reject_a_stub():
    def stub(*args):
        raise NotImplementedError("Exercise 1.1: ...")
    assert_check_rejects(check_get_stats, stub, match="NotImplementedError")
