"""Download the course's wheels for another operating system: a wheelhouse built on Linux for the room's Macs or
Windows laptops (`make wheelhouse-macos`, `make wheelhouse-windows`).

    python scripts/wheelhouse_for.py macos   [--python 3.11] [--dest wheelhouse-macos] [-r requirements.txt ...]
    python scripts/wheelhouse_for.py windows [--python 3.12] [--dest wheelhouse-windows] [--dry-run]

`pip download --platform X --python-version Y --only-binary=:all:` picks wheels for X, but pip evaluates the
environment markers of each requirement for the machine it runs on. torch's metadata carries its CUDA wheels as
`cuda-bindings ...; platform_system == "Linux"`, so from Linux pip asks for a macOS or Windows build of
`cuda-bindings` / `nvidia-nccl-cu13`, finds none and stops. This script runs pip with the markers evaluated for the
target (``sys_platform``, ``platform_system``, ``platform_machine``, ``os_name``, the Python version) and otherwise
unchanged: the same resolver, the same pins, binary wheels only. ``--dry-run`` resolves and prints what it would
download (a `pip install --dry-run --report` for the target) without saving wheels.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REQUIREMENTS = ("requirements.txt", "requirements-instructor.txt", "requirements-test.txt")
# pip expands a macOS platform to the older macOS versions and universal2 wheels it can run; torch 2.13 has
# wheels for macOS 14+ on Apple Silicon only, so that is the course's macOS target.
TARGETS = {
    "macos": {
        "platforms": ["macosx_14_0_arm64"],
        "markers": {
            "sys_platform": "darwin",
            "platform_system": "Darwin",
            "platform_machine": "arm64",
            "os_name": "posix",
        },
    },
    "windows": {
        "platforms": ["win_amd64"],
        "markers": {
            "sys_platform": "win32",
            "platform_system": "Windows",
            "platform_machine": "AMD64",
            "os_name": "nt",
        },
    },
}
SUPPORTED_PYTHONS = ("3.11", "3.12")

# Run as `python -c PIP_WITH_MARKERS <markers json> <pip arguments...>`: pip's own code, with the marker environment
# (pip's vendored packaging reads default_environment() each time it evaluates a marker) set to the target's.
PIP_WITH_MARKERS = """
import json, sys
from pip._vendor.packaging import markers
target = json.loads(sys.argv[1])
host = markers.default_environment
markers.default_environment = lambda: {**host(), **target}
from pip._internal.cli.main import main
sys.exit(main(sys.argv[2:]))
"""


def target_markers(target: str, python: str) -> dict[str, str]:
    """The environment-marker values of the target machine (what `pip` there would evaluate)."""
    if target not in TARGETS:
        raise ValueError(f"target must be one of {sorted(TARGETS)}, got {target!r}")
    if python not in SUPPORTED_PYTHONS:
        raise ValueError(f"python must be one of {SUPPORTED_PYTHONS} (the course's versions), got {python!r}")
    return {
        **TARGETS[target]["markers"],
        "python_version": python,
        "python_full_version": f"{python}.0",
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
    }


def pip_command(
    target: str,
    python: str = "3.11",
    dest: str | Path | None = None,
    requirements: list[str] | tuple[str, ...] = REQUIREMENTS,
    *,
    dry_run: bool = False,
    report: str | Path | None = None,
    executable: str = sys.executable,
) -> list[str]:
    """The whole command (argv) that downloads the wheels of ``requirements`` for ``target`` into ``dest``."""
    env = target_markers(target, python)
    where = [arg for p in TARGETS[target]["platforms"] for arg in ("--platform", p)]
    binary = ["--only-binary=:all:", "--python-version", python, "--implementation", "cp", *where]
    reqs = [arg for r in requirements for arg in ("-r", str(r))]
    if dry_run:
        # what a fresh install on the target would pick, without saving the wheels
        # (pip accepts --platform for an install only with --target; a dry run writes nothing there)
        target_dir = str(dest or Path(tempfile.gettempdir()) / f"wheelhouse-{target}-dry-run")
        args = ["install", "--dry-run", "--ignore-installed", "--quiet", *binary, "--target", target_dir]
        args += ["--report", str(report or "-")]
    else:
        dest = dest or f"wheelhouse-{target}"
        args = ["download", "--dest", str(dest), "--find-links", str(dest), *binary]
    return [executable, "-c", PIP_WITH_MARKERS, json.dumps(env), *args, *reqs, "setuptools"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python scripts/wheelhouse_for.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("target", choices=sorted(TARGETS))
    parser.add_argument("--python", default="3.11", choices=SUPPORTED_PYTHONS, help="the room's Python version")
    parser.add_argument("--dest", help="folder for the wheels (default wheelhouse-<target>)")
    parser.add_argument("-r", dest="requirements", action="append", help="requirements files (default: all three)")
    parser.add_argument("--dry-run", action="store_true", help="resolve and list the wheels, download nothing")
    args = parser.parse_args(argv)
    reqs = [str(ROOT / r) for r in REQUIREMENTS] if not args.requirements else args.requirements
    cmd = pip_command(
        args.target, args.python, args.dest, reqs, dry_run=args.dry_run, report="-" if args.dry_run else None
    )
    if not args.dry_run:
        return subprocess.run(cmd, cwd=ROOT).returncode
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        sys.stderr.write(done.stderr)
        return done.returncode
    report = json.loads(done.stdout)
    for item in report["install"]:
        meta, wheel = item["metadata"], item["download_info"]["url"].rsplit("/", 1)[-1]
        print(f"{meta['name']}=={meta['version']}  {wheel}")
    print(f"{len(report['install'])} wheels for {args.target}, Python {args.python}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
