"""Colab: each notebook's bootstrap cell, run against a stand-in ``google.colab`` and a fake pip/git; badges;
and the welcome notebook and one chapter run end to end in a simulated Colab VM.

The first tests execute every notebook's bootstrap cell exactly as stored, in this process, with
``subprocess.run`` replaced by a recorder (so nothing is cloned or installed) and ``os.chdir``/``os.path.isdir``
answering as they would in a fresh Colab VM. The last ones (``ColabRuntime``, below) run whole notebooks in a real
Jupyter kernel that sees Colab's package set, a fake ``google.colab`` and a fake pip, and whose bootstrap really
clones this repository (tests/colab_sim/README.md).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import types
from importlib.metadata import packages_distributions
from pathlib import Path
from urllib.parse import urlparse

import nbformat
import pytest
from jupyter_client import AsyncKernelManager
from jupyter_client.kernelspec import KernelSpecManager
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

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


def test_colab_installs_what_colab_lacks_and_the_course_pins_that_must_fit_together():
    course, colab = pins(ROOT / "requirements.txt"), pins(ROOT / "requirements-colab.txt")
    assert colab, "requirements-colab.txt is empty"
    for name, version in colab.items():
        assert name in course, f"requirements-colab.txt: {name} is not a course requirement"
        assert version == course[name], (
            f"requirements-colab.txt pins {name}=={version}, requirements.txt {course[name]}"
        )
        assert name not in COLAB_SHIPS, f"Colab ships {name}; reinstalling it would replace Colab's own build"
    # transformers alone over Colab's sentence-transformers and peft left them mismatched: all four, in one call
    assert doctor.COLAB_PINNED <= set(colab), doctor.COLAB_PINNED - set(colab)
    assert "torchao" not in colab, "torchao is installed only over the torch it is built for (doctor.colab_setup)"
    unclassified = set(course) - COLAB_SHIPS - DEV_ONLY - set(colab) - {"torchao"}
    assert not unclassified, (
        f"{sorted(unclassified)}: new in requirements.txt; add to requirements-colab.txt if "
        "Colab lacks it, else to COLAB_OWN or NOT_IN_COLAB in course_utils/course/doctor.py"
    )


# --- The welcome notebook and a chapter, run end to end in a simulated Colab VM -----------------------------------

SIM = Path(__file__).resolve().parent / "colab_sim"
WELCOME = "notebooks/00_welcome.ipynb"
CHAPTER = "notebooks/01_tokenization.ipynb"  # the quickest chapter lesson (9 s)
TINY_GPT = "notebooks/03_tiny_gpt.ipynb"  # trains a model: torch and the course's training code (118 s)
FINETUNE = "notebooks/07_finetune_vs_prompt.ipynb"  # reads the shipped study, retrains one fine-tune (peft too)
COLAB_TRANSFORMERS = "4.57.1"  # Colab's preinstalled transformers before 5.x: the bootstrap must upgrade it
# What Colab's image reports before the bootstrap (metadata only: the code that runs is this environment's, which
# is all pip can give here): its own torch build, and a transformers, sentence-transformers and peft older than
# the course's. torch 2.9 is not the release torchao 0.18 is built for, so the bootstrap must skip torchao.
COLAB_VERSIONS = {
    "torch": "2.9.0+cu126",
    "transformers": COLAB_TRANSFORMERS,
    "sentence-transformers": "5.1.2",
    "peft": "0.17.1",
    "accelerate": "1.10.1",
}
GIT = shutil.which("git")
# Run in the kernel after the notebook's last cell: where the course came from, and what the kernel can see.
PROBE = """
import importlib.util, json, os, sys
from importlib import metadata
import course_utils
from course_utils import doctor

def _installed(name):
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None

print("COLAB-PROBE" + json.dumps({
    "course_utils": course_utils.__file__,
    "course_files": sorted({getattr(m, "__file__", None) or "" for n, m in list(sys.modules.items())
                            if n.partition(".")[0] == "course_utils"}),
    "cwd": os.getcwd(),
    "importable": sorted(m for m in HIDDEN if importlib.util.find_spec(m) is not None),
    "loaded": sorted(m for m in sys.modules if m.partition(".")[0] in HIDDEN),
    "installed": sorted(n for n in doctor.NOT_IN_COLAB if _installed(n)),
    "transformers": _installed("transformers"),
    "pinned": {n: _installed(n) for n in doctor.COLAB_PINNED},
    "torchao": importlib.util.find_spec("torchao") is not None,
    "fails_without_colab_skip": [f.what for f in doctor.check_packages(colab=False) if f.status == "fail"],
}))
"""


def dev_only_modules() -> list[str]:
    """Top-level module names of the packages Colab does not have (pytest -> pytest, _pytest, py; ...)."""
    norm = {re.sub(r"[-_.]+", "-", n).lower() for n in DEV_ONLY}
    owners = {m: {re.sub(r"[-_.]+", "-", d).lower() for d in dists} for m, dists in packages_distributions().items()}
    found = {m for m, dists in owners.items() if dists <= norm}  # a module other packages share stays visible
    return sorted(found | {n.replace("-", "_") for n in DEV_ONLY})


def colab_lacks() -> dict[str, str]:
    """``{module: distribution}`` for what the bootstrap installs and Colab does not ship (faiss, bm25s, torchao...)."""
    wanted = {re.sub(r"[-_.]+", "-", n).lower() for n in pins(ROOT / "requirements-colab.txt")} | {"torchao"}
    wanted -= doctor.COLAB_PINNED
    out = {}
    for module, dists in packages_distributions().items():
        names = {re.sub(r"[-_.]+", "-", d).lower() for d in dists}
        if len(names) == 1 and names <= wanted and not module.startswith("_"):
            out[module] = names.pop()
    return out


def git(*args: str, cwd: Path = ROOT) -> str:
    return subprocess.run([GIT, *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


class ColabRuntime:
    """A fresh Colab VM under ``tmp``: ``content/`` stands for ``/content`` (where the kernel starts) and
    ``content/course`` for ``/content/course``; tests/colab_sim (copied to ``colab_image/``) is first on the
    kernel's ``PYTHONPATH`` (see its README): a fake ``google.colab`` imported at kernel start-up, Colab's package
    set (what it lacks cannot be imported, transformers is Colab's 4.x) and a fake ``pip``. ``git`` is real: the
    repository URL is rewritten to this checkout (``url.<checkout>.insteadOf``), so the clone is of its committed
    HEAD. Caches: the kernel gets no ``COURSE_CACHE``/``COURSE_EMBEDDING_CACHE``, so, as in Colab, they live in
    the clone."""

    def __init__(self, tmp: Path):
        self.tmp, self.content = tmp, tmp / "content"
        self.clone, self.log, self.site = self.content / "course", tmp / "colab_log.jsonl", tmp / "colab_image"
        self.content.mkdir()
        shutil.copytree(SIM, self.site, ignore=shutil.ignore_patterns("__pycache__", "*.md"))
        self.hidden = dev_only_modules()
        config = {
            "hidden_modules": self.hidden,
            "hidden_dists": sorted(DEV_ONLY),
            "clone": str(self.clone),
            "colab_versions": COLAB_VERSIONS,
            "lacks": colab_lacks(),
            "log": str(self.log),
        }
        (self.site / "colab_image.json").write_text(json.dumps(config))
        startup = tmp / "ipython" / "profile_default" / "startup"
        startup.mkdir(parents=True)
        (startup / "00-colab.py").write_text("import google.colab  # Colab's kernel imports it at start-up\n")
        spec = tmp / "kernels" / "colab-sim"
        spec.mkdir(parents=True)
        argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
        (spec / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": "Colab", "language": "python"}))
        drop = ("PYTHONPATH", "PYTHONSTARTUP", "COURSE_CACHE", "COURSE_EMBEDDING_CACHE", "GIT_", "PYTEST_")
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
        self.env.update(
            PYTHONPATH=str(self.site),
            IPYTHONDIR=str(tmp / "ipython"),
            MPLBACKEND="module://matplotlib_inline.backend_inline",  # Colab's inline figures
            COURSE_THREADS=os.environ.get("COURSE_THREADS", "1"),
            GIT_CONFIG_NOSYSTEM="1",
            GIT_CONFIG_GLOBAL=os.devnull,
            GIT_CONFIG_COUNT="2",
            GIT_CONFIG_KEY_0=f"url.{ROOT.as_uri()}.insteadOf",
            GIT_CONFIG_VALUE_0=nbtools.REPO_URL,
            GIT_CONFIG_KEY_1="safe.directory",  # a CI checkout may belong to another user
            GIT_CONFIG_VALUE_1="*",
        )

    def notebook(self, relpath: str, bootstrap=lambda source: source):
        """A copy of the notebook whose bootstrap cell clones into ``content/course`` instead of
        ``/content/course``: the only change to the notebook (``bootstrap`` lets negative tests break it)."""
        nb, _, boot = header_cells(relpath)
        assert CLONE in boot.source, boot.source
        boot.source = bootstrap(boot.source.replace(CLONE, str(self.clone)))
        return nb

    def run(self, nb) -> dict:
        """Execute every cell in a fresh kernel started in ``content/`` (stops at the first error), then the probe."""
        kernels = KernelSpecManager(kernel_dirs=[str(self.tmp / "kernels")])
        km = AsyncKernelManager(kernel_name="colab-sim", kernel_spec_manager=kernels)
        client = NotebookClient(nb, km=km, timeout=600, shutdown_kernel="immediate")
        with client.setup_kernel(cleanup_kc=True, env=self.env, cwd=str(self.content)):
            for index, cell in enumerate(nb.cells):
                client.execute_cell(cell, index)
            probe = nbformat.v4.new_code_cell(f"HIDDEN = {self.hidden!r}\n{PROBE}")
            nb.cells.append(probe)  # nbclient executes cells of its notebook; removed right after
            try:
                client.execute_cell(probe, len(nb.cells) - 1)
            finally:
                nb.cells.pop()
        text = "".join(o.get("text", "") for o in probe.outputs if o.output_type == "stream")
        return json.loads(text.split("COLAB-PROBE", 1)[1])

    def records(self, tool: str) -> list[list[str]]:
        lines = self.log.read_text().splitlines() if self.log.exists() else []
        return [e["argv"] for e in map(json.loads, lines) if e["tool"] == tool]

    def check(self, probe: dict) -> None:
        """What a learner's Colab session must look like after the notebook ran."""
        course = pins(ROOT / "requirements.txt")
        pin = course["transformers"]
        assert self.records("pip") == [
            ["install", "-q", "-r", f"{self.clone}/requirements-colab.txt"],
            ["install", "-q", "--no-deps", "-e", str(self.clone)],
        ], self.records("pip")  # no torchao: Colab's torch 2.9 is not the release it is built for
        assert self.records("enable_custom_widget_manager") == [[]], "widgets need Colab's custom widget manager"
        # A real clone of this repository's committed HEAD, made by the bootstrap from the course's URL
        assert git("rev-parse", "HEAD", cwd=self.clone) == git("rev-parse", "HEAD")
        assert git("config", "remote.origin.url", cwd=self.clone) == nbtools.REPO_URL
        assert (self.clone / ".git" / "shallow").is_file(), "the bootstrap clones with --depth 1"
        assert Path(probe["cwd"]) == self.clone, f"the bootstrap must chdir into the clone; cwd is {probe['cwd']}"
        assert Path(probe["course_utils"]).is_relative_to(self.clone), probe["course_utils"]
        outside = [f for f in probe["course_files"] if not Path(f).is_relative_to(self.clone)]
        assert len(probe["course_files"]) > 1 and not outside, (
            f"course modules loaded from outside the clone: {outside}"
        )
        # Colab's package set: nothing Colab lacks was importable, found or imported, and the welcome check passed
        # only because the doctor skips those packages in Colab
        assert probe["importable"] == probe["loaded"] == probe["installed"] == [], probe
        assert probe["transformers"] == pin, "after the upgrade, the course's transformers"
        assert probe["pinned"] == {n: course[n] for n in doctor.COLAB_PINNED}, probe["pinned"]
        assert not probe["torchao"], "torchao over a torch it is not built for"
        dev_pins = {f"{n} missing" for n in doctor.pinned_requirements() if n in DEV_ONLY}
        assert dev_pins and dev_pins <= set(probe["fails_without_colab_skip"]), probe


@pytest.fixture
def colab(tmp_path):
    if GIT is None or not (ROOT / ".git").exists():
        pytest.skip("needs git and a git checkout of the course (the simulated Colab clones it)")
    return ColabRuntime(tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("relpath", [WELCOME, CHAPTER, TINY_GPT, FINETUNE])
def test_notebook_runs_in_a_simulated_colab_vm(relpath, colab):
    """The notebook, unchanged except for the clone's folder (see ColabRuntime.notebook), runs top to bottom in a
    fresh simulated Colab VM: its bootstrap cell really clones the course, "installs" what Colab lacks and the
    course's transformers, sentence-transformers and peft over Colab's older ones, skips torchao over Colab's
    torch, enables the widget manager and enters the clone; every later cell imports the course from the clone,
    and the welcome notebook's environment check passes without jupyterlab & co."""
    nb = colab.notebook(relpath)
    probe = colab.run(nb)
    colab.check(probe)
    boot = next(c for c in nb.cells if nbtools.BOOTSTRAP_TAG in c.metadata.get("tags", []))
    said = "".join(o.get("text", "") for o in boot.outputs)
    assert "torchao comparison is skipped" in said and COLAB_VERSIONS["torch"] in said, said
    if relpath == WELCOME:
        doctor_cell = next(c for c in nb.cells if "doctor.run()" in c.source)
        printed = "".join(o.get("text", "") for o in doctor_cell.outputs)
        assert "Ready for the course." in printed and "jupyterlab" not in printed, printed


@pytest.mark.slow
@pytest.mark.parametrize(
    "breakage, error",
    [
        ("no chdir", "the bootstrap must chdir into the clone"),
        ("imports a package Colab lacks", "No module named 'nbval'"),
    ],
)
def test_simulated_colab_catches_a_broken_notebook(breakage, error, colab):
    """The simulation can fail: a bootstrap that forgets to enter the clone, or a welcome notebook that imports
    a package Colab does not have, is caught (a short notebook: the welcome's header and one cell)."""
    no_chdir = "no chdir" in breakage

    def without_chdir(source):
        broken = re.sub(r"\n\s*os\.chdir\(.*", "", source)
        assert broken != source, source
        return broken

    nb = colab.notebook(WELCOME, bootstrap=without_chdir if no_chdir else lambda source: source)
    body = "import course_utils" if no_chdir else "import nbval  # only a developer's machine has it"
    nb.cells = nb.cells[:2] + [nbformat.v4.new_code_cell(body)]
    with pytest.raises((AssertionError, CellExecutionError), match=re.escape(error)):
        colab.check(colab.run(nb))


def test_simulated_pip_refuses_what_a_real_install_would_not_give(tmp_path, colab):
    """The fake pip checks what it is asked to install: a pin this environment does not have, or a package Colab
    learners never need, fails the bootstrap as a failed install would."""

    def pip(*args):
        cmd = [sys.executable, "-m", "pip", "install", "-q", *args]
        return subprocess.run(cmd, env=colab.env, cwd=colab.content, capture_output=True, text=True)

    torch_pin = pins(ROOT / "requirements.txt")["torch"]
    for why, line in {
        "not installed here": "no-such-package-for-colab==1.0",
        "another version": f"torch=={torch_pin}.post99",
        "dev only": "nbval==0.11.0",
        "not a pin": "numpy",
    }.items():
        req = tmp_path / f"{why.replace(' ', '_')}.txt"
        req.write_text(line + "\n")
        done = pip("-r", str(req))
        assert done.returncode == 1 and "pip (Colab simulation)" in done.stderr, (why, done.stderr)
    assert pip("-e", str(ROOT)).returncode == 1, "an editable install without --no-deps would reinstall torch"
    assert colab.records("pip-installed") == []
    done = pip("-r", str(ROOT / "requirements-colab.txt"))
    assert done.returncode == 0, done.stderr
    assert colab.records("pip-installed") == [list(pins(ROOT / "requirements-colab.txt"))]


IMAGE_PROBE = """
import importlib.util, json, sys
from importlib import metadata

def version(name):
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None

print(json.dumps({
    "course_utils": importlib.util.find_spec("course_utils") is not None,
    "dev_modules": sorted(m for m in sys.argv[1:] if importlib.util.find_spec(m) is not None),
    "dev_dists": sorted(n for n in %r if version(n)),
    "transformers": version("transformers"),
    "google.colab": bool(importlib.util.find_spec("google") and importlib.util.find_spec("google.colab")),
    "lacks": sorted(m for m in LACKS if importlib.util.find_spec(m) is not None),
}))
"""


def test_simulated_colab_image_hides_what_colab_lacks(colab):
    """Before the bootstrap, the simulated VM has neither the course nor the developer tools (which this
    environment has: the same probe without the simulation finds them) and has Colab's transformers 4.x."""
    code = f"LACKS = {sorted(colab_lacks())!r}\n" + IMAGE_PROBE % sorted(DEV_ONLY)
    here_env = {**colab.env, "PYTHONPATH": str(ROOT)}
    seen = {}
    for where, env in {"colab": colab.env, "here": here_env}.items():
        done = subprocess.run(
            [sys.executable, "-c", code, *colab.hidden], env=env, cwd=colab.content, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
        seen[where] = json.loads(done.stdout)
    assert seen["colab"] == {
        "course_utils": False,
        "dev_modules": [],
        "dev_dists": [],
        "transformers": COLAB_TRANSFORMERS,
        "google.colab": True,
        "lacks": [],
    }, seen["colab"]
    here = seen["here"]
    assert here["course_utils"] and not here["google.colab"], here
    assert {"pytest", "jupyterlab", "nbval"} <= set(here["dev_modules"]) and "jupyterlab" in here["dev_dists"], here
    assert here["transformers"] == pins(ROOT / "requirements.txt")["transformers"], here
    assert {"faiss", "bm25s", "torchao"} <= set(here["lacks"]), here
