"""course_utils.serving.app: ``create_app``'s settings and ``start_server``'s shutdown."""

from __future__ import annotations

import socket

import openai
import pytest
from helpers import KEY

from course_utils.serving import EchoBackend, create_app, start_server
from course_utils.serving.app import Server
from course_utils.serving.metrics import RequestLog

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # fixture in conftest.py


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


def test_app_state_is_the_server_and_nothing_else():
    app = create_app({"echo": EchoBackend("echo")})
    assert set(app.state._state) == {"server"}  # no second name for models, schedulers, metrics, log or cache
    server = app.state.server
    assert isinstance(server, Server) and isinstance(server.request_log, RequestLog)
    assert set(server.models) == set(server.schedulers) == {"echo"}
    with start_server(app) as url:
        c = openai.OpenAI(base_url=url + "/v1", api_key="-", max_retries=0)
        for i in range(3):
            c.completions.create(model="echo", prompt=f"hi {i}", max_tokens=2)
    log = list(server.request_log)  # a snapshot of the last records, in order
    assert len(server.request_log) == len(log) == 3
    assert [r["status"] for r in log] == [200, 200, 200] and all(r["model"] == "echo" for r in log)


def test_start_server_refuses_a_bad_port_naming_it():
    app = create_app({"echo": EchoBackend("echo")})
    for port, err in ((70_000, ValueError), (-1, ValueError), ("80", TypeError), (True, TypeError)):
        with pytest.raises(err, match="port"), start_server(app, port=port):
            pass
