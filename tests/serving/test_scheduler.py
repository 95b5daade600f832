"""course_utils.serving.scheduler: static batching of concurrent clients, the engine scheduler's slots."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
import torch
from helpers import _wait_for, client, stream_then_hang_up, tiny_gpt_backend

from course_utils.model import GPT, GPTConfig
from course_utils.serving import Batcher, EchoBackend, GenRequest, GPTBackend, create_app, start_server
from course_utils.serving import engine as engine_module
from course_utils.serving import scheduler as scheduler_module
from course_utils.serving.engine import Engine, gather_wait_s
from course_utils.serving.sampling import SamplingParams

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # fixture in conftest.py


def test_concurrent_clients_each_get_their_own_answer_and_are_batched(backend):
    prompts = [f"client {i} says {'ab' * i}" for i in range(8)]
    expected = [backend.generate(p, max_tokens=8, temperature=0.0).text for p in prompts]
    app = create_app({"tiny-gpt": backend}, max_batch=8, max_wait_ms=50)
    results = [None] * len(prompts)
    with start_server(app) as url:
        c = client(url, key="unused", max_retries=0)
        engine = app.state.server.schedulers["tiny-gpt"].engine

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
    scheduler = app.state.server.schedulers["tiny-gpt"]
    assert type(scheduler).__name__ == "EngineScheduler"  # a course GPT is served with continuous batching
    with start_server(app) as url:
        stream_then_hang_up(url, "abc", max_tokens=90)  # 90 tokens take >= 4.5 s: it leaves mid-answer
        _wait_for(lambda: any(rec["status"] == 499 for rec in app.state.server.request_log))
        _wait_for(lambda: scheduler.engine.stats()["running"] == 0)
        stats = scheduler.engine.stats()
    assert stats["blocks_used"] == 0 and stats["tokens_generated"] < 90


def test_gather_wait_s_starts_on_a_full_batch_or_a_closed_window():
    assert gather_wait_s(4, 4, opened_at=10.0, max_wait_s=5.0, now=10.0) == 0.0  # full: start now
    assert gather_wait_s(1, 4, opened_at=10.0, max_wait_s=5.0, now=12.0) == pytest.approx(3.0)
    assert gather_wait_s(1, 4, opened_at=10.0, max_wait_s=5.0, now=16.0) == 0.0  # the window has closed
    assert gather_wait_s(2, 4, opened_at=10.0, max_wait_s=0.0, now=10.0) == 0.0  # no gathering window


def _spy(monkeypatch, module):
    calls = []
    real = module.gather_wait_s

    def spy(*args):
        calls.append(args)
        return real(*args)

    monkeypatch.setattr(module, "gather_wait_s", spy)
    return calls


def test_batcher_gathers_by_the_shared_rule(monkeypatch):
    calls = _spy(monkeypatch, scheduler_module)
    backend = EchoBackend("echo")
    batcher = Batcher(backend, max_batch=3, max_wait_ms=60_000)  # a full batch must not wait the minute out

    async def run():
        await batcher.start()
        try:
            reqs = [GenRequest(list(b"hello"), 2) for _ in range(3)]
            return await asyncio.wait_for(asyncio.gather(*(batcher.submit(r) for r in reqs)), 10)
        finally:
            await batcher.stop()

    t0 = time.perf_counter()
    out = asyncio.run(run())
    assert len(out) == 3 and time.perf_counter() - t0 < 10
    assert dict(batcher.batch_sizes) == {3: 1}  # one batch of three
    assert calls and calls[-1][:2] == (3, 3)  # the rule saw the full batch and said "start"


def test_engine_static_policy_gathers_by_the_shared_rule(monkeypatch):
    calls = _spy(monkeypatch, engine_module)
    model = tiny_gpt_backend().model
    with Engine(model, policy="static", max_batch=2, max_wait_ms=60_000, block_size=8) as eng:
        handles = [eng.submit([1, 2, 3], SamplingParams(max_tokens=3, temperature=0)) for _ in range(2)]
        results = [h.result(timeout=30) for h in handles]  # a full batch of two starts at once, not in a minute
    assert [len(r.token_ids) for r in results] == [3, 3]
    assert calls and all(c[1] == 2 for c in calls)
