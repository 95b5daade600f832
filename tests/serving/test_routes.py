"""course_utils.serving.routes: health, models, metrics access, request bodies, clients that leave."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest
from helpers import HEADERS, JSON, KEY, _error, _wait_for, stream_then_hang_up

from course_utils.serving import EchoBackend, create_app, start_server

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # fixture in conftest.py


def test_health_models_and_metrics(server):
    url, _ = server
    with httpx.Client(timeout=10) as h:
        assert h.get(url + "/health").json() == {"status": "ok", "models": ["tiny-gpt"]}
        h.post(url + "/v1/completions", headers=HEADERS, json={"model": "tiny-gpt", "prompt": "m", "max_tokens": 2})
        m = h.get(url + "/metrics", headers=HEADERS).json()
    assert m["requests_total"] >= 1 and m["requests_by_status"]["200"] >= 1
    assert m["latency_ms"]["p50"] > 0 and m["tokens_out"] >= 2
    assert set(m) >= {"latency_ms", "tokens_in", "tokens_out", "cache_hits", "cache_misses", "batch_sizes"}


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
        stream_then_hang_up(url, "abcdef", max_tokens=200)
        _wait_for(lambda: any(rec["status"] == 499 for rec in app.state.server.request_log))
        time.sleep(0.3)
    assert gated.tokens < 100  # 200 tokens take 10 s; the row was cancelled soon after the client left
