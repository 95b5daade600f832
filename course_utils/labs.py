"""Write ``labs/`` from ``solutions/``: the single source of every exercise notebook.

In a solution notebook each exercise's answer sits between nbgrader's markers::

    def get_stats(ids):
        ### BEGIN SOLUTION
        # hint: zip(ids, ids[1:]) walks the adjacent pairs
        ...
        ### END SOLUTION

The generated lab keeps everything else byte-for-byte and replaces the marked region with
``raise NotImplementedError("Exercise N.M: <hint>")`` (N = the notebook's chapter number, M = the exercise's
order in it). Outputs are cleared. ``labs/.generated.json`` records a hash of what was last written, so a lab a
learner has edited is never overwritten without ``--force``.

Usage: ``python -m course_utils.labs build [--check] [--force] [--root DIR]``
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import json
import re
import sys
from pathlib import Path

import nbformat

from . import nbtools
from .nbtools import BEGIN, END, sync_notebook  # the markers are re-exported: docs and tests import them here

__all__ = ["BEGIN", "END", "make_lab", "build", "Exercise", "exercises", "LabError", "chapter_of"]

HINT_RE = re.compile(r"^\s*#\s*hint:\s*(?P<hint>.+?)\s*$", re.IGNORECASE)
MANIFEST = ".generated.json"
NB_VERSION = 4


class LabError(ValueError):
    """A solution notebook's markers are malformed."""


class Exercise:
    """One marked region: its number (``"1.3"``), hint, and the cell it sits in."""

    def __init__(self, number: str, hint: str, cell_index: int):
        self.number, self.hint, self.cell_index = number, hint, cell_index

    def __repr__(self) -> str:
        return f"Exercise({self.number!r}, hint={self.hint!r}, cell={self.cell_index})"


def chapter_of(path: Path) -> int:
    """:func:`course_utils.nbtools.chapter_of`, failing with a :class:`LabError` (the CLI reports those)."""
    try:
        return nbtools.chapter_of(path)
    except ValueError as err:
        raise LabError(str(err)) from None


def _replace_regions(source: str, chapter: int, counter: list[int], where: str) -> tuple[str, list[tuple[str, str]]]:
    """Replace each BEGIN/END region in one cell's source; return the new source and (number, hint) pairs."""
    out, found = [], []
    lines = source.split("\n")
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.strip() == END:
            raise LabError(f"{where}: '{END}' without a '{BEGIN}' before it")
        if line.strip() != BEGIN:
            out.append(line)
            i += 1
            continue
        indent = line[: len(line) - len(line.lstrip())]
        try:
            j = next(k for k in range(i + 1, len(lines)) if lines[k].strip() in (BEGIN, END))
        except StopIteration:
            raise LabError(f"{where}: '{BEGIN}' is never closed by '{END}'") from None
        if lines[j].strip() == BEGIN:
            raise LabError(f"{where}: a second '{BEGIN}' before the first is closed")
        body = [b for b in lines[i + 1 : j] if b.strip()]
        m = HINT_RE.match(body[0]) if body else None
        if not m:
            raise LabError(f"{where}: the first line inside an exercise must be '# hint: ...' (the lab shows it)")
        counter[0] += 1
        number = f"{chapter}.{counter[0]}"
        hint = m.group("hint")
        found.append((number, hint))
        out.append(f"{indent}# Exercise {number} — hint: {hint}")
        out.append(f"{indent}raise NotImplementedError({json.dumps(f'Exercise {number}: {hint}', ensure_ascii=False)})")
        i = j + 1
    return "\n".join(out), found


def exercises(nb, chapter: int, where: str = "notebook") -> list[Exercise]:
    """The exercises of a solution notebook, in order."""
    counter, result = [0], []
    for idx, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            _, found = _replace_regions(cell.source, chapter, counter, f"{where} cell {idx}")
            result += [Exercise(n, h, idx) for n, h in found]
    return result


def make_lab(nb, chapter: int, where: str = "notebook"):
    """Return the lab notebook for a solution notebook (a new object; ``nb`` is not modified)."""
    lab = copy.deepcopy(nb)
    counter = [0]
    for idx, cell in enumerate(lab.cells):
        if cell.cell_type == "code":
            cell.source, _ = _replace_regions(cell.source, chapter, counter, f"{where} cell {idx}")
            cell.outputs = []
            cell.execution_count = None
    if counter[0] == 0:
        raise LabError(f"{where}: no '{BEGIN}' ... '{END}' exercise found; a solution notebook needs at least one")
    return lab


def serialize(nb) -> str:
    return nbformat.writes(nb, version=NB_VERSION) + "\n"


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def build(root: Path, *, check: bool = False, force: bool = False, out=sys.stdout) -> int:
    """Generate (or with ``check`` only verify) every lab. Returns a process exit code."""
    root = Path(root)
    sol_dir, labs_dir = root / "solutions", root / "labs"
    solutions = sorted(sol_dir.glob("*.ipynb"))
    manifest_path = labs_dir / MANIFEST
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    expected: dict[str, str] = {}
    for sol in solutions:
        nb = nbformat.read(sol, as_version=NB_VERSION)
        lab = make_lab(nb, chapter_of(sol), where=str(sol.relative_to(root)))
        sync_notebook(lab, f"labs/{sol.name}")  # the lab's badge points at the lab, not the solution
        expected[sol.name] = serialize(lab)
    stale = []
    for name, text in expected.items():
        target = labs_dir / name
        if not target.exists() or target.read_text(encoding="utf-8") != text:
            stale.append(name)
    orphans = sorted(p.name for p in labs_dir.glob("*.ipynb") if p.name not in expected)
    if check:
        for name in stale:
            print(f"labs/{name} is stale or missing: run `python -m course_utils.labs build`", file=out)
        for name in orphans:
            print(f"labs/{name} has no solutions/{name}: delete it or add the solution", file=out)
        if not stale and not orphans:
            print(f"labs/ is up to date ({len(expected)} labs)", file=out)
        return 1 if (stale or orphans) else 0
    refused = []
    for name in stale:
        target = labs_dir / name
        if target.exists() and not force:
            current = _sha(target.read_text(encoding="utf-8"))
            if manifest.get(name) != current:
                refused.append(name)
                print(
                    f"refusing to overwrite labs/{name}: it differs from what this tool last generated "
                    "(a learner's work?). Copy it somewhere safe, or re-run with --force.",
                    file=out,
                )
                continue
        labs_dir.mkdir(parents=True, exist_ok=True)
        target.write_text(expected[name], encoding="utf-8")
        print(f"wrote labs/{name}", file=out)
    for name in expected:
        if name not in refused:
            manifest[name] = _sha(expected[name])
    for name in list(manifest):
        if name not in expected:
            del manifest[name]
    labs_dir.mkdir(parents=True, exist_ok=True)
    manifest_path.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    if not stale:
        print(f"labs/ is up to date ({len(expected)} labs)", file=out)
    return 1 if refused else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m course_utils.labs", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="write labs/ from solutions/")
    b.add_argument("--check", action="store_true", help="only verify; exit 1 when labs/ is stale")
    b.add_argument("--force", action="store_true", help="overwrite labs a learner has edited")
    b.add_argument("--root", default=".", help="the course folder (holds solutions/ and labs/)")
    args = parser.parse_args(argv)
    try:
        return build(Path(args.root), check=args.check, force=args.force)
    except LabError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
