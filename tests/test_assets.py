"""Every shipped asset has a sidecar ``<file>.sha256`` that verify_sha256 accepts, and a changed byte is caught."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from course_utils.model import load_checkpoint, verify_sha256, write_sha256
from course_utils.moe_lm import load_moe_checkpoint

ASSETS = Path(__file__).resolve().parents[1] / "course_utils" / "assets"
FILES = sorted(p for p in ASSETS.iterdir() if p.is_file() and p.suffix != ".sha256")


def test_assets_are_there():
    names = {p.name for p in FILES}
    assert {"serve_adder_large.json", "serve_adder_small.safetensors", "ft_base.json", "ch5_moe.json"} <= names


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_every_asset_has_a_matching_sidecar_sha256(path):
    sidecar = Path(str(path) + ".sha256")
    assert sidecar.exists(), f"{path.name} has no {sidecar.name}: run course_utils.model.write_sha256({path.name!r})"
    assert sidecar.read_text().split()[1] == path.name
    assert verify_sha256(path, rebuild="course_utils.model.write_sha256") == path


def test_a_changed_config_byte_is_detected(tmp_path):
    """Changing rope_base in an adder's config (accuracy 100% -> 8.5% in the issue) must fail verification."""
    for name in ("serve_adder_large.json", "serve_adder_large.json.sha256"):
        shutil.copy(ASSETS / name, tmp_path / name)
    config = tmp_path / "serve_adder_large.json"
    verify_sha256(config, rebuild="build_adders()")
    text = config.read_text()
    assert '"rope_base": 10000' in text
    config.write_text(text.replace('"rope_base": 10000', '"rope_base": 10001', 1))
    with pytest.raises(ValueError, match="serve_adder_large.json: sha256"):
        verify_sha256(config, rebuild="build_adders()")


def test_a_missing_sidecar_is_an_error_that_says_how_to_rebuild(tmp_path):
    path = tmp_path / "x.json"
    path.write_text("{}")
    with pytest.raises(FileNotFoundError, match="rebuild-me"):
        verify_sha256(path, rebuild="rebuild-me")
    write_sha256(path)
    assert verify_sha256(path, rebuild="rebuild-me") == path


def test_moe_checkpoint_loader_checks_its_config_too(tmp_path):
    """load_moe_checkpoint verifies the weights *and* the JSON config before building the model."""
    for name in ("ch5_moe.safetensors", "ch5_moe.safetensors.sha256", "ch5_moe.json", "ch5_moe.json.sha256"):
        shutil.copy(ASSETS / name, tmp_path / name)
    path = tmp_path / "ch5_moe.safetensors"
    assert load_moe_checkpoint(path).config == load_checkpoint(ASSETS / "ch5_moe.safetensors").config
    config = tmp_path / "ch5_moe.json"
    config.write_text(config.read_text().replace('"dropout"', ' "dropout"', 1))  # one byte, same meaning
    with pytest.raises(ValueError, match="ch5_moe.json: sha256"):
        load_moe_checkpoint(path)


def test_load_checkpoint_with_rebuild_checks_weights_and_config(tmp_path):
    """The one mechanism for every shipped checkpoint: save_checkpoint(sha256=True) writes both sidecars,
    load_checkpoint(path, rebuild=...) refuses a changed config byte or a changed weight byte."""
    from course_utils.model import GPT, GPTConfig, save_checkpoint

    torch.manual_seed(0)
    path = save_checkpoint(
        GPT(GPTConfig(vocab_size=16, d_model=8, n_layers=1, n_heads=2, max_seq_len=8)),
        tmp_path / "m.safetensors",
        sha256=True,
    )
    assert {p.name for p in tmp_path.iterdir()} >= {"m.safetensors.sha256", "m.json.sha256"}
    assert load_checkpoint(path, rebuild="rebuild-me").config.d_model == 8
    config = path.with_suffix(".json")
    original = config.read_text()
    config.write_text(original.replace('"rope_base": 10000', '"rope_base": 10001', 1))
    with pytest.raises(ValueError, match="m.json: sha256"):  # records present: checked without rebuild too
        load_checkpoint(path)
    with pytest.raises(ValueError, match="m.json: sha256.*rebuild-me"):
        load_checkpoint(path, rebuild="rebuild-me")
    config.write_text(original)
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="m.safetensors: sha256"):
        load_checkpoint(path, rebuild="rebuild-me")
    with pytest.raises(FileNotFoundError, match="rebuild-me"):
        load_checkpoint(tmp_path / "missing.safetensors", rebuild="rebuild-me")
