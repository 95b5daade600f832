"""The workshop hub (`make hub`, hub/jupyterhub_config.py): JupyterHub on 127.0.0.1 with three learners.

One hub for the module (its real config: shared-password login, SimpleLocalProcessSpawner, the course's venv, the
Python configurable-http-proxy), in a temporary state folder, on free loopback ports. The instructor releases the
first exercise of lab 1 through nbgrader's exchange; each learner fetches it in their own server, writes an answer
(right, wrong, or none), runs the lab's check cell in their kernel (through the server's websocket, as JupyterLab
does) and submits; the instructor collects and autogrades: 1, 0 and 0 points.

The Zero to JupyterHub values file (hub/z2jh/values.yaml) is checked against the chart's values schema (the
definitions of the keys it uses, vendored in hub/z2jh/values.schema.subset.yaml), and its JupyterHub settings
against the installed JupyterHub's own traits.

The hub tests are slow (5.5 min on a busy 2-core machine, most of it servers and nbgrader starting up): three
servers, three kernels, ten nbgrader runs.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import requests

from course_utils.labs import nbgrader_source

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "hub"))
from hubctl import running_hub, text_of  # noqa: E402

Z2JH = ROOT / "hub" / "z2jh"

LEARNERS = ("learner01", "learner02", "learner03")
ASSIGNMENT = "ch01"
LAB = "01_tokenization_lab.ipynb"
EXERCISE, CHECK = "ex_1_1", "check_get_stats_1_1"  # nbgrader grade ids of the exercise and its check
# learner02's plausible mistake: pairs taken two by two, so overlapping pairs are missed
WRONG = "def get_stats(ids):\n    return {(a, b): 1 for a, b in zip(ids[::2], ids[1::2])}\n"


def grade_id(cell) -> str | None:
    return cell.metadata.get("nbgrader", {}).get("grade_id")


def first_exercise_source() -> nbformat.NotebookNode:
    """Lab 1 as nbgrader's source, up to the check of its first exercise (autograding stays a few seconds)."""
    nb = nbgrader_source(nbformat.read(str(ROOT / "solutions" / LAB), as_version=4), 1)
    end = next(i for i, c in enumerate(nb.cells) if grade_id(c) == CHECK)
    nb.cells = nb.cells[: end + 1]
    return nb


def nbgrader(cwd: Path, *args: str) -> str:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    run = subprocess.run(
        [sys.executable, "-m", "nbgrader", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0, f"nbgrader {' '.join(args)}:\n{run.stdout[-2000:]}\n{run.stderr[-2000:]}"
    return run.stdout + run.stderr


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    pytest.importorskip("jupyterhub", reason="the workshop hub's packages: pip install -r requirements-hub.txt")
    with running_hub(tmp_path_factory.mktemp("hub"), learners=len(LEARNERS)) as h:
        yield h


@pytest.fixture(scope="module")
def course(hub):
    """The instructor's nbgrader course folder, on the hub's exchange, with the assignment released."""
    course = hub.state / "course"
    (course / "source" / ASSIGNMENT).mkdir(parents=True)
    (course / "nbgrader_config.py").write_text(
        "c = get_config()\n"
        "c.CourseDirectory.course_id = 'llm-course'\n"
        f"c.Exchange.root = {str(hub.state / 'exchange')!r}\n"
        "c.ExecutePreprocessor.timeout = 600\n"
    )
    nbformat.write(first_exercise_source(), str(course / "source" / ASSIGNMENT / LAB))
    nbgrader(course, "generate_assignment", ASSIGNMENT)
    nbgrader(course, "release_assignment", ASSIGNMENT)
    return course


def run_in_kernel(hub, name: str, kernel: str, code: str) -> str:
    return text_of(hub.execute(name, kernel, code))


def shell(hub, name: str, kernel: str, *argv: str) -> str:
    """A learner's `!command` in their home folder, from their kernel."""
    code = (
        "import os, subprocess\n"
        f"r = subprocess.run({list(argv)!r}, cwd=os.path.expanduser('~'), capture_output=True, text=True)\n"
        "print('exit', r.returncode, r.stdout[-1500:], r.stderr[-1500:])"
    )
    return run_in_kernel(hub, name, kernel, code)


@pytest.mark.slow
def test_login_takes_the_rooms_password_and_only_listed_names(hub):
    assert hub.login("learner01", hub.password).cookies
    with pytest.raises(requests.HTTPError):
        hub.login("learner01", hub.password + "x")
    with pytest.raises(requests.HTTPError):
        hub.login("someone-else", hub.password)


@pytest.mark.slow
def test_three_learners_fetch_solve_check_submit_and_are_autograded(hub, course):
    for name in LEARNERS:  # all three start at once, as a room does
        hub.start_server(name, wait=False)
    kernels = {}
    for name in LEARNERS:
        hub.wait_ready(name)
        # their own copy of the labs, in their own folder
        listed = {f["name"] for f in hub.user(name, "GET", "/api/contents/labs").json()["content"]}
        assert LAB in listed
        assert (hub.state / "home" / name / "labs" / LAB).read_bytes() == (ROOT / "labs" / LAB).read_bytes()
        kernels[name] = hub.start_kernel(name)
        where = run_in_kernel(hub, name, kernels[name], "import sys, course_utils\nprint(sys.prefix)")
        assert where.strip() == sys.prefix, "the kernel is the course's venv"
        fetched = shell(hub, name, kernels[name], "nbgrader", "fetch_assignment", ASSIGNMENT)
        assert fetched.startswith("exit 0"), fetched

    answers = {"learner01": None, "learner02": WRONG, "learner03": ""}  # None: the solution; "": left as given
    solution = next(c.source for c in first_exercise_source().cells if grade_id(c) == EXERCISE)
    checks = {}
    for name, answer in answers.items():
        path = f"/api/contents/{ASSIGNMENT}/{LAB}"
        model = hub.user(name, "GET", path).json()
        nb = nbformat.from_dict(model["content"])
        cell = next(c for c in nb.cells if grade_id(c) == EXERCISE)
        cell.source = solution if answer is None else (answer or cell.source)
        hub.user(name, "PUT", path, json={"type": "notebook", "format": "json", "content": nb})
        for c in nb.cells:  # run the notebook's code cells in order, as "Run All" does, up to the check
            if c.cell_type == "code":
                out = run_in_kernel(hub, name, kernels[name], c.source)
        checks[name] = out
        submitted = shell(hub, name, kernels[name], "nbgrader", "submit", ASSIGNMENT)
        assert submitted.startswith("exit 0"), submitted

    assert "✅ check_get_stats passed" in checks["learner01"]
    assert "CheckFailed" in checks["learner02"] and "overlapping" in checks["learner02"], checks["learner02"]
    assert "NotImplementedError" in checks["learner03"], checks["learner03"]

    nbgrader(course, "collect", ASSIGNMENT)
    assert sorted(p.name for p in (course / "submitted").iterdir()) == list(LEARNERS)
    nbgrader(course, "autograde", ASSIGNMENT)
    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gb:
        scores = {name: gb.find_submission(ASSIGNMENT, name).score for name in LEARNERS}
        max_score = gb.find_assignment(ASSIGNMENT).max_score
    assert max_score == 1
    assert scores == {"learner01": 1, "learner02": 0, "learner03": 0}


def _z2jh():
    import jsonschema
    import yaml

    values = yaml.safe_load((Z2JH / "values.yaml").read_text())
    schema = yaml.safe_load((Z2JH / "values.schema.subset.yaml").read_text())
    return values, jsonschema.Draft7Validator(schema)


def test_z2jh_values_follow_the_charts_schema():
    values, validator = _z2jh()
    assert [e.message for e in validator.iter_errors(values)] == []
    # the check catches what a typo or a wrong unit in the file would be
    typo = {**values, "singleuser": {**values["singleuser"], "memory": {"limt": "2G"}}}
    assert any("'limt' was unexpected" in e.message for e in validator.iter_errors(typo))
    wrong = {**values, "cull": {"enabled": True, "timeout": "1h"}}
    assert any(list(e.path) == ["cull", "timeout"] for e in validator.iter_errors(wrong))
    # and the chart's own definitions of these keys came along (not a schema that accepts anything)
    assert validator.schema["additionalProperties"] is False and "cull" in validator.schema["properties"]


def test_z2jh_hub_config_names_real_jupyterhub_settings():
    """hub.config is passed to JupyterHub as traitlets config: every Class.trait in it must exist."""
    pytest.importorskip("jupyterhub", reason="the workshop hub's packages: pip install -r requirements-hub.txt")
    from jupyterhub.app import JupyterHub
    from jupyterhub.auth import Authenticator
    from jupyterhub.authenticators.shared import SharedPasswordAuthenticator

    classes = {c.__name__: c for c in (JupyterHub, Authenticator, SharedPasswordAuthenticator)}
    values, _ = _z2jh()
    for cls, traits in values["hub"]["config"].items():
        assert cls in classes, f"hub.config.{cls}: not a class the course configures"
        config_traits = classes[cls].class_traits(config=True)
        assert set(traits) <= set(config_traits), f"hub.config.{cls}: {set(traits) - set(config_traits)}"
