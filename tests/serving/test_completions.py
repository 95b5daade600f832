"""course_utils.serving.completions: completions answered plain and streamed, logprobs, the server's cache."""

from __future__ import annotations

import httpx
import openai
import pytest
from helpers import HEADERS, KEY, OTHER_KEY, client, tiny_gpt

from course_utils.gateway import ExactCache
from course_utils.serving import FaultInjector, GPTBackend, create_app, start_server

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # fixture in conftest.py


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


def test_streaming_error_is_reported_before_the_stream_starts(backend):
    app = create_app({"tiny-gpt": FaultInjector(backend, error_rate=1.0, statuses=(503,))})
    with start_server(app) as url:
        with pytest.raises(openai.InternalServerError):
            list(
                client(url, key="unused", max_retries=0).completions.create(
                    model="tiny-gpt", prompt="x", max_tokens=3, stream=True
                )
            )


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
