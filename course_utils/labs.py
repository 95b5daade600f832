"""Write ``labs/`` from ``solutions/``: the single source of every exercise notebook.

In a solution notebook each exercise's answer sits between nbgrader's markers::

    def get_stats(ids):
        ### BEGIN SOLUTION
        # task: count every adjacent pair of ids
        ...
        ### END SOLUTION

The first line of the region is ``# task: ...`` (``# hint: ...`` is accepted too): it says *what* to implement,
never the code. The generated lab keeps everything else byte-for-byte and replaces the marked region with::

        # Exercise N.M — <task>
        raise NotImplementedError("Exercise N.M: <task>")

(N = the notebook's chapter number, M = the exercise's order in it). Outputs are cleared.
``labs/.generated.json`` records a hash of what was last written, so a lab a learner has edited is never
overwritten without ``--force``.

The markdown cell above each exercise holds its heading ``## Exercise N.M — title``, a short spec (inputs,
outputs, shapes, the rule) and three graded hints, each ``<details><summary>Hint k</summary> ... </details>``
(k = 1: the idea; 2: the steps or the formula; 3: close to code, never the code). :func:`lint` reports what a
solution notebook lacks; :func:`leaked_lines` finds solution lines that a lab shows verbatim.

For nbgrader, :func:`nbgrader_source` moves each task line just above ``### BEGIN SOLUTION``, so that nbgrader's
student version keeps it above its own ``# YOUR CODE HERE`` stub.

Usage: ``python -m course_utils.labs build [--check] [--force] [--root DIR]``,
``python -m course_utils.labs nbgrader-source OUT_DIR [--root DIR]``
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

__all__ = ["BEGIN", "END", "make_lab", "build", "Exercise", "exercises", "LabError", "chapter_of",
           "nbgrader_source", "lint", "leaked_lines", "solution_lines", "exercise_markdown", "stub_comment"]

HINT_RE = re.compile(r"^\s*#\s*(?:task|hint):\s*(?P<hint>.+?)\s*$", re.IGNORECASE)
MANIFEST = ".generated.json"
NB_VERSION = 4


class LabError(ValueError):
    """A solution notebook's markers are malformed."""


class Exercise:
    """One marked region: its number (``"1.3"``), task line (``hint``, also ``task``), and the cell it sits in."""

    def __init__(self, number: str, hint: str, cell_index: int):
        self.number, self.hint, self.cell_index = number, hint, cell_index

    @property
    def task(self) -> str:
        return self.hint

    def __repr__(self) -> str:
        return f"Exercise({self.number!r}, hint={self.hint!r}, cell={self.cell_index})"


def chapter_of(path: Path) -> int:
    """:func:`course_utils.nbtools.chapter_of`, failing with a :class:`LabError` (the CLI reports those)."""
    try:
        return nbtools.chapter_of(path)
    except ValueError as err:
        raise LabError(str(err)) from None


def stub_comment(number: str, task: str) -> str:
    """The comment line the lab (and nbgrader's student version) shows in place of the answer."""
    return f"# Exercise {number} — {task}"


def _replace_regions(source: str, chapter: int, counter: list[int], where: str,
                     nbgrader: bool = False) -> tuple[str, list[tuple[str, str]]]:
    """Replace each BEGIN/END region in one cell's source; return the new source and (number, hint) pairs.

    With ``nbgrader`` the region is kept and only its task line moves above ``### BEGIN SOLUTION``.
    """
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
            raise LabError(f"{where}: the first line inside an exercise must be '# task: ...' (what to implement; "
                           "the lab shows it)")
        counter[0] += 1
        number = f"{chapter}.{counter[0]}"
        hint = m.group("hint")
        found.append((number, hint))
        out.append(f"{indent}{stub_comment(number, hint)}")
        if nbgrader:
            task_at = lines.index(body[0], i + 1)
            out += [line, *lines[i + 1:task_at], *lines[task_at + 1:j + 1]]
        else:
            out.append(f"{indent}raise NotImplementedError("
                       f"{json.dumps(f'Exercise {number}: {hint}', ensure_ascii=False)})")
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


def nbgrader_source(nb, chapter: int, where: str = "notebook"):
    """The solution notebook as nbgrader's source: each task line moved above its ``### BEGIN SOLUTION``.

    nbgrader replaces the whole region with its fixed ``# YOUR CODE HERE`` stub; with the task line outside the
    region, the student version keeps ``# Exercise N.M — <task>`` above that stub, as the lab does.
    """
    src = copy.deepcopy(nb)
    counter = [0]
    for idx, cell in enumerate(src.cells):
        if cell.cell_type == "code":
            cell.source, _ = _replace_regions(cell.source, chapter, counter, f"{where} cell {idx}", nbgrader=True)
    return src


# ---- what a solution notebook's exercises must have -------------------------------------------------------
HEADING_RE = re.compile(r"^#{1,6}\s.*?\bExercise\s+(?P<number>\d+\.\d+)\b", re.M)
HINT_BLOCK_RE = re.compile(r"<details>\s*<summary>[^<]*?Hint\s+(?P<k>\d+)[^<]*</summary>(?P<body>.*?)</details>",
                           re.S | re.I)
# lines a lab may show although the solution has them too: they give nothing away
_TRIVIAL = re.compile(r"^(return|pass|break|continue|else:|try:|finally:|[)\]}]+[,:]?|[\"']{3}|\.\.\.)$")
MIN_SPEC_CHARS = 60


def exercise_markdown(nb, ex: Exercise) -> int | None:
    """Index of the markdown cell just above an exercise (its heading, spec and hints), or None."""
    for i in range(ex.cell_index - 1, -1, -1):
        cell = nb.cells[i]
        if cell.cell_type == "markdown":
            return i
        if cell.cell_type == "code" and BEGIN in cell.source:
            return None
    return None


def lint(nb, chapter: int, where: str = "notebook") -> dict[str, list[str]]:
    """Problems of each exercise's markdown, by exercise number: heading, spec, graded hints.

    The markdown cell above exercise N.M must have a heading naming ``Exercise N.M``, a spec of at least
    :data:`MIN_SPEC_CHARS` characters outside the heading and the hints, and hints 1, 2 and 3 in that order, each
    ``<details><summary>Hint k</summary> ... </details>`` with a non-empty body.
    """
    found: dict[str, list[str]] = {}
    for ex in exercises(nb, chapter, where):
        problems = found.setdefault(ex.number, [])
        i = exercise_markdown(nb, ex)
        if i is None:
            problems.append("no markdown cell above the exercise")
            continue
        text = nb.cells[i].source
        heading = HEADING_RE.search(text)
        if not heading:
            problems.append(f"markdown cell {i} has no heading '## Exercise {ex.number} — ...'")
        elif heading.group("number") != ex.number:
            problems.append(f"markdown cell {i}'s heading says Exercise {heading.group('number')}, the stub says "
                            f"Exercise {ex.number}")
        hints = HINT_BLOCK_RE.findall(text)
        if [k for k, _ in hints] != ["1", "2", "3"]:
            problems.append(f"markdown cell {i} has hints {[k for k, _ in hints]}, expected Hint 1, Hint 2, Hint 3 "
                            "as <details><summary>Hint k</summary> ... </details>")
        if any(not body.strip() for _, body in hints):
            problems.append(f"markdown cell {i} has an empty hint")
        spec = HINT_BLOCK_RE.sub("", text)
        spec = re.sub(r"^#{1,6}\s.*$", "", spec, flags=re.M).strip()
        if len(spec) < MIN_SPEC_CHARS:
            problems.append(f"markdown cell {i} has no spec (inputs, outputs, shapes, the rule): "
                            f"{len(spec)} characters outside the heading and hints")
    return {n: p for n, p in found.items() if p}


def solution_lines(source: str) -> list[str]:
    """The non-trivial lines of the solution regions of one cell, stripped (task line, comments, blanks dropped)."""
    out, inside = [], False
    for line in source.split("\n"):
        s = line.strip()
        if s == BEGIN:
            inside = True
            continue
        if s == END:
            inside = False
            continue
        if not inside or not s or s.startswith("#") or _TRIVIAL.match(s):
            continue
        out.append(s)
    return out


def leaked_lines(solution_nb, lab_nb) -> list[tuple[int, str]]:
    """(cell index, line) for each solution line that the lab's exercise cell shows verbatim."""
    leaks = []
    for idx, (sol, lab) in enumerate(zip(solution_nb.cells, lab_nb.cells)):
        if sol.cell_type != "code" or BEGIN not in sol.source:
            continue
        for line in solution_lines(sol.source):
            if line in lab.source:
                leaks.append((idx, line))
    return leaks


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
    n = sub.add_parser("nbgrader-source", help="write solutions/ as nbgrader source notebooks (task lines kept)")
    n.add_argument("out", help="the folder to write to, e.g. mycourse/source/ch04")
    n.add_argument("--root", default=".", help="the course folder (holds solutions/)")
    n.add_argument("--chapter", type=int, default=None, help="only this chapter's solution notebook")
    args = parser.parse_args(argv)
    try:
        if args.command == "nbgrader-source":
            out = Path(args.out)
            out.mkdir(parents=True, exist_ok=True)
            for sol in sorted((Path(args.root) / "solutions").glob("*.ipynb")):
                if args.chapter is None or chapter_of(sol) == args.chapter:
                    nb = nbformat.read(sol, as_version=NB_VERSION)
                    (out / sol.name).write_text(serialize(nbgrader_source(nb, chapter_of(sol), str(sol))),
                                                encoding="utf-8")
                    print(f"wrote {out / sol.name}")
            return 0
        return build(Path(args.root), check=args.check, force=args.force)
    except LabError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
