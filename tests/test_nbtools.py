"""course_utils.nbtools: the notebook conventions (markers, check cells, chapter numbers) defined once and read by
labs and progress, and the header and metadata that write_notebook and `sync` put in every notebook."""

import nbformat
import pytest

from course_utils import labs, nbtools, progress


def test_markers_are_one_object():
    assert labs.BEGIN is nbtools.BEGIN == "### BEGIN SOLUTION" and labs.END is nbtools.END == "### END SOLUTION"


def test_check_calls_needs_an_import_and_a_call():
    assert nbtools.check_calls("from course_utils.checks import check_route\ncheck_route(route)") == ["check_route"]
    assert nbtools.check_calls("check_route(route)") == []  # a call without the import is not a check cell
    assert nbtools.check_calls("from course_utils.checks import check_route") == []  # an import without a call
    assert nbtools._CHECK_CALL is nbtools.CHECK_CALL  # the old private name still works


def test_chapter_numbers():
    assert nbtools.chapter_number("labs/04_moe_layer_lab.ipynb") == 4
    assert nbtools.chapter_number("notes.ipynb") is None
    assert nbtools.chapter_of("08_serving.ipynb") == 8
    with pytest.raises(ValueError, match="NN_topic"):
        nbtools.chapter_of("notes.ipynb")
    with pytest.raises(labs.LabError, match="NN_topic"):  # labs keeps its own error type for the CLI
        labs.chapter_of("notes.ipynb")
    assert not hasattr(labs, "lab_path_for")
    assert progress.chapter_number is nbtools.chapter_number


def test_md_and_code_strip_blank_edges_and_tag():
    assert nbtools.md("\n\n# Title\n\n").source == "# Title"
    cell = nbtools.code("\nx = 1\n", tags=["nbval-ignore-output"])
    assert cell.source == "x = 1" and cell.metadata["tags"] == ["nbval-ignore-output"]
    assert "tags" not in nbtools.code("y = 2").metadata


def _scratch_cells():
    return [
        nbtools.md("# 97 · scratch"),
        nbtools.code(f"def double(x):\n    {nbtools.BEGIN}\n    # task: double x\n    return x + x\n    {nbtools.END}"),
        nbtools.code("from course_utils.checks import check_double\ncheck_double(double)"),
    ]


def test_write_notebook_adds_the_header_and_nbgrader_metadata(tmp_path):
    path = nbtools.write_notebook(tmp_path / "solutions" / "97_scratch_lab.ipynb", _scratch_cells(), root=tmp_path)
    nb = nbformat.read(path, as_version=4)
    badge, boot, title, exercise, check = nb.cells
    assert badge.source == nbtools.badge_source("solutions/97_scratch_lab.ipynb")
    assert nbtools.colab_url("solutions/97_scratch_lab.ipynb") in badge.source
    assert badge.metadata["tags"] == [nbtools.BADGE_TAG] and boot.metadata["tags"] == [nbtools.BOOTSTRAP_TAG]
    assert boot.source == nbtools.BOOTSTRAP_SOURCE and title.source == "# 97 · scratch"
    assert exercise.metadata["nbgrader"]["solution"] and exercise.metadata["nbgrader"]["grade_id"] == "ex_97_1"
    assert check.metadata["nbgrader"]["grade"] and check.metadata["nbgrader"]["locked"]
    assert all("id" not in c for c in nb.cells) and all(not c.get("outputs") for c in nb.cells)
    lesson = nbtools.write_notebook(tmp_path / "notebooks" / "97_scratch.ipynb", _scratch_cells(), root=tmp_path)
    assert all("nbgrader" not in c.metadata for c in nbformat.read(lesson, as_version=4).cells)  # solutions/ only


def test_sync_round_trip_repairs_a_hand_edited_notebook_and_then_changes_nothing(tmp_path, capsys):
    path = nbtools.write_notebook(tmp_path / "solutions" / "97_scratch_lab.ipynb", _scratch_cells(), root=tmp_path)
    written = path.read_text(encoding="utf-8")
    assert nbtools.main(["sync", "--check", "--root", str(tmp_path)]) == 0
    nb = nbformat.read(path, as_version=4)
    del nb.cells[0]  # a hand edit drops the badge and the exercise's grading metadata
    nb.cells[2].metadata.pop("nbgrader")
    nbformat.write(nb, str(path))
    assert nbtools.main(["sync", "--check", "--root", str(tmp_path)]) == 1
    assert "out of date" in capsys.readouterr().out
    assert nbtools.main(["sync", "--root", str(tmp_path)]) == 0
    assert path.read_text(encoding="utf-8") == written  # back to exactly what write_notebook wrote
    assert nbtools.main(["sync", "--check", "--root", str(tmp_path)]) == 0
