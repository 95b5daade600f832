"""course_utils.serving.faults: the seeded fault injector, and the 429/503 it causes as clients see them."""

from __future__ import annotations

import httpx
import openai
import pytest
from helpers import client

from course_utils.gateway import RetryableError, retry_call
from course_utils.serving import FaultError, FaultInjector, create_app, start_server

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # fixture in conftest.py


def test_fault_injector_is_seeded_and_hits_its_rate(backend):
    def fates(seed):
        inj = FaultInjector(backend, error_rate=0.2, seed=seed)
        return [inj.draw() is not None for _ in range(2000)]

    assert fates(1) == fates(1) and fates(1) != fates(2)
    assert 0.17 < sum(fates(1)) / 2000 < 0.23
    inj = FaultInjector(backend, error_rate=1.0, statuses=(429,), retry_after_s=0.5)
    with pytest.raises(FaultError) as info:
        inj.generate("hi", max_tokens=2)
    assert info.value.status == 429 and info.value.retry_after == 0.5
    with pytest.raises(ValueError, match="error_rate"):
        FaultInjector(backend, error_rate=1.5)


def test_injected_faults_become_429_503_with_retry_after_and_retries_recover(backend):
    flaky = FaultInjector(backend, error_rate=0.3, retry_after_s=0.05, seed=3)
    app = create_app({"tiny-gpt": flaky, "backup": backend}, max_wait_ms=0)
    with start_server(app) as url, httpx.Client(timeout=10) as h:
        seen = set()
        for _ in range(40):
            r = h.post(url + "/v1/completions", json={"model": "tiny-gpt", "prompt": "x", "max_tokens": 2})
            seen.add(r.status_code)
            if r.status_code != 200:
                assert r.headers["retry-after"] == "1" and r.headers["retry-after-ms"] == "50"
                assert r.json()["error"]["code"] == "overloaded"
        assert seen <= {200, 429, 503} and len(seen) == 3

        c = client(url, key="unused", max_retries=0)
        sleeps = []

        def once():
            try:
                return c.completions.create(model="tiny-gpt", prompt="retry me", max_tokens=2, temperature=0)
            except openai.APIStatusError as err:
                if err.status_code in (429, 503):
                    raise RetryableError(status=err.status_code, retry_after=0.0) from err
                raise

        ok = 0
        for _ in range(100):
            try:
                retry_call(once, max_attempts=5, retry_on=(RetryableError,), sleep=sleeps.append)
                ok += 1
            except RetryableError:
                pass
        assert ok >= 99  # 0.3^5 ≈ 0.24% of requests fail five times in a row
        assert sleeps  # some requests needed a retry


def test_openai_clients_own_retries_honour_retry_after_ms(backend):
    flaky = FaultInjector(backend, error_rate=0.5, retry_after_s=0.01, seed=0)
    app = create_app({"tiny-gpt": flaky}, max_wait_ms=0)
    with start_server(app) as url:
        c = client(url, key="unused", max_retries=6)
        for _ in range(10):
            assert c.completions.create(model="tiny-gpt", prompt="x", max_tokens=1).choices[0].text is not None
        retries = [r["retries"] for r in app.state.server.request_log]
    assert max(retries) >= 1  # the client said (x-stainless-retry-count) that it was retrying


def test_misconfigured_fault_injector_is_a_server_error(backend):
    flaky = FaultInjector(backend, error_rate=0.0)
    app = create_app({"tiny-gpt": flaky})
    with start_server(app) as url, httpx.Client(timeout=10) as h:
        flaky.error_rate = 2.0  # changed on the fly to an impossible value: the operator's fault, not the client's
        r = h.post(url + "/v1/completions", json={"model": "tiny-gpt", "prompt": "x", "max_tokens": 2})
    assert r.status_code == 500 and r.json()["error"]["type"] == "server_error" and "Traceback" not in r.text
