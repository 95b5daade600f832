"""Importing one lab check imports only its chapter's module (CONTRIBUTING; issue #28).

One fresh interpreter imports torch (every lab has by then), then, for one check per chapter, drops every
course_utils module, imports the check and records what came along. Modules are asserted, never time: the time is
measured by benchmarks/check_imports.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: check -> the chapter module that defines it (chapter 8 twice: quantization, and the capstone's serving checks)
CHECKS = {
    "check_get_stats": "ch01",
    "check_scaled_dot_product_attention": "ch02",
    "check_rms_norm": "ch03",
    "check_topk_router": "ch04",
    "check_swap_ffn_for_moe": "ch05",
    "check_chunk_text": "ch06",
    "check_lora_forward": "ch07",
    "check_quantize_int8": "ch08",
    "check_resilient_client": "ch08",
}
#: libraries no check may import when it is imported (each costs about a second or more)
HEAVY = ("fastapi", "openai", "httpx", "transformers", "sentence_transformers", "nbclient", "ipywidgets", "matplotlib")

_CHILD = r"""
import json, sys
import torch
found = {}
for name in sys.argv[1].split(","):
    for loaded in [m for m in sys.modules if m == "course_utils" or m.startswith("course_utils.")]:
        del sys.modules[loaded]
    import course_utils.checks as checks
    check = getattr(checks, name)
    found[name] = {
        "home": check.__module__,
        "modules": sorted(m for m in sys.modules if m.startswith("course_utils.")),
        "heavy": sorted(h for h in sys.argv[2].split(",") if h in sys.modules),
    }
print(json.dumps(found))
"""


@pytest.fixture(scope="module")
def loaded() -> dict:
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, ",".join(CHECKS), ",".join(HEAVY)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("check", sorted(CHECKS))
def test_a_check_imports_only_its_chapter(loaded, check):
    got = loaded[check]
    assert got["home"] == f"course_utils.checks.{CHECKS[check]}"
    chapters = {m for m in got["modules"] if m.startswith("course_utils.checks.ch")}
    assert chapters == {got["home"]}, f"importing {check} imported other chapters' checks: {sorted(chapters)}"
    # chapter 8's serving checks start a server when they run, not when they are imported
    assert not [m for m in got["modules"] if m.startswith("course_utils.serving")], got["modules"]
    assert got["heavy"] == [], f"importing {check} imported {got['heavy']}"


def test_chapter_one_loads_a_handful_of_modules(loaded):
    # tokenization and data (its held-out text), the checks package and its core; no model, no attention
    modules = set(loaded["check_get_stats"]["modules"])
    assert {"course_utils.tokenization", "course_utils.checks._core"} <= modules
    assert not modules & {"course_utils.model", "course_utils.attention", "course_utils.train", "course_utils.rag"}


def test_an_unknown_check_is_an_import_error():
    import course_utils.checks as checks

    with pytest.raises(AttributeError, match="check_no_such_exercise"):
        checks.check_no_such_exercise  # noqa: B018 — the attribute access is the test
    with pytest.raises(ImportError):
        exec("from course_utils.checks import check_no_such_exercise", {})
