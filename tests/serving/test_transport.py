"""course_utils.serving.transport: aborted and stalled uploads."""

from __future__ import annotations

import pytest
from helpers import _raw, _wait_for

from course_utils.serving import create_app, start_server

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # fixture in conftest.py


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
