"""course_utils.serving.auth: API keys, rate limits per key, and the limit on failed attempts per address."""

from __future__ import annotations

import time

import httpx
import openai
import pytest
from helpers import HEADERS, KEY, OTHER_KEY, _error, client

from course_utils.serving import RateLimit, create_app, start_server

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # fixture in conftest.py


def test_missing_or_wrong_key_is_401(server):
    url, _ = server
    with httpx.Client(timeout=10) as h:
        payload = {"model": "tiny-gpt", "prompt": "x"}
        assert _error(h.post(url + "/v1/completions", json=payload), 401)["type"] == "authentication_error"
        _error(h.post(url + "/v1/completions", json=payload, headers={"Authorization": "Bearer sk-nope-nope"}), 401)
        _error(h.post(url + "/v1/completions", json=payload, headers={"Authorization": KEY}), 401)  # no scheme
        _error(h.get(url + "/v1/models"), 401)
    with pytest.raises(openai.AuthenticationError):
        client(url, key="sk-wrong-key-123", max_retries=0).completions.create(model="tiny-gpt", prompt="x")


def test_rate_limit_429_with_retry_after_and_no_starvation(backend):
    app = create_app(
        {"tiny-gpt": backend},
        api_keys={KEY: "greedy", OTHER_KEY: "polite"},
        rate_limit=RateLimit(requests_per_s=2.0, burst=3),
        max_wait_ms=0,
    )
    body = {"model": "tiny-gpt", "prompt": "x", "max_tokens": 1}
    with start_server(app) as url, httpx.Client(timeout=10) as h:
        greedy = [
            h.post(url + "/v1/completions", json=body, headers={"Authorization": f"Bearer {KEY}"}) for _ in range(10)
        ]
        polite = h.post(url + "/v1/completions", json=body, headers={"Authorization": f"Bearer {OTHER_KEY}"})
    codes = [r.status_code for r in greedy]
    assert codes[:3] == [200] * 3 and codes.count(429) >= 5
    limited = next(r for r in greedy if r.status_code == 429)
    assert int(limited.headers["retry-after"]) >= 1 and limited.json()["error"]["type"] == "rate_limit_error"
    assert polite.status_code == 200  # the greedy key's bucket is not the polite key's


def test_token_rate_limit_rejects_requests_bigger_than_the_burst(backend):
    app = create_app({"tiny-gpt": backend}, rate_limit=RateLimit(100.0, 100, tokens_per_s=10.0, token_burst=20))
    with start_server(app) as url, httpx.Client(timeout=10) as h:
        r = h.post(url + "/v1/completions", json={"model": "tiny-gpt", "prompt": "x", "max_tokens": 30})
        _error(r, 400, "max_tokens")
        codes = [
            h.post(url + "/v1/completions", json={"model": "tiny-gpt", "prompt": "x", "max_tokens": 8}).status_code
            for _ in range(4)
        ]
    assert codes[:2] == [200, 200] and 429 in codes  # 2 × 9 tokens fit the burst of 20, the third does not


@pytest.mark.parametrize(
    "kw,name",
    [
        ({"requests_per_s": float("nan")}, "requests_per_s"),
        ({"requests_per_s": -1}, "requests_per_s"),
        ({"requests_per_s": 0}, "requests_per_s"),
        ({"requests_per_s": float("inf")}, "requests_per_s"),
        ({"requests_per_s": "5"}, "requests_per_s"),
        ({"requests_per_s": 5, "burst": 0.5}, "burst"),
        ({"requests_per_s": 5, "tokens_per_s": float("nan")}, "tokens_per_s"),
        ({"requests_per_s": 5, "tokens_per_s": 100, "token_burst": 0}, "token_burst"),
        ({"requests_per_s": 5, "token_burst": 10}, "token_burst"),
    ],
)
def test_rate_limit_refuses_bad_settings_naming_them(kw, name):
    # issue 27: RateLimit(nan | -1 | 0) used to build an app whose every request was a 500 (only the CLI checked)
    with pytest.raises(ValueError, match=name):
        RateLimit(**kw)


def test_failed_authentication_is_rate_limited_per_address(backend):
    app = create_app({"tiny-gpt": backend}, api_keys=[KEY], failed_auth_per_s=0.01, failed_auth_burst=3)
    with start_server(app) as url, httpx.Client(timeout=10) as h:
        codes = [
            h.get(url + "/v1/models", headers={"Authorization": f"Bearer sk-guess-{i:04d}"}).status_code
            for i in range(5)
        ]
        last = h.get(url + "/v1/models", headers={"Authorization": "Bearer sk-guess-9999"})
    assert codes == [401, 401, 401, 429, 429] and int(last.headers["retry-after"]) >= 1


def test_failed_attempts_from_an_address_never_lock_out_a_valid_key_from_it(backend):
    # issue 27: wrong keys at 5/s from 127.0.0.1 used to lock a valid key behind the same address out (429 x 8)
    app = create_app({"tiny-gpt": backend}, api_keys=[KEY], failed_auth_per_s=0.01, failed_auth_burst=3)
    with start_server(app) as url, httpx.Client(timeout=10) as h:
        codes = []
        for i in range(8):
            codes.append(h.get(url + "/v1/models", headers={"Authorization": f"Bearer sk-guess-{i:04d}"}).status_code)
            codes.append(h.get(url + "/v1/models", headers=HEADERS).status_code)
            time.sleep(0.2)
    assert codes[0::2] == [401] * 3 + [429] * 5  # the guesser is slowed down ...
    assert codes[1::2] == [200] * 8  # ... and the valid key from the same address never is
