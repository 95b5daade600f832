"""course_utils.serving.app: ``create_app``'s settings and ``start_server``'s shutdown."""

from __future__ import annotations

import socket

import pytest
from helpers import KEY

from course_utils.serving import create_app, start_server

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
