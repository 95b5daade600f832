"""The course corpus: three domains, all generated or shipped with Python itself, so nothing is downloaded.

- ``prose``: the Python Language Reference topics that ship with CPython (``pydoc_data.topics``).
- ``code``: a fixed list of CPython's standard-library sources.

Both are read from a snapshot of CPython 3.11.7 (``assets/corpus_cpython.json.xz``, 185 KB, PSF License), not from
the running interpreter, so every learner gets the same corpus on any Python version.
- ``arithmetic``: seeded synthetic sums and products ("734 + 58 = 792").

Documents are interleaved round-robin by domain, so any prefix of :func:`course_corpus` holds all three.

Training data (chapter 3 on):

- :func:`split_documents` — a deterministic train/validation split *by document* (stratified by domain), so no
  validation text is ever seen in training.
- :func:`corpus_tokenizer` — the small-vocabulary byte-level BPE of chapter 1 trained on the training documents
  (a copy ships in ``course_utils/assets``, so every learner gets the same ids).
- :class:`TokenDataset` / :func:`corpus_dataset` — the token ids of each split with the domain of every token,
  and :meth:`TokenDataset.get_batch` for next-token prediction.
"""

from __future__ import annotations

import functools
import hashlib
import json
import lzma
import os
import random
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from pydoc_data.topics import topics

import torch

from .checksums import verify_sha256
from .tokenization import BPETokenizer
from .validate import check_number, positive_int
from .world import ATTRIBUTES, Fact, World, make_world, update_world

__all__ = [
    "CorpusDoc",
    "DOMAINS",
    "STDLIB_FILES",
    "prose_documents",
    "cpython_snapshot",
    "running_python_documents",
    "CPYTHON_SNAPSHOT",
    "code_documents",
    "arithmetic_documents",
    "corpus_documents",
    "course_corpus",
    "EOT",
    "split_documents",
    "cache_dir",
    "corpus_tokenizer",
    "TokenDataset",
    "corpus_dataset",
    # chapter 7's synthetic knowledge world lives in world.py; it is course data too
    "ATTRIBUTES",
    "Fact",
    "World",
    "make_world",
    "update_world",
]

DOMAINS = ("prose", "code", "arithmetic")
# Small, self-contained, idiomatic modules; ~400 KB together.
STDLIB_FILES = (
    "bisect.py",
    "calendar.py",
    "colorsys.py",
    "csv.py",
    "dataclasses.py",
    "fractions.py",
    "functools.py",
    "graphlib.py",
    "heapq.py",
    "json/decoder.py",
    "json/encoder.py",
    "pprint.py",
    "queue.py",
    "random.py",
    "shlex.py",
    "statistics.py",
    "string.py",
    "textwrap.py",
)


@dataclass(frozen=True)
class CorpusDoc:
    domain: str
    name: str
    text: str


# The prose and code domains are CPython's own text, frozen in a snapshot so that every learner trains and retrieves
# on the same bytes whatever their Python (pydoc_data.topics and the stdlib change between releases, even patch ones).
CPYTHON_SNAPSHOT = Path(__file__).resolve().parent / "assets" / "corpus_cpython.json.xz"


@functools.lru_cache(maxsize=1)
def cpython_snapshot() -> dict:
    """The snapshot (sha256-checked): ``{"python": version, "prose": {topic: text}, "code": {file: text}}``."""

    verify_sha256(CPYTHON_SNAPSHOT, rebuild="python scripts/snapshot_corpus.py (on CPython 3.11.7)")
    return json.loads(lzma.decompress(CPYTHON_SNAPSHOT.read_bytes()).decode("utf-8"))


def prose_documents() -> list[CorpusDoc]:
    """The Language Reference topics (CPython 3.11.7's ``pydoc_data.topics``), one document per topic key (sorted)."""
    topics = cpython_snapshot()["prose"]
    return [CorpusDoc("prose", key, topics[key]) for key in sorted(topics)]


def code_documents() -> list[CorpusDoc]:
    """The standard-library files in :data:`STDLIB_FILES`, as CPython 3.11.7 ships them."""
    files = cpython_snapshot()["code"]
    return [CorpusDoc("code", rel, files[rel]) for rel in STDLIB_FILES]


def running_python_documents() -> dict:
    """What the snapshot holds, read from the running interpreter (``scripts/snapshot_corpus.py`` writes it)."""

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    return {
        "prose": {key: topics[key].strip() + "\n" for key in sorted(topics)},
        "code": {rel: (stdlib / rel).read_text(encoding="utf-8") for rel in STDLIB_FILES},
    }


def arithmetic_documents(seed: int = 0, n_lines: int = 6000, lines_per_doc: int = 100) -> list[CorpusDoc]:
    """Seeded lines ``a + b = c``, ``a - b = c`` and ``a * b = c`` with 1- to 4-digit operands."""
    positive_int("n_lines", n_lines)
    positive_int("lines_per_doc", lines_per_doc)
    rng = random.Random(seed)
    lines = []
    for _ in range(n_lines):
        a, b = rng.randint(0, 10 ** rng.randint(1, 4) - 1), rng.randint(0, 10 ** rng.randint(1, 4) - 1)
        op = rng.choice("+-*" if max(a, b) < 100 else "+-")
        value = a + b if op == "+" else a - b if op == "-" else a * b
        lines.append(f"{a} {op} {b} = {value}")
    return [
        CorpusDoc("arithmetic", f"arith-{i // lines_per_doc:03d}", "\n".join(lines[i : i + lines_per_doc]) + "\n")
        for i in range(0, n_lines, lines_per_doc)
    ]


def corpus_documents(seed: int = 0) -> list[CorpusDoc]:
    """All documents, interleaved round-robin by domain (prose, code, arithmetic, prose, ...)."""
    pools = [prose_documents(), code_documents(), arithmetic_documents(seed)]
    out, i = [], 0
    while any(i < len(p) for p in pools):
        out += [p[i] for p in pools if i < len(p)]
        i += 1
    return out


def course_corpus(max_bytes: int | None = None, seed: int = 0) -> str:
    """The corpus as one string (documents separated by a blank line), cut to at most ``max_bytes`` UTF-8 bytes."""
    if max_bytes is not None:
        positive_int("max_bytes (or None)", max_bytes)
    text = "\n\n".join(d.text for d in corpus_documents(seed))
    if max_bytes is not None:
        text = text.encode("utf-8")[:max_bytes].decode("utf-8", errors="ignore")
    return text


# ---------------------------------------------------------------------------------------------------------------
# Training data: a split by document, a small BPE for the corpus, and batches for next-token prediction.
# ---------------------------------------------------------------------------------------------------------------
EOT = "<|endoftext|>"  # separates documents; the model learns that a new document starts after it
ASSETS = Path(__file__).resolve().parent / "assets"


def split_documents(
    docs: list[CorpusDoc] | None = None, val_fraction: float = 0.1, seed: int = 0
) -> tuple[list[CorpusDoc], list[CorpusDoc]]:
    """Split documents into ``(train, val)``, stratified by domain, the same way on every machine.

    Within each domain the documents are ordered by a hash of their name (not by Python's ``hash``, which
    changes per process) and taken for validation in that order until they hold ``val_fraction`` of the domain's
    characters (documents differ a lot in length; counting documents would skew the mix). Every domain with two or
    more documents keeps at least one in each split. Both lists keep the input's order.
    """
    check_number("val_fraction", val_fraction, 0, 1, low_open=True, high_open=True)
    docs = corpus_documents(seed) if docs is None else list(docs)
    if not all(isinstance(d, CorpusDoc) for d in docs):
        raise TypeError("docs must be a list of CorpusDoc")
    val_names: set[tuple[str, str]] = set()
    for domain in sorted({d.domain for d in docs}):
        pool = [d for d in docs if d.domain == domain]
        if len(pool) < 2:
            continue
        pool.sort(key=lambda d: hashlib.sha256(f"{seed}:{domain}:{d.name}".encode()).hexdigest())
        target, taken = val_fraction * sum(len(d.text) for d in pool), 0
        for d in pool[:-1]:
            if taken >= target:
                break
            val_names.add((domain, d.name))
            taken += len(d.text)
    train = [d for d in docs if (d.domain, d.name) not in val_names]
    val = [d for d in docs if (d.domain, d.name) in val_names]
    return train, val


def cache_dir() -> Path:
    """Where the course caches what it computes at run time: ``$COURSE_CACHE``, else ``<repo>/.cache``."""
    root = os.environ.get("COURSE_CACHE")
    path = Path(root) if root else Path(__file__).resolve().parents[1] / ".cache"
    path.mkdir(parents=True, exist_ok=True)
    return path


def corpus_tokenizer(vocab_size: int = 512, *, seed: int = 0, retrain: bool = False):
    """The chapter-1 :class:`~course_utils.tokenization.BPETokenizer` for this corpus: ``vocab_size`` ids in all.

    ``vocab_size - 1`` byte-level BPE ids are learned from the *training* documents only, and the last id is the
    special token ``<|endoftext|>``. Looked up in order: the copy shipped in ``course_utils/assets``
    (``corpus_bpe{vocab_size}.json``), the run-time cache, else trained (under a second) and cached.
    """
    if not isinstance(vocab_size, int) or isinstance(vocab_size, bool) or vocab_size < 258:
        raise ValueError(f"vocab_size must be an int >= 258 (256 bytes + 1 merge + <|endoftext|>), got {vocab_size!r}")
    name = f"corpus_bpe{vocab_size}" + ("" if seed == 0 else f"_seed{seed}") + ".json"
    if not retrain:
        for path in (ASSETS / name, cache_dir() / name):
            if path.exists():
                return BPETokenizer.load(path)
    train_docs, _ = split_documents(seed=seed)
    tok = BPETokenizer().train("\n\n".join(d.text for d in train_docs), vocab_size - 1)
    tok.register_special_tokens({EOT: vocab_size - 1})
    tok.save(cache_dir() / name)
    return tok


class TokenDataset:
    """Token ids of the train and validation splits, with the domain of every token, for next-token training.

    Each document is encoded on its own and followed by ``<|endoftext|>``, so a token never merges across two
    documents and its domain is exact. ``ids[split]`` is a 1-D ``int64`` tensor, ``domains[split]`` an ``int64``
    tensor of indices into :data:`DOMAINS` of the same length.
    """

    def __init__(self, tokenizer, train_docs: list[CorpusDoc], val_docs: list[CorpusDoc]):

        if EOT not in getattr(tokenizer, "special_tokens", {}):
            raise ValueError(f"tokenizer must have the special token {EOT!r} (see corpus_tokenizer)")
        self.tokenizer = tokenizer
        self.vocab_size = tokenizer.vocab_size
        self.eot_id = tokenizer.special_tokens[EOT]
        self.ids, self.domains, self.n_docs = {}, {}, {}
        for split, docs in (("train", train_docs), ("val", val_docs)):
            if not docs:
                raise ValueError(f"the {split} split has no documents")
            ids, dom = [], []
            for d in docs:
                doc_ids = tokenizer.encode(d.text, allowed_special="none") + [self.eot_id]
                ids += doc_ids
                dom += [DOMAINS.index(d.domain)] * len(doc_ids)
            self.ids[split] = torch.tensor(ids, dtype=torch.long)
            self.domains[split] = torch.tensor(dom, dtype=torch.long)
            self.n_docs[split] = len(docs)

    def __repr__(self) -> str:
        sizes = ", ".join(f"{s}={len(t):,} tokens/{self.n_docs[s]} docs" for s, t in self.ids.items())
        return f"TokenDataset(vocab_size={self.vocab_size}, {sizes})"

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, allowed_special="all")

    def decode(self, ids) -> str:
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        return self.tokenizer.decode(ids)

    def _check_split(self, split: str) -> None:
        if split not in self.ids:
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")

    def domain_fractions(self, split: str = "train") -> dict[str, float]:
        """Share of the split's tokens that come from each domain."""
        self._check_split(split)
        counts = self.domains[split].bincount(minlength=len(DOMAINS)).tolist()
        return {d: c / len(self.domains[split]) for d, c in zip(DOMAINS, counts)}

    def get_batch(self, split: str, batch_size: int, block_size: int, generator=None, *, with_domains: bool = False):
        """``batch_size`` random windows of ``block_size`` tokens: inputs ``x`` [B, T] and targets ``y = x`` shifted
        by one.

        With ``with_domains=True`` also returns ``d`` [B, T], the domain index (into :data:`DOMAINS`) of each
        input token. ``generator`` (a seeded ``torch.Generator``) makes the batches reproducible.
        """

        self._check_split(split)
        for name, value in (("batch_size", batch_size), ("block_size", block_size)):
            positive_int(name, value)
        data = self.ids[split]
        if block_size + 1 > len(data):
            raise ValueError(f"block_size {block_size} is too long for the {split} split ({len(data)} tokens)")
        starts = torch.randint(len(data) - block_size, (batch_size,), generator=generator)
        window = starts[:, None] + torch.arange(block_size + 1)[None, :]
        x, y = data[window[:, :-1]], data[window[:, 1:]]
        return (x, y, self.domains[split][window[:, :-1]]) if with_domains else (x, y)


_datasets: dict = {}


def corpus_dataset(vocab_size: int = 512, *, val_fraction: float = 0.1, seed: int = 0) -> TokenDataset:
    """The course corpus as a :class:`TokenDataset` (split by :func:`split_documents`, :func:`corpus_tokenizer`).

    Built once per process (about a second) and reused.
    """
    key = (vocab_size, val_fraction, seed)
    if key not in _datasets:
        train, val = split_documents(corpus_documents(seed), val_fraction, seed)
        _datasets[key] = TokenDataset(corpus_tokenizer(vocab_size, seed=seed), train, val)
    return _datasets[key]
