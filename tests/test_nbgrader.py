"""Instructors: the nbgrader round trip, and the offline-room instructions in docs/instructor_guide.md.

Round trip, in a temporary nbgrader course per solution notebook: ``nbgrader generate_assignment`` produces the
same cells as the committed lab in labs/ (only the stub inside each exercise and nbgrader's own metadata differ),
and ``nbgrader autograde`` gives the solution full marks and the untouched lab zero on its checks. A scratch
solution notebook runs the same round trip, so the test means something before the first chapter's lab lands.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_markdown_cell, new_notebook

from course_utils.labs import chapter_of, make_lab, nbgrader_source
from course_utils.nbtools import sync_notebook

ROOT = Path(__file__).resolve().parents[1]
SOLUTIONS = sorted(p.name for p in (ROOT / "solutions").glob("*.ipynb"))
# the lab's `raise NotImplementedError("Exercise N.M: ...")` and nbgrader's `# YOUR CODE HERE` + bare raise; the
# `# Exercise N.M — <task>` line above both is compared as is (nbgrader_source keeps it outside the region)
STUB = re.compile(r"^(?P<indent>[ \t]*)(?:# YOUR CODE HERE\n(?P=indent))?raise NotImplementedError\(.*\)$", re.M)
NBGRADER_KEYS = {"nbgrader", "deletable", "editable", "trusted"}
ASSIGNMENT = "lab"
GUIDE_INSTALL = "pip install --no-index --find-links wheelhouse -r requirements.txt"


def _nbgrader():
    return pytest.importorskip(
        "nbgrader",
        reason="nbgrader is an instructor extra: `make instructor` (pip install -r requirements-instructor.txt)",
    )


def nbgrader(course: Path, *args: str) -> str:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    run = subprocess.run(
        [sys.executable, "-m", "nbgrader", *args, "--force"],
        cwd=course,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert run.returncode == 0, f"nbgrader {' '.join(args)} failed:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    return run.stdout + run.stderr


def normalise(nb) -> list[tuple[str, str, dict]]:
    """(cell type, source with the exercise stub made uniform, metadata without nbgrader's keys) per cell."""
    return [
        (
            c.cell_type,
            STUB.sub(r"\g<indent><exercise stub>", c.source),
            {k: v for k, v in c.metadata.items() if k not in NBGRADER_KEYS},
        )
        for c in nb.cells
    ]


def _errors(path: Path) -> str:
    nb = nbformat.read(str(path), as_version=4)
    return "\n".join(
        f"cell {i}: {o.ename}: {o.evalue}"
        for i, c in enumerate(nb.cells)
        for o in c.get("outputs", [])
        if o.get("output_type") == "error"
    )


def round_trip(tmp_path: Path, name: str, solution, lab, extra_files=()) -> None:
    _nbgrader()
    from nbgrader.api import Gradebook

    course = tmp_path / "course"
    (course / "source" / ASSIGNMENT).mkdir(parents=True)
    (course / "nbgrader_config.py").write_text(
        f"c = get_config()\nc.CourseDirectory.root = {str(course)!r}\nc.ExecutePreprocessor.timeout = 600\n"
    )
    # the source is the solution with each task line just above its region, as `labs nbgrader-source` writes it
    nbformat.write(nbgrader_source(solution, chapter_of(Path(name))), str(course / "source" / ASSIGNMENT / name))
    for f in extra_files:
        (course / "source" / ASSIGNMENT / f.name).write_bytes(f.read_bytes())
    nbgrader(course, "generate_assignment", ASSIGNMENT)
    released = nbformat.read(str(course / "release" / ASSIGNMENT / name), as_version=4)
    sync_notebook(released, f"labs/{name}")  # the header's badge points at the lab's own path, as in labs/
    got, want = normalise(released), normalise(lab)
    assert len(got) == len(want), f"{name}: nbgrader made {len(got)} cells, the lab has {len(want)}"
    for i, (g, w) in enumerate(zip(got, want)):
        assert g == w, f"{name} cell {i}: nbgrader's student version differs from the lab:\n{g}\n---\n{w}"
    assert sum("<exercise stub>" in src for _, src, _ in got) >= 1
    stubs = [src for _, src, _ in got if "<exercise stub>" in src]
    assert all(re.search(r"# Exercise \d+\.\d+ — .+\n[ \t]*<exercise stub>", src) for src in stubs), (
        f"{name}: nbgrader's student version lost a task line: {stubs}"
    )

    for student, nb in (("solution", solution), ("untouched-lab", lab)):
        folder = course / "submitted" / student / ASSIGNMENT
        folder.mkdir(parents=True)
        nbformat.write(nb, str(folder / name))
        for f in extra_files:
            (folder / f.name).write_bytes(f.read_bytes())
    nbgrader(course, "autograde", ASSIGNMENT)
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gb:
        scores = {s: gb.find_submission(ASSIGNMENT, s) for s in ("solution", "untouched-lab")}
        full, zero = scores["solution"], scores["untouched-lab"]
        assert full.max_score > 0, f"{name}: no graded check cells"
        lost = [g.name for nb in full.notebooks for g in nb.grades if g.score != g.max_score]
        assert full.score == full.max_score, (
            f"{name}: the solution scored {full.score}/{full.max_score}; lost "
            f"{lost}:\n" + _errors(course / "autograded" / "solution" / ASSIGNMENT / name)
        )
        assert zero.score == 0, f"{name}: the untouched lab scored {zero.score}/{zero.max_score} (checks must fail)"


@pytest.mark.slow
@pytest.mark.parametrize("name", SOLUTIONS)
def test_nbgrader_round_trip(tmp_path, name):
    solution = nbformat.read(str(ROOT / "solutions" / name), as_version=4)
    lab_path = ROOT / "labs" / name
    assert lab_path.exists(), f"labs/{name} is missing; run `python -m course_utils.labs build`"
    round_trip(tmp_path, name, solution, nbformat.read(str(lab_path), as_version=4))


@pytest.mark.slow
def test_nbgrader_round_trip_on_a_scratch_lab(tmp_path):
    from course.test_progress import SCRATCH_CHECKS, _check, _exercise  # tests/course/test_progress.py

    sol = new_notebook(
        cells=[
            new_markdown_cell("# 97 · scratch"),
            _exercise("double", "x + x"),
            _check("double"),
            _exercise("square", "x * x"),
            _check("square"),
        ]
    )
    sol.metadata["kernelspec"] = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}
    sync_notebook(sol, "solutions/97_scratch_lab.ipynb")
    checks = tmp_path / "scratch_checks.py"
    checks.write_text(SCRATCH_CHECKS)
    lab = sync_notebook(make_lab(sol, 97), "labs/97_scratch_lab.ipynb")  # as `labs build` does
    round_trip(tmp_path, "97_scratch_lab.ipynb", sol, lab, extra_files=[checks])


# --- the offline room: `make wheelhouse` and the guide's install command agree with requirements.txt -----------


def test_wheelhouse_target_and_guide_agree_with_requirements():
    dry = subprocess.run(
        ["make", "--no-print-directory", "-n", "wheelhouse"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert dry.returncode == 0, dry.stderr
    cmd = shlex.split(dry.stdout.strip().splitlines()[-1])
    assert cmd[1:4] == ["-m", "pip", "download"], cmd
    dest = cmd[cmd.index("--dest") + 1]
    req = cmd[cmd.index("-r") + 1]
    assert (dest, req) == ("wheelhouse", "requirements.txt"), cmd

    guide = (ROOT / "docs" / "instructor_guide.md").read_text(encoding="utf-8")
    assert GUIDE_INSTALL in guide, f"the guide should show `{GUIDE_INSTALL}`"
    assert "make wheelhouse" in guide
    # The guide's command reads the same file from the same folder the target fills.
    g = shlex.split(GUIDE_INSTALL)
    assert g[g.index("--find-links") + 1] == dest and g[g.index("-r") + 1] == req


def test_wheelhouse_covers_every_pin_when_built():
    """After `make wheelhouse`, every pin that make lab / make test / make instructor install has its wheel (or
    sdist) at that exact version, and setuptools (the offline editable install) is there."""
    house = ROOT / "wheelhouse"
    files = [p.name.lower() for p in house.glob("*")] if house.is_dir() else []
    if not files:
        pytest.skip("wheelhouse/ not built (make wheelhouse)")
    missing = []
    for req in ("requirements.txt", "requirements-instructor.txt", "requirements-test.txt", "requirements-hub.txt"):
        for line in (ROOT / req).read_text().splitlines():
            line = line.split("#")[0].strip()
            if line:
                name, version = line.split("==")
                want = re.sub(r"[-_.]+", "_", f"{name.lower()}-{version}-")  # wheel/sdist names: name-version-...
                if not any(re.sub(r"[-_.+]+", "_", f).startswith(want) for f in files):
                    missing.append(line)
    if not any(f.startswith("setuptools-") for f in files):
        missing.append("setuptools")
    assert not missing, f"wheelhouse/ lacks {missing}; rerun `make wheelhouse`"


# --- the instructor guide covers every chapter that exists ------------------------------------------------------


def test_instructor_guide_covers_every_chapter():
    from course_utils.labs import exercises

    guide = (ROOT / "docs" / "instructor_guide.md").read_text(encoding="utf-8")
    missing = []
    for nb_path in sorted((ROOT / "notebooks").glob("[0-9]*_*.ipynb")):
        ch = nb_path.name[:2]
        section = re.search(rf"^### {ch} ·.*?(?=^### |^## |\Z)", guide, re.M | re.S)
        if not section:
            missing.append(f"no '### {ch} · ...' section for {nb_path.name}")
            continue
        if not re.search(r"measured run time\* \d+ s", section.group(0)):
            missing.append(f"chapter {ch}: no measured run time")
        sol = sorted((ROOT / "solutions").glob(f"{ch}_*.ipynb"))
        if sol:
            nb = nbformat.read(str(sol[0]), as_version=4)
            for ex in exercises(nb, int(ch)):
                if f"| {ex.number} " not in section.group(0):
                    missing.append(f"chapter {ch}: exercise {ex.number} is not in the guide's table")
    assert not missing, (
        "docs/instructor_guide.md is behind the course; regenerate the chapter part with "
        "`python docs/site/guide_chapters.py --write` (run times: `make outputs`):\n" + "\n".join(missing)
    )
