"""``python -m pip`` in the simulated Colab VM: records the command, checks it, installs nothing.

Every pin it is asked to install must be what this environment already has (so that the notebook then runs with
exactly what a real install would give), must not be a package Colab learners never need, and an editable install
of the course must be ``--no-deps`` (its requirements are Colab's own builds). Otherwise it fails as pip would,
with exit status 1, and the bootstrap cell (``check=True``) raises.
"""

import sys
from pathlib import Path

import colab_image


def refuse(message: str) -> None:
    print(f"pip (Colab simulation): {message}", file=sys.stderr)
    raise SystemExit(1)


def requirements(path: Path) -> list[str]:
    if not path.is_file():
        refuse(f"no requirements file {path}")
    lines = (line.split("#")[0].strip() for line in path.read_text(encoding="utf-8").splitlines())
    return [line for line in lines if line]


def check_pin(spec: str) -> str:
    name, sep, pinned = spec.partition("==")
    name = name.strip()
    if not sep:
        refuse(f"{spec!r}: the course installs exact pins (name==version)")
    if colab_image.normalize(name) in colab_image.HIDDEN_DISTS:
        refuse(f"{name}: the course says Colab learners never need it (course_utils.doctor.NOT_IN_COLAB)")
    have = colab_image.real_version(name)
    if have is None:
        refuse(f"{name}=={pinned} is not installed in the environment running this test")
    if have.split("+")[0] != pinned.strip().split("+")[0]:
        refuse(f"{name}=={pinned} asked for, the environment running this test has {have}")
    return name


def main(argv: list[str]) -> None:
    colab_image.record("pip", argv)
    if not argv or argv[0] != "install":
        refuse(f"only `pip install` is simulated, got {argv}")
    opts = argv[1:]
    if "-e" in opts:
        target = Path(opts[opts.index("-e") + 1])
        if "--no-deps" not in opts:
            refuse("the course's editable install must be --no-deps (Colab brings its own torch and friends)")
        if not (target / "pyproject.toml").is_file():
            refuse(f"{target} is not a clone of the course (no pyproject.toml)")
        specs = []
    elif "-r" in opts:
        specs = requirements(Path(opts[opts.index("-r") + 1]))
    else:
        specs = [o for o in opts if not o.startswith("-")]
    names = [check_pin(spec) for spec in specs]
    colab_image.record("pip-installed", names)


main(sys.argv[1:])
