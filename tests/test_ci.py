"""The GitHub Actions workflow (.github/workflows/ci.yml) cannot run here: it is kept valid against GitHub's
workflow schema (SchemaStore's copy shipped in check-jsonschema's wheel, offline), and its set-up steps are the
README's own lines, so that CI fails when the README's instructions stop working on Linux, macOS or Windows."""

import json
import re
from importlib.resources import files
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ROOT / ".github" / "workflows" / "ci.yml"
yaml = pytest.importorskip("ruamel.yaml", reason="check-jsonschema (requirements-test.txt) brings ruamel.yaml")
jsonschema = pytest.importorskip("jsonschema")


def schema_errors(text: str) -> list[str]:
    """What `check-jsonschema --builtin-schema vendor.github-workflows` reports, in this process (one schema load)."""
    pytest.importorskip("check_jsonschema", reason="pinned in requirements-test.txt")
    vendor = files("check_jsonschema") / "builtin_schemas" / "vendor" / "github-workflows.json"
    schema = json.loads(vendor.read_text(encoding="utf-8"))
    validator = jsonschema.validators.validator_for(schema)(schema)
    return [e.message for e in validator.iter_errors(yaml.YAML(typ="safe").load(text))]


def workflow() -> dict:
    return yaml.YAML(typ="safe").load(WORKFLOW.read_text())


def test_workflow_matches_githubs_schema_and_a_broken_one_does_not():
    text = WORKFLOW.read_text()
    assert schema_errors(text) == []
    for broken in (text.replace("runs-on: windows-latest", "run-on: windows-latest"), text.replace("steps:", "step:")):
        assert broken != text and schema_errors(broken), broken


def readme_block(title: str, lang: str) -> list[str]:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split(title, 1)[1]
    block = re.search(rf"```{lang}\n(.*?)```", section, re.S).group(1)
    return [line.strip() for line in block.splitlines() if line.strip()]


def test_ci_runs_readme_setup_on_ubuntu_macos_and_windows_and_builds_wheelhouses():
    jobs = workflow()["jobs"]
    unix = jobs["setup-unix"]
    assert set(unix["strategy"]["matrix"]["os"]) == {"ubuntu-latest", "macos-14"}
    runs = [step.get("run", "") for step in unix["steps"]]
    assert any(r.startswith("make venv") for r in runs) and any("course_utils.doctor" in r for r in runs), runs
    assert any(r.startswith("make test-fast") for r in runs), runs
    win = jobs["setup-windows"]
    assert win["runs-on"] == "windows-latest"
    script = "\n".join(step.get("run", "") for step in win["steps"])
    for line in readme_block("**Windows (PowerShell):**", "powershell"):
        if " -m jupyter lab " in line:  # serves until stopped: CI checks that it starts up to its version
            line = line.split(" --", 1)[0] + " --version"
        assert line.replace("py -3.11", "py -${{ matrix.python }}") in script, line
    for job in ("setup-unix", "setup-windows"):
        assert set(jobs[job]["strategy"]["matrix"]["python"]) == {"3.11", "3.12"}  # what README says works
    house = jobs["wheelhouse"]
    assert set(house["strategy"]["matrix"]["os"]) == {"ubuntu-latest", "macos-14", "windows-latest"}
    upload = [s for s in house["steps"] if s.get("uses", "").startswith("actions/upload-artifact")]
    assert upload and upload[0]["with"]["path"].rstrip("/") == "wheelhouse"
    assert jobs["full"]["steps"][-1]["run"] == ".ci/run"


def test_readme_windows_block_works_as_written():
    """PowerShell blocks `Activate.ps1` by default and cmd.exe passes `# ...` to the program: no activation, no
    trailing comments, the venv's own python for every call, and the doctor at the end."""
    lines = readme_block("**Windows (PowerShell):**", "powershell")
    assert lines[0] == "py -3.11 -m venv .venv", lines
    assert all(line.startswith(".venv\\Scripts\\python -m ") for line in lines[1:]), lines
    assert not [line for line in lines if "#" in line or "activate" in line.lower()], lines
    assert ".venv\\Scripts\\python -m course_utils.doctor" in lines
    offline = readme_block("**Windows, offline", "powershell")
    assert all("--no-index --find-links wheelhouse" in line for line in offline if " pip install " in line), offline
