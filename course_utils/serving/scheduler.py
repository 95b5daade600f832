"""Scheduling requests onto a backend: :class:`Batcher` gathers requests for up to ``max_wait_ms`` (or until
``max_batch``) and runs them as one batch in a worker thread ("static" batching: the batch runs until its longest
request is done; continuous batching as in Orca/vLLM admits new requests at every decode step instead).
:class:`EngineScheduler` puts a course GPT's requests on :class:`~course_utils.serving.engine.Engine`.

Static batching has one rule in the package, :func:`~course_utils.serving.engine.gather_wait_s` (start when
``max_batch`` requests wait or ``max_wait_ms`` has passed since the window opened; nobody joins a batch in
flight), applied at two levels on purpose: :class:`Batcher` hands each gathered batch to any backend's
``generate_batch`` (the echo and fault-injecting backends, the adders, a model without the engine), while
``Engine(policy="static")`` is the same rule inside the engine, so that chapter 8 compares static and continuous
batching with the same KV cache, forward pass and sampler.

A scheduler has ``start()``, ``stop()``, ``batch_sizes`` and ``await submit(req, stream)``: ``stream`` (an
``asyncio.Queue``) receives ``(token_id, logprob, top)`` as tokens appear and ``None`` at the end; cancelling the
awaiting task withdraws a request that has not started.

Back-pressure: each scheduler (one per model) holds at most ``max_queue`` requests waiting for a slot; one more is
refused at once with :class:`QueueFull` (the server answers 503 with ``Retry-After``), so under a flood a fresh
request learns in milliseconds to come back later instead of waiting behind hundreds of others.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from ..validate import check_number, nonnegative_int, positive_int
from .backends import Generation, GenRequest
from .engine import Engine, gather_wait_s

DEFAULT_MAX_QUEUE = 64  # requests waiting for a slot, per model
MAX_WAIT_MS = 1e6  # a gathering window of ~17 minutes or more is a typo, not a setting


class QueueFull(RuntimeError):
    """The model's queue is full: come back after ``retry_after`` seconds (HTTP 503 with ``Retry-After``)."""

    def __init__(self, model: str, limit: int, retry_after: float = 1.0):
        super().__init__(f"the model {model!r} has {limit} requests waiting, its limit; retry after {retry_after:g}s")
        self.limit, self.retry_after = limit, retry_after


@dataclass
class _Pending:
    req: GenRequest
    future: asyncio.Future
    stream: asyncio.Queue | None = None
    enqueued: float = field(default_factory=time.perf_counter)


class Batcher:
    """Gather requests for up to ``max_wait_ms`` (or until ``max_batch``), run them as one batch in a worker thread.

    ``max_batch=1`` is one-at-a-time serving. While a batch runs, new requests wait in the queue.
    """

    def __init__(self, backend, *, max_batch: int = 8, max_wait_ms: float = 5.0, max_queue: int = DEFAULT_MAX_QUEUE):
        self.backend, self.max_batch = backend, positive_int("max_batch", max_batch)
        self.max_wait_ms = check_number("max_wait_ms", max_wait_ms, 0, MAX_WAIT_MS, high_open=True)
        self.max_queue = nonnegative_int("max_queue", max_queue)
        self.batch_sizes: Counter = Counter()
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"batcher-{self.backend.name}")
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        while self._queue is not None and not self._queue.empty():
            p = self._queue.get_nowait()
            if not p.future.done():
                p.future.set_exception(RuntimeError("server shutting down"))
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)

    async def submit(self, req: GenRequest, stream: asyncio.Queue | None = None) -> Generation:
        if self._queue is None:
            raise RuntimeError("Batcher.start() has not run (is the app running under its lifespan?)")
        if self._queue.qsize() >= self.max_queue:
            if stream is not None:
                stream.put_nowait(None)  # end of stream: the awaiting task says how it ended
            raise QueueFull(self.backend.name, self.max_queue)
        p = _Pending(req, asyncio.get_running_loop().create_future(), stream)
        await self._queue.put(p)
        return await p.future

    async def _gather(self) -> list[_Pending]:
        batch = [await self._queue.get()]
        # the window opens at this first pick, not at the oldest arrival as in the engine: requests that queued
        # while the last batch ran would otherwise start at once, without the clients that batch just answered
        opened = time.perf_counter()
        while True:
            while len(batch) < self.max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            left = gather_wait_s(len(batch), self.max_batch, opened, self.max_wait_ms / 1000, time.perf_counter())
            if left <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), left))
            except TimeoutError:
                break
        return [p for p in batch if not p.future.done()]  # a client that went away is not served

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._gather()
            if not batch:
                continue
            self.batch_sizes[len(batch)] += 1

            def on_token(row, tok, logprob=0.0, top=None, batch=batch):
                p = batch[row]
                if p.future.cancelled():
                    return False  # the client went away: the backend stops decoding this row
                if p.stream is not None:
                    loop.call_soon_threadsafe(p.stream.put_nowait, (tok, logprob, top))
                return True

            try:
                results = await loop.run_in_executor(
                    self._executor, self.backend.generate_batch, [p.req for p in batch], on_token
                )
            except Exception as err:  # the model failed: every request in the batch gets the error
                results = [err] * len(batch)
            for p, r in zip(batch, results):
                if not p.future.done():
                    if isinstance(r, BaseException):
                        p.future.set_exception(r)
                    else:
                        p.future.set_result(r)
                if p.stream is not None:
                    p.stream.put_nowait(None)  # end of stream; the future says how it ended


class EngineScheduler:
    """Continuous batching: requests join and leave a :class:`~.engine.Engine`'s running batch at every
    decode step, their KV cache in fixed-size blocks freed the moment they finish or their client leaves.

    Same interface as :class:`Batcher`. A :class:`~course_utils.serving.FaultInjector` in front of the model still
    decides each request's fate (and latency) before it reaches the engine. ``batch_sizes`` counts how many
    requests were running when each one was submitted.
    """

    POLL_S = 0.5  # how often a waiting request checks that the engine has not failed it silently

    def __init__(
        self,
        backend,
        *,
        max_batch: int = 16,
        block_size: int = 16,
        num_blocks: int | None = None,
        policy: str = "continuous",
        max_queue: int = DEFAULT_MAX_QUEUE,
    ):
        if not hasattr(backend, "model") or not hasattr(backend, "tokenizer"):
            raise TypeError(f"backend must serve a course GPT (have .model), got {type(backend).__name__}")
        self.backend, self.options = (
            backend,
            dict(
                max_batch=max_batch,
                block_size=block_size,
                num_blocks=num_blocks,
                policy=policy,
            ),
        )
        self.max_batch, self.max_queue = max_batch, nonnegative_int("max_queue", max_queue)
        self.engine = None
        self.batch_sizes: Counter = Counter()

    async def start(self) -> None:
        self.engine = Engine(self.backend.model, **self.options)

    async def stop(self) -> None:
        if self.engine is not None:
            await asyncio.to_thread(self.engine.close)

    async def submit(self, req: GenRequest, stream: asyncio.Queue | None = None) -> Generation:
        if self.engine is None:
            raise RuntimeError("EngineScheduler.start() has not run (is the app running under its lifespan?)")
        try:
            return await self._run(req, stream)
        finally:
            if stream is not None:
                stream.put_nowait(None)  # end of stream, also after a fault or a cancellation

    async def _run(self, req: GenRequest, stream: asyncio.Queue | None) -> Generation:
        if self.engine.stats()["waiting"] >= self.max_queue:
            raise QueueFull(self.backend.name, self.max_queue)
        await self._inject_fault()
        loop = asyncio.get_running_loop()
        finished = loop.create_future()

        def on_token(ev):  # the engine's thread
            if ev.token_id is not None and stream is not None:
                top = dict(ev.top_logprobs) if req.sampling.logprobs else None
                loop.call_soon_threadsafe(stream.put_nowait, (ev.token_id, ev.logprob, top))
            if ev.finish_reason is not None:
                loop.call_soon_threadsafe(lambda: finished.done() or finished.set_result(None))

        self.batch_sizes[self.engine.stats()["running"] + 1] += 1
        handle = self.engine.submit(req.prompt_ids, req.sampling, on_token)  # ValueError: the request is refused
        try:
            while not handle.done():
                await asyncio.wait({finished}, timeout=self.POLL_S)
            res = handle.result(timeout=0)
        except BaseException:
            self.engine.cancel(handle)  # the client went away (or a stop string ended it): free slot and blocks
            raise
        tops = [dict(t) for t in res.top_logprobs] if req.sampling.logprobs else None
        return Generation(
            res.token_ids,
            res.logprobs,
            self.backend.tokenizer.decode(res.token_ids),
            res.prompt_tokens,
            res.finish_reason,
            tops,
        )

    async def _inject_fault(self) -> None:
        draw = getattr(self.backend, "draw", None)  # a FaultInjector around the model
        if draw is None:
            return
        fault = draw()
        latency = getattr(self.backend, "latency_s", 0.0)
        if latency:
            await asyncio.sleep(latency)
        if fault is not None:
            raise fault


def default_scheduler(backend, *, max_batch: int = 8, max_wait_ms: float = 5.0, max_queue: int = DEFAULT_MAX_QUEUE):
    """Continuous batching (:class:`EngineScheduler`) for a course GPT, else the static :class:`Batcher`."""
    if hasattr(backend, "model") and hasattr(backend.model, "blocks"):
        return EngineScheduler(backend, max_batch=max_batch, max_queue=max_queue)
    return Batcher(backend, max_batch=max_batch, max_wait_ms=max_wait_ms, max_queue=max_queue)
