"""course_utils.checksums: sha256sum-format records and the check that names the rebuild command (no torch)."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import pytest

from course_utils.checksums import read_sha256, sha256_of, verify_sha256, write_sha256

REBUILD = "python scripts/make_it.py"


@pytest.fixture
def asset(tmp_path):
    path = tmp_path / "results.json"
    path.write_text('{"accuracy": 0.9}\n')
    return path


def test_record_is_sha256sums_format_and_verifies(asset):
    record = write_sha256(asset)
    assert record.name == "results.json.sha256"
    assert record.read_text() == f"{hashlib.sha256(asset.read_bytes()).hexdigest()}  results.json\n"
    assert sha256_of(asset) == read_sha256(record, "results.json")
    assert verify_sha256(asset, rebuild=REBUILD) == asset


def test_a_changed_file_fails_naming_the_rebuild_command(asset):
    write_sha256(asset)
    asset.write_text('{"accuracy": 1.0}\n')
    with pytest.raises(ValueError, match="does not match.*python scripts/make_it.py"):
        verify_sha256(asset, rebuild=REBUILD)


def test_a_missing_record_or_file_says_how_to_rebuild(asset, tmp_path):
    with pytest.raises(FileNotFoundError, match="make_it.py"):
        verify_sha256(asset, rebuild=REBUILD)
    with pytest.raises(FileNotFoundError, match="make_it.py"):
        verify_sha256(tmp_path / "gone.json", rebuild=REBUILD)


def test_a_record_for_another_name_or_malformed_is_refused(asset, tmp_path):
    record = write_sha256(asset)
    with pytest.raises(ValueError, match="renamed or swapped"):
        read_sha256(record, "other.json")
    bad = tmp_path / "bad.sha256"
    bad.write_text("xyz  results.json\n")
    with pytest.raises(ValueError, match="64 hex digits"):
        read_sha256(bad, "results.json")


def test_the_module_does_not_import_torch():
    # data.py checks its corpus with it before any model is needed
    code = "import sys, course_utils.checksums; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "False"
