"""Shared test helpers."""

from __future__ import annotations

import re
import socket
import time
from typing import TYPE_CHECKING

import httpx
import pytest

from course_utils.checks import CheckFailed

if TYPE_CHECKING:
    import openai

    from course_utils.model import GPT


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


# The serving API tests (tests/serving/): keys, a tiny GPT, the official client, an error body, raw sockets.
KEY, OTHER_KEY = "sk-course-alice-0001", "sk-course-bob-00002"
HEADERS = {"Authorization": f"Bearer {KEY}"}
JSON = {**HEADERS, "Content-Type": "application/json"}


def tiny_gpt(seed: int = 0, **kw) -> GPT:
    import torch

    from course_utils.model import GPT, GPTConfig

    torch.manual_seed(seed)
    cfg = dict(vocab_size=256, d_model=32, n_layers=2, n_heads=4, max_seq_len=96)
    cfg.update(kw)
    return GPT(GPTConfig(**cfg))


def client(url, key=KEY, **kw) -> openai.OpenAI:
    import openai

    return openai.OpenAI(base_url=url + "/v1", api_key=key, timeout=30.0, **kw)


def _error(r, status, param=None):
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert set(body["error"]) >= {"message", "type", "param", "code"}
    if param is not None:
        assert body["error"]["param"] == param, body
    assert "Traceback" not in r.text
    return body["error"]


def _wait_for(predicate, timeout=20.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def stream_then_hang_up(url: str, prompt: str, max_tokens: int, model: str = "tiny-gpt") -> None:
    """Ask for a streamed completion, read its first event, then close the connection (a client that leaves)."""
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "stream": True}
    with httpx.stream("POST", url + "/v1/completions", timeout=30, json=body) as r:
        next(r.iter_lines())


def _raw(url: str, data: bytes, wait_reply: bool, timeout: float = 10.0) -> bytes:
    host, port = url.rsplit("/", 1)[1].split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        s.sendall(data)
        return s.recv(4096) if wait_reply else b""


# The gateway tests (tests/gateway/): a clock the tests advance by hand, and numbers no delay or rate may be.
class FakeClock:
    """A clock that stands still until ``advance`` moves it."""

    def __init__(self, t: float = 100.0):
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, dt: float) -> None:
        self.t += dt


NON_POSITIVE = [0, -1, float("nan"), float("inf"), -float("inf")]
