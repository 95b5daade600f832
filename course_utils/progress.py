"""Where am I? ``python -m course_utils.progress [--chapter N]`` runs your labs and shows which checks pass.

For each ``labs/NN_topic_lab.ipynb`` a *temporary copy* is executed top to bottom in a fresh kernel (errors do not
stop the run); your notebook file is only read, never written. Each check cell's result is reported:

    ✅ passed    ❌ failed (first line of the check's explanation)    ⏳ not started (still NotImplementedError)
    ·  not run (an earlier cell failed in a way that stopped this one from producing output)

A lab that is not valid notebook JSON (a bad merge, a truncated save) gets a clear message instead of a table.
"""
from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import nbformat

from .nbtools import chapter_number, check_calls  # the course's conventions, defined once
from .validate import check_int

__all__ = ["CheckResult", "LabReport", "lab_progress", "progress", "format_table", "main"]

_EXERCISE = re.compile(r"Exercise (\d+\.\d+)")


@dataclass
class CheckResult:
    exercise: str      # "4.1"
    check: str         # "check_topk_router"
    status: str        # "passed" | "failed" | "not started" | "not run"
    detail: str = ""   # the first line of the check's explanation when it failed


@dataclass
class LabReport:
    lab: str                       # "labs/04_moe_lab.ipynb"
    results: list[CheckResult]
    error: str = ""                # set when the lab could not be read or run at all

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


def _status(cell) -> tuple[str, str]:
    outputs = cell.get("outputs", [])
    if cell.get("execution_count") is None and not outputs:
        return "not run", ""
    for out in outputs:
        if out.get("output_type") == "error":
            text = f"{out.get('ename')}: {out.get('evalue')}"
            if out.get("ename") == "NotImplementedError" or "NotImplementedError" in str(out.get("evalue")):
                return "not started", ""
            return "failed", text.splitlines()[0][:160]
    printed = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    if "✅" in printed:
        return "passed", ""
    return "failed", "the check printed no ✅ line"


def lab_progress(lab: Path, *, root: Path, timeout: int = 600) -> LabReport:
    """Execute a temporary copy of ``lab`` and report each check. ``lab`` itself is only read."""
    rel = lab.relative_to(root).as_posix() if lab.is_relative_to(root) else str(lab)
    with tempfile.TemporaryDirectory(prefix="course-progress-") as tmp:
        copy = Path(tmp) / lab.name
        shutil.copyfile(lab, copy)  # a snapshot: a save in JupyterLab during the run changes nothing here
        try:
            nb = nbformat.read(str(copy), as_version=4)
        except Exception as err:  # nbformat raises several types for a broken file; all mean the same here
            return LabReport(rel, [], f"cannot read {rel}: it is not a valid notebook ({type(err).__name__}: "
                                      f"{str(err).splitlines()[0] if str(err) else ''}). Restore it with "
                                      f"`git checkout {rel}` or rebuild it with "
                                      "`python -m course_utils.labs build --force` (your answers in it are lost).")
        checks = _check_cells(nb, chapter_number(lab))
        if not checks:
            return LabReport(rel, [], f"{rel} has no check cells (`from course_utils.checks import check_...`)")
        from nbclient import NotebookClient

        # Run where the lab lives, so relative paths resolve as they do for the learner; only the copy is executed.
        client = NotebookClient(nb, timeout=timeout, kernel_name="python3", allow_errors=True,
                                resources={"metadata": {"path": str(lab.parent)}})
        try:
            client.execute()
        except Exception as err:  # a kernel that died or a cell over the timeout: report what ran so far
            first = str(err).splitlines()[0] if str(err) else ""
            error = f"{rel}: the run stopped early ({type(err).__name__}: {first})"
        else:
            error = ""
        results = []
        for i, name, ex, ex_cell in checks:
            status, detail = _status(nb.cells[i])
            if status == "failed" and ex_cell is not None and _status(nb.cells[ex_cell])[0] == "not started":
                status, detail = "not started", ""  # the exercise cell itself still raises; its check cannot pass
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


def format_table(reports: list[LabReport]) -> str:
    """A Markdown table: lab, exercise, check, status (and the failure's first line)."""
    rows = ["| lab | exercise | check | status |", "|---|---|---|---|"]
    for rep in reports:
        if rep.error and not rep.results:
            rows.append(f"| {rep.lab} | | | ⚠️ {rep.error} |")
            continue
        for r in rep.results:
            detail = f" — {r.detail}" if r.detail else ""
            rows.append(f"| {rep.lab} | {r.exercise} | `{r.check}` | {SYMBOL[r.status]} {r.status}{detail} |")
        if rep.error:
            rows.append(f"| {rep.lab} | | | ⚠️ {rep.error} |")
    total = sum(len(r.results) for r in reports)
    done = sum(r.n_passed for r in reports)
    rows.append("")
    rows.append(f"{done} of {total} checks pass.")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m course_utils.progress", description=__doc__.split("\n\n")[0])
    parser.add_argument("--chapter", type=int, help="only this chapter's lab (e.g. 4)")
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
