"""Every module of course_utils imports on its own: an import cycle only shows when its modules are imported in a
particular order (issue 27: ``from course_utils.adder import build_adders`` alone crashed, adder -> serving ->
adder), so each module is imported first, with no other course_utils module loaded."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# One interpreter for all modules (torch and friends are imported once): before each import every course_utils
# module is dropped from sys.modules, so the module is the first of the package to run, as in a fresh interpreter.
SCRIPT = """
import importlib, pkgutil, sys
import course_utils
names = sorted(m.name for m in pkgutil.walk_packages(course_utils.__path__, "course_utils.")
               if not m.name.endswith("__main__"))  # __main__ starts a server
assert len(names) > 40, names
for name in names:
    for loaded in [m for m in sys.modules if m == "course_utils" or m.startswith("course_utils.")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except Exception as err:
        print(f"FAILED {name}: {type(err).__name__}: {err}")
from course_utils._moved import MOVED
for name in sorted(MOVED):  # the old paths of moved modules, each first in a fresh package too
    for loaded in [m for m in sys.modules if m == "course_utils" or m.startswith("course_utils.")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except Exception as err:
        print(f"FAILED {name}: {type(err).__name__}: {err}")
print("checked", len(names))
"""


@pytest.mark.slow
def test_every_module_imports_alone_in_a_fresh_interpreter():
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "FAILED" not in out.stdout and "checked" in out.stdout, out.stdout[-2000:]


def test_the_adders_rebuild_command_imports():
    # the command the adder prints on a checksum failure; a cycle made it crash before anything ran
    code = "from course_utils.adder import build_adders; from course_utils.serving import load_adder; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "ok", out.stderr[-2000:]
