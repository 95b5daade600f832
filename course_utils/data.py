"""The course corpus: three domains, all generated or shipped with Python itself, so nothing is downloaded.

- ``prose``: the Python Language Reference topics that ship with CPython (``pydoc_data.topics``).
- ``code``: a fixed list of the running interpreter's standard-library sources.
- ``arithmetic``: seeded synthetic sums and products ("734 + 58 = 792").

Documents are interleaved round-robin by domain, so any prefix of :func:`course_corpus` holds all three.
"""
from __future__ import annotations

import random
import sysconfig
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CorpusDoc", "DOMAINS", "STDLIB_FILES", "prose_documents", "code_documents",
           "arithmetic_documents", "corpus_documents", "course_corpus"]

DOMAINS = ("prose", "code", "arithmetic")
# Small, self-contained, idiomatic modules; ~400 KB together.
STDLIB_FILES = (
    "bisect.py", "calendar.py", "colorsys.py", "csv.py", "dataclasses.py", "fractions.py", "functools.py",
    "graphlib.py", "heapq.py", "json/decoder.py", "json/encoder.py", "pprint.py", "queue.py", "random.py",
    "shlex.py", "statistics.py", "string.py", "textwrap.py",
)


@dataclass(frozen=True)
class CorpusDoc:
    domain: str
    name: str
    text: str


def prose_documents() -> list[CorpusDoc]:
    """The Language Reference topics, one document per topic key (sorted)."""
    from pydoc_data.topics import topics

    return [CorpusDoc("prose", key, topics[key].strip() + "\n") for key in sorted(topics)]


def code_documents() -> list[CorpusDoc]:
    """The standard-library files in :data:`STDLIB_FILES` (those the running Python has)."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    docs = []
    for rel in STDLIB_FILES:
        path = stdlib / rel
        if path.exists():
            docs.append(CorpusDoc("code", rel, path.read_text(encoding="utf-8")))
    return docs


def arithmetic_documents(seed: int = 0, n_lines: int = 6000, lines_per_doc: int = 100) -> list[CorpusDoc]:
    """Seeded lines ``a + b = c``, ``a - b = c`` and ``a * b = c`` with 1- to 4-digit operands."""
    if n_lines < 1 or lines_per_doc < 1:
        raise ValueError(f"n_lines and lines_per_doc must be >= 1, got {n_lines}, {lines_per_doc}")
    rng = random.Random(seed)
    lines = []
    for _ in range(n_lines):
        a, b = rng.randint(0, 10 ** rng.randint(1, 4) - 1), rng.randint(0, 10 ** rng.randint(1, 4) - 1)
        op = rng.choice("+-*" if max(a, b) < 100 else "+-")
        value = a + b if op == "+" else a - b if op == "-" else a * b
        lines.append(f"{a} {op} {b} = {value}")
    return [CorpusDoc("arithmetic", f"arith-{i // lines_per_doc:03d}", "\n".join(lines[i:i + lines_per_doc]) + "\n")
            for i in range(0, n_lines, lines_per_doc)]


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
    if max_bytes is not None and (not isinstance(max_bytes, int) or max_bytes < 1):
        raise ValueError(f"max_bytes must be a positive int or None, got {max_bytes!r}")
    text = "\n\n".join(d.text for d in corpus_documents(seed))
    if max_bytes is not None:
        text = text.encode("utf-8")[:max_bytes].decode("utf-8", errors="ignore")
    return text
