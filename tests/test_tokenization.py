"""course_utils.tokenization: the from-scratch BPE pinned to tiktoken, the trainers pinned to each other."""

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from course_utils.data import course_corpus
from course_utils.tokenization import (
    EXAMPLE_PRICES,
    GPT4_SPLIT_PATTERN,
    BPETokenizer,
    bpe_merge_heap,
    bpe_with_ranks,
    decode_bytes,
    encode_with_merges,
    estimate_cost,
    get_encoding,
    get_stats,
    merge,
    train_bpe_naive,
    vocab_from_merges,
)

HARD_CASES = [
    "",
    " ",
    "  ",
    "\n",
    "\n\n\n",
    "\r\n",
    "\t\t x",
    "   leading and trailing   ",
    "a" * 500,
    " " * 300,
    "1234567890123",
    "3.14159 + 2,718 = 5.85",
    "I'm you'LL WE'VE they're it's",
    "don't  stop\n\n  me",
    "hello world",
    "Hello, world!",
    "naïve café résumé",
    "e\u0301\u0302\u0303 combining",
    "Ωμέγα Привет мир",
    "東京タワーは333メートル",
    "한국어 문장",
    "مرحبا بالعالم",
    "नमस्ते दुनिया",
    "👍🏽 👨‍👩‍👧‍👦 🇺🇳",
    "\x00\x01\x7f control \x1b[0m",
    "\u200b\u200d\ufeff zero width",
    " SolidGoldMagikarp",
    "<|endoftext|>",
    "def f(x):\n    return x ** 2  # square\n",
    "    \n    \n",
    "x\u00a0y\u2009z",
    "🤖" * 40,
    "١٢٣٤٥ ٦٧٨",
    "ℌ𝔢𝔩𝔩𝔬 𝟙𝟚𝟛",
    "a\n\nb \n c  \n\n d",
    "!!!???...,,,;;;",
    "'s's's",
    "'''docstring'''",
]


@pytest.fixture(scope="module")
def cl100k():
    return get_encoding("cl100k_base")


@pytest.fixture(scope="module")
def scratch():
    return BPETokenizer.from_tiktoken("cl100k_base")


@pytest.fixture(scope="module")
def small():
    return BPETokenizer().train(course_corpus(60_000), 256 + 200)


# ---- the pieces --------------------------------------------------------------------------------------------
def test_get_stats_and_merge():
    assert get_stats([1, 2, 1, 2, 3]) == {(1, 2): 2, (2, 1): 1, (2, 3): 1}
    assert get_stats([]) == {} and get_stats([7]) == {}
    assert merge([1, 2, 1, 2, 3], (1, 2), 9) == [9, 9, 3]
    assert merge([5, 5, 5], (5, 5), 9) == [9, 5]  # left to right, non-overlapping
    assert merge([], (1, 2), 9) == []


def test_naive_trainer_on_a_tiny_text():
    merges = train_bpe_naive("aaabdaaabac", 259)
    vocab = vocab_from_merges(merges)
    assert [vocab[i] for i in sorted(merges.values())] == [b"aa", b"ab", b"aaab"]  # tie (aa)a vs ab: smallest pair wins
    ids = encode_with_merges("aaabdaaabac", merges)
    assert decode_bytes(ids, vocab) == "aaabdaaabac" and len(ids) == 5


def test_incremental_trainer_gives_the_naive_merges():
    text = course_corpus(30_000)
    for pattern in (GPT4_SPLIT_PATTERN, None):
        n = 256 + (120 if pattern else 40)
        tok = BPETokenizer().train(text if pattern else text[:4000], n, pattern=pattern)
        assert tok.merges == train_bpe_naive(text if pattern else text[:4000], n, pattern)


def test_trained_encode_matches_reference_and_round_trips(small):
    import regex

    text = course_corpus(80_000)[60_000:]
    ref = [i for c in regex.findall(GPT4_SPLIT_PATTERN, text) for i in encode_with_merges(c, small.merges)]
    assert small.encode(text) == ref
    assert small.decode(ref) == text
    assert len(ref) < 0.7 * len(text.encode("utf-8"))  # 200 merges already compress the corpus


def test_training_stops_early_when_no_pairs_are_left():
    with pytest.warns(UserWarning, match="no pairs left"):
        tok = BPETokenizer().train("abab", 300)
    assert tok.vocab_size == 258 and tok.encode("abab") == [257]


# ---- reproducing cl100k_base -------------------------------------------------------------------------------
@pytest.mark.parametrize("text", HARD_CASES)
def test_from_tiktoken_equals_tiktoken_on_hard_cases(text, cl100k, scratch):
    assert scratch.encode(text, allowed_special="none") == cl100k.encode_ordinary(text)
    assert scratch.decode(scratch.encode_ordinary(text)) == text


def test_split_pattern_is_tiktokens(cl100k, scratch):
    assert GPT4_SPLIT_PATTERN == cl100k._pat_str == scratch.pattern


def test_from_tiktoken_on_the_course_corpus(cl100k, scratch):
    text = course_corpus(50_000)
    assert scratch.encode(text) == cl100k.encode_ordinary(text)


_PIECE = st.one_of(
    st.characters(codec="utf-8"),  # any encodable character: emoji, CJK, combining marks, controls
    st.sampled_from([" ", "  ", "\t", "\n", "\n\n", "\r\n", "'s", "'ll", "'VE", "🤖", "é", "\u0301", "中", "\u200d"]),
    st.from_regex(r"[0-9]{1,12}|[ ]{2,30}|[a-zA-Z]{1,10}", fullmatch=True),
)
_TEXT = st.lists(_PIECE, max_size=25).map("".join)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=_TEXT)
def test_from_tiktoken_equals_tiktoken_property(text, cl100k, scratch):
    ids = scratch.encode_ordinary(text)
    assert ids == cl100k.encode_ordinary(text)
    assert scratch.decode(ids) == text


@settings(max_examples=60, deadline=None)
@given(digits=st.integers(1, 40), spaces=st.integers(1, 40), word=st.sampled_from(["x", "hello", "中文", "🙂"]))
def test_long_whitespace_and_digit_runs(digits, spaces, word, cl100k, scratch):
    text = "7" * digits + " " * spaces + word + "\n" * (spaces % 5) + " " * spaces
    assert scratch.encode_ordinary(text) == cl100k.encode_ordinary(text)


def test_lone_surrogates_are_replaced_like_tiktoken(cl100k, scratch):
    assert scratch.encode_ordinary("a\ud800b") == cl100k.encode_ordinary("a\ud800b")


def test_bpe_with_ranks_on_a_hand_made_table():
    ranks = {bytes([i]): i for i in range(256)} | {b"ab": 256, b"bc": 257, b"abc": 258}
    assert bpe_with_ranks(b"abc", ranks) == [258]  # whole chunk is a token
    assert bpe_with_ranks(b"abcd", ranks) == [258, ord("d")]
    assert bpe_with_ranks(b"", ranks) == []


def test_special_tokens(cl100k, scratch):
    text = "hi<|endoftext|>there"
    with pytest.raises(ValueError, match="special token"):
        scratch.encode(text)
    assert scratch.encode(text, allowed_special="all") == cl100k.encode(text, allowed_special="all")
    assert scratch.encode(text, allowed_special={"<|endoftext|>"}) == cl100k.encode(text, allowed_special="all")
    assert scratch.encode(text, allowed_special="none") == cl100k.encode_ordinary(text)
    assert scratch.decode(scratch.encode(text, allowed_special="all")) == text
    with pytest.raises(ValueError, match="allowed_special"):
        scratch.encode(text, allowed_special="sometimes")
    assert scratch.vocab_size == cl100k.n_vocab


def test_register_special_tokens_on_a_trained_tokenizer(small, tmp_path):
    tok = BPETokenizer.load(small.save(tmp_path / "copy.json"))  # a copy: the fixture stays untouched
    tok.register_special_tokens({"<|eot|>": 456})
    assert tok.vocab_size == 457
    assert tok.encode("a<|eot|>b", allowed_special="all")[1] == 456
    with pytest.raises(ValueError, match="already used"):
        tok.register_special_tokens({"<|x|>": 300})


# ---- persistence -------------------------------------------------------------------------------------------
def test_save_load_round_trip_trained(tmp_path):
    small = BPETokenizer().train(course_corpus(20_000), 256 + 200).register_special_tokens({"<|end|>": 1000})
    path = small.save(tmp_path / "tok.json")
    data = json.loads(path.read_text())  # plain JSON
    assert data["format"] == "course-bpe-v1" and len(data["merges"]) == 200
    back = BPETokenizer.load(path)
    text = course_corpus(5_000) + "<|end|>"
    assert back.merges == small.merges and back.special_tokens == small.special_tokens
    assert back.encode(text, allowed_special="all") == small.encode(text, allowed_special="all")
    assert back.decode(back.encode(text, allowed_special="all")) == text


def test_save_load_round_trip_tiktoken(tmp_path, scratch, cl100k):
    back = BPETokenizer.load(scratch.save(tmp_path / "cl100k.json"))
    assert back.encode_ordinary(HARD_CASES[20]) == cl100k.encode_ordinary(HARD_CASES[20])
    assert back.vocab_size == scratch.vocab_size


def test_load_rejects_other_files(tmp_path):
    (tmp_path / "x.json").write_text('{"hello": 1}')
    with pytest.raises(ValueError, match="format"):
        BPETokenizer.load(tmp_path / "x.json")


# ---- bad input ---------------------------------------------------------------------------------------------
def test_bad_input_errors(small):
    with pytest.raises(ValueError, match="vocab_size must be >= 256"):
        BPETokenizer().train("hello", 255)
    with pytest.raises(ValueError, match="non-empty"):
        BPETokenizer().train("", 300)
    with pytest.raises(TypeError, match="text must be a str"):
        BPETokenizer().train(b"bytes", 300)
    with pytest.raises(TypeError, match="vocab_size must be an int"):
        BPETokenizer().train("hello", 300.0)
    with pytest.raises(TypeError, match="text must be a str"):
        small.encode(b"bytes")
    with pytest.raises(TypeError, match="text must be a str"):
        small.encode(None)
    with pytest.raises(ValueError, match="id 99999"):
        small.decode([104, 99999])
    with pytest.raises(ValueError, match="id -1"):
        small.decode([-1])
    with pytest.raises(TypeError, match="ids must be"):
        small.decode("hello")
    with pytest.raises(TypeError, match="ids must be ints"):
        small.decode([1.5])
    assert small.decode(np.array([104, 105])) == "hi"  # numpy ints are fine


def test_estimate_cost():
    out = estimate_cost("hello world", 2.0, 8.0, expected_output_tokens=1000)
    assert out["input_tokens"] == 2 and out["output_tokens"] == 1000
    assert out["total_cost"] == pytest.approx(2 * 2.0 / 1e6 + 1000 * 8.0 / 1e6)
    assert all(label.startswith("example") for label in EXAMPLE_PRICES)
    with pytest.raises(ValueError, match="price_per_million_in"):
        estimate_cost("x", -1, 1)
    with pytest.raises(ValueError, match="expected_output_tokens"):
        estimate_cost("x", 1, 1, expected_output_tokens=-5)
    with pytest.raises(TypeError, match="text must be a str"):
        estimate_cost(42, 1, 1)


def test_get_encoding_still_works():
    enc = get_encoding("cl100k_base")
    assert enc.encode_ordinary("hello world") == [15339, 1917]
    with pytest.raises(TypeError):
        get_encoding(3)


def test_truncated_equals_training_to_the_smaller_size():
    text = course_corpus(30_000)
    big = BPETokenizer().train(text, 256 + 150)
    assert big.truncated(256 + 60).merges == BPETokenizer().train(text, 256 + 60).merges
    with pytest.raises(ValueError, match="vocab_size must be an int in"):
        big.truncated(10_000)


def test_tokens_html_shows_count_ids_and_boundaries(scratch):
    from course_utils.tokenization import tokens_html

    out = tokens_html("Hello world\n  123456")
    ids = get_encoding().encode_ordinary("Hello world\n  123456")
    assert f'<b class="token-count">{len(ids)} tokens</b>' in out
    assert out.count('class="tok"') == len(ids) and all(f">{i}</span>" in out for i in ids)
    assert "·world" in out and "↵<br>" in out.replace("</span></span>", "")  # space and newline made visible
    assert tokens_html("Hello world\n  123456", scratch) == out  # the from-scratch tokenizer draws the same
    assert "<b>" not in tokens_html("<b>")  # text is escaped
    assert "0 tokens" in tokens_html("")


# ---- tiktoken's special-token rules, and no quadratic blow-up on one long chunk ------------------------------
@pytest.mark.parametrize(
    "kwargs",
    [
        dict(disallowed_special=()),  # special-token text encoded as ordinary text
        dict(allowed_special={"<|endoftext|>"}),
        dict(allowed_special="all"),
        dict(allowed_special={"<|endoftext|>"}, disallowed_special=()),
        dict(disallowed_special={"<|fim_prefix|>"}),  # <|endoftext|> is neither allowed nor disallowed: plain text
    ],
)
def test_special_token_rules_match_tiktoken(cl100k, scratch, kwargs):
    # text with a second special token only where nothing disallows it
    text = "a<|endoftext|>b" + (
        " <|fim_prefix|>c" if kwargs.get("disallowed_special") == () or kwargs.get("allowed_special") == "all" else ""
    )
    assert scratch.encode(text, **kwargs) == cl100k.encode(text, **kwargs)


@pytest.mark.parametrize(
    "kwargs", [{}, dict(allowed_special={"<|endoftext|>"}), dict(disallowed_special={"<|fim_prefix|>"})]
)
def test_disallowed_special_token_text_raises_like_tiktoken(cl100k, scratch, kwargs):
    text = "x<|fim_prefix|>y"
    with pytest.raises(ValueError):
        cl100k.encode(text, **kwargs)
    with pytest.raises(ValueError, match="<\\|fim_prefix\\|>.*disallowed_special=\\(\\)"):
        scratch.encode(text, **kwargs)


@pytest.mark.parametrize(
    "kwargs,name",
    [
        (dict(allowed_special="sometimes"), "allowed_special"),
        (dict(disallowed_special="none"), "disallowed_special"),
        (dict(disallowed_special=3), "disallowed_special"),
        (dict(allowed_special={"<|nope|>"}), "allowed_special"),
    ],
)
def test_bad_special_arguments_name_the_argument(scratch, kwargs, name):
    with pytest.raises(ValueError, match=name):
        scratch.encode("hi", **kwargs)


def test_one_long_chunk_matches_tiktoken(cl100k, scratch):
    # a run of letters is one pre-token chunk: the textbook loop is quadratic in it, the heap is not
    for text in ("a" * 8000, "ab" * 3000, "".join(chr(97 + (i * 7) % 26) for i in range(5000))):
        scratch.clear_cache()
        assert scratch.encode_ordinary(text) == cl100k.encode_ordinary(text)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(min_size=0, max_size=80) | st.text(alphabet="abcde ", max_size=120).map(str.encode))
def test_heap_merge_equals_the_textbook_loops(scratch, small, chunk):
    ranks = scratch.ranks
    heap_ranked = bpe_merge_heap(
        [chunk[i : i + 1] for i in range(len(chunk))], lambda a, b: (ranks[a + b], a + b) if a + b in ranks else None
    )
    assert [ranks[p] for p in heap_ranked] == bpe_with_ranks(chunk, ranks)
    merges = small.merges
    assert bpe_merge_heap(
        list(chunk), lambda a, b: (merges[(a, b)],) * 2 if (a, b) in merges else None
    ) == encode_with_merges(chunk, merges)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.text(alphabet="abc", min_size=2, max_size=4), min_size=1, max_size=25, unique=True),
    st.randoms(use_true_random=False),
    st.text(alphabet="abc", max_size=40),
)
def test_heap_merge_equals_the_textbook_on_arbitrary_rank_tables(tokens, rnd, text):
    # random ranks need not be BPE-consistent: a merge can create a pair ranked below the one being applied
    ids = list(range(256, 256 + len(tokens)))
    rnd.shuffle(ids)
    ranks = {bytes([i]): i for i in range(256)} | {t.encode(): r for t, r in zip(tokens, ids)}
    chunk = text.encode()
    parts = bpe_merge_heap(
        [chunk[i : i + 1] for i in range(len(chunk))], lambda a, b: (ranks[a + b], a + b) if a + b in ranks else None
    )
    got = [ranks[chunk]] if chunk in ranks else [ranks[p] for p in parts]  # tiktoken's whole-chunk shortcut
    assert got == bpe_with_ranks(chunk, ranks)


def test_heap_merge_when_a_merge_creates_a_lower_ranked_pair():
    # merging "bc" makes "bcb", ranked lower: the textbook merges it before the second "bc"
    ranks = {bytes([i]): i for i in range(256)} | {b"bc": 301, b"bcb": 300}
    parts = bpe_merge_heap(
        list(map(bytes, zip(b"bcbc"))), lambda a, b: (ranks[a + b], a + b) if a + b in ranks else None
    )
    assert parts == [b"bcb", b"c"] and bpe_with_ranks(b"bcbc", ranks) == [300, ord("c")]
