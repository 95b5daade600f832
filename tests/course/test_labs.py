"""The labs generator: solutions/ is the single source of labs/."""

import io
import json
import re
from pathlib import Path

import nbformat
import pytest

from course_utils import labs, nbtools
from course_utils.nbtools import code, md, write_notebook

ROOT = Path(__file__).resolve().parents[2]
SOLUTION_PATHS = sorted((ROOT / "solutions").glob("*.ipynb"))

# Chapters whose labs are not yet rewritten with task lines, spec + graded hints and "Exercise N.M" headings.
# Remove as chapters are rewritten.
NOT_YET_REWRITTEN: list[int] = []


def _per_lab(paths=SOLUTION_PATHS):
    """Parametrize over solution notebooks; chapters in NOT_YET_REWRITTEN are expected to fail (not strictly)."""
    return [
        pytest.param(
            p,
            id=p.name,
            marks=pytest.mark.xfail(reason="chapter not rewritten yet", strict=False)
            if labs.chapter_of(p) in NOT_YET_REWRITTEN
            else (),
        )
        for p in paths
    ]


SOLVED = '''def add(a, b):
    """Add two numbers."""
    ### BEGIN SOLUTION
    # task: add the two numbers
    total = a + b
    return total
    ### END SOLUTION'''


def _course(tmp_path, cells=None, name="03_demo_lab.ipynb"):
    cells = cells or [md("# Demo"), code(SOLVED), code("from course_utils.checks import check_add\ncheck_add(add)")]
    write_notebook(tmp_path / "solutions" / name, cells, root=tmp_path)
    return tmp_path


def _build(root, **kw):
    out = io.StringIO()
    code_ = labs.build(root, out=out, **kw)
    return code_, out.getvalue()


def test_region_becomes_not_implemented_with_numbered_hint(tmp_path):
    _build(_course(tmp_path))
    lab = nbformat.read(tmp_path / "labs" / "03_demo_lab.ipynb", 4)
    src = lab.cells[3].source
    assert "return total" not in src and "BEGIN SOLUTION" not in src
    assert src.splitlines()[:2] == ["def add(a, b):", '    """Add two numbers."""']
    assert "    # Exercise 3.1 — add the two numbers" in src
    assert '    raise NotImplementedError("Exercise 3.1: add the two numbers")' in src
    # everything else is identical, including the check cell and the nbgrader metadata
    sol = nbformat.read(tmp_path / "solutions" / "03_demo_lab.ipynb", 4)
    assert lab.cells[4].source == sol.cells[4].source
    assert lab.cells[3].metadata["nbgrader"] == sol.cells[3].metadata["nbgrader"]
    assert lab.cells[0].source.endswith("/labs/03_demo_lab.ipynb)")  # the lab's badge opens the lab


def test_exercises_are_numbered_across_cells(tmp_path):
    second = SOLVED.replace("add(", "add2(").replace("add the two numbers", "same again")
    _build(_course(tmp_path, [code(SOLVED), code(second)]))
    lab = nbformat.read(tmp_path / "labs" / "03_demo_lab.ipynb", 4)
    assert "Exercise 3.1:" in lab.cells[2].source and "Exercise 3.2: same again" in lab.cells[3].source
    found = labs.exercises(nbformat.read(tmp_path / "solutions" / "03_demo_lab.ipynb", 4), 3)
    assert [(e.number, e.task) for e in found] == [("3.1", "add the two numbers"), ("3.2", "same again")]


def test_generated_lab_raises_the_hint(tmp_path):
    _build(_course(tmp_path))
    lab = nbformat.read(tmp_path / "labs" / "03_demo_lab.ipynb", 4)
    scope: dict = {}
    exec(lab.cells[3].source, scope)
    with pytest.raises(NotImplementedError, match=r"Exercise 3\.1: add the two numbers"):
        scope["add"](1, 2)


def test_outputs_are_cleared(tmp_path):
    root = _course(tmp_path)
    path = root / "solutions" / "03_demo_lab.ipynb"
    nb = nbformat.read(path, 4)
    nb.cells[4].outputs = [nbformat.v4.new_output("stream", text="✅ passed")]
    nb.cells[4].execution_count = 7
    nbformat.write(nb, path)
    _build(root)
    lab = nbformat.read(root / "labs" / "03_demo_lab.ipynb", 4)
    assert all(
        c.get("outputs", []) == [] and c.get("execution_count") is None for c in lab.cells if c.cell_type == "code"
    )


@pytest.mark.parametrize(
    "source, message",
    [
        ("x = 1\n### BEGIN SOLUTION\nx = 2\n### END SOLUTION", "task"),
        ("### BEGIN SOLUTION\n# hint: h\nx = 2", "never closed"),
        ("x = 1\n### END SOLUTION", "without"),
        ("### BEGIN SOLUTION\n# hint: h\n### BEGIN SOLUTION\n### END SOLUTION", "second"),
    ],
)
def test_malformed_markers_are_reported(tmp_path, source, message):
    root = _course(tmp_path, [code(source)])
    with pytest.raises(labs.LabError, match=message):
        _build(root)


def test_a_solution_without_exercises_is_an_error(tmp_path):
    with pytest.raises(labs.LabError, match="no .* exercise"):
        _build(_course(tmp_path, [code("x = 1")]))


def test_badly_named_solution_is_an_error(tmp_path):
    with pytest.raises(labs.LabError, match="NN_topic"):
        _build(_course(tmp_path, name="demo_lab.ipynb"))


def test_check_reports_stale_and_orphan_labs(tmp_path):
    root = _course(tmp_path)
    assert _build(root, check=True)[0] == 1  # never built
    assert _build(root)[0] == 0
    code_, out = _build(root, check=True)
    assert code_ == 0 and "up to date" in out
    path = root / "solutions" / "03_demo_lab.ipynb"
    nb = nbformat.read(path, 4)
    nb.cells[2].source = "# Demo, revised"
    nbformat.write(nb, path)
    code_, out = _build(root, check=True)
    assert code_ == 1 and "labs/03_demo_lab.ipynb is stale" in out
    _build(root)
    (root / "labs" / "09_gone_lab.ipynb").write_text("{}")
    code_, out = _build(root, check=True)
    assert code_ == 1 and "09_gone_lab.ipynb has no solutions" in out


def test_learner_work_is_never_overwritten_without_force(tmp_path):
    root = _course(tmp_path)
    _build(root)
    lab_path = root / "labs" / "03_demo_lab.ipynb"
    learner = lab_path.read_text().replace("raise NotImplementedError", "return a + b  #")
    lab_path.write_text(learner)
    path = root / "solutions" / "03_demo_lab.ipynb"
    nb = nbformat.read(path, 4)
    nb.cells[2].source = "# Demo, revised"
    nbformat.write(nb, path)
    code_, out = _build(root)
    assert code_ == 1 and "refusing to overwrite labs/03_demo_lab.ipynb" in out and "--force" in out
    assert lab_path.read_text() == learner  # the learner's bytes are untouched
    code_, out = _build(root, force=True)
    assert code_ == 0 and "Demo, revised" in lab_path.read_text()


def test_unchanged_labs_are_rewritten_freely_when_the_solution_changes(tmp_path):
    root = _course(tmp_path)
    _build(root)
    manifest = json.loads((root / "labs" / labs.MANIFEST).read_text())
    assert set(manifest) == {"03_demo_lab.ipynb"}
    path = root / "solutions" / "03_demo_lab.ipynb"
    nb = nbformat.read(path, 4)
    nb.cells[2].source = "# Demo, revised"
    nbformat.write(nb, path)
    assert _build(root)[0] == 0


def test_cli_exit_codes(tmp_path, capsys):
    root = _course(tmp_path)
    assert labs.main(["build", "--root", str(root), "--check"]) == 1
    assert labs.main(["build", "--root", str(root)]) == 0
    assert labs.main(["build", "--root", str(root), "--check"]) == 0
    bad = _course(tmp_path / "bad", [code("### BEGIN SOLUTION\nx = 1\n### END SOLUTION")])
    assert labs.main(["build", "--root", str(bad)]) == 2
    assert "error:" in capsys.readouterr().err


def test_repository_labs_are_in_sync_with_solutions():
    out = io.StringIO()
    assert labs.build(ROOT, check=True, out=out) == 0, out.getvalue()


def test_the_old_hint_line_is_still_accepted(tmp_path):
    _build(_course(tmp_path, [code(SOLVED.replace("# task:", "# hint:"))]))
    lab = nbformat.read(tmp_path / "labs" / "03_demo_lab.ipynb", 4)
    assert "# Exercise 3.1 — add the two numbers" in lab.cells[2].source


def test_nbgrader_source_keeps_the_task_line_outside_the_region():
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(SOLVED)])
    src = labs.nbgrader_source(nb, 3).cells[0].source.splitlines()
    at = src.index("    ### BEGIN SOLUTION")
    assert src[at - 1] == "    # Exercise 3.1 — add the two numbers"  # nbgrader replaces only what follows
    assert src[at + 1 :] == ["    total = a + b", "    return total", "    ### END SOLUTION"]
    assert nb.cells[0].source == SOLVED  # the input is not modified


GOOD_MD = """## Exercise 3.1 — addition

`add(a, b)` takes two numbers and returns their sum; ints stay ints, floats stay floats.

<details><summary>Hint 1</summary>

Python already knows how to do this.

</details>
<details><summary>Hint 2</summary>

$a + b$

</details>
<details><summary>Hint 3</summary>

One binary operator between the two arguments.

</details>"""


@pytest.mark.parametrize(
    "markdown, problem",
    [
        (GOOD_MD, None),
        (GOOD_MD.replace("Exercise 3.1", "Exercise 3.2"), "heading says Exercise 3.2, the stub says Exercise 3.1"),
        (GOOD_MD.replace("## Exercise 3.1 — addition", "## Addition"), "no heading"),
        (GOOD_MD.replace("<summary>Hint 3</summary>", "<summary>More</summary>"), r"hints \['1', '2'\]"),
        (GOOD_MD.replace("Python already knows how to do this.", ""), "empty hint"),
        (
            GOOD_MD.replace(
                "`add(a, b)` takes two numbers and returns their sum; ints stay ints, floats stay floats.", "Add."
            ),
            "no spec",
        ),
    ],
)
def test_lint_finds_missing_heading_spec_and_hints(markdown, problem):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(markdown), nbformat.v4.new_code_cell(SOLVED)])
    found = labs.lint(nb, 3)
    if problem is None:
        assert found == {}
    else:
        assert len(found["3.1"]) == 1 and re.search(problem, found["3.1"][0]), found


def test_leaked_lines_finds_a_solution_line_in_the_stub():
    leaky = SOLVED.replace("# task: add the two numbers", "# task: write total = a + b then return it")
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(leaky)])
    assert labs.leaked_lines(nb, labs.make_lab(nb, 3)) == [(0, "total = a + b")]
    clean = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(SOLVED)])
    assert labs.leaked_lines(clean, labs.make_lab(clean, 3)) == []
    # trivial lines give nothing away, whatever the stub says
    assert labs.solution_lines("### BEGIN SOLUTION\n# task: t\nx = 1\n# why\n\nreturn\n)\npass\n### END SOLUTION") == [
        "x = 1"
    ]


@pytest.mark.parametrize("path", _per_lab())
def test_no_solution_line_appears_in_the_lab(path):
    """No line of an answer (beyond `return`, `pass`, brackets) is shown in the lab's exercise cell."""
    nb = nbformat.read(path, 4)
    leaks = labs.leaked_lines(nb, labs.make_lab(nb, labs.chapter_of(path)))
    assert not leaks, f"{path.name}: the lab shows solution lines verbatim: {leaks}"


@pytest.mark.parametrize("path", _per_lab())
def test_exercise_heading_and_stub_agree(path):
    nb = nbformat.read(path, 4)
    bad = {
        n: [p for p in ps if "heading" in p or "no markdown" in p]
        for n, ps in labs.lint(nb, labs.chapter_of(path)).items()
    }
    bad = {n: ps for n, ps in bad.items() if ps}
    assert not bad, f"{path.name}: headings should read '## Exercise N.M — title' with the stub's N.M: {bad}"


@pytest.mark.parametrize("path", _per_lab())
def test_every_exercise_has_a_spec_and_three_graded_hints(path):
    nb = nbformat.read(path, 4)
    bad = labs.lint(nb, labs.chapter_of(path))
    assert not bad, f"{path.name}: {bad}"


@pytest.mark.parametrize("path", _per_lab())
def test_every_check_names_the_exercise_it_grades(path):
    """A check cell after exercise N.M calls a check declared with @exercise("N.M") (course_utils.checks._core)."""
    import re

    from course_utils.checks import all_checks

    checks = all_checks()
    nb = nbformat.read(path, 4)
    by_cell = {e.cell_index: e.number for e in labs.exercises(nb, labs.chapter_of(path))}
    current, wrong = None, []
    for i, cell in enumerate(nb.cells):
        if i in by_cell:
            current = by_cell[i]
        elif cell.cell_type == "code" and current:
            if nbtools.NO_POINTS.search(cell.source):
                continue  # a check of earlier answers (0 points) grades no exercise of its own
            for name in re.findall(r"\b(check_\w+)\(", cell.source):
                if name in checks and getattr(checks[name], "exercise", None) != current:
                    wrong.append(
                        f"{name} follows Exercise {current} but declares {getattr(checks[name], 'exercise', None)}"
                    )
    assert not wrong, f"{path.name}: {wrong}"


def test_a_check_that_reuses_earlier_answers_carries_no_points(tmp_path):
    reuse = code(
        "from course_utils.checks import check_add\n# reuses Exercise 3.1: no points of its own\ncheck_add(add)"
    )
    root = _course(
        tmp_path,
        [
            code(SOLVED),
            code("from course_utils.checks import check_add\ncheck_add(add)"),
            code(SOLVED.replace("add(", "add2(")),
            reuse,
        ],
    )
    nb = nbformat.read(root / "solutions" / "03_demo_lab.ipynb", 4)
    points = [c.metadata["nbgrader"]["points"] for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade")]
    assert points == [1, 0]


# ---- learner files: backups, --only, damaged manifest or lab (issue #18) ---------------------------------------
def _revise(root, name="03_demo_lab.ipynb", text="# Demo, revised"):
    path = root / "solutions" / name
    nb = nbformat.read(path, 4)
    nb.cells[2].source = text
    nbformat.write(nb, path)


def test_force_backs_up_every_lab_whose_content_changes(tmp_path):
    root = _course(tmp_path)
    _course(root, name="04_other_lab.ipynb")
    _build(root)
    lab_path, other = root / "labs" / "03_demo_lab.ipynb", root / "labs" / "04_other_lab.ipynb"
    learner = lab_path.read_bytes().replace(b"raise NotImplementedError", b"return a + b  #")
    lab_path.write_bytes(learner)
    _revise(root)
    code_, out = _build(root, force=True)
    assert code_ == 0 and "Demo, revised" in lab_path.read_text()
    [saved] = sorted((root / "labs" / labs.BACKUP_DIR).iterdir())
    assert saved.read_bytes() == learner, "the backup holds the learner's bytes"
    assert re.fullmatch(r"03_demo_lab\.\d{8}T\d{6}Z\.ipynb", saved.name), saved.name
    assert f"backed up labs/03_demo_lab.ipynb to labs/.backup/{saved.name}" in out
    assert "04_other" not in out, "an unchanged lab is neither rewritten nor backed up"
    # a second forced build in the same second never overwrites the first backup
    lab_path.write_bytes(learner)
    _build(root, force=True)
    assert len(list((root / "labs" / labs.BACKUP_DIR).iterdir())) == 2 and saved.read_bytes() == learner
    # backups are not labs: --check and the manifest ignore them
    code_, out = _build(root, check=True)
    assert code_ == 0 and "up to date" in out and "backup" not in out
    manifest = json.loads((root / "labs" / labs.MANIFEST).read_text())
    assert set(manifest) == {"03_demo_lab.ipynb", "04_other_lab.ipynb"}
    assert other.exists()


def test_backups_are_ignored_by_git():
    lines = (ROOT / ".gitignore").read_text().splitlines()
    assert "labs/.backup/" in lines, "labs/.backup/ must be in .gitignore"


def test_only_rebuilds_one_lab_and_leaves_the_others_untouched(tmp_path):
    root = _course(tmp_path)
    _course(root, name="04_other_lab.ipynb")
    _build(root)
    other = root / "labs" / "04_other_lab.ipynb"
    other.write_text(other.read_text().replace("raise NotImplementedError", "return a - b  #"))  # learner work
    before = (other.read_bytes(), other.stat().st_mtime_ns)
    _revise(root)
    _revise(root, "04_other_lab.ipynb")
    for only in ("3", "03"):  # as the CLI reads it
        assert labs.main(["build", "--root", str(root), "--only", only, "--force"]) == 0
    assert "Demo, revised" in (root / "labs" / "03_demo_lab.ipynb").read_text()
    assert (other.read_bytes(), other.stat().st_mtime_ns) == before, "--only 3 must not touch chapter 4's lab"
    assert not list((root / "labs" / labs.BACKUP_DIR).glob("04_*")), "nor back it up"
    manifest = json.loads((root / "labs" / labs.MANIFEST).read_text())
    assert set(manifest) == {"03_demo_lab.ipynb", "04_other_lab.ipynb"}, "other labs keep their manifest entry"
    code_, out = _build(root, check=True, only=3)
    assert code_ == 0 and out.strip() == "labs/03_demo_lab.ipynb is up to date"
    assert _build(root, check=True)[0] == 1  # chapter 4 is still stale


@pytest.mark.parametrize(
    "value, message", [("x", "chapter number"), ("-1", "chapter number"), ("9", "no solution notebook for chapter 9")]
)
def test_bad_only_is_an_argparse_error_naming_the_flag(tmp_path, capsys, value, message):
    root = _course(tmp_path)
    with pytest.raises(SystemExit) as exc:
        labs.main(["build", "--root", str(root), "--only", value])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--only" in err and message in err, err
    with pytest.raises(ValueError, match="only must be"):
        labs.build(root, only="3")


@pytest.mark.parametrize("manifest", [b'{"03_demo_lab.ipynb": "ab', b"\xff\xfe[]", b"[1, 2]"])
def test_a_corrupt_manifest_gets_one_line_and_no_learner_work_is_lost(tmp_path, manifest):
    root = _course(tmp_path)
    _build(root)
    lab_path = root / "labs" / "03_demo_lab.ipynb"
    learner = lab_path.read_text().replace("raise NotImplementedError", "return a + b  #")
    lab_path.write_text(learner)
    (root / "labs" / labs.MANIFEST).write_bytes(manifest)
    _revise(root)
    code_, out = _build(root)
    [warning] = [ln for ln in out.splitlines() if ".generated.json" in ln]
    assert warning.startswith("warning: labs/.generated.json is not") and "Traceback" not in out
    assert code_ == 1 and lab_path.read_text() == learner, "without a manifest an edited lab is refused"
    assert json.loads((root / "labs" / labs.MANIFEST).read_text()) == {}  # rewritten, the refused lab left out
    assert _build(root, force=True)[0] == 0


def test_a_lab_that_is_not_utf8_is_refused_or_backed_up_not_a_traceback(tmp_path):
    root = _course(tmp_path)
    _build(root)
    lab_path = root / "labs" / "03_demo_lab.ipynb"
    latin1 = lab_path.read_bytes().replace(b"raise NotImplementedError", b"return 'caf\xe9'  #")  # a Latin-1 save
    lab_path.write_bytes(latin1)
    code_, out = _build(root, check=True)
    assert code_ == 1 and "03_demo_lab.ipynb is stale" in out
    code_, out = _build(root)
    assert code_ == 1 and "refusing to overwrite labs/03_demo_lab.ipynb" in out and lab_path.read_bytes() == latin1
    code_, out = _build(root, force=True)
    assert code_ == 0 and [p.read_bytes() for p in (root / "labs" / labs.BACKUP_DIR).iterdir()] == [latin1]
