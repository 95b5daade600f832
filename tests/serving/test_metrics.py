"""course_utils.serving.metrics: the Prometheus text format and the one-JSON-line request log."""

from __future__ import annotations

import json

import httpx
import pytest
from helpers import HEADERS, KEY

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # fixture in conftest.py


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
