"""course_utils.serving.adder: the adder task's data and its sha256-checked checkpoints."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # fixture in conftest.py


def test_addition_data_trains_on_the_answer_only():
    from course_utils.serving import AdditionData, addition_problems

    q, a = addition_problems(1, seed=5)[0]
    assert q.endswith("=") and a.endswith("\n") and int(a[:-1][::-1]) == sum(int(x) for x in q[:-1].split("+"))
    x, y = AdditionData().get_batch("train", 8, 16, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (8, 16)
    for row_x, row_y in zip(x.tolist(), y.tolist()):
        text = bytes(t for t in row_x if t).decode()
        prompt_len = text.index("=") + 1
        assert all(t == -1 for t in row_y[: prompt_len - 1])  # no loss on the prompt
        assert bytes(t for t in row_y if t >= 0).decode() == text[prompt_len:] + "\n"
    xv, _ = AdditionData().get_batch("val", 8, 16, torch.Generator().manual_seed(0))
    assert not torch.equal(x, xv)  # the splits draw different problems


def test_adder_checkpoints_are_sha256_checked_and_the_large_one_adds(tmp_path, monkeypatch):
    from course_utils import adder, serving
    from course_utils.serving import ADDER_SHA256, addition_problems, load_adder

    assert set(ADDER_SHA256) == {"adder-small", "adder-large"}  # recorded digests of the committed files
    problems = addition_problems(100, seed=31)
    acc = {}
    for name in ("adder-small", "adder-large"):
        correct, logprobs = serving.answer_additions(load_adder(name), problems, batch_size=32)
        assert [len(lp) for lp in logprobs] == [len(a) for _, a in problems]
        acc[name] = sum(correct) / len(problems)
    assert acc["adder-large"] >= 0.9 and acc["adder-small"] < acc["adder-large"], acc
    # one batch or several: the same verdicts
    assert (
        serving.answer_additions(load_adder("adder-large"), problems[:40])[0]
        == serving.answer_additions(load_adder("adder-large"), problems[:40], batch_size=7)[0]
    )
    for bad, kw in (([], {}), ("1+1=", {}), ([("1+1=", 2)], {}), (problems, {"batch_size": 0})):
        with pytest.raises(ValueError, match="problems|batch_size"):
            serving.answer_additions(load_adder("adder-small"), bad, **kw)
    # a file that differs from the recorded digest is refused
    for suffix in (".safetensors", ".json", ".safetensors.sha256", ".json.sha256"):
        src = serving.ASSETS / f"serve_adder_small{suffix}"
        (tmp_path / src.name).write_bytes(src.read_bytes())
    bad = bytearray((tmp_path / "serve_adder_small.safetensors").read_bytes())
    bad[-1] ^= 1
    (tmp_path / "serve_adder_small.safetensors").write_bytes(bytes(bad))
    monkeypatch.setattr(adder, "ASSETS", tmp_path)
    with pytest.raises(ValueError, match="sha256"):
        load_adder("adder-small")
    # so is a changed config, weights intact (the same rope_base probe as tests/test_assets.py)
    (tmp_path / "serve_adder_small.safetensors").write_bytes(
        (serving.ASSETS / "serve_adder_small.safetensors").read_bytes()
    )
    cfg = tmp_path / "serve_adder_small.json"
    cfg.write_text(cfg.read_text().replace('"rope_base": 10000.0', '"rope_base": 500.0'))
    assert cfg.read_text() != (serving.ASSETS / "serve_adder_small.json").read_text()
    with pytest.raises(ValueError, match="sha256"):
        load_adder("adder-small")
