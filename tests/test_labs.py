"""The labs generator: solutions/ is the single source of labs/."""
import io
import json
from pathlib import Path

import nbformat
import pytest

from course_utils import labs
from course_utils.nbtools import code, md, write_notebook

ROOT = Path(__file__).resolve().parents[1]

SOLVED = '''def add(a, b):
    """Add two numbers."""
    ### BEGIN SOLUTION
    # hint: Python has an operator for this
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
    assert '    raise NotImplementedError("Exercise 3.1: Python has an operator for this")' in src
    # everything else is identical, including the check cell and the nbgrader metadata
    sol = nbformat.read(tmp_path / "solutions" / "03_demo_lab.ipynb", 4)
    assert lab.cells[4].source == sol.cells[4].source
    assert lab.cells[3].metadata["nbgrader"] == sol.cells[3].metadata["nbgrader"]
    assert lab.cells[0].source.endswith("/labs/03_demo_lab.ipynb)")  # the lab's badge opens the lab


def test_exercises_are_numbered_across_cells(tmp_path):
    second = SOLVED.replace("add", "add2").replace("Python has an operator for this", "same again")
    _build(_course(tmp_path, [code(SOLVED), code(second)]))
    lab = nbformat.read(tmp_path / "labs" / "03_demo_lab.ipynb", 4)
    assert "Exercise 3.1:" in lab.cells[2].source and "Exercise 3.2: same again" in lab.cells[3].source
    found = labs.exercises(nbformat.read(tmp_path / "solutions" / "03_demo_lab.ipynb", 4), 3)
    assert [(e.number, e.hint) for e in found] == [("3.1", "Python has an operator for this"), ("3.2", "same again")]


def test_generated_lab_raises_the_hint(tmp_path):
    _build(_course(tmp_path))
    lab = nbformat.read(tmp_path / "labs" / "03_demo_lab.ipynb", 4)
    scope: dict = {}
    exec(lab.cells[3].source, scope)
    with pytest.raises(NotImplementedError, match=r"Exercise 3\.1: Python has an operator"):
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
    assert all(c.get("outputs", []) == [] and c.get("execution_count") is None for c in lab.cells if c.cell_type == "code")


@pytest.mark.parametrize("source, message", [
    ("x = 1\n### BEGIN SOLUTION\nx = 2\n### END SOLUTION", "hint"),
    ("### BEGIN SOLUTION\n# hint: h\nx = 2", "never closed"),
    ("x = 1\n### END SOLUTION", "without"),
    ("### BEGIN SOLUTION\n# hint: h\n### BEGIN SOLUTION\n### END SOLUTION", "second"),
])
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
