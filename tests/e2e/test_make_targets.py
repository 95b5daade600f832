"""Without chromium, `make test` and `make e2e` say so in one visible line instead of passing silently."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

from jlab import ROOT, SKIP_REASON

SKIP_LINE = f"SKIPPED e2e: {SKIP_REASON}"
STAMPS = ["-o", ".venv/.installed-stamp", "-o", ".venv/.test-stamp"]  # never reinstall the venv from here


def test_make_e2e_prints_the_skip_line_without_chromium(tmp_path):
    env = dict(os.environ, PATH=str(tmp_path))  # an empty folder: no chromium on PATH
    run = subprocess.run(
        [shutil.which("make"), "-s", *STAMPS, "e2e"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == SKIP_LINE


def test_make_test_prints_the_skip_line_without_chromium_and_keeps_pytests_exit_code(tmp_path):
    dry = subprocess.run(
        [shutil.which("make"), "-n", *STAMPS, "test"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert dry.returncode == 0, dry.stderr
    script = dry.stdout.replace("\\\n", " ")
    guard = next(line for line in script.splitlines() if "pytest" in line and "tests" in line)
    assert "tests" in guard.split(), "make test runs tests/, which holds tests/e2e"
    # Replace each pytest run (tests + solutions, then the lessons under each kernel setting) by a stand-in exit code
    # and run the recipe line under a PATH without chromium: any failing run fails `make test`, and the skip line
    # never hides it.
    runs = re.findall(r"(?:\S+=\S+ )*\S*python -m pytest[^;|]*", guard)
    assert len(runs) >= 2, guard
    cases = [([0] * len(runs), 0), ([3] + [0] * (len(runs) - 1), 3)]
    cases += [([0] * i + [3] + [0] * (len(runs) - i - 1), 1) for i in range(1, len(runs))]
    for codes, expected in cases:
        line = guard
        for run_, code in zip(runs, codes):
            line = line.replace(run_, f"/bin/sh -c 'exit {code}' ", 1)
        run = subprocess.run(
            [shutil.which("bash"), "-c", line],
            env=dict(os.environ, PATH=str(tmp_path)),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert run.returncode == expected, "the skip line must not hide pytest's exit code"
        assert run.stdout.strip().splitlines()[-1] == SKIP_LINE, run.stdout
