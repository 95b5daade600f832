"""Checkpoint sidecars (issue 27): checked on every load path whenever present (``load_backend(name, checkpoint)``,
the ``--checkpoint`` path, included), empty and upper-case records handled as ``sha256sum -c`` does, the record
bound to its file's name; a checkpoint saved without records loads with one warning."""

from __future__ import annotations

import shutil
import subprocess
import warnings

import pytest
import torch

from course_utils.model import GPT, GPTConfig, load_checkpoint, save_checkpoint, write_sha256
from course_utils.serving import load_backend


def _save(folder, name: str, seed: int, sha256: bool = True):
    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=256, d_model=16, n_layers=1, n_heads=2, max_seq_len=32))
    return save_checkpoint(model, folder / f"{name}.safetensors", sha256=sha256)


@pytest.fixture
def ckpt(tmp_path):
    return _save(tmp_path, "a", 0)


def _sidecars(path):
    return path.with_name(path.name + ".sha256"), path.with_suffix(".json.sha256")


def test_intact_checkpoint_loads_without_warning(ckpt):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        backend = load_backend("m", ckpt)
    assert len(backend.generate("hi", max_tokens=2).token_ids) == 2


def test_changed_config_is_refused_on_the_checkpoint_path(ckpt):
    cfg = ckpt.with_suffix(".json")
    cfg.write_text(cfg.read_text().replace('"rope_base": 10000.0', '"rope_base": 500.0'))
    assert "500.0" in cfg.read_text()
    with pytest.raises(ValueError, match="a.json: sha256"):
        load_backend("m", ckpt)  # what `python -m course_utils.serving --checkpoint` calls
    with pytest.raises(ValueError, match="sha256"):
        load_checkpoint(ckpt)


def test_changed_weights_are_refused(ckpt):
    raw = bytearray(ckpt.read_bytes())
    raw[-1] ^= 1
    ckpt.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="a.safetensors: sha256"):
        load_backend("m", ckpt)


def test_empty_sidecar_is_a_clear_error(ckpt):
    _sidecars(ckpt)[0].write_text("")
    with pytest.raises(ValueError, match=r"a.safetensors.sha256 is empty: expected '<64 hex digits>  a.safetensors'"):
        load_backend("m", ckpt)


def test_upper_case_hex_is_accepted_as_sha256sum_does(ckpt):
    for record in _sidecars(ckpt):
        digest, name = record.read_text().split()
        record.write_text(f"{digest.upper()}  {name}\n")
    sha256sum = shutil.which("sha256sum")
    if sha256sum:  # the reference: the coreutils tool accepts these records as they are
        out = subprocess.run([sha256sum, "-c", *(r.name for r in _sidecars(ckpt))], cwd=ckpt.parent, check=False)
        assert out.returncode == 0
    assert load_backend("m", ckpt).name == "m" and load_checkpoint(ckpt, rebuild="x") is not None


def test_record_binds_the_file_name_so_swapped_checkpoints_fail(tmp_path):
    a, b = _save(tmp_path, "a", 0), _save(tmp_path, "b", 1)
    for x, y in ((a, b), *zip(_sidecars(a), _sidecars(b))):  # swap the weights together with their records
        tmp = x.with_name("tmp")
        x.rename(tmp), y.rename(x), tmp.rename(y)
    with pytest.raises(ValueError, match="records the file 'b.safetensors', not 'a.safetensors'"):
        load_backend("m", a)


def test_checkpoint_without_sidecars_loads_with_one_warning(tmp_path):
    path = _save(tmp_path, "plain", 0, sha256=False)
    with pytest.warns(UserWarning, match="no .sha256 sidecar") as caught:
        load_backend("m", path)
    assert len([w for w in caught if "sidecar" in str(w.message)]) == 1
    with warnings.catch_warnings():  # a learner's own round trip (chapter 3) loads quietly
        warnings.simplefilter("error")
        load_checkpoint(path)
    # one present record is still checked even when the other is missing
    write_sha256(path)
    path.write_bytes(path.read_bytes()[:-1] + b" ")
    with pytest.raises(ValueError, match="sha256"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        load_backend("m", path)


def test_shipped_checkpoint_still_needs_its_records(ckpt):
    _sidecars(ckpt)[1].unlink()
    with pytest.raises(FileNotFoundError, match="rebuild-me"):
        load_checkpoint(ckpt, rebuild="rebuild-me")
