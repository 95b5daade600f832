"""course_utils.serving under tenants that misbehave, over real sockets and threads: one tenant's request can fail
only itself (tiny sampling values, a failing sampler), clients that leave at random never cut anyone else's stream,
every KV block comes back, and what a stop string cuts is cut from the logprobs and the usage too."""

from __future__ import annotations

import json
import random
import threading
import time

import httpx
import openai
import pytest
from helpers import fail_sampling_at, tiny_gpt_backend

from course_utils.serving import create_app, start_server

KEYS = {"sk-tenant-a-0001": "alice", "sk-tenant-b-0001": "bob"}
A, B = list(KEYS)
MODEL = "tiny-gpt"
TIMEOUT = 60.0

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # fixture in conftest.py


@pytest.fixture(scope="module")
def backend():
    return tiny_gpt_backend(MODEL)


@pytest.fixture(scope="module")
def app(backend):
    return create_app({MODEL: backend}, api_keys=KEYS, max_tokens_limit=64, max_batch=16)


@pytest.fixture(scope="module")
def url(app):
    with start_server(app) as base:
        yield base


def client(url, key) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key=key, timeout=TIMEOUT, max_retries=0)


def engine(app):
    return app.state.server.schedulers[MODEL].engine


def wait_idle(app, timeout=TIMEOUT) -> dict:
    """The engine's stats once nothing runs or waits (cancellations reach it a poll interval after a disconnect)."""
    deadline = time.monotonic() + timeout
    while True:
        s = engine(app).stats()
        if s["running"] == s["waiting"] == 0 or time.monotonic() > deadline:
            return s
        time.sleep(0.02)


def in_threads(fns) -> list:
    """Run every callable in its own thread, at once; their results (an exception counts as a result)."""
    out = [None] * len(fns)
    barrier = threading.Barrier(len(fns))

    def run(i):
        barrier.wait(TIMEOUT)
        try:
            out[i] = fns[i]()
        except Exception as err:  # noqa: BLE001 - returned to the test, which asserts on it
            out[i] = err

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(fns))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT)
    return out


PROMPTS = [f"tenant b asks {i}" for i in range(6)]


def others(url, backend):
    """Tenant B's six greedy requests and the answers they must get."""
    refs = [backend.generate(p, max_tokens=24, temperature=0.0).text for p in PROMPTS]
    calls = [
        (lambda p=p: client(url, B).completions.create(model=MODEL, prompt=p, max_tokens=24, temperature=0))
        for p in PROMPTS
    ]
    return calls, refs


# ----------------------------------------------------------------------------------------------- one tenant
@pytest.mark.parametrize("field", ["top_p", "temperature"])
def test_tiny_sampling_values_from_one_tenant_fail_no_one(url, backend, field):
    """The issue's attack: top_p/temperature 1e-300, 5e-324, 1e-46 (0 in float32) beside another key's requests."""
    calls, refs = others(url, backend)
    tiny = [1e-300, 5e-324, 1e-46]
    attacks = [
        (lambda v=v: client(url, A).completions.create(model=MODEL, prompt="hi", max_tokens=24, **{field: v}))
        for v in tiny
    ]
    out = in_threads(calls + attacks)
    assert [o.choices[0].text for o in out[: len(calls)]] == refs
    greedy = backend.generate("hi", max_tokens=24, temperature=0.0).text
    assert [o.choices[0].text for o in out[len(calls) :]] == [greedy] * len(tiny)  # their limit: greedy / top-1


def test_a_request_whose_sampling_fails_ends_alone_over_http(url, backend, monkeypatch):
    fail_sampling_at(monkeypatch, seed=666, step=3)
    calls, refs = others(url, backend)
    bad = lambda: client(url, A).completions.create(model=MODEL, prompt="x", max_tokens=24, seed=666)  # noqa: E731
    out = in_threads([*calls[:3], bad, *calls[3:]])
    assert isinstance(out[3], openai.InternalServerError)
    assert "boom" not in str(out[3])  # no server internals reach a client
    assert [o.choices[0].text for o in out[:3] + out[4:]] == refs


# ----------------------------------------------------------------------------------------------- disconnects
def _stream(url, prompt, leave_after):
    """One SSE stream; the client leaves (closes the socket) after ``leave_after`` events, or reads to the end.
    Returns ("left", n) or ("done", text) — "done" only when ``data: [DONE]`` arrived."""
    body = {"model": MODEL, "prompt": prompt, "max_tokens": 40, "temperature": 0, "stream": True}
    text, n = "", 0
    with httpx.Client(timeout=TIMEOUT) as http:
        with http.stream("POST", url + "/v1/completions", json=body, headers={"Authorization": f"Bearer {B}"}) as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                if not line.startswith("data: "):
                    continue
                if line == "data: [DONE]":
                    return "done", text
                text += json.loads(line[6:])["choices"][0]["text"]
                n += 1
                if leave_after is not None and n >= leave_after:
                    return "left", n
    return "cut", text


@pytest.mark.slow
def test_a_storm_of_disconnects_cuts_no_other_stream_and_leaks_no_block(app, url, backend):
    """32 concurrent streams, about half of them leaving at a random moment, 3 rounds: every other stream ends
    with [DONE] and its exact text, and every KV block is back in the pool after each round."""
    rng = random.Random(0)
    prompts = [f"storm {i} " + "x" * rng.randint(0, 30) for i in range(32)]
    refs = [backend.generate(p, max_tokens=40, temperature=0.0).text for p in prompts]
    pool = engine(app).allocator.num_blocks
    for _ in range(3):
        leave = [rng.randint(1, 20) if rng.random() < 0.5 else None for _ in prompts]
        out = in_threads([(lambda p=p, k=k: _stream(url, p, k)) for p, k in zip(prompts, leave)])
        for o, k, ref in zip(out, leave, refs):
            assert not isinstance(o, Exception), o
            assert o == (("left", k) if k is not None else ("done", ref))
        s = wait_idle(app)
        assert s["running"] == s["waiting"] == s["blocks_used"] == 0 and s["blocks_free"] == pool


# ----------------------------------------------------------------------------------------------- stop strings
# greedy with these settings, the tiny model answers "sassyasa…": the case is stop "a" → "s"
SASSY = dict(temperature=0, presence_penalty=2.0, frequency_penalty=2.0, logit_bias={"115": 10, "97": 7, "121": 4})


def test_a_stop_string_is_cut_from_the_logprobs_and_the_usage_too(url):
    """``stop: "a"`` at temperature 0: the text is "s", and logprobs and completion_tokens say so too (they listed
    and counted the stop string's token)."""
    c = client(url, B)
    free = c.completions.create(model=MODEL, prompt="stop here", max_tokens=8, **SASSY)
    assert free.choices[0].text.startswith("sassy")
    r = c.completions.create(model=MODEL, prompt="stop here", max_tokens=8, stop="a", logprobs=2, **SASSY)
    lp = r.choices[0].logprobs
    assert (r.choices[0].text, r.choices[0].finish_reason, lp.tokens) == ("s", "stop", ["s"])
    assert len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 1
    assert r.usage.completion_tokens == 1
    r = c.completions.create(model=MODEL, prompt="stop here", max_tokens=8, stop=["sy"], logprobs=0, **SASSY)
    assert (r.choices[0].text, r.choices[0].logprobs.tokens, r.usage.completion_tokens) == ("sas", list("sas"), 3)
    chunks = list(
        c.completions.create(
            model=MODEL, prompt="stop here", max_tokens=8, stop="a", logprobs=0, stream=True,
            stream_options={"include_usage": True}, **SASSY,
        )
    )  # fmt: skip
    streamed = [t for ch in chunks if ch.choices and ch.choices[0].logprobs for t in ch.choices[0].logprobs.tokens]
    assert streamed == ["s"] and chunks[-1].usage.completion_tokens == 1


def test_a_chat_stop_string_is_cut_from_the_logprobs_and_the_usage_too(url):
    messages = [{"role": "user", "content": "say s then a"}]
    r = client(url, B).chat.completions.create(
        model=MODEL, messages=messages, max_tokens=8, stop="a", logprobs=True, top_logprobs=1, **SASSY
    )
    assert (r.choices[0].message.content, r.choices[0].finish_reason) == ("s", "stop")
    assert [t.token for t in r.choices[0].logprobs.content] == ["s"] and r.usage.completion_tokens == 1


# ----------------------------------------------------------------------------------------------- back-pressure
def _fill(eng, send, n: int) -> list[threading.Thread]:
    """Start ``n`` threads calling ``send()`` and wait until the (held) engine has them all waiting."""
    threads = [threading.Thread(target=send) for _ in range(n)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + TIMEOUT
    while eng.stats()["waiting"] < n and time.monotonic() < deadline:
        time.sleep(0.01)
    return threads


def test_a_full_queue_is_a_503_with_retry_after_and_the_queued_ones_still_finish(backend):
    """``max_queue=3``: with the engine held (nothing admitted), three requests wait and the fourth is refused at
    once with 503 + Retry-After; when the engine runs again the three waiting ones finish."""
    app = create_app({MODEL: backend}, api_keys=KEYS, max_queue=3)
    body = {"model": MODEL, "prompt": "queue me", "max_tokens": 4, "temperature": 0}
    headers = {"Authorization": f"Bearer {A}"}
    with start_server(app) as url, httpx.Client(base_url=url, timeout=TIMEOUT) as http:
        eng = engine(app)
        done = []
        with eng.hold():
            waiting = _fill(eng, lambda: done.append(http.post("/v1/completions", json=body, headers=headers)), 3)
            t0 = time.perf_counter()
            r = http.post("/v1/completions", json=body, headers=headers)
            shed_s = time.perf_counter() - t0
        assert r.status_code == 503 and int(r.headers["retry-after"]) >= 1 and shed_s < 5
        assert r.json()["error"]["code"] == "server_overloaded" and "limit" in r.json()["error"]["message"]
        for t in waiting:
            t.join(TIMEOUT)
        assert [d.status_code for d in done] == [200] * 3
        with pytest.raises(openai.InternalServerError, match="limit"):  # the official client's view (no retries)
            with eng.hold():
                waiting = _fill(eng, lambda: client(url, A).completions.create(**body), 3)
                client(url, A).completions.create(**body)
        for t in waiting:
            t.join(TIMEOUT)
        assert wait_idle(app)["blocks_used"] == 0
        assert client(url, A).completions.create(**body).choices[0].finish_reason == "length"


def _closed_within(sock, seconds: float) -> bool:
    """Whether the server closes ``sock`` within ``seconds``; bytes still in flight (a response's body arriving in
    a later segment) are read and skipped, not taken for "still open"."""
    deadline = time.monotonic() + seconds
    try:
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            if sock.recv(4096) == b"":
                return True
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True
    return False


def test_slow_or_silent_connections_are_closed_and_idle_ones_time_out(backend):
    import socket

    app = create_app({MODEL: backend})
    with start_server(app, header_timeout_s=0.5, keep_alive_s=1) as url:
        host, port = url.removeprefix("http://").split(":")
        silent = socket.create_connection((host, int(port)))
        slow = socket.create_connection((host, int(port)))
        t0 = time.perf_counter()
        slow.sendall(b"GET /health HTTP/1.1\r\n")
        for ch in b"Host: x\r\n":  # one byte every 0.1 s: never finishes within the 0.5 s deadline
            try:
                slow.sendall(bytes([ch]))
            except OSError:
                break
            time.sleep(0.1)
        assert _closed_within(slow, 5) and _closed_within(silent, 5) and time.perf_counter() - t0 < 5
        with httpx.Client(base_url=url, timeout=TIMEOUT) as http:  # a normal client is not disturbed
            assert http.get("/health").status_code == 200
        kept = socket.create_connection((host, int(port)))
        kept.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        kept.settimeout(5)
        assert kept.recv(4096).startswith(b"HTTP/1.1 200")
        assert _closed_within(kept, 5)  # idle keep-alive: closed after keep_alive_s
    with pytest.raises(ValueError, match="header_timeout_s"):
        with start_server(app, header_timeout_s=0):
            pass
