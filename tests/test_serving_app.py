"""course_utils.serving.app: the app's state is one object, ``app.state.server``."""

from __future__ import annotations

import openai
import pytest

from course_utils.serving import EchoBackend, create_app, start_server
from course_utils.serving.app import Server
from course_utils.serving.metrics import RequestLog


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
