"""`python -m course_utils.serving`: the command line serves through the transport's limits (header timeout)."""

import json
import socket
import subprocess
import sys
import time
import urllib.request

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_command_line_server_answers_and_drops_a_stalled_header():
    port = _free_port()
    cmd = [sys.executable, "-m", "course_utils.serving", "--model", "tiny-gpt", "--untrained", "--no-embeddings"]
    proc = subprocess.Popen([*cmd, "--port", str(port), "--max-queue", "4"], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=5) as r:
                    assert json.load(r)["data"][0]["id"] == "tiny-gpt"
                break
            except OSError:
                assert proc.poll() is None, proc.stderr.read()
                assert time.monotonic() < deadline, "server did not start"
                time.sleep(0.5)
        # A client that starts a request and never finishes its headers is cut off (a bare uvicorn.run would wait).
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            s.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n")
            start = time.monotonic()
            assert s.recv(1024) == b""  # closed by the server
            assert time.monotonic() - start < 25
    finally:
        proc.terminate()
        proc.wait(timeout=30)
