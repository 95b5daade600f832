"""``python -m course_utils.progress``: runs a temporary copy of each lab and reports every check's status."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from course_utils.labs import BEGIN, END, make_lab
from course_utils.nbtools import sync_notebook
from course_utils.progress import format_table, progress

# Checks for the scratch lab live next to it; the lab runs with labs/ as its working folder, like the learner's.
SCRATCH_CHECKS = '''
from course_utils.checks._core import call, compare, passed

def check_double(fn):
    compare("check_double", call("check_double", fn, 3), 6, inputs={"x": 3}, hint="x + x")
    passed("check_double", 1)

def check_square(fn):
    compare("check_square", call("check_square", fn, 3), 9, inputs={"x": 3}, hint="x * x")
    passed("check_square", 1)

def check_negate(fn):
    compare("check_negate", call("check_negate", fn, 3), -3, inputs={"x": 3}, hint="-x")
    passed("check_negate", 1)
'''


def _exercise(name, answer):
    return new_code_cell(f"def {name}(x):\n    {BEGIN}\n    # hint: think about {name}\n    return {answer}\n    {END}")


def _check(name):
    return new_code_cell(f"from scratch_checks import check_{name}\ncheck_{name}({name})")


def make_course(root: Path) -> Path:
    """A course folder with labs/97_scratch_lab.ipynb: exercise 1 solved, 2 untouched, 3 answered wrongly."""
    sol = new_notebook(cells=[new_markdown_cell("# 97 · scratch"), _exercise("double", "x + x"), _check("double"),
                              _exercise("square", "x * x"), _check("square"), _exercise("negate", "-x"),
                              _check("negate")])
    sync_notebook(sol, "solutions/97_scratch_lab.ipynb")
    lab = make_lab(sol, 97)
    lab.cells[3].source = sol.cells[3].source                      # the learner solved 97.1
    lab.cells[7].source = sol.cells[7].source.replace("-x", "x")   # and got 97.3 wrong
    (root / "labs").mkdir(parents=True)
    (root / "labs" / "scratch_checks.py").write_text(SCRATCH_CHECKS)
    path = root / "labs" / "97_scratch_lab.ipynb"
    nbformat.write(lab, str(path))
    return path


def _snapshot(folder: Path) -> dict:
    return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_progress_reports_each_check_and_leaves_the_lab_untouched(tmp_path):
    lab = make_course(tmp_path)
    os.utime(lab, ns=(1_600_000_000_000_000_000, 1_600_000_000_000_000_000))  # an mtime a write would change
    before = _snapshot(tmp_path / "labs")
    [report] = progress(tmp_path)
    assert _snapshot(tmp_path / "labs") == before, "the learner's files must not change (bytes or mtimes)"
    got = [(r.exercise, r.check, r.status) for r in report.results]
    assert got == [("97.1", "check_double", "passed"), ("97.2", "check_square", "not started"),
                   ("97.3", "check_negate", "failed")], got
    assert "expected -3, got 3" in report.results[2].detail
    table = format_table([report])
    assert "✅ passed" in table and "⏳ not started" in table and "❌ failed" in table
    assert "1 of 3 checks pass." in table


@pytest.mark.slow
def test_cli_chapter_filter_and_a_lab_that_does_not_parse(tmp_path):
    make_course(tmp_path)
    broken = tmp_path / "labs" / "98_broken_lab.ipynb"
    broken.write_text('{"cells": [ {"cell_type": "code", "source": "x = ')  # a truncated save
    before = _snapshot(tmp_path / "labs")
    run = subprocess.run([sys.executable, "-m", "course_utils.progress", "--root", str(tmp_path), "--chapter", "98"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "labs/98_broken_lab.ipynb" in run.stdout and "not a valid notebook" in run.stdout, run.stdout
    assert "git checkout labs/98_broken_lab.ipynb" in run.stdout
    assert "97_scratch" not in run.stdout, "--chapter 98 must not run chapter 97"
    run = subprocess.run([sys.executable, "-m", "course_utils.progress", "--root", str(tmp_path), "--chapter", "5"],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and "no chapter 5's lab" in run.stderr, run.stderr
    assert _snapshot(tmp_path / "labs") == before


def test_bad_chapter_argument():
    with pytest.raises(ValueError, match="chapter must be a non-negative int"):
        progress(Path("."), chapter=-1)
