"""Where am I? ``python -m course_utils.progress [--chapter N]`` runs your labs and shows which checks pass.

For each ``labs/NN_topic_lab.ipynb`` a *temporary copy* is executed top to bottom in a fresh kernel (errors do not
stop the run); your notebook file is only read, never written. Each check cell's result is reported:

    ✅ passed    ❌ failed    ⏳ not started (still NotImplementedError)
    ·  not run (an earlier cell failed in a way that stopped this one from producing output)

Below each lab's table every failure is shown in full: the check's message and hint, or the ``SyntaxError`` (with
its line) in your exercise cell that kept the check from running. The kernel's own warnings are not shown.
A lab that is not a readable notebook (a bad merge, a truncated save, another encoding) gets a one-line message
saying how to restore or rebuild only that lab instead of a table.
"""

from __future__ import annotations

import argparse
import logging
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import warnings
from dataclasses import dataclass
from pathlib import Path

import nbformat

from ..nbtools import chapter_number, check_calls, notebook_client  # the course's conventions, defined once
from ..validate import check_int
from .labs import BACKUP_DIR, chapter_arg

__all__ = ["CheckResult", "LabReport", "lab_progress", "progress", "format_table", "main"]

_EXERCISE = re.compile(r"Exercise (\d+\.\d+)")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_SYNTAX = ("SyntaxError", "IndentationError", "TabError")
WIDTH = 100  # details below a table are wrapped at word boundaries to this many columns


@dataclass
class CheckResult:
    exercise: str  # "4.1"
    check: str  # "check_topk_router"
    status: str  # "passed" | "failed" | "not started" | "not run"
    detail: str = ""  # the check's whole explanation (message, inputs, hint) or the error that stopped it


@dataclass
class LabReport:
    lab: str  # "labs/04_moe_lab.ipynb"
    results: list[CheckResult]
    error: str = ""  # set when the lab could not be read or run at all

    @property
    def n_passed(self) -> int:
        return sum(r.status == "passed" for r in self.results)


SYMBOL = {"passed": "✅", "failed": "❌", "not started": "⏳", "not run": "·"}


def _check_cells(nb, chapter: int | None = None) -> list[tuple[int, str, str, int | None]]:
    """(cell index, check name, exercise number, exercise cell index) for each check cell, in order.

    A check cell is one that calls ``check_*`` and imports it (the labs' convention). Its exercise is the most
    recent exercise cell above it, numbered by nbgrader's ``grade_id`` (``ex_N_M``) or the lab's stub comment;
    a learner who rewrote the stub keeps the metadata, so both are tried.
    """
    found, exercise, n_seen, ex_cell = [], "?", 0, None
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        meta = cell.metadata.get("nbgrader", {})
        m = _EXERCISE.search(cell.source)
        if meta.get("solution") or (m and "NotImplementedError" in cell.source):
            n_seen += 1
            gid = re.fullmatch(r"ex_(\d+)_(\d+)", str(meta.get("grade_id", "")))
            exercise = f"{gid.group(1)}.{gid.group(2)}" if gid else (m.group(1) if m else f"{chapter or '?'}.{n_seen}")
            ex_cell = i
            continue
        names = check_calls(cell.source)
        if names:
            found.append((i, names[-1], exercise, ex_cell))
    return found


def _error_text(cell, out, where: str = "this cell") -> str:
    """An error output as the learner should read it: a check's whole message; a syntax error with its line."""
    ename, evalue = str(out.get("ename", "")), _ANSI.sub("", str(out.get("evalue", ""))).rstrip()
    if ename == "CheckFailed":  # the box the learner sees in the notebook: message, where it crashed, inputs, hint
        box = _ANSI.sub("", "\n".join(out.get("traceback", []))).splitlines()
        box = [ln for ln in box if ln.strip().strip("─")]
        if box and box[0].startswith("❌ "):
            return "\n".join([box[0][2:], *box[1:]])
        return evalue  # already starts with the check's name and holds inputs and hint
    if ename in _SYNTAX:
        m = re.search(r"\s*\([^()]*, line (\d+)\)$", evalue)
        if m:
            n, evalue = int(m.group(1)), evalue[: m.start()]
            lines = cell.get("source", "").splitlines()
            code = f"\n    {lines[n - 1].strip()}" if 0 < n <= len(lines) else ""
            return f"{ename} in {where}, line {n}: {evalue}{code}"
        return f"{ename} in {where}: {evalue}"
    return f"{ename}: {evalue}"


def _status(cell) -> tuple[str, str]:
    outputs = cell.get("outputs", [])
    if cell.get("execution_count") is None and not outputs:
        return "not run", ""
    for out in outputs:
        if out.get("output_type") == "error":
            if out.get("ename") == "NotImplementedError" or "NotImplementedError" in str(out.get("evalue")):
                return "not started", ""
            return "failed", _error_text(cell, out)
    printed = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    if "✅" in printed:
        return "passed", ""
    return "failed", "the check printed no ✅ line"


_QUIET = logging.getLogger("course_utils.progress.kernel")
_QUIET.addHandler(logging.NullHandler())
_QUIET.propagate = False


def _restore_advice(rel: str, chapter: int | None) -> str:
    """How to get a working lab back: git, or rebuild only this lab (the build keeps a backup of the file)."""
    rebuild = (
        f"`python -m course_utils.labs build --only {chapter} --force`"
        if chapter is not None
        else "`python -m course_utils.labs build --force`"
    )
    return (
        f"Restore it with `git checkout {rel}`, or rebuild only this lab with {rebuild} "
        f"(it first copies the current file to labs/{BACKUP_DIR}/)."
    )


def lab_progress(lab: Path, *, root: Path, timeout: int = 600) -> LabReport:
    """Execute a temporary copy of ``lab`` and report each check. ``lab`` itself is only read."""
    rel = lab.relative_to(root).as_posix() if lab.is_relative_to(root) else str(lab)
    with tempfile.TemporaryDirectory(prefix="course-progress-") as tmp:
        copy = Path(tmp) / lab.name
        shutil.copyfile(lab, copy)  # a snapshot: a save in JupyterLab during the run changes nothing here
        m = chapter_number(lab)
        try:
            nb = nbformat.read(str(copy), as_version=4)
        except UnicodeDecodeError as err:
            return LabReport(
                rel,
                [],
                f"cannot read it: it is not UTF-8 text (byte 0x{err.object[err.start]:02x} at "
                f"offset {err.start}), so not a notebook. {_restore_advice(rel, m)}",
            )
        except Exception as err:  # nbformat raises several types for a broken file; all mean the same here
            return LabReport(
                rel,
                [],
                f"cannot read it: it is not a valid notebook ({type(err).__name__}: "
                f"{str(err).splitlines()[0] if str(err) else ''}). {_restore_advice(rel, m)}",
            )
        checks = _check_cells(nb, m)
        if not checks:
            return LabReport(rel, [], "it has no check cells (`from course_utils.checks import check_...`)")
        # Run where the lab lives, so relative paths resolve as they do for the learner; only the copy is executed.
        client = notebook_client(nb, lab.parent, timeout, allow_errors=True)
        client.log = _QUIET  # nbclient's and jupyter_client's log lines are for developers, not learners
        try:
            with warnings.catch_warnings():  # e.g. DeprecationWarnings from the Jupyter stack
                warnings.simplefilter("ignore")
                # the kernel's own stderr ("running over TCP without encryption", ...) would land on the learner's
                # terminal; what the lab's cells print still reaches their outputs
                client.execute(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        except Exception as err:  # a kernel that died or a cell over the timeout: report what ran so far
            error = f"the run stopped early ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
        else:
            error = ""
        results = []
        for i, name, ex, ex_cell in checks:
            status, detail = _status(nb.cells[i])
            if status == "failed" and ex_cell is not None:
                ex_error = [o for o in nb.cells[ex_cell].get("outputs", []) if o.get("output_type") == "error"]
                if _status(nb.cells[ex_cell])[0] == "not started":
                    status, detail = "not started", ""  # the exercise cell itself still raises; its check cannot pass
                elif ex_error:  # e.g. a SyntaxError: the check itself only saw "name ... is not defined"
                    detail = _error_text(nb.cells[ex_cell], ex_error[0], f"your code for exercise {ex}")
                    if not detail.startswith(_SYNTAX):
                        detail = f"exercise {ex}'s cell raised {detail}"
            results.append(CheckResult(ex, name, status, detail))
        return LabReport(rel, results, error)


def progress(root: Path = Path("."), chapter: int | None = None, *, timeout: int = 600) -> list[LabReport]:
    """A report for every lab in ``root/labs`` (or only chapter ``chapter``)."""
    root = Path(root).resolve()
    if chapter is not None:
        check_int("chapter", chapter, 0)
    labs = sorted((root / "labs").glob("[0-9]*_*.ipynb"))
    if chapter is not None:
        labs = [p for p in labs if chapter_number(p) == chapter]
    return [lab_progress(p, root=root, timeout=timeout) for p in labs]


def _wrap(text: str, indent: str) -> str:
    """Each line of ``text`` wrapped at word boundaries (never mid-word), continuation lines indented deeper."""
    out = []
    for line in text.splitlines() or [""]:
        lead = line[: len(line) - len(line.lstrip())]
        out.append(
            textwrap.fill(
                line.strip(),
                WIDTH,
                initial_indent=indent + lead,
                subsequent_indent=indent + lead + "  ",
                break_long_words=False,
                break_on_hyphens=False,
            )
            or indent
        )
    return "\n".join(out)


def format_table(reports: list[LabReport]) -> str:
    """Per lab: its path once, a Markdown table (exercise, check, status), then each failure in full below it."""
    blocks = []
    for rep in reports:
        if rep.error and not rep.results:
            blocks.append(f"{rep.lab}\n⚠️ {rep.error}")  # one line: it holds commands to copy
            continue
        rows = [
            f"{rep.lab}: {rep.n_passed} of {len(rep.results)} checks pass",
            "",
            "| exercise | check | status |",
            "|---|---|---|",
        ]
        details = []
        for r in rep.results:
            more = " (details below)" if r.detail else ""
            rows.append(f"| {r.exercise} | `{r.check}` | {SYMBOL[r.status]} {r.status}{more} |")
            if r.detail:
                details.append(f"{SYMBOL[r.status]} {r.exercise} `{r.check}`:\n{_wrap(r.detail, '    ')}")
        if details:
            rows += ["", *details]
        if rep.error:
            rows += ["", f"⚠️ {rep.error}"]
        blocks.append("\n".join(rows))
    total = sum(len(r.results) for r in reports)
    done = sum(r.n_passed for r in reports)
    blocks.append(f"{done} of {total} checks pass.")
    return "\n\n".join(blocks)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m course_utils.progress", description=__doc__.split("\n\n")[0])
    parser.add_argument("--chapter", type=chapter_arg, help="only this chapter's lab (e.g. 4 or 04)")
    parser.add_argument("--root", default=".", help="the course folder (holds labs/)")
    parser.add_argument("--timeout", type=int, default=600, help="seconds a single cell may run")
    args = parser.parse_args(argv)
    reports = progress(Path(args.root), args.chapter, timeout=args.timeout)
    if not reports:
        where = f"chapter {args.chapter}'s lab" if args.chapter is not None else "a lab"
        print(f"no {where} in {Path(args.root).resolve() / 'labs'} (labs/NN_topic_lab.ipynb)", file=sys.stderr)
        return 2
    print(format_table(reports))
    return 1 if any(r.error for r in reports) else 0


if __name__ == "__main__":
    sys.exit(main())
