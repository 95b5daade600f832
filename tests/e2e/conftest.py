"""Fixtures for the browser tests: a fresh JupyterLab per test, driven by Playwright through Debian's Chromium.

Every test gets its own server on a free port with a random token, whose root is a temporary copy of the course
(notebooks/, labs/, solutions/, ...): the learner's own files are never opened. Settings and workspaces live in
temporary folders too, with the news popup off and notebook windowing off (so every cell is in the page and can be
read). The server, the browser and the copy are torn down even when the test fails.

Without ``chromium`` on PATH every test here is skipped with the reason the Makefile also prints.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from jlab import ARTIFACTS, CHROMIUM, ROOT, SKIP_REASON

from course_utils.net import free_port

# What the copy leaves out: big, private or irrelevant to a learner's browser session.
COPY_IGNORE = shutil.ignore_patterns(
    ".git",
    ".venv",
    ".cache",
    "test-artifacts",
    "wheelhouse",
    "_build",
    "__pycache__",
    ".ipynb_checkpoints",
    "*.egg-info",
    ".whl",
    ".gl",
)
# User settings written for each server (JupyterLab's settings-dir layout:
# <plugin id folder>/<plugin>.jupyterlab-settings).
LAB_SETTINGS = {
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false", "checkForUpdates": False},
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
}


def pytest_collection_modifyitems(config, items):
    here = Path(__file__).parent
    for item in items:
        # A test that drives a browser or a JupyterLab is e2e; plain checks in this folder run everywhere.
        if here in Path(str(item.fspath)).parents and {"page", "browser", "lab"} & set(
            getattr(item, "fixturenames", ())
        ):
            item.add_marker(pytest.mark.e2e)
            item.add_marker(pytest.mark.slow)
            if CHROMIUM is None:
                item.add_marker(pytest.mark.skip(reason=SKIP_REASON))


class Lab:
    """A running JupyterLab: where it serves, its token, and the folder it serves (a copy of the course)."""

    def __init__(self, root: Path, port: int, token: str, proc: subprocess.Popen, log: Path):
        self.root, self.port, self.token, self.proc, self.log = root, port, token, proc, log

    def url(self, relpath: str = "") -> str:
        return f"http://127.0.0.1:{self.port}/lab/tree/{relpath}?token={self.token}"

    def api(self, path: str) -> dict:
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}", headers={"Authorization": f"token {self.token}"}
        )
        with urllib.request.urlopen(req, timeout=5) as r:
            return json.loads(r.read())


def _wait_until_up(lab: Lab, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if lab.proc.poll() is not None:
            raise RuntimeError(f"JupyterLab exited with {lab.proc.returncode}:\n{lab.log.read_text()[-3000:]}")
        try:
            lab.api("/api/status")
            return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"JupyterLab did not answer within {timeout:.0f} s:\n{lab.log.read_text()[-3000:]}")


@pytest.fixture
def lab(tmp_path):
    """A fresh JupyterLab serving a temporary copy of the course; stopped (with its kernels) at teardown."""
    course = tmp_path / "course"
    shutil.copytree(ROOT, course, ignore=COPY_IGNORE, symlinks=True)
    settings = tmp_path / "lab-settings"
    for rel, value in LAB_SETTINGS.items():
        (settings / rel).parent.mkdir(parents=True, exist_ok=True)
        (settings / rel).write_text(json.dumps(value))
    env = dict(
        os.environ,
        JUPYTERLAB_SETTINGS_DIR=str(settings),
        JUPYTERLAB_WORKSPACES_DIR=str(tmp_path / "ws"),
        JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"),
        PYTHONUNBUFFERED="1",
    )
    env.pop("MPLBACKEND", None)  # the tests' Agg backend would hide every plot; a learner's kernel uses inline
    port, token = free_port(), secrets.token_hex(16)
    log = tmp_path / "jupyterlab.log"
    cmd = [
        sys.executable,
        "-m",
        "jupyterlab",
        "--no-browser",
        f"--port={port}",
        "--ip=127.0.0.1",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={course}",
        "--ServerApp.open_browser=False",
        "--LabApp.news_url=None",
    ]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=course, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    server = Lab(course, port, token, proc, log)
    try:
        _wait_until_up(server)
        yield server
    finally:
        # SIGTERM the whole process group: the server and the kernels it started.
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=10)


@pytest.fixture(scope="session")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:  # chromium is here, so a missing Playwright is an install error, not a reason to skip
        pytest.fail(
            "chromium is installed but Playwright for Python is not: pip install playwright==1.65.2 "
            "(pinned with the test requirements)",
            pytrace=False,
        )
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-dev-shm-usage"])
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser, request):
    """A new browser page (1280×900); on failure its screenshot goes to test-artifacts/failures/."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = context.new_page()
    pg.set_default_timeout(60_000)
    try:
        yield pg
    finally:
        rep = getattr(request.node, "rep_call", None)
        if rep is not None and rep.failed:
            out = ARTIFACTS / "failures"
            out.mkdir(parents=True, exist_ok=True)
            try:
                pg.screenshot(path=str(out / f"{request.node.name}.png"), full_page=True)
            except Exception:  # a crashed page must not hide the test's own failure
                pass
        context.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"rep_{rep.when}", rep)
