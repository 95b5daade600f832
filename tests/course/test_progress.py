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
SCRATCH_CHECKS = """
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
"""


def _exercise(name, answer):
    return new_code_cell(f"def {name}(x):\n    {BEGIN}\n    # hint: think about {name}\n    return {answer}\n    {END}")


def _check(name):
    return new_code_cell(f"from scratch_checks import check_{name}\ncheck_{name}({name})")


def make_course(root: Path) -> Path:
    """A course folder with labs/97_scratch_lab.ipynb: exercise 1 solved, 2 untouched, 3 answered wrongly."""
    sol = new_notebook(
        cells=[
            new_markdown_cell("# 97 · scratch"),
            _exercise("double", "x + x"),
            _check("double"),
            _exercise("square", "x * x"),
            _check("square"),
            _exercise("negate", "-x"),
            _check("negate"),
        ]
    )
    sync_notebook(sol, "solutions/97_scratch_lab.ipynb")
    lab = make_lab(sol, 97)
    lab.cells[3].source = sol.cells[3].source  # the learner solved 97.1
    lab.cells[7].source = sol.cells[7].source.replace("-x", "x")  # and got 97.3 wrong
    (root / "labs").mkdir(parents=True)
    (root / "labs" / "scratch_checks.py").write_text(SCRATCH_CHECKS)
    path = root / "labs" / "97_scratch_lab.ipynb"
    nbformat.write(lab, str(path))
    return path


def _snapshot(folder: Path) -> dict:
    # Python's bytecode cache (when PYTHONDONTWRITEBYTECODE is not set) is not the learner's work
    files = (p for p in sorted(folder.rglob("*")) if p.is_file() and "__pycache__" not in p.parts)
    return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in files}


@pytest.mark.slow
def test_progress_reports_each_check_and_leaves_the_lab_untouched(tmp_path):
    lab = make_course(tmp_path)
    os.utime(lab, ns=(1_600_000_000_000_000_000, 1_600_000_000_000_000_000))  # an mtime a write would change
    before = _snapshot(tmp_path / "labs")
    [report] = progress(tmp_path)
    assert _snapshot(tmp_path / "labs") == before, "the learner's files must not change (bytes or mtimes)"
    got = [(r.exercise, r.check, r.status) for r in report.results]
    assert got == [
        ("97.1", "check_double", "passed"),
        ("97.2", "check_square", "not started"),
        ("97.3", "check_negate", "failed"),
    ], got
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
    run = subprocess.run(
        [sys.executable, "-m", "course_utils.progress", "--root", str(tmp_path), "--chapter", "98"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 1, run.stdout + run.stderr
    assert "labs/98_broken_lab.ipynb" in run.stdout and "not a valid notebook" in run.stdout, run.stdout
    assert "git checkout labs/98_broken_lab.ipynb" in run.stdout
    # rebuild only the broken lab, and say that the build backs it up first
    assert "`python -m course_utils.labs build --only 98 --force`" in run.stdout and "labs/.backup/" in run.stdout
    assert run.stdout.count("labs/98_broken_lab.ipynb") == 2, "the heading, and once inside the git command"
    assert "97_scratch" not in run.stdout, "--chapter 98 must not run chapter 97"
    run = subprocess.run(
        [sys.executable, "-m", "course_utils.progress", "--root", str(tmp_path), "--chapter", "5"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2 and "no chapter 5's lab" in run.stderr, run.stderr
    assert _snapshot(tmp_path / "labs") == before


def test_bad_chapter_argument():
    with pytest.raises(ValueError, match="chapter must be a non-negative int"):
        progress(Path("."), chapter=-1)


# ---- what the learner sees (issue #18) -----------------------------------------------------------------------
LONG_HINT = (
    "negation flips the sign of every input, so a positive number becomes negative and a negative one "
    "positive; zero stays zero, and the function must not print or round anything on the way"
)


@pytest.mark.slow
def test_cli_names_a_syntax_error_shows_whole_messages_and_hides_kernel_noise(tmp_path):
    lab = make_course(tmp_path)
    checks = tmp_path / "labs" / "scratch_checks.py"
    checks.write_text(checks.read_text().replace('hint="-x"', f'hint="{LONG_HINT}"'))
    nb = nbformat.read(str(lab), 4)
    nb.cells[5].source = "def square(x):\n    y = (x\n    return x * x"  # 97.2: an unclosed parenthesis
    nbformat.write(nb, str(lab))
    run = subprocess.run(
        [sys.executable, "-m", "course_utils.progress", "--root", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = run.stdout
    assert run.returncode == 0, out + run.stderr
    assert run.stderr == "", f"kernel warnings reached the learner's screen: {run.stderr!r}"
    assert out.count("labs/97_scratch_lab.ipynb") == 1, out
    assert "SyntaxError in your code for exercise 97.2, line 2: '(' was never closed" in out, out
    assert "y = (x" in out and "NameError" not in out, out
    assert "expected -3, got 3" in out and "input: x=3" in out
    assert f"hint: {LONG_HINT}" in " ".join(out.split()), "the whole hint, wrapped but not cut"
    assert max(len(line) for line in out.splitlines()) <= 110, out


def test_failures_are_shown_whole_below_the_table_and_the_path_once():
    from course_utils.progress import CheckResult, LabReport

    detail = "check_negate: result: expected -3, got 3\n  input: x=3\n  hint: " + LONG_HINT
    report = LabReport(
        "labs/97_scratch_lab.ipynb",
        [CheckResult("97.1", "check_double", "passed"), CheckResult("97.3", "check_negate", "failed", detail)],
    )
    table = format_table([report])
    assert table.count("labs/97_scratch_lab.ipynb") == 1, table
    assert "| 97.3 | `check_negate` | ❌ failed (details below) |" in table
    words = table.split()
    for word in LONG_HINT.split():
        assert word in words, f"{word!r} was cut: {table}"
    assert "1 of 2 checks pass." in table


def test_a_lab_that_is_not_utf8_gets_one_line(tmp_path):
    from course_utils.progress import lab_progress

    (tmp_path / "labs").mkdir()
    lab = tmp_path / "labs" / "03_tiny_gpt_lab.ipynb"
    lab.write_bytes('{"cells": [], "metadata": {}, "source": "café"}'.encode("latin-1"))
    report = lab_progress(lab, root=tmp_path)
    assert report.results == [] and "\n" not in report.error
    assert "not UTF-8" in report.error and "0xe9" in report.error, report.error
    assert "`python -m course_utils.labs build --only 3 --force`" in report.error and "labs/.backup/" in report.error


@pytest.mark.parametrize("value", ["-1", "x"])
def test_bad_chapter_flag_is_an_argparse_error(capsys, value):
    from course_utils.progress import main

    with pytest.raises(SystemExit) as exc:
        main(["--chapter", value])
    assert exc.value.code == 2 and "--chapter" in capsys.readouterr().err


@pytest.mark.parametrize(
    "ename, evalue, expected",
    [
        (
            "IndentationError",
            "unexpected indent (3609324318.py, line 2)",
            "IndentationError in this cell, line 2: unexpected indent\n    return x",
        ),
        (
            "SyntaxError",
            "invalid syntax (3609324318.py, line 1)",
            "SyntaxError in this cell, line 1: invalid syntax\n    def f(x)",
        ),
    ],
)
def test_a_syntax_error_is_named_with_its_line(ename, evalue, expected):
    from course_utils.progress import _status

    cell = new_code_cell(
        "def f(x)\n        return x",
        execution_count=3,
        outputs=[nbformat.v4.new_output("error", ename=ename, evalue=evalue, traceback=[])],
    )
    assert _status(cell) == ("failed", expected)


def test_a_failed_check_keeps_the_where_line_of_its_box():
    from course_utils.progress import _status

    box = [
        "\x1b[31m❌ check_x: your function raised ZeroDivisionError\x1b[0m",
        "  where: line 2, in f: return 1 / x",
        "  input: x=0",
        "  hint: guard against zero",
        "─" * 40,
    ]
    cell = new_code_cell(
        "check_x(f)",
        execution_count=4,
        outputs=[
            nbformat.v4.new_output(
                "error",
                ename="CheckFailed",
                evalue="check_x: your function raised ZeroDivisionError\n  input: x=0",
                traceback=box,
            )
        ],
    )
    assert _status(cell) == (
        "failed",
        "check_x: your function raised ZeroDivisionError\n"
        "  where: line 2, in f: return 1 / x\n  input: x=0\n  hint: guard against zero",
    )
