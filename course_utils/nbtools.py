"""Notebook plumbing shared by every chapter: the Colab header, nbgrader metadata, and a small builder.

Every notebook starts with the same two cells: an "Open in Colab" badge pointing at the notebook's own path, and
one bootstrap cell, identical across notebooks, that installs the course in Colab and does nothing elsewhere. The
repository URL lives in :data:`REPO_URL` here and nowhere else; ``python -m course_utils.nbtools sync`` writes it
into the notebooks and ``--check`` (run by the tests) fails when a notebook's header drifts.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

__all__ = [
    "REPO_URL",
    "BRANCH",
    "BOOTSTRAP_SOURCE",
    "badge_source",
    "colab_url",
    "md",
    "code",
    "write_notebook",
    "sync_notebook",
    "NOTEBOOK_DIRS",
    "BEGIN",
    "END",
    "CHECK_CALL",
    "check_calls",
    "chapter_number",
    "chapter_of",
]

# The one place the repository is named. Change it here, then run `python -m course_utils.nbtools sync`.
REPO_URL = "https://github.com/llm-course-org/llm-from-tokens-to-moe"
BRANCH = "main"
NOTEBOOK_DIRS = ("notebooks", "solutions", "labs")
COLAB_CLONE_DIR = "/content/course"
BOOTSTRAP_TAG = "colab-bootstrap"
BADGE_TAG = "colab-badge"

# The course's notebook conventions, defined once (labs, progress and the nbgrader metadata below read them):
# an exercise's answer sits between these markers in solutions/ ...
BEGIN = "### BEGIN SOLUTION"
END = "### END SOLUTION"
# ... and a check cell imports and calls a `check_*` function.
CHECK_CALL = re.compile(r"\b(check_\w+)\s*\(")
_CHECK_CALL = CHECK_CALL  # the old private name, for code that imported it
_CHAPTER = re.compile(r"(\d+)_")

BOOTSTRAP_SOURCE = f'''# Colab set-up: installs the course and what Colab lacks; does nothing on your own machine.
import sys
if "google.colab" in sys.modules:
    import os, subprocess
    if not os.path.isdir("{COLAB_CLONE_DIR}"):
        subprocess.run(["git", "clone", "--depth", "1", "{REPO_URL}", "{COLAB_CLONE_DIR}"], check=True)
    # what Colab lacks, and the course's transformers, sentence-transformers and peft together
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-r", "{COLAB_CLONE_DIR}/requirements-colab.txt"], check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "-e", "{COLAB_CLONE_DIR}"], check=True)
    sys.path.insert(0, "{COLAB_CLONE_DIR}")  # the running kernel does not see a fresh editable install
    from course_utils.doctor import colab_setup
    colab_setup()  # torchao only if Colab's torch is the one it is built for; says when to restart
    from google.colab import output
    output.enable_custom_widget_manager()  # ipywidgets need Colab's custom widget manager
    os.chdir("{COLAB_CLONE_DIR}")'''  # noqa: E501 (the cell users see; one command per line)


def colab_url(relpath: str) -> str:
    """The Colab address of a notebook, given its path inside the repository."""
    owner_repo = REPO_URL.removeprefix("https://github.com/")
    return f"https://colab.research.google.com/github/{owner_repo}/blob/{BRANCH}/{relpath}"


def badge_source(relpath: str) -> str:
    return f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({colab_url(relpath)})"


def md(source: str):
    """A markdown cell (leading/trailing blank lines stripped)."""
    return new_markdown_cell(source.strip("\n"))


def code(source: str, *, tags: list[str] | tuple[str, ...] = ()):
    """A code cell; ``tags`` become cell tags (e.g. ``nbval-ignore-output``)."""
    cell = new_code_cell(source.strip("\n"))
    if tags:
        cell.metadata["tags"] = list(tags)
    return cell


def check_calls(source: str) -> list[str]:
    """The ``check_*`` functions a check cell calls (a cell that imports and calls one), else ``[]``."""
    names = CHECK_CALL.findall(source)
    return names if names and "import" in source else []


def chapter_number(path: str | Path) -> int | None:
    """The chapter ``NN`` of a notebook named ``NN_topic[_lab].ipynb``; ``None`` when the name has no number."""
    m = _CHAPTER.match(Path(path).name)
    return int(m.group(1)) if m else None


def chapter_of(path: str | Path) -> int:
    """Like :func:`chapter_number`, but a name without a chapter number is a ``ValueError``."""
    n = chapter_number(path)
    if n is None:
        raise ValueError(f"{path}: chapter notebooks are named NN_topic.ipynb (got {Path(path).name!r})")
    return n


# a check cell whose check reuses earlier answers says so in a comment, and is graded with 0 points (no double penalty)
NO_POINTS = re.compile(r"^\s*#.*\bno points of its own\b", re.M)


def _nbgrader_metadata(nb, chapter: int | None) -> None:
    """Mark exercise cells as nbgrader solution cells and check cells as autograded tests (solutions/ only)."""
    n_ex = 0
    for cell in nb.cells:
        cell.metadata.pop("nbgrader", None)
        if cell.cell_type != "code":
            continue
        if BEGIN in cell.source:
            n_ex += 1
            cell.metadata["nbgrader"] = {
                "grade": False,
                "solution": True,
                "locked": False,
                "grade_id": f"ex_{chapter}_{n_ex}",
                "schema_version": 3,
            }
        else:
            names = check_calls(cell.source)
            if names:
                # a check that only re-runs earlier answers says so in a comment: one mistake is not graded twice
                points = 0 if NO_POINTS.search(cell.source) else 1
                cell.metadata["nbgrader"] = {
                    "grade": True,
                    "solution": False,
                    "locked": True,
                    "points": points,
                    "grade_id": f"{names[-1]}_{chapter}_{n_ex}",
                    "schema_version": 3,
                }


def sync_notebook(nb, relpath: str):
    """Put the badge and bootstrap cells first (replacing old ones) and refresh nbgrader metadata."""
    body = [c for c in nb.cells if not set(c.metadata.get("tags", [])) & {BOOTSTRAP_TAG, BADGE_TAG}]
    badge = md(badge_source(relpath))
    badge.metadata["tags"] = [BADGE_TAG]
    boot = code(BOOTSTRAP_SOURCE, tags=[BOOTSTRAP_TAG])
    nb.cells = [badge, boot] + body
    nb.metadata["kernelspec"] = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}
    nb.metadata["language_info"] = {"name": "python"}
    if relpath.startswith("solutions/"):  # labs keep the metadata copied from their solution
        _nbgrader_metadata(nb, chapter_number(relpath))
    for cell in nb.cells:
        cell.pop("id", None)  # ids churn on every save; notebooks diff better without them
    nb.nbformat, nb.nbformat_minor = 4, 4
    return nb


def write_notebook(path: str | Path, cells: list, *, root: str | Path = ".") -> Path:
    """Write a notebook of ``cells`` (from :func:`md`/:func:`code`) with the standard header, no outputs."""
    path = Path(path)
    nb = new_notebook(cells=list(cells))
    relpath = path.resolve().relative_to(Path(root).resolve()).as_posix()
    sync_notebook(nb, relpath)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(nbformat.writes(nb, version=4) + "\n", encoding="utf-8")
    return path


def _all_notebooks(root: Path, dirs=("notebooks", "solutions")) -> list[Path]:
    return sorted(p for d in dirs for p in (root / d).glob("*.ipynb"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m course_utils.nbtools")
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("sync", help="rewrite the Colab header and nbgrader metadata of notebooks/ and solutions/")
    s.add_argument("paths", nargs="*", help="notebooks (default: all of notebooks/ and solutions/)")
    s.add_argument("--check", action="store_true", help="only verify; exit 1 when a notebook is out of date")
    s.add_argument("--root", default=".")
    args = parser.parse_args(argv)
    root = Path(args.root).resolve()
    paths = [Path(p).resolve() for p in args.paths] or _all_notebooks(root)
    bad = 0
    for path in paths:
        rel = path.relative_to(root).as_posix()
        old = path.read_text(encoding="utf-8")
        nb = sync_notebook(nbformat.reads(old, as_version=4), rel)
        new = nbformat.writes(nb, version=4) + "\n"
        if new != old:
            if args.check:
                print(f"{rel}: header or metadata out of date; run `python -m course_utils.nbtools sync`")
                bad += 1
            else:
                path.write_text(new, encoding="utf-8")
                print(f"synced {rel}")
    return 1 if bad else 0


def notebook_client(nb, folder: str | Path, timeout: int, **options):
    """An nbclient client that runs ``nb`` in a ``python3`` kernel with ``folder`` as its working directory (as the
    learner runs it, so relative paths resolve); ``options`` go to nbclient (``allow_errors=True``, ...)."""
    from nbclient import NotebookClient  # noqa: PLC0415 — a Jupyter kernel client (seconds): only to run a notebook

    return NotebookClient(
        nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(folder)}}, **options
    )


if __name__ == "__main__":
    sys.exit(main())
