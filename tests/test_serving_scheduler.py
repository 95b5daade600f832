"""course_utils.serving.scheduler: static batching's one rule, used by the server's Batcher and the engine."""

from __future__ import annotations

import asyncio
import time

import pytest
from helpers import tiny_gpt_backend

from course_utils.serving import Batcher, EchoBackend, GenRequest
from course_utils.serving import engine as engine_module
from course_utils.serving import scheduler as scheduler_module
from course_utils.serving.engine import Engine, gather_wait_s
from course_utils.serving.sampling import SamplingParams


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
