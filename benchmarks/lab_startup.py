"""JupyterLab start-up with and without nbgrader's extensions (what a learner's `make lab` loads, and an instructor's).

`make venv` switches nbgrader's lab extension (menu, sidebar) and server extensions off; `make instructor` switches
them on. This script starts `jupyter lab` from the current venv, alternating the two settings, and prints the
seconds until the server answers `/api`, whether the log warns about a missing nbgrader_config.py and whether the
page loads nbgrader's lab extension. The setting lives in a temporary user config (JUPYTER_CONFIG_DIR), which
overrides the venv's own: the venv is left as it is.

Usage: python benchmarks/lab_startup.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from course_utils.net import free_port

SERVER_EXTENSIONS = ["formgrader", "validate_assignment", "assignment_list", "course_list"]


def user_config(root: Path, nbgrader_on: bool) -> Path:
    cfg = root / "config"
    (cfg / "labconfig").mkdir(parents=True)
    page = {"disabledExtensions": {"@jupyter/nbgrader": not nbgrader_on}}
    (cfg / "labconfig" / "page_config.json").write_text(json.dumps(page))
    server = {f"nbgrader.server_extensions.{n}": nbgrader_on for n in SERVER_EXTENSIONS}
    (cfg / "jupyter_server_config.json").write_text(json.dumps({"ServerApp": {"jpserver_extensions": server}}))
    return cfg


def start_once(nbgrader_on: bool) -> tuple[float, bool, bool]:
    """(seconds until /api answers, warning logged, nbgrader's lab extension active on the page)."""
    jupyter = Path(sys.executable).parent / "jupyter"
    with tempfile.TemporaryDirectory() as tmp:
        port, token = free_port(), secrets.token_hex(8)
        env = dict(os.environ, JUPYTER_CONFIG_DIR=str(user_config(Path(tmp), nbgrader_on)), JUPYTER_RUNTIME_DIR=tmp)
        args = [f"--port={port}", "--ServerApp.ip=127.0.0.1", f"--IdentityProvider.token={token}", "--allow-root"]
        t0 = time.monotonic()
        proc = subprocess.Popen(
            [str(jupyter), "lab", "--no-browser", f"--ServerApp.root_dir={tmp}", *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            while True:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api", timeout=2):
                        break
                except OSError:
                    if proc.poll() is not None or time.monotonic() - t0 > 120:
                        raise RuntimeError("jupyter lab did not start") from None
                    time.sleep(0.05)
            seconds = time.monotonic() - t0
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/lab?token={token}", timeout=30) as r:
                page = r.read().decode()
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            log = proc.communicate(timeout=30)[0].decode()
    config = json.loads(re.search(r'id="jupyter-config-data"[^>]*>(.*?)</script>', page, re.S).group(1))
    return seconds, "nbgrader_config.py" in log, "@jupyter/nbgrader" not in config.get("disabledExtensions", [])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="starts per setting, alternating")
    args = parser.parse_args()
    runs: dict[bool, list[tuple[float, bool, bool]]] = {False: [], True: []}
    for _ in range(args.repeats):
        for on in (True, False):
            runs[on].append(start_once(on))
    print("| nbgrader extensions | start-up to /api [s], median (min–max) | nbgrader_config warning | lab extension |")
    print("|---|---|---|---|")
    for on, label in ((True, "on (`make instructor`)"), (False, "off (a learner's `make lab`)")):
        secs = [r[0] for r in runs[on]]
        warned, active = any(r[1] for r in runs[on]), any(r[2] for r in runs[on])
        spread = f"{statistics.median(secs):.1f} ({min(secs):.1f}–{max(secs):.1f})"
        print(f"| {label} | {spread} | {'yes' if warned else 'no'} | {'loaded' if active else 'disabled'} |")
    print(f"\n{args.repeats} starts each, alternating; cores: {os.cpu_count()}, python {sys.version.split()[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
