"""course_utils.serving: the OpenAI-compatible server, batching, faults, auth, rate limits — on 127.0.0.1 only.

Every server runs inside ``start_server``'s ``with`` block, so it is shut down even when an assertion fails;
every request loop is bounded in count, and every HTTP client has a timeout.
"""

from __future__ import annotations

import json
import random
import socket
import subprocess
import sys
import threading
import time

import httpx
import openai
import pytest
import torch

from course_utils.gateway.caches import ExactCache
from course_utils.gateway.resilience import RetryableError, retry_call
from course_utils.model import GPT, GPTConfig
from course_utils.serving import (
    Batcher,
    ByteTokenizer,
    EchoBackend,
    FaultError,
    FaultInjector,
    GenRequest,
    GPTBackend,
    RateLimit,
    create_app,
    start_server,
)

KEY, OTHER_KEY = "sk-course-alice-0001", "sk-course-bob-00002"
HEADERS = {"Authorization": f"Bearer {KEY}"}
JSON = {**HEADERS, "Content-Type": "application/json"}


def tiny_gpt(seed: int = 0, **kw) -> GPT:
    torch.manual_seed(seed)
    cfg = dict(vocab_size=256, d_model=32, n_layers=2, n_heads=4, max_seq_len=96)
    cfg.update(kw)
    return GPT(GPTConfig(**cfg))


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # fixture in conftest.py


@pytest.fixture(scope="module")
def backend():
    return GPTBackend(tiny_gpt(), name="tiny-gpt")


@pytest.fixture(scope="module")
def server(backend):
    app = create_app(
        {"tiny-gpt": backend}, api_keys={KEY: "alice", OTHER_KEY: "bob"}, max_body_bytes=4096, max_tokens_limit=48
    )
    with start_server(app) as url:
        yield url, app


def client(url, key=KEY, **kw) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key=key, timeout=30.0, **kw)


# ---------------------------------------------------------------- the backend
def test_batched_generation_equals_unbatched_with_greedy_decoding(backend):
    prompts = ["hi", "a somewhat longer prompt", "x", "tokens: 1 2 3"]
    alone = [backend.generate(p, max_tokens=10, temperature=0.0) for p in prompts]
    reqs = [GenRequest(backend.tokenizer.encode(p), max_tokens=10 - i, temperature=0.0) for i, p in enumerate(prompts)]
    together = backend.generate_batch(reqs)
    for i, (a, t) in enumerate(zip(alone, together)):
        assert t.token_ids == a.token_ids[: 10 - i]
        assert t.logprobs == pytest.approx(a.logprobs[: 10 - i], abs=1e-4)


def test_backend_matches_the_models_own_generate(backend):
    ids = backend.tokenizer.encode("The cat")
    ref = backend.model.generate(torch.tensor([ids]), 8, temperature=0.0)[0, len(ids) :].tolist()
    assert backend.generate(ids, max_tokens=8, temperature=0.0).token_ids == ref


def test_seeded_sampling_is_reproducible_and_per_request(backend):
    a = backend.generate("seed me", max_tokens=12, temperature=1.0, seed=7)
    b = backend.generate("seed me", max_tokens=12, temperature=1.0, seed=7)
    assert a.token_ids == b.token_ids
    ids = backend.tokenizer.encode("seed me")
    other = GenRequest(backend.tokenizer.encode("another prompt"), 12, 1.0, seed=3)
    batched = backend.generate_batch([other, GenRequest(ids, 12, 1.0, seed=7)])
    assert batched[1].token_ids == a.token_ids  # a neighbour in the batch does not change my sample


def test_batch_too_long_for_one_padded_pass_is_split(backend):
    long_prompt = [65] * 80
    reqs = [GenRequest(long_prompt, 4), GenRequest([66], 60)]  # 80 + 60 > 96 together, each fits alone
    out = backend.generate_batch(reqs)
    assert [len(g.token_ids) for g in out] == [4, 60]


def test_backend_rejects_bad_requests(backend):
    with pytest.raises(ValueError, match="context"):
        backend.generate_batch([GenRequest([1] * 90, 10)])
    with pytest.raises(ValueError, match="max_tokens"):
        backend.generate_batch([GenRequest([1], 0)])
    with pytest.raises(TypeError, match="GPT"):
        GPTBackend(torch.nn.Linear(2, 2))


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


# ---------------------------------------------------------------- the HTTP API with the official client
def test_openai_client_round_trip_plain_and_streaming(server, backend):
    url, _ = server
    c = client(url, max_retries=0)
    expected = backend.generate("Hello, server", max_tokens=12, temperature=0.0).text
    r = c.completions.create(model="tiny-gpt", prompt="Hello, server", max_tokens=12, temperature=0)
    assert r.object == "text_completion" and r.model == "tiny-gpt"
    assert r.choices[0].text == expected and r.choices[0].finish_reason == "length"
    assert r.usage.prompt_tokens == len("Hello, server") and r.usage.completion_tokens == 12
    chunks = list(
        c.completions.create(model="tiny-gpt", prompt="Hello, server", max_tokens=12, temperature=0, stream=True)
    )
    assert len(chunks) >= 2
    assert "".join(ch.choices[0].text for ch in chunks) == expected
    assert chunks[-1].choices[0].finish_reason == "length"
    models = c.models.list()
    assert [m.id for m in models.data] == ["tiny-gpt"]


def test_logprobs_are_returned_for_a_cascade(server, backend):
    url, _ = server
    r = client(url).completions.create(model="tiny-gpt", prompt="abc", max_tokens=5, temperature=0, logprobs=0)
    ref = backend.generate("abc", max_tokens=5)
    assert r.choices[0].logprobs.token_logprobs == pytest.approx(ref.logprobs, abs=1e-4)


def test_health_models_and_metrics(server):
    url, _ = server
    with httpx.Client(timeout=10) as h:
        assert h.get(url + "/health").json() == {"status": "ok", "models": ["tiny-gpt"]}
        h.post(url + "/v1/completions", headers=HEADERS, json={"model": "tiny-gpt", "prompt": "m", "max_tokens": 2})
        m = h.get(url + "/metrics", headers=HEADERS).json()
    assert m["requests_total"] >= 1 and m["requests_by_status"]["200"] >= 1
    assert m["latency_ms"]["p50"] > 0 and m["tokens_out"] >= 2
    assert set(m) >= {"latency_ms", "tokens_in", "tokens_out", "cache_hits", "cache_misses", "batch_sizes"}


def test_metrics_in_prometheus_text_format(server):
    url, _ = server
    with httpx.Client(timeout=10) as h:
        h.post(url + "/v1/completions", headers=HEADERS, json={"model": "tiny-gpt", "prompt": "m", "max_tokens": 2})
        r = h.get(url + "/metrics", params={"format": "prometheus"}, headers=HEADERS)
        bad = h.get(url + "/metrics", params={"format": "xml"}, headers=HEADERS)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    samples = {}
    for line in r.text.splitlines():  # every line is a comment or `name{labels} value` with a float value
        if not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    assert samples['course_requests_total{status="200"}'] >= 1
    assert samples['course_model_requests_total{model="tiny-gpt"}'] >= 1
    assert 0 < samples['course_request_latency_seconds{quantile="0.50"}'] < 60
    assert samples["course_tokens_out_total"] >= 2
    assert samples['course_engine_running{model="tiny-gpt"}'] == 0  # continuous batching: nothing left running
    assert samples['course_engine_blocks_free{model="tiny-gpt"}'] > 0
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "format"


def _error(r, status, param=None):
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert set(body["error"]) >= {"message", "type", "param", "code"}
    if param is not None:
        assert body["error"]["param"] == param, body
    assert "Traceback" not in r.text
    return body["error"]


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


def test_bad_bodies_get_4xx(server):
    url, _ = server
    with httpx.Client(timeout=10) as h:
        post = lambda content: h.post(url + "/v1/completions", content=content, headers=JSON)  # noqa: E731
        _error(post(b"{not json"), 400)
        _error(post(b"\xff\xfe\xfd"), 400)
        _error(post(b'{"model": "tiny-gpt", "prompt": "x", "temperature": NaN}'), 400)
        _error(post(b"[1, 2, 3]"), 400)
        _error(post(b"[" * 3000 + b"]" * 3000), 413)
        _error(post(b'{"model": "tiny-gpt", "prompt": "' + b"a" * 5000 + b'"}'), 413)
        _error(h.get(url + "/v1/nothing-here"), 404)
        _error(h.delete(url + "/v1/completions", headers=HEADERS), 405)


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


def test_request_log_is_json_and_never_contains_the_key(server, caplog):
    url, app = server
    caplog.set_level("INFO", logger="course_utils.serving.requests")
    with httpx.Client(timeout=10) as h:
        h.post(
            url + "/v1/completions", headers=HEADERS, json={"model": "tiny-gpt", "prompt": "log me", "max_tokens": 2}
        )
        h.post(url + "/v1/completions", headers={"Authorization": "Bearer sk-bad-key-999"}, json={})
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "course_utils.serving.requests"]
    assert lines and {l["status"] for l in lines[-2:]} == {200, 401}
    for rec in lines:
        assert set(rec) >= {"id", "model", "tokens_in", "tokens_out", "latency_ms", "cache_hit", "retries", "status"}
    assert KEY not in caplog.text and "sk-bad-key-999" not in caplog.text
    assert lines[-2]["client"] == "alice"


# ---------------------------------------------------------------- batching
def test_concurrent_clients_each_get_their_own_answer_and_are_batched(backend):
    prompts = [f"client {i} says {'ab' * i}" for i in range(8)]
    expected = [backend.generate(p, max_tokens=8, temperature=0.0).text for p in prompts]
    app = create_app({"tiny-gpt": backend}, max_batch=8, max_wait_ms=50)
    results = [None] * len(prompts)
    with start_server(app) as url:
        c = client(url, key="unused", max_retries=0)
        engine = app.state.server.schedulers["tiny-gpt"].engine

        def worker(i):
            r = c.completions.create(model="tiny-gpt", prompt=prompts[i], max_tokens=8, temperature=0)
            results[i] = r.choices[0].text

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(prompts))]
        with engine.hold():  # the eight requests arrive at one instant, whatever the machine's speed
            for t in threads:
                t.start()
            deadline = time.monotonic() + 30
            while engine.stats()["waiting"] < len(prompts) and time.monotonic() < deadline:
                time.sleep(0.01)
        for t in threads:
            t.join(timeout=60)
        steps = engine.stats()["steps"]
    assert results == expected  # no cross-talk between rows of a batch
    assert steps <= 16, steps  # decode steps shared by all eight: about 8 in all, not 8 per request


@pytest.mark.parametrize("kw", [dict(max_batch=0), dict(max_wait_ms=-1)])
def test_batcher_rejects_bad_settings(backend, kw):
    with pytest.raises(ValueError):
        Batcher(backend, **kw)


# ---------------------------------------------------------------- failures, retries, fallback
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


def test_streaming_error_is_reported_before_the_stream_starts(backend):
    app = create_app({"tiny-gpt": FaultInjector(backend, error_rate=1.0, statuses=(503,))})
    with start_server(app) as url:
        with pytest.raises(openai.InternalServerError):
            list(
                client(url, key="unused", max_retries=0).completions.create(
                    model="tiny-gpt", prompt="x", max_tokens=3, stream=True
                )
            )


# ---------------------------------------------------------------- rate limits and cache
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


def test_server_cache_hits_identical_greedy_requests_only_in_scope(backend):
    app = create_app({"tiny-gpt": backend, "other": GPTBackend(tiny_gpt(seed=1), name="other")}, cache=ExactCache())
    with start_server(app) as url:
        c = client(url, key="unused", max_retries=0)
        a = c.completions.create(model="tiny-gpt", prompt="cache me", max_tokens=6, temperature=0)
        b = c.completions.create(model="tiny-gpt", prompt="cache me", max_tokens=6, temperature=0)
        s = "".join(
            ch.choices[0].text
            for ch in c.completions.create(
                model="tiny-gpt", prompt="cache me", max_tokens=6, temperature=0, stream=True
            )
        )
        o = c.completions.create(model="other", prompt="cache me", max_tokens=6, temperature=0)
        c.completions.create(model="tiny-gpt", prompt="cache me", max_tokens=6, temperature=1.0)  # sampled: no cache
        hits = [r["cache_hit"] for r in app.state.server.request_log]
    assert a.choices[0].text == b.choices[0].text == s
    assert o.choices[0].text == GPTBackend(tiny_gpt(seed=1)).generate("cache me", 6).text  # not tiny-gpt's answer
    assert hits == [False, True, True, False, None]


# ---------------------------------------------------------------- lifecycle and CLI
def test_server_shuts_down_when_the_block_raises(backend):
    app = create_app({"tiny-gpt": backend})
    with pytest.raises(RuntimeError, match="boom"):
        with start_server(app) as url:
            port = int(url.rsplit(":", 1)[1])
            raise RuntimeError("boom")
    with socket.socket() as s:
        s.settimeout(1)
        assert s.connect_ex(("127.0.0.1", port)) != 0  # nobody listens any more


def test_create_app_rejects_bad_arguments(backend):
    with pytest.raises(TypeError, match="backend"):
        create_app({"m": object()})
    with pytest.raises(ValueError, match="api_keys"):
        create_app({"m": backend}, api_keys=["short"])
    with pytest.raises(TypeError, match="api_keys"):
        create_app({"m": backend}, api_keys="sk-a-single-string")


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


@pytest.mark.parametrize(
    "kw,name",
    [
        ({"max_batch": 0}, "max_batch"),
        ({"max_wait_ms": float("nan")}, "max_wait_ms"),
        ({"max_wait_ms": -1}, "max_wait_ms"),
        ({"max_tokens_limit": 0}, "max_tokens_limit"),
        ({"body_timeout_s": float("inf")}, "body_timeout_s"),
        ({"log_window": 0}, "log_window"),
        ({"failed_auth_per_s": 0}, "failed_auth_per_s"),
        ({"failed_auth_per_s": float("nan")}, "failed_auth_per_s"),
        ({"failed_auth_burst": 0}, "failed_auth_burst"),
        ({"cache": "yes"}, "cache"),
        ({"public_metrics": "no"}, "public_metrics"),
        ({"scheduler_factory": 3}, "scheduler_factory"),
        ({"rate_limit": {"requests_per_s": 5}}, "rate_limit"),
    ],
)
def test_create_app_refuses_bad_settings_naming_them(backend, kw, name):
    with pytest.raises((ValueError, TypeError), match=name):
        create_app({"m": backend}, api_keys=[KEY], **kw)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_command_line_serves_on_localhost():
    from course_utils.served_models import chat_examples

    port = _free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "course_utils.serving",
            "--model",
            "tiny-gpt",
            "--model",
            "course-chat",
            "--port",
            str(port),
            "--api-key",
            KEY,
        ],  # the README's command
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, "the server exited"
            assert time.monotonic() < deadline, "the server did not come up within 60 s"
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        c = client(url, max_retries=0)
        assert [m.id for m in c.models.list().data] == ["course-chat", "tiny-gpt", "all-MiniLM-L6-v2"]
        messages, answer = chat_examples(1, split="eval")[0]  # a held-out question the trained model answers
        r = c.chat.completions.create(model="course-chat", temperature=0, max_tokens=16, messages=messages)
        assert r.choices[0].finish_reason == "stop" and r.choices[0].message.content == answer, (r, answer)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


# ---------------------------------------------------------------- the served adders
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


def test_load_backend_serves_a_checkpoint_without_pickle():
    from course_utils import serving
    from course_utils.serving import load_backend

    be = load_backend("adder", serving.ASSETS / "serve_adder_large.safetensors")
    assert be.name == "adder" and isinstance(be.tokenizer, ByteTokenizer)
    assert be.generate("12+34=", max_tokens=3).text == "64\n"  # 46, digits reversed
    with pytest.raises(FileNotFoundError):
        load_backend("x", serving.ASSETS / "missing.safetensors")


# ---------------------------------------------------------------- hardening (issue 18): each check failed before
def test_metrics_need_the_key_unless_public_and_prometheus_survives_anonymous_requests(backend):
    for public in (False, True):
        app = create_app({"tiny-gpt": backend}, api_keys=[KEY], public_metrics=public)
        with start_server(app) as url, httpx.Client(timeout=10) as h:
            h.post(url + "/v1/completions", json={"model": "tiny-gpt", "prompt": "x"})  # 401: a record without model
            r = h.get(url + "/metrics", params={"format": "prometheus"})
            keyed = h.get(url + "/metrics", params={"format": "prometheus"}, headers=HEADERS)
        assert r.status_code == (200 if public else 401)
        assert keyed.status_code == 200 and 'course_requests_total{status="401"} ' in keyed.text
        assert 'model="None"' not in keyed.text


@pytest.mark.parametrize(
    "argv,flag",
    [
        (["--rate", "0"], "--rate"),
        (["--rate", "nan"], "--rate"),
        (["--rate", "-1"], "--rate"),
        (["--rate", "inf"], "--rate"),
        (["--max-batch", "0"], "--max-batch"),
        (["--max-batch", "2.5"], "--max-batch"),
        (["--max-wait-ms", "nan"], "--max-wait-ms"),
        (["--max-wait-ms", "-5"], "--max-wait-ms"),
        (["--api-key", "short"], "--api-key"),
        (["--host", "0.0.0.0"], "--allow-anonymous"),
        (["--host", "192.168.1.20", "--api-key", KEY, "--max-batch", "-3"], "--max-batch"),
    ],
)
def test_command_line_settings_are_checked_before_start(argv, flag, capsys):
    from course_utils.serving import main

    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2 and flag in capsys.readouterr().err  # argparse's exit, naming the flag


def test_misconfigured_fault_injector_is_a_server_error(backend):
    flaky = FaultInjector(backend, error_rate=0.0)
    app = create_app({"tiny-gpt": flaky})
    with start_server(app) as url, httpx.Client(timeout=10) as h:
        flaky.error_rate = 2.0  # changed on the fly to an impossible value: the operator's fault, not the client's
        r = h.post(url + "/v1/completions", json={"model": "tiny-gpt", "prompt": "x", "max_tokens": 2})
    assert r.status_code == 500 and r.json()["error"]["type"] == "server_error" and "Traceback" not in r.text


def test_only_json_bodies_are_accepted(server):
    url, _ = server
    with httpx.Client(timeout=10) as h:  # a web page's "simple" cross-site POST is text/plain
        r = h.post(
            url + "/v1/completions",
            headers={**HEADERS, "Content-Type": "text/plain"},
            content=json.dumps({"model": "tiny-gpt", "prompt": "x"}),
        )
        form = h.post(url + "/v1/completions", headers=HEADERS, data={"model": "tiny-gpt", "prompt": "x"})
    assert _error(r, 415)["code"] == "unsupported_media_type" and form.status_code == 415


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


def test_cache_is_scoped_per_api_key(backend):
    app = create_app({"tiny-gpt": backend}, api_keys={KEY: "alice", OTHER_KEY: "bob"}, cache=ExactCache())
    body = {"model": "tiny-gpt", "prompt": "tenant secret", "max_tokens": 4, "temperature": 0}
    with start_server(app) as url, httpx.Client(timeout=10) as h:
        for key in (KEY, OTHER_KEY, OTHER_KEY):
            r = h.post(url + "/v1/completions", json=body, headers={"Authorization": f"Bearer {key}"})
            assert r.status_code == 200
        hits = [r["cache_hit"] for r in app.state.server.request_log]
    assert hits == [False, False, True]  # bob never receives alice's cached answer


def test_cache_keys_on_exact_text_ids_and_every_setting_with_stats_per_key(backend):
    # issue 27: "hello world" got "Hello World"'s cached answer; ids [104,105,255] and [..,254] shared an entry
    app = create_app({"tiny-gpt": backend}, api_keys={KEY: "alice", OTHER_KEY: "bob"}, cache=ExactCache())
    base = {"model": "tiny-gpt", "max_tokens": 4, "temperature": 0}
    asks = [  # (key, extra fields, expected cache hit)
        (KEY, {"prompt": "Hello World"}, False),
        (KEY, {"prompt": "hello world"}, False),
        (KEY, {"prompt": "hello  world"}, False),
        (KEY, {"prompt": "Hello World"}, True),
        (KEY, {"prompt": [104, 105, 255]}, False),
        (KEY, {"prompt": [104, 105, 254]}, False),
        (KEY, {"prompt": [104, 105, 255]}, True),
        (KEY, {"prompt": "Hello World", "presence_penalty": 1.0}, False),
        (KEY, {"prompt": "Hello World", "logit_bias": {"65": 5}}, False),
        (KEY, {"prompt": "Hello World", "stop": ["q"]}, False),
        (OTHER_KEY, {"prompt": "Hello World"}, False),
    ]
    with start_server(app) as url:
        texts = []
        for key, extra, _ in asks:
            c = openai.OpenAI(base_url=url + "/v1", api_key=key, timeout=30, max_retries=0)
            texts.append(c.completions.create(**base, **extra).choices[0].text)
        with httpx.Client(timeout=10) as h:
            snap = h.get(url + "/metrics", headers=HEADERS).json()
            prom = h.get(url + "/metrics", params={"format": "prometheus"}, headers=HEADERS).text
    assert [r["cache_hit"] for r in list(app.state.server.request_log)[: len(asks)]] == [hit for *_, hit in asks]
    lower = backend.generate("hello world", max_tokens=4).text
    assert texts[1] == lower  # its own answer, not "Hello World"'s
    assert texts[3] == texts[0]
    assert snap["cache_by_client"]["alice"] == {"hits": 2, "misses": 8, "hit_rate": 0.2}
    assert snap["cache_by_client"]["bob"] == {"hits": 0, "misses": 1, "hit_rate": 0.0}
    assert 'course_client_cache_hits_total{client="alice"} 2' in prom
    assert 'course_client_cache_misses_total{client="bob"} 1' in prom


class _Gated(EchoBackend):
    """An echo backend whose batches wait for ``release`` and whose tokens take ``token_s`` each."""

    def __init__(self, token_s: float = 0.0):
        super().__init__("tiny-gpt")
        self.started, self.release = threading.Event(), threading.Event()
        self.calls, self.tokens, self.token_s = 0, 0, token_s

    def generate_batch(self, reqs, on_token=None):
        self.calls += len(reqs)
        self.started.set()
        assert self.release.wait(30)

        def slow(row, *a):
            self.tokens += 1
            time.sleep(self.token_s)
            return on_token(row, *a) if on_token else None

        return super().generate_batch(reqs, slow)


def _wait_for(predicate, timeout=20.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def test_a_client_that_leaves_is_cancelled_and_never_computed(backend):
    gated = _Gated()
    app = create_app({"tiny-gpt": gated}, max_batch=1, max_wait_ms=0)
    body = {"model": "tiny-gpt", "prompt": "abc", "max_tokens": 3}
    with start_server(app) as url:
        first = threading.Thread(target=lambda: httpx.post(url + "/v1/completions", json=body, timeout=30))
        first.start()
        assert gated.started.wait(20)  # the first request occupies the only slot
        with pytest.raises(httpx.ReadTimeout):  # the second waits in the queue; its client gives up
            httpx.post(url + "/v1/completions", json=body, timeout=0.5)
        _wait_for(lambda: any(r["status"] == 499 for r in app.state.server.request_log))
        gated.release.set()
        first.join(timeout=30)
        _wait_for(lambda: len(app.state.server.request_log) == 2)
    assert gated.calls == 1  # the abandoned request was dropped from the queue, not computed
    assert sorted(r["status"] for r in app.state.server.request_log) == [200, 499]


def test_a_stream_whose_client_leaves_stops_decoding(backend):
    gated = _Gated(token_s=0.05)
    gated.release.set()
    app = create_app({"tiny-gpt": gated}, max_wait_ms=0)
    with start_server(app) as url:
        with httpx.stream(
            "POST",
            url + "/v1/completions",
            timeout=30,
            json={"model": "tiny-gpt", "prompt": "abcdef", "max_tokens": 200, "stream": True},
        ) as r:
            next(r.iter_lines())  # one event, then hang up
        _wait_for(lambda: any(rec["status"] == 499 for rec in app.state.server.request_log))
        time.sleep(0.3)
    assert gated.tokens < 100  # 200 tokens take 10 s; the row was cancelled soon after the client left


def _raw(url: str, data: bytes, wait_reply: bool, timeout: float = 10.0) -> bytes:
    host, port = url.rsplit("/", 1)[1].split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        s.sendall(data)
        return s.recv(4096) if wait_reply else b""


def test_aborted_and_stalled_uploads(backend, caplog):
    caplog.set_level("INFO")
    app = create_app({"tiny-gpt": backend}, body_timeout_s=0.5)
    head = (
        b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b'Content-Length: 1000\r\n\r\n{"model": '
    )
    with start_server(app) as url:
        _raw(url, head, wait_reply=False)  # the client hangs up mid-body
        _wait_for(lambda: any(r["status"] == 499 for r in app.state.server.request_log))
        stalled = _raw(url, head, wait_reply=True)  # the body never completes: dropped after body_timeout_s
    assert stalled.startswith(b"HTTP/1.1 408")
    assert "Traceback" not in caplog.text and not [r for r in caplog.records if r.levelname == "ERROR"]
    aborted = [r for r in app.state.server.request_log if r["status"] == 499]
    assert len(aborted) == 1 and aborted[0]["endpoint"] == "/v1/completions"


class _SlowGPT(GPT):
    """A GPT whose every forward pass takes at least 50 ms more: long enough to leave in the middle."""

    def forward(self, *args, **kwargs):
        time.sleep(0.05)
        return super().forward(*args, **kwargs)


def test_continuous_batching_frees_a_leaving_clients_slot_and_blocks():
    torch.manual_seed(0)
    slow = _SlowGPT(GPTConfig(vocab_size=256, d_model=32, n_layers=2, n_heads=4, max_seq_len=96))
    app = create_app({"tiny-gpt": GPTBackend(slow)}, max_wait_ms=0)
    scheduler = app.state.server.schedulers["tiny-gpt"]
    assert type(scheduler).__name__ == "EngineScheduler"  # a course GPT is served with continuous batching
    with start_server(app) as url:
        with httpx.stream(
            "POST",
            url + "/v1/completions",
            timeout=30,
            json={"model": "tiny-gpt", "prompt": "abc", "max_tokens": 90, "stream": True},
        ) as r:
            next(r.iter_lines())  # one event, then hang up (90 tokens take >= 4.5 s)
        _wait_for(lambda: any(rec["status"] == 499 for rec in app.state.server.request_log))
        _wait_for(lambda: scheduler.engine.stats()["running"] == 0)
        stats = scheduler.engine.stats()
    assert stats["blocks_used"] == 0 and stats["tokens_generated"] < 90


# ---------------------------------------------------------------- stop strings on decoded text
def test_text_stream_holds_back_possible_stop_prefixes_and_waits_for_whole_characters():
    from course_utils.serving.generation import TextStream

    tok = ByteTokenizer()
    ts = TextStream(tok, ["END", "\n\n"])
    released = [d.text if d else None for d in (ts.push(t) for t in tok.encode("ab EN"))]
    assert "".join(r or "" for r in released) == "ab "  # "EN" could start "END": held back
    assert ts.push(ord("X")).text == "ENX"  # it did not: released with the next character
    out = [ts.push(t) for t in tok.encode("é")]  # two bytes: nothing until the character is whole
    assert out[0] is None and out[1].text == "é"
    last = [ts.push(t) for t in tok.encode("yEND tail")]
    assert ts.stopped and "".join(d.text for d in last if d) == "y"  # the stop text is never returned
    assert ts.finish("stop").text == "" and ts.finish("stop").finish_reason == "stop"
    rest = TextStream(tok, ["zz"])
    rest.push(ord("a")), rest.push(ord("z"))
    assert rest.finish("length").text == "z"  # held back for a stop that never came: released at the end
