"""`python -m course_utils.serving`: the command line serves on localhost, checks its settings before it starts, and
serves through the transport's limits (header timeout)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request

import httpx
import pytest
from helpers import KEY, client


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


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # fixture in conftest.py


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
