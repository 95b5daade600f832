"""Shared test helpers."""

from __future__ import annotations

import re

import pytest

from course_utils.checks import CheckFailed


def assert_check_rejects(check, wrong_impl, match: str | None = None) -> str:
    """Assert that a lab ``check`` rejects ``wrong_impl`` with a helpful message; return the message.

    The meta-test in tests/test_checks_core.py requires one call of this helper per ``check_*`` function, so
    every check is shown to fail on at least one plausible wrong implementation.
    """
    with pytest.raises(CheckFailed) as info:
        check(wrong_impl)
    message = str(info.value)
    assert message.startswith(check.__name__), f"message should name the check: {message!r}"
    if match is not None:
        assert re.search(match, message), f"expected /{match}/ in the failure message, got:\n{message}"
    return message


def assert_check_accepts(check, right_impl, capsys=None) -> None:
    """Assert that ``check`` accepts the reference implementation (prints its ✅ line)."""
    check(right_impl)
    if capsys is not None:
        out = capsys.readouterr().out
        assert "✅" in out and check.__name__ in out, out


def tiny_gpt_backend(name: str = "tiny-gpt"):
    """A seeded, untrained 2-layer GPT behind the server's backend: what the API tests serve (answers are ids)."""
    import torch

    from course_utils.model import GPT, GPTConfig
    from course_utils.serving import GPTBackend

    torch.manual_seed(0)
    return GPTBackend(GPT(GPTConfig(vocab_size=256, d_model=32, n_layers=2, n_heads=4, max_seq_len=128)), name=name)


def fail_sampling_at(monkeypatch, *, seed: int, step: int) -> None:
    """Make ``sample_token`` raise for the request with ``seed`` when it samples its ``step``-th token (0-based):
    one tenant's request failing inside a running batch."""
    import course_utils.sampling as sampling

    real = sampling.sample_token

    def flaky(logits, generated, params, generator=None):
        if params.seed == seed and len(generated) == step:
            raise RuntimeError("boom")
        return real(logits, generated, params, generator)

    monkeypatch.setattr(sampling, "sample_token", flaky)
