"""Modules that moved into folders (course/, gateway/, serving/) keep their old import paths: notebooks, labs,
learners' code and commands like ``python -m course_utils.doctor`` name them (course_utils/_moved.py)."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from course_utils._moved import MOVED

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("old", sorted(MOVED))
def test_an_old_path_is_the_same_module_as_the_new_one(old):
    new = importlib.import_module(MOVED[old])
    assert importlib.import_module(old) is new  # one module: a monkeypatch through either name is seen by both
    assert new.__spec__.name == MOVED[old]  # the alias did not overwrite the real module's spec
    for name in getattr(new, "__all__", []):
        exec(f"from {old} import {name}", {})  # every public name imports through the old path


def test_from_package_import_old_name():
    from course_utils import doctor, widgets  # the `from package import module` form

    assert doctor.__name__ == "course_utils.course.doctor" and widgets.__name__ == "course_utils.course.widgets"


def test_an_unknown_name_is_still_an_import_error():
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("course_utils.no_such_module")


def test_python_dash_m_runs_the_moved_module():
    out = subprocess.run(
        [sys.executable, "-m", "course_utils.labs", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0 and "usage: python -m course_utils.labs" in out.stdout, out.stderr[-2000:]


def test_every_import_in_notebooks_labs_and_solutions_resolves():
    import re

    names = set()
    for nb in [*ROOT.glob("notebooks/*.ipynb"), *ROOT.glob("labs/*.ipynb"), *ROOT.glob("solutions/*.ipynb")]:
        names |= set(re.findall(r"(?:from|import) (course_utils(?:\.\w+)*)", nb.read_text()))
    assert len(names) > 10, names
    for name in sorted(names):
        importlib.import_module(name)


def test_checkpoint_helpers_keep_their_model_path():
    from course_utils import checkpoints
    from course_utils.model import load_checkpoint, save_checkpoint, verify_sha256

    assert (save_checkpoint, load_checkpoint, verify_sha256) == (
        checkpoints.save_checkpoint,
        checkpoints.load_checkpoint,
        checkpoints.verify_sha256,
    )
