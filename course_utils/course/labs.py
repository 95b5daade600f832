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
overwritten without ``--force``; with ``--force`` each lab whose content changes is first copied to
``labs/.backup/<name>.<UTC timestamp>.ipynb`` (ignored by git and by ``--check``). ``--only CHAPTER`` builds one lab.

The markdown cell above each exercise holds its heading ``## Exercise N.M — title``, a short spec (inputs,
outputs, shapes, the rule) and three graded hints, each ``<details><summary>Hint k</summary> ... </details>``
(k = 1: the idea; 2: the steps or the formula; 3: close to code, never the code). :func:`lint` reports what a
solution notebook lacks; :func:`leaked_lines` finds solution lines that a lab shows verbatim.

For nbgrader, :func:`nbgrader_source` moves each task line just above ``### BEGIN SOLUTION``, so that nbgrader's
student version keeps it above its own ``# YOUR CODE HERE`` stub.

Usage: ``python -m course_utils.labs build [--check] [--force] [--only CHAPTER] [--root DIR]``,
``python -m course_utils.labs nbgrader-source OUT_DIR [--root DIR]``
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import re
import sys
from datetime import UTC, datetime
from pathlib import Path

import nbformat

from .. import nbtools
from ..nbtools import BEGIN, END, sync_notebook  # the markers are re-exported: docs and tests import them here

__all__ = [
    "BEGIN",
    "END",
    "make_lab",
    "build",
    "Exercise",
    "exercises",
    "LabError",
    "chapter_of",
    "nbgrader_source",
    "lint",
    "leaked_lines",
    "solution_lines",
    "exercise_markdown",
    "stub_comment",
    "chapter_arg",
    "BACKUP_DIR",
]

HINT_RE = re.compile(r"^\s*#\s*(?:task|hint):\s*(?P<hint>.+?)\s*$", re.IGNORECASE)
MANIFEST = ".generated.json"
BACKUP_DIR = ".backup"  # inside labs/; not a lab (the build, --check and progress only look at labs/*.ipynb)
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


def _replace_regions(
    source: str, chapter: int, counter: list[int], where: str, nbgrader: bool = False
) -> tuple[str, list[tuple[str, str]]]:
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
            raise LabError(
                f"{where}: the first line inside an exercise must be '# task: ...' (what to implement; "
                "the lab shows it)"
            )
        counter[0] += 1
        number = f"{chapter}.{counter[0]}"
        hint = m.group("hint")
        found.append((number, hint))
        out.append(f"{indent}{stub_comment(number, hint)}")
        if nbgrader:
            task_at = lines.index(body[0], i + 1)
            out += [line, *lines[i + 1 : task_at], *lines[task_at + 1 : j + 1]]
        else:
            out.append(
                f"{indent}raise NotImplementedError({json.dumps(f'Exercise {number}: {hint}', ensure_ascii=False)})"
            )
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
HINT_BLOCK_RE = re.compile(
    r"<details>\s*<summary>[^<]*?Hint\s+(?P<k>\d+)[^<]*</summary>(?P<body>.*?)</details>", re.S | re.I
)
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
            problems.append(
                f"markdown cell {i}'s heading says Exercise {heading.group('number')}, the stub says "
                f"Exercise {ex.number}"
            )
        hints = HINT_BLOCK_RE.findall(text)
        if [k for k, _ in hints] != ["1", "2", "3"]:
            problems.append(
                f"markdown cell {i} has hints {[k for k, _ in hints]}, expected Hint 1, Hint 2, Hint 3 "
                "as <details><summary>Hint k</summary> ... </details>"
            )
        if any(not body.strip() for _, body in hints):
            problems.append(f"markdown cell {i} has an empty hint")
        spec = HINT_BLOCK_RE.sub("", text)
        spec = re.sub(r"^#{1,6}\s.*$", "", spec, flags=re.M).strip()
        if len(spec) < MIN_SPEC_CHARS:
            problems.append(
                f"markdown cell {i} has no spec (inputs, outputs, shapes, the rule): "
                f"{len(spec)} characters outside the heading and hints"
            )
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


def _sha(data: str | bytes) -> str:
    return hashlib.sha256(data.encode("utf-8") if isinstance(data, str) else data).hexdigest()


def chapter_arg(text: str) -> int:
    """argparse type for a chapter number: ``3`` or ``03`` (a non-negative integer)."""
    if not re.fullmatch(r"\s*\d{1,3}\s*", str(text)):
        raise argparse.ArgumentTypeError(f"expected a chapter number such as 3 or 03, got {text!r}")
    return int(text)


def _read_manifest(path: Path, out) -> dict[str, str]:
    """The manifest, or ``{}`` with a one-line explanation when it is unreadable (every differing lab then counts
    as edited: the build refuses it without ``--force``, so nothing is lost)."""
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        problem = f"is not valid JSON ({type(err).__name__}: {str(err).splitlines()[0]})"
    else:
        if isinstance(data, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
            return data
        problem = "is not a JSON object of lab name → sha256"
    print(
        f"warning: labs/{MANIFEST} {problem}; ignoring it (labs that differ from the solutions count as edited: "
        "rebuild them with --force, which backs them up first) and writing a new one",
        file=out,
    )
    return {}


def _backup(target: Path, labs_dir: Path, stamp: str) -> Path:
    """Copy ``target`` to ``labs/.backup/<stem>.<stamp>.ipynb`` (a new name, never an existing file)."""
    folder = labs_dir / BACKUP_DIR
    folder.mkdir(parents=True, exist_ok=True)
    dest, n = folder / f"{target.stem}.{stamp}{target.suffix}", 1
    while dest.exists():  # two builds within one second
        dest, n = folder / f"{target.stem}.{stamp}-{n}{target.suffix}", n + 1
    dest.write_bytes(target.read_bytes())
    return dest


def build(root: Path, *, check: bool = False, force: bool = False, only: int | None = None, out=sys.stdout) -> int:
    """Generate (or with ``check`` only verify) every lab, or only chapter ``only``'s. Returns a process exit code.

    With ``force`` a lab a learner has edited is overwritten too; every lab whose content changes is first copied
    to ``labs/.backup/`` and the copy is named in ``out``. Labs of other chapters are untouched with ``only``.
    """
    root = Path(root)
    if only is not None and (not isinstance(only, int) or isinstance(only, bool) or only < 0):
        raise ValueError(f"only must be a chapter number (a non-negative int) or None, got {only!r}")
    sol_dir, labs_dir = root / "solutions", root / "labs"
    solutions = sorted(sol_dir.glob("*.ipynb"))
    if only is not None:
        solutions = [s for s in solutions if chapter_of(s) == only]
        if not solutions:
            raise LabError(f"no solution notebook for chapter {only} (solutions/{only:02d}_topic_lab.ipynb)")
    manifest_path = labs_dir / MANIFEST
    expected: dict[str, bytes] = {}
    for sol in solutions:
        nb = nbformat.read(sol, as_version=NB_VERSION)
        lab = make_lab(nb, chapter_of(sol), where=str(sol.relative_to(root)))
        sync_notebook(lab, f"labs/{sol.name}")  # the lab's badge points at the lab, not the solution
        expected[sol.name] = serialize(lab).encode("utf-8")
    stale = []
    for name, data in expected.items():
        target = labs_dir / name
        # bytes, not text: a lab saved in another encoding is simply "different", never a crash
        if not target.exists() or target.read_bytes() != data:
            stale.append(name)
    orphans = [] if only is not None else sorted(p.name for p in labs_dir.glob("*.ipynb") if p.name not in expected)
    up_to_date = (
        f"labs/{solutions[0].name} is up to date" if only is not None else f"labs/ is up to date ({len(expected)} labs)"
    )
    if check:
        for name in stale:
            print(f"labs/{name} is stale or missing: run `python -m course_utils.labs build`", file=out)
        for name in orphans:
            print(f"labs/{name} has no solutions/{name}: delete it or add the solution", file=out)
        if not stale and not orphans:
            print(up_to_date, file=out)
        return 1 if (stale or orphans) else 0
    manifest = _read_manifest(manifest_path, out)
    refused = []
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    for name in stale:
        target = labs_dir / name
        if target.exists() and not force:
            if manifest.get(name) != _sha(target.read_bytes()):
                refused.append(name)
                print(
                    f"refusing to overwrite labs/{name}: it differs from what this tool last generated "
                    f"(a learner's work?). Re-run with --force (add --only {chapter_of(target)} for this lab alone); "
                    f"the current file is first copied to labs/{BACKUP_DIR}/.",
                    file=out,
                )
                continue
        labs_dir.mkdir(parents=True, exist_ok=True)
        if target.exists() and force:
            saved = _backup(target, labs_dir, stamp)
            print(f"backed up labs/{name} to {saved.relative_to(root).as_posix()}", file=out)
        target.write_bytes(expected[name])
        print(f"wrote labs/{name}", file=out)
    for name in expected:
        if name not in refused:
            manifest[name] = _sha(expected[name])
    if only is None:
        for name in list(manifest):
            if name not in expected:
                del manifest[name]
    labs_dir.mkdir(parents=True, exist_ok=True)
    manifest_path.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    if not stale:
        print(up_to_date, file=out)
    return 1 if refused else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m course_utils.labs", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="write labs/ from solutions/")
    b.add_argument("--check", action="store_true", help="only verify; exit 1 when labs/ is stale")
    b.add_argument(
        "--force",
        action="store_true",
        help=f"overwrite labs a learner has edited (each changed lab is first copied to labs/{BACKUP_DIR}/)",
    )
    b.add_argument(
        "--only",
        type=chapter_arg,
        metavar="CHAPTER",
        help="build only this chapter's lab (e.g. 3 or 03); the other labs are untouched",
    )
    b.add_argument("--root", default=".", help="the course folder (holds solutions/ and labs/)")
    n = sub.add_parser("nbgrader-source", help="write solutions/ as nbgrader source notebooks (task lines kept)")
    n.add_argument("out", help="the folder to write to, e.g. mycourse/source/ch04")
    n.add_argument("--root", default=".", help="the course folder (holds solutions/)")
    n.add_argument("--chapter", type=int, default=None, help="only this chapter's solution notebook")
    args = parser.parse_args(argv)
    if args.command == "build" and args.only is not None:
        names = [p.name for p in (Path(args.root) / "solutions").glob("*.ipynb")]
        if not any(re.match(rf"0*{args.only}_", n) for n in names):
            b.error(
                f"argument --only: no solution notebook for chapter {args.only} in "
                f"{Path(args.root) / 'solutions'} (chapters: "
                f"{', '.join(sorted({n.split('_')[0] for n in names if re.match(r'[0-9]+_', n)})) or 'none'})"
            )
    try:
        if args.command == "nbgrader-source":
            out = Path(args.out)
            out.mkdir(parents=True, exist_ok=True)
            for sol in sorted((Path(args.root) / "solutions").glob("*.ipynb")):
                if args.chapter is None or chapter_of(sol) == args.chapter:
                    nb = nbformat.read(sol, as_version=NB_VERSION)
                    (out / sol.name).write_text(
                        serialize(nbgrader_source(nb, chapter_of(sol), str(sol))), encoding="utf-8"
                    )
                    print(f"wrote {out / sol.name}")
            return 0
        return build(Path(args.root), check=args.check, force=args.force, only=args.only)
    except LabError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
