"""The ``sha256sum``-format sidecars that every shipped file (checkpoint, results, data) is checked against.

- :func:`sha256_of`, :func:`write_sha256`, :func:`read_sha256`, :func:`verify_sha256` — a file's digest, its
  ``<path>.sha256`` record, and the check that names the command rebuilding a stale or corrupted file.

Plumbing below the model: :mod:`course_utils.data` checks its corpus snapshot with it, and
:mod:`course_utils.checkpoints` (which imports the model) re-exports it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

__all__ = ["sha256_of", "write_sha256", "read_sha256", "verify_sha256"]


def sha256_of(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def record_of(path: Path, record) -> Path:
    """``record``, or ``<path>.sha256`` when it is None."""
    return Path(str(path) + ".sha256") if record is None else Path(record)


def write_sha256(path: str | Path, record: str | Path | None = None) -> Path:
    """Write ``"<sha256>  <name>"`` (the ``sha256sum`` format) to ``record`` (default ``<path>.sha256``)."""
    path = Path(path)
    record = record_of(path, record)
    record.write_text(f"{sha256_of(path)}  {path.name}\n")
    return record


def read_sha256(record: str | Path, name: str) -> str:
    """The lower-case hex digest a ``sha256sum``-format ``record`` gives for the file called ``name``.

    As ``sha256sum -c`` reads it: ``<64 hex digits> [*]<file name>``, hex in either case. The name binds the digest
    to its file: a record (with its file) copied to another name is refused, so two checkpoints swapped together
    with their sidecars do not pass. An empty or malformed record is a ``ValueError`` saying what it should hold.
    """
    record = Path(record)
    line = next((ln for ln in record.read_text().splitlines() if ln.strip()), "")
    digest, _, recorded = line.strip().partition(" ")
    recorded = recorded.strip().removeprefix("*")  # sha256sum's binary-mode marker
    if len(digest) != 64 or any(c not in "0123456789abcdefABCDEF" for c in digest) or not recorded:
        shown = repr(line[:80]) if line else "empty"
        raise ValueError(f"{record.name} is {shown}: expected '<64 hex digits>  {name}' (sha256sum's format)")
    if recorded != name:
        raise ValueError(f"{record.name} records the file {recorded[:80]!r}, not {name!r}: renamed or swapped files")
    return digest.lower()


def verify_sha256(path: str | Path, record: str | Path | None = None, *, rebuild: str) -> Path:
    """``path`` if its SHA-256 equals the one in ``record`` (default ``<path>.sha256``, read by
    :func:`read_sha256`); otherwise an error that says how to ``rebuild`` the file. Shipped checkpoints and results
    are checked before anything reads them."""
    path = Path(path)
    record = record_of(path, record)
    if not path.exists() or not record.exists():
        raise FileNotFoundError(f"{path.name} or its {record.name} is missing: run `{rebuild}` to rebuild it")
    try:
        expected = read_sha256(record, path.name)
    except ValueError as err:
        raise ValueError(f"{err} (rebuild it with `{rebuild}`)") from None
    got = sha256_of(path)
    if got != expected:
        raise ValueError(
            f"{path.name}: sha256 {got[:12]}… does not match the recorded {expected[:12]}… "
            f"(corrupted or replaced; rebuild it with `{rebuild}`)"
        )
    return path
