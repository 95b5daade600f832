"""course_utils.serving.scheduler: static batching of concurrent clients, the engine scheduler's slots."""

from __future__ import annotations

import threading
import time

import httpx
import pytest
import torch
from helpers import _wait_for, client

from course_utils.model import GPT, GPTConfig
from course_utils.serving import Batcher, GPTBackend, create_app, start_server

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # fixture in conftest.py


def test_concurrent_clients_each_get_their_own_answer_and_are_batched(backend):
    prompts = [f"client {i} says {'ab' * i}" for i in range(8)]
    expected = [backend.generate(p, max_tokens=8, temperature=0.0).text for p in prompts]
    app = create_app({"tiny-gpt": backend}, max_batch=8, max_wait_ms=50)
    results = [None] * len(prompts)
    with start_server(app) as url:
        c = client(url, key="unused", max_retries=0)
        engine = app.state.batchers["tiny-gpt"].engine

        def worker(i):
            r = c.completions.create(model="tiny-gpt", prompt=prompts[i], max_tokens=8, temperature=0)
            results[i] = r.choices[0].text

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(prompts))]
        with engine.hold():  # the eight requests arrive at one instant, whatever the machine's speed
            for t in threads:
                t.start()
            deadline = time.monotonic() + 30
            while engine.stats()["waiting"] < len(prompts) and time.monotonic() < deadline:
                time.sleep(0.01)
        for t in threads:
            t.join(timeout=60)
        steps = engine.stats()["steps"]
    assert results == expected  # no cross-talk between rows of a batch
    assert steps <= 16, steps  # decode steps shared by all eight: about 8 in all, not 8 per request


@pytest.mark.parametrize("kw", [dict(max_batch=0), dict(max_wait_ms=-1)])
def test_batcher_rejects_bad_settings(backend, kw):
    with pytest.raises(ValueError):
        Batcher(backend, **kw)


class _SlowGPT(GPT):
    """A GPT whose every forward pass takes at least 50 ms more: long enough to leave in the middle."""

    def forward(self, *args, **kwargs):
        time.sleep(0.05)
        return super().forward(*args, **kwargs)


def test_continuous_batching_frees_a_leaving_clients_slot_and_blocks():
    torch.manual_seed(0)
    slow = _SlowGPT(GPTConfig(vocab_size=256, d_model=32, n_layers=2, n_heads=4, max_seq_len=96))
    app = create_app({"tiny-gpt": GPTBackend(slow)}, max_wait_ms=0)
    scheduler = app.state.batchers["tiny-gpt"]
    assert type(scheduler).__name__ == "EngineScheduler"  # a course GPT is served with continuous batching
    with start_server(app) as url:
        with httpx.stream(
            "POST",
            url + "/v1/completions",
            timeout=30,
            json={"model": "tiny-gpt", "prompt": "abc", "max_tokens": 90, "stream": True},
        ) as r:
            next(r.iter_lines())  # one event, then hang up (90 tokens take >= 4.5 s)
        _wait_for(lambda: any(rec["status"] == 499 for rec in app.state.request_log))
        _wait_for(lambda: scheduler.engine.stats()["running"] == 0)
        stats = scheduler.engine.stats()
    assert stats["blocks_used"] == 0 and stats["tokens_generated"] < 90
