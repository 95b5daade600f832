"""course_utils.serving.protocol: invalid fields are 4xx errors naming the field; a bounded fuzz."""

from __future__ import annotations

import json
import random
import time

import httpx
import pytest
from helpers import HEADERS, JSON, KEY, _error, _raw

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # fixture in conftest.py


@pytest.mark.parametrize(
    "payload,status,param",
    [
        ({"model": "gpt-17", "prompt": "x"}, 404, "model"),
        ({"prompt": "x"}, 400, "model"),
        ({"model": "tiny-gpt", "prompt": ""}, 400, "prompt"),
        ({"model": "tiny-gpt", "prompt": 12}, 400, "prompt"),
        ({"model": "tiny-gpt", "prompt": [1, 999]}, 400, "prompt"),  # a token id outside the vocabulary
        ({"model": "tiny-gpt", "prompt": "x", "max_tokens": 0}, 400, "max_tokens"),
        ({"model": "tiny-gpt", "prompt": "x", "max_tokens": 49}, 400, "max_tokens"),  # above the server's limit
        ({"model": "tiny-gpt", "prompt": "x" * 60, "max_tokens": 40}, 400, "max_tokens"),  # beyond the context
        ({"model": "tiny-gpt", "prompt": "x", "max_tokens": "5"}, 400, "max_tokens"),
        ({"model": "tiny-gpt", "prompt": "x", "max_tokens": True}, 400, "max_tokens"),
        ({"model": "tiny-gpt", "prompt": "x", "temperature": "hot"}, 400, "temperature"),
        ({"model": "tiny-gpt", "prompt": "x", "temperature": 3}, 400, "temperature"),
        ({"model": "tiny-gpt", "prompt": "x", "seed": -1}, 400, "seed"),
        ({"model": "tiny-gpt", "prompt": "x", "stream": "yes"}, 400, "stream"),
        ({"model": "tiny-gpt", "prompt": "x", "n": 0}, 400, "n"),
        ({"model": "tiny-gpt", "prompt": "x", "n": 99}, 400, "n"),
        ({"model": "tiny-gpt", "prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
        ({"model": "tiny-gpt", "prompt": "x", "logprobs": 21}, 400, "logprobs"),
        ({"model": "tiny-gpt", "prompt": "x", "logit_bias": {"x": 1}}, 400, "logit_bias"),
        ({"model": "tiny-gpt", "prompt": "x", "logit_bias": {"256": 1}}, 400, "logit_bias"),  # outside the vocabulary
        ({"model": "tiny-gpt", "prompt": "x", "presence_penalty": 2.5}, 400, "presence_penalty"),
        ({"model": "tiny-gpt", "prompt": "x" * 200}, 400, "prompt"),
    ],
)
def test_bad_fields_get_named_4xx_errors(server, payload, status, param):
    url, _ = server
    with httpx.Client(timeout=10) as h:
        _error(h.post(url + "/v1/completions", json=payload, headers=HEADERS), status, param)


FUZZ_VALUES = [
    None,
    True,
    -1,
    0,
    2,
    10**30,
    1.5e308,
    "",
    "x",
    "tiny-gpt",
    [],
    {},
    ["a", "b"],
    [1],
    [[1, 2]],
    "\u0000",
    "é" * 30,
    float("inf"),
    {"include_usage": True},
    {"1": 5},
    [{"role": "user", "content": "hi"}],
    [{"role": "tool", "content": "x"}],
    [{"role": "user"}],
    [{"content": "hi"}],
]


FUZZ_FIELDS = {
    "/v1/completions": [
        "model",
        "prompt",
        "max_tokens",
        "temperature",
        "seed",
        "stream",
        "top_p",
        "n",
        "logprobs",
        "stop",
        "echo",
        "logit_bias",
        "presence_penalty",
        "stream_options",
    ],
    "/v1/chat/completions": [
        "model",
        "messages",
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "seed",
        "stream",
        "top_p",
        "n",
        "logprobs",
        "top_logprobs",
        "stop",
        "frequency_penalty",
        "logit_bias",
        "stream_options",
        "user",
    ],
    "/v1/embeddings": ["model", "input", "encoding_format"],
}


FUZZ_BASE = {
    "/v1/completions": {"model": "tiny-gpt", "prompt": "hi", "max_tokens": 2},
    "/v1/chat/completions": {"model": "tiny-gpt", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
    "/v1/embeddings": {"model": "no-such-embedder", "input": "hi"},
}


def test_bounded_fuzz_leaves_the_server_healthy(server):
    """900 malformed or odd requests (seeded) over the three POST endpoints: every one gets a 2xx or a 4xx with a
    JSON error body, never a 5xx, and the server still answers afterwards."""
    url, _ = server
    rng = random.Random(0)
    statuses = {}
    deadline = time.monotonic() + 240
    with httpx.Client(timeout=20) as h:
        for _ in range(900):
            assert time.monotonic() < deadline, "fuzz loop took too long"
            path = rng.choice(sorted(FUZZ_FIELDS))
            kind = rng.random()
            if kind < 0.25:  # random bytes
                content = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200)))
            elif kind < 0.35:  # truncated JSON
                content = json.dumps(FUZZ_BASE[path]).encode()[: rng.randrange(1, 30)]
            else:  # a JSON object with random values in random fields
                body = dict(FUZZ_BASE[path])
                for f in rng.sample(FUZZ_FIELDS[path], rng.randrange(1, 4)):
                    body[f] = rng.choice(FUZZ_VALUES)
                content = json.dumps(body, allow_nan=True).encode()
            r = h.post(url + path, content=content, headers=JSON)
            statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
            assert r.status_code < 500, (path, r.status_code, content[:100], r.text[:200])
            if r.status_code >= 400:
                assert "error" in r.json() and "Traceback" not in r.text
        for _ in range(20):  # clients that hang up mid-upload, and streams abandoned after one event
            head = (
                f"POST {rng.choice(sorted(FUZZ_FIELDS))} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
                f"Content-Type: application/json\r\nContent-Length: 500\r\n\r\n"
            ).encode()
            _raw(url, head + json.dumps(FUZZ_BASE["/v1/completions"]).encode()[: rng.randrange(1, 40)], False)
            with h.stream(
                "POST",
                url + "/v1/chat/completions",
                headers=HEADERS,
                json={**FUZZ_BASE["/v1/chat/completions"], "max_tokens": 40, "stream": True},
            ) as r:
                next(r.iter_lines())
        assert h.get(url + "/health").json()["status"] == "ok"
        ok = h.post(
            url + "/v1/completions",
            headers=HEADERS,
            json={"model": "tiny-gpt", "prompt": "still alive?", "max_tokens": 3, "temperature": 0},
        )
        assert ok.status_code == 200 and len(ok.json()["choices"][0]["text"]) > 0
    assert {200, 400, 404} <= set(statuses) and 422 not in statuses, statuses  # OpenAI's 400, never FastAPI's 422
