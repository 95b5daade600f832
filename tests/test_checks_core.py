"""The lab-check machinery: messages that say what differed, and a proof that every check can fail."""

import ast
from pathlib import Path

import numpy as np
import pytest
import torch

from course_utils.checks import CheckFailed, all_checks
from course_utils.checks._core import call, compare, describe, fail, passed

ROOT = Path(__file__).resolve().parents[1]


def _message(fn, *args, **kwargs) -> str:
    with pytest.raises(CheckFailed) as info:
        fn(*args, **kwargs)
    return str(info.value)


def test_check_failed_is_an_assertion_error():
    assert issubclass(CheckFailed, AssertionError)


def test_tensor_shape_dtype_and_first_mismatch_are_named():
    expected = torch.arange(6.0).reshape(2, 3)
    assert "expected shape (2, 3), got (3, 2)" in _message(compare, "check_x", expected.T, expected)
    msg = _message(compare, "check_x", expected.double(), expected, check_dtype=True)
    assert "expected dtype torch.float32, got torch.float64" in msg
    wrong = expected.clone()
    wrong[1, 2] = 99
    msg = _message(compare, "check_x", wrong, expected, inputs={"n": 3}, hint="look at the last column")
    assert msg.startswith("check_x: result: 1 of 6 values differ; first at index (1, 2): expected 5, got 99")
    assert "input: n=3" in msg and "hint: look at the last column" in msg
    assert "expected an array/tensor of shape (1, 1), got list" in _message(
        compare, "check_x", [[0.0]], torch.zeros(1, 1)
    )
    assert "expected a torch.Tensor, got ndarray" in _message(compare, "check_x", np.zeros((1, 1)), torch.zeros(1, 1))


def test_close_values_pass_and_nan_matches_nan():
    compare("check_x", torch.tensor([1.0, float("nan")]), torch.tensor([1.0 + 1e-7, float("nan")]))
    compare("check_x", np.array([0.5]), np.array([0.5]))
    compare("check_x", 0.1 + 0.2, 0.3)


def test_nested_containers_point_at_the_difference():
    assert "result[(1, 2)]: expected 2, got 1" in _message(compare, "check_x", {(1, 2): 1}, {(1, 2): 2})
    assert "missing key (3, 4)" in _message(compare, "check_x", {(1, 2): 1}, {(1, 2): 1, (3, 4): 1})
    assert "unexpected key 'z'" in _message(compare, "check_x", {"a": 1, "z": 2}, {"a": 1})
    assert "result[2]: expected 3, got 4" in _message(compare, "check_x", [1, 2, 4], [1, 2, 3])
    assert "expected length 3, got 2" in _message(compare, "check_x", [1, 2], [1, 2, 3])
    assert "expected 0.3, got 0.4" in _message(compare, "check_x", 0.4, 0.3)


def test_call_explains_unfinished_and_crashing_functions():
    def todo(x):
        raise NotImplementedError("Exercise 1.1: count pairs")

    msg = _message(call, "check_x", todo, 1)
    assert "still raises NotImplementedError(Exercise 1.1: count pairs)" in msg
    msg = _message(call, "check_x", lambda x: [][x], 3, inputs={"x": 3})
    assert "raised IndexError" in msg and "input: x=3" in msg
    assert "expected a function" in _message(call, "check_x", 42)
    assert call("check_x", lambda x: x + 1, 1) == 2


def test_fail_and_passed_formats(capsys):
    assert _message(fail, "check_y", "went wrong") == "check_y: went wrong"
    passed("check_y", 4, "matches tiktoken")
    assert capsys.readouterr().out == "✅ check_y passed (4 cases) — matches tiktoken\n"
    assert describe(torch.zeros(2, 10)).startswith("tensor(shape=(2, 10), dtype=torch.float32")
    assert len(describe(list(range(1000)))) <= 120


def _rejection_tests() -> set[str]:
    """Names of checks that some test passes to assert_check_rejects(...)."""
    names = set()
    for path in (ROOT / "tests").rglob("test_*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "assert_check_rejects" and node.args:
                first = node.args[0]
                names.add(first.attr if isinstance(first, ast.Attribute) else getattr(first, "id", ""))
    return names


def test_every_check_is_shown_to_reject_a_wrong_implementation():
    checks = set(all_checks())
    missing = sorted(checks - _rejection_tests())
    assert not missing, f"checks without a test that feeds them a wrong implementation: {missing}"


def test_every_check_used_in_a_solution_exists():
    import re

    used = set()
    for path in (ROOT / "solutions").glob("*.ipynb"):
        used |= set(re.findall(r"\b(check_\w+)\(", path.read_text(encoding="utf-8")))
    assert used <= set(all_checks()), f"solutions call unknown checks: {sorted(used - set(all_checks()))}"


# --- what the learner sees: the exercise number, a short box instead of a traceback, readable inputs ----------


def _registered_check():
    from course_utils.checks._core import exercise

    @exercise("9.4")
    def check_demo_sum(fn):
        xs = torch.linspace(0, 1, 50, dtype=torch.float64)
        compare(
            "check_demo_sum",
            call("check_demo_sum", fn, xs, inputs={"xs": xs}),
            xs.sum().item(),
            inputs={"xs": xs, "weights": [0.123456789, 2.0, 1e-9]},
            hint="add every element",
        )
        passed("check_demo_sum", 1)

    return check_demo_sum


def test_exercise_number_appears_in_failures_and_success(capsys):
    check = _registered_check()
    assert check.exercise == "9.4"
    msg = _message(check, lambda xs: xs[:-1].sum().item())
    assert msg.startswith("check_demo_sum (Exercise 9.4): result: expected 25")
    check(lambda xs: float(xs.sum()))
    assert capsys.readouterr().out.startswith("✅ check_demo_sum passed (Exercise 9.4, 1 cases)")
    from course_utils.checks._core import exercise

    with pytest.raises(ValueError, match="N.M"):
        exercise("4")


def test_a_failure_renders_as_a_short_box_not_a_traceback():
    check = _registered_check()
    with pytest.raises(CheckFailed) as info:
        check(lambda xs: xs[:-1].sum().item())
    box = info.value._render_traceback_()
    text = "\n".join(box)
    assert 3 <= len(box) <= 8, text
    assert "Exercise 9.4" in box[0] and "expected 25" in box[0]
    assert "hint: add every element" in text
    # the input: shape and a few values at 4 significant digits, not 16-digit floats or 50 values
    assert "xs=tensor(shape=(50,), dtype=torch.float64, values=[0.0, 0.02041, 0.04082," in text
    assert "weights=[0.1235, 2.0, 1e-09]" in text
    assert "0.0204081632" not in text and "0.123456789" not in text
    assert "Traceback" not in text and "_core.py" not in text


def test_a_crash_in_the_learners_code_points_at_their_line():
    check = _registered_check()

    def buggy(xs):
        total = xs.sum()
        return total.item() + xs[100].item()  # out of range: the learner's own bug

    with pytest.raises(CheckFailed) as info:
        check(buggy)
    box = info.value._render_traceback_()
    text = "\n".join(box)
    assert "raised IndexError" in box[0]
    assert "in buggy: return total.item() + xs[100].item()" in text, text
    assert len(box) <= 8


def test_the_box_is_what_ipython_shows():
    """IPython renders an exception through its _render_traceback_: the learner sees the box, nothing more."""
    from IPython.testing.globalipapp import start_ipython

    ip = start_ipython()
    check = _registered_check()
    ip.user_ns.update(check_demo_sum=check, wrong=lambda xs: 0.0)
    shown = []
    ip._showtraceback = lambda etype, evalue, stb: shown.append(stb)
    ip.run_cell("check_demo_sum(wrong)")
    assert shown and len(shown[-1]) <= 8 and "Exercise 9.4" in shown[-1][0], shown


def test_describe_rounds_floats_and_keeps_ints():
    assert describe([1, 2, 3]) == "[1, 2, 3]"
    assert describe({"a": 0.3333333333}) == "{'a': 0.3333}"
    assert describe(torch.tensor([[1, 2], [3, 4]])) == "tensor(shape=(2, 2), dtype=torch.int64, values=[1, 2, 3, 4])"
    assert describe("short text") == "'short text'"


@pytest.mark.slow
def test_a_notebook_kernel_shows_the_box():
    """In a real Jupyter kernel, the error output of a failed check is the short box, not the checking code."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    nb = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_code_cell(
                "from course_utils.checks import check_get_stats\n"
                "def get_stats(ids):\n"
                "    return {pair: 1 for pair in zip(ids, ids[1:])}  # counts each distinct pair once\n"
                "check_get_stats(get_stats)"
            )
        ]
    )
    with pytest.raises(CellExecutionError):
        NotebookClient(nb, timeout=120, kernel_name="python3").execute()
    error = next(o for o in nb.cells[0].outputs if o.output_type == "error")
    shown = "\n".join(error.traceback)
    assert error.ename == "CheckFailed" and len(error.traceback) <= 8, shown
    assert "Exercise 1.1" in error.traceback[0] and "input: ids=" in shown and "hint:" in shown
    assert "_core.py" not in shown and "ch01.py" not in shown


def test_two_chapters_defining_one_check_name_is_an_import_error_naming_both(tmp_path, monkeypatch):
    import sys

    import course_utils.checks as checks

    for n in ("98", "99"):
        (tmp_path / f"ch{n}.py").write_text(f"__all__ = ['check_twice']\n\n\ndef check_twice(fn):\n    return {n}\n")
    monkeypatch.setattr(checks, "__path__", [str(tmp_path)])  # the package finds only these two chapters
    try:
        with pytest.raises(ImportError, match=r"check_twice is defined in two chapters \(.*ch98.*ch99\)"):
            checks.all_checks()
        (tmp_path / "ch99.py").write_text("__all__ = ['check_once']\n\n\ndef check_once(fn):\n    return 99\n")
        del sys.modules["course_utils.checks.ch99"]
        assert set(checks.all_checks()) == {"check_twice", "check_once"}
    finally:
        for n in ("98", "99"):
            sys.modules.pop(f"course_utils.checks.ch{n}", None)
            checks.__dict__.pop(f"ch{n}", None)
