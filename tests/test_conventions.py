"""The notebook conventions, defined once in course_utils.nbtools and read by labs and progress."""

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
