"""Colab: each notebook's bootstrap cell, run against a stand-in ``google.colab`` and a fake pip/git; badges.

The bootstrap cell is executed exactly as stored in the notebook, with ``subprocess.run`` replaced by a recorder
(so nothing is cloned or installed) and ``os.chdir``/``os.path.isdir`` answering as they would in a fresh Colab VM.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import types
from pathlib import Path
from urllib.parse import urlparse

import nbformat
import pytest

from course_utils import doctor, nbtools

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted(p.relative_to(ROOT).as_posix() for d in nbtools.NOTEBOOK_DIRS for p in (ROOT / d).glob("*.ipynb"))
CLONE = "/content/course"
# Packages Colab's image ships (so requirements-colab.txt must not reinstall them) and packages only a developer
# needs (tests, JupyterLab itself): the doctor's lists, so that the check a Colab learner runs and this test agree.
# Every package in requirements.txt is in one of these or in requirements-colab.txt.
COLAB_SHIPS = doctor.COLAB_OWN
DEV_ONLY = doctor.NOT_IN_COLAB


def pins(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            out[name.strip().lower()] = version.strip()
    return out


def header_cells(relpath: str):
    nb = nbformat.read(str(ROOT / relpath), as_version=4)
    tagged = {t: c for c in nb.cells for t in c.metadata.get("tags", [])}
    return nb, tagged.get(nbtools.BADGE_TAG), tagged.get(nbtools.BOOTSTRAP_TAG)


class FakeColabVM:
    """Records what the bootstrap cell asks for: commands run, folders entered, widget manager enabled."""

    def __init__(self, monkeypatch, cloned: bool):
        self.commands, self.chdirs, self.widgets = [], [], 0
        self.cloned = cloned
        real_isdir = os.path.isdir
        monkeypatch.setattr(subprocess, "run", self.run)
        monkeypatch.setattr(os, "chdir", self.chdirs.append)
        monkeypatch.setattr(os.path, "isdir", lambda p: self.cloned if str(p) == CLONE else real_isdir(p))
        monkeypatch.setattr(sys, "path", list(sys.path))

    def install(self, monkeypatch):
        google = types.ModuleType("google")
        colab = types.ModuleType("google.colab")
        colab.output = types.SimpleNamespace(enable_custom_widget_manager=self.enable_widgets)
        google.colab = colab
        monkeypatch.setitem(sys.modules, "google", google)
        monkeypatch.setitem(sys.modules, "google.colab", colab)

    def enable_widgets(self):
        self.widgets += 1

    def run(self, cmd, *args, **kwargs):
        self.commands.append(list(cmd))
        if cmd[:2] == ["git", "clone"]:
            self.cloned = True
        elif "pip" in cmd and "-r" in cmd:  # the requirements file the fake pip was given must exist in the repo
            req = cmd[cmd.index("-r") + 1]
            assert req.startswith(CLONE + "/") and (ROOT / req[len(CLONE) + 1 :]).is_file(), req
        return subprocess.CompletedProcess(cmd, 0)


def test_there_are_notebooks_to_check():
    assert NOTEBOOKS, "no notebook found in notebooks/, solutions/ or labs/"


@pytest.mark.parametrize("relpath", NOTEBOOKS)
def test_bootstrap_in_a_fresh_colab_vm(relpath, monkeypatch):
    _, _, boot = header_cells(relpath)
    assert boot is not None, (
        f"{relpath}: no cell tagged {nbtools.BOOTSTRAP_TAG!r}; run `python -m course_utils.nbtools sync`"
    )
    vm = FakeColabVM(monkeypatch, cloned=False)
    vm.install(monkeypatch)
    exec(compile(boot.source, f"{relpath}:bootstrap", "exec"), {"__name__": "__main__"})
    py = sys.executable
    assert vm.commands == [
        ["git", "clone", "--depth", "1", nbtools.REPO_URL, CLONE],
        [py, "-m", "pip", "install", "-q", "-r", f"{CLONE}/requirements-colab.txt"],
        [py, "-m", "pip", "install", "-q", "--no-deps", "-e", CLONE],
    ], vm.commands
    assert vm.widgets == 1, "the bootstrap must enable Colab's custom widget manager (ipywidgets)"
    assert vm.chdirs == [CLONE] and sys.path[0] == CLONE


@pytest.mark.parametrize("relpath", NOTEBOOKS[:1])
def test_bootstrap_rerun_does_not_clone_again(relpath, monkeypatch):
    _, _, boot = header_cells(relpath)
    vm = FakeColabVM(monkeypatch, cloned=True)
    vm.install(monkeypatch)
    exec(compile(boot.source, f"{relpath}:bootstrap", "exec"), {"__name__": "__main__"})
    assert not any(c[0] == "git" for c in vm.commands), vm.commands
    assert len(vm.commands) == 2 and vm.widgets == 1


@pytest.mark.parametrize("relpath", NOTEBOOKS)
def test_bootstrap_does_nothing_outside_colab(relpath, monkeypatch):
    _, _, boot = header_cells(relpath)
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    vm = FakeColabVM(monkeypatch, cloned=False)
    path_before = list(sys.path)
    exec(compile(boot.source, f"{relpath}:bootstrap", "exec"), {"__name__": "__main__"})
    assert vm.commands == [] and vm.chdirs == [] and vm.widgets == 0 and sys.path == path_before


@pytest.mark.parametrize("relpath", NOTEBOOKS)
def test_badge_points_at_this_notebook(relpath):
    nb, badge, _ = header_cells(relpath)
    assert badge is not None and nb.cells[0] is badge, f"{relpath}: the Colab badge should be the first cell"
    links = re.findall(r"\]\((https://colab\.research\.google\.com/github/[^)\s]+)\)", badge.source)
    assert len(links) == 1, badge.source
    # Derive the notebook path from the link itself: /github/<owner>/<repo>/blob/<branch>/<path>
    parts = urlparse(links[0]).path.split("/")
    assert parts[1] == "github" and parts[4] == "blob", links[0]
    assert f"https://github.com/{parts[2]}/{parts[3]}" == nbtools.REPO_URL
    assert parts[5] == nbtools.BRANCH
    assert "/".join(parts[6:]) == relpath, f"{relpath}: its badge opens {'/'.join(parts[6:])}"


def test_repository_url_is_configured_once():
    """The URL is written in course_utils/nbtools.py only; notebooks carry it only in their header cells."""
    owner_repo = nbtools.REPO_URL.removeprefix("https://github.com/")
    py_files = [p for p in (ROOT / "course_utils").rglob("*.py") if owner_repo in p.read_text(encoding="utf-8")]
    assert [p.relative_to(ROOT).as_posix() for p in py_files] == ["course_utils/nbtools.py"]
    for relpath in NOTEBOOKS:
        nb, badge, boot = header_cells(relpath)
        stray = [i for i, c in enumerate(nb.cells) if owner_repo in c.source and c is not badge and c is not boot]
        assert not stray, f"{relpath}: cells {stray} name the repository; link via the header instead"


def test_colab_installs_only_what_colab_lacks():
    course, colab = pins(ROOT / "requirements.txt"), pins(ROOT / "requirements-colab.txt")
    assert colab, "requirements-colab.txt is empty"
    for name, version in colab.items():
        assert name in course, f"requirements-colab.txt: {name} is not a course requirement"
        assert version == course[name], (
            f"requirements-colab.txt pins {name}=={version}, requirements.txt {course[name]}"
        )
        assert name not in COLAB_SHIPS, f"Colab ships {name}; reinstalling it would replace Colab's own build"
    unclassified = set(course) - COLAB_SHIPS - DEV_ONLY - set(colab)
    assert not unclassified, (
        f"{sorted(unclassified)}: new in requirements.txt; add to requirements-colab.txt if "
        "Colab lacks it, else to COLAB_OWN or NOT_IN_COLAB in course_utils/doctor.py"
    )
