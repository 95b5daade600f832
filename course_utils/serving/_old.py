"""Chapter 8: a small but real OpenAI-compatible completion server around the course's models.

    client ──HTTP──► auth (Bearer key, constant-time) ─► rate limit (token bucket per key) ─► validate
           ◄──JSON / SSE── cache? ─► batching queue ─► one padded forward pass per decode step ─► model

- :class:`GPTBackend` — generation for a batch of prompts of different lengths: prompts are **left**-padded, a
  padding mask hides the pads, and each decode step is one forward pass over the whole batch with a KV cache.
  RoPE only sees relative positions, so a left-padded row computes the same tokens as the row alone.
- :class:`Batcher` — an asyncio queue that gathers requests for up to ``max_wait_ms`` or ``max_batch`` and runs
  them together ("static" batching: the batch runs until its longest request is done; continuous batching as in
  Orca/vLLM would admit new requests at every step instead).
- :class:`FaultInjector` — a seeded wrapper that makes a backend fail (429/503 with ``Retry-After``) or slow.
- :func:`create_app` — FastAPI app: ``POST /v1/completions`` (plain and server-sent-event streaming),
  ``GET /v1/models``, ``GET /health``, ``GET /metrics``; OpenAI-style JSON errors, one JSON log line per request.
- :func:`start_server` — run the app with uvicorn in a background thread (a context manager yielding its URL).

Command line: ``python -m course_utils.serving --model tiny-gpt --port 8000`` (see ``--help``).
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import json
import logging
import math
import random
import threading
import time
import uuid
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
import torch.nn.functional as F
from fastapi import FastAPI, Request  # module level: FastAPI resolves the `request: Request` annotation here
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .gateway import TokenBucket, percentile

__all__ = ["ByteTokenizer", "GenRequest", "Generation", "GPTBackend", "EchoBackend", "addition_problems",
           "AdditionData", "answer_additions", "train_adder", "build_adders", "load_adder", "ADDER_CONFIGS", "FaultError", "FaultInjector", "Batcher",
           "RateLimit", "create_app", "start_server", "load_backend", "main"]

log = logging.getLogger("course_utils.serving")
request_log = logging.getLogger("course_utils.serving.requests")

MAX_SEED = 2**63 - 1


# ----------------------------------------------------------------------------------------------- backends
class ByteTokenizer:
    """UTF-8 bytes as tokens (ids 0–255): the simplest tokenizer a byte-level model can serve."""

    vocab_size = 256

    def encode(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        return list(text.encode("utf-8"))

    def decode(self, ids) -> str:
        return bytes(int(i) % 256 for i in ids).decode("utf-8", errors="replace")


@dataclass
class GenRequest:
    """One generation job: token ids in, up to ``max_tokens`` ids out."""

    prompt_ids: list[int]
    max_tokens: int = 16
    temperature: float = 0.0
    top_p: float | None = None
    seed: int | None = None


@dataclass
class Generation:
    """What a backend returns per request: the new ids, their log-probabilities and the decoded text."""

    token_ids: list[int]
    logprobs: list[float]
    text: str
    prompt_tokens: int
    finish_reason: str = "length"

    @property
    def mean_logprob(self) -> float:
        """Average log-probability per generated token: the model's confidence (used by the cascade)."""
        return sum(self.logprobs) / len(self.logprobs) if self.logprobs else 0.0


class GPTBackend:
    """Serve a course :class:`~course_utils.model.GPT` (or any model with the same blocks) with batched decoding."""

    def __init__(self, model, tokenizer=None, *, name: str = "tiny-gpt"):
        config = getattr(model, "config", None)
        if config is None or not hasattr(model, "blocks") or not hasattr(model, "new_caches"):
            raise TypeError(f"model must be a course_utils.model.GPT (config, blocks, new_caches), got "
                            f"{type(model).__name__}")
        if not isinstance(name, str) or not name:
            raise ValueError(f"name must be a non-empty str, got {name!r}")
        self.model = model.eval()
        self.tokenizer = tokenizer if tokenizer is not None else ByteTokenizer()
        vocab = getattr(self.tokenizer, "vocab_size", None)
        if vocab is not None and vocab > config.vocab_size:
            raise ValueError(f"the tokenizer has {vocab} ids but the model only {config.vocab_size}")
        self.name = name
        self.max_context = int(config.max_seq_len)
        self._lock = threading.Lock()  # one forward pass at a time: the weights are shared, torch uses all cores

    def _forward(self, idx: torch.Tensor, caches, attn_mask):
        """The model's forward pass with a padding mask (``GPT.forward`` takes none): logits ``[B, T, V]``."""
        m = self.model
        x = m.tok_emb(idx)
        for block, cache in zip(m.blocks, caches):
            x = x + block.attn(block.attn_norm(x), cache=cache, attn_mask=attn_mask)
            f = block.ffn(block.ffn_norm(x))
            x = x + (f[0] if isinstance(f, tuple) else f)  # an MoE layer returns (output, aux)
        return m.lm_head(m.norm(x))

    def _check(self, reqs) -> None:
        if not isinstance(reqs, (list, tuple)) or not reqs:
            raise ValueError("reqs must be a non-empty list of GenRequest")
        for r in reqs:
            if not isinstance(r, GenRequest):
                raise TypeError(f"reqs must hold GenRequest objects, got {type(r).__name__}")
            if not r.prompt_ids:
                raise ValueError("prompt_ids must hold at least one token")
            if not isinstance(r.max_tokens, int) or r.max_tokens < 1:
                raise ValueError(f"max_tokens must be an int >= 1, got {r.max_tokens!r}")
            if len(r.prompt_ids) + r.max_tokens > self.max_context:
                raise ValueError(f"prompt ({len(r.prompt_ids)} tokens) + max_tokens ({r.max_tokens}) exceeds the "
                                 f"context of {self.max_context}")

    @torch.no_grad()
    def generate_batch(self, reqs: list[GenRequest], on_token: Callable[[int, int], None] | None = None) -> list:
        """Generate for every request in one batch; ``on_token(row, token_id)`` is called as tokens appear."""
        self._check(reqs)
        longest = max(len(r.prompt_ids) for r in reqs)
        steps = max(r.max_tokens for r in reqs)
        if len(reqs) > 1 and longest + steps > self.max_context:
            # A long prompt and a long answer do not fit one padded batch: split it (rows keep their order).
            half = len(reqs) // 2
            shift = (lambda row, tok: on_token(row + half, tok)) if on_token else None
            return self.generate_batch(reqs[:half], on_token) + self.generate_batch(reqs[half:], shift)
        with self._lock:
            return self._generate(reqs, longest, steps, on_token)

    def _generate(self, reqs, T, steps, on_token):
        from .model import sample_next_token

        B = len(reqs)
        pads = torch.tensor([T - len(r.prompt_ids) for r in reqs])
        idx = torch.zeros(B, T, dtype=torch.long)
        for b, r in enumerate(reqs):
            idx[b, int(pads[b]):] = torch.tensor(r.prompt_ids, dtype=torch.long)
        valid = torch.arange(T)[None, :] >= pads[:, None]  # [B, T] True on real tokens
        padded = bool(pads.any())
        # A pad query may attend to itself, so no softmax row is empty (an empty row gives NaN, and NaN values
        # in the cache would leak into real rows through 0 · NaN).
        mask = (valid[:, None, None, :] | torch.eye(T, dtype=torch.bool)[None, None]) if padded else None
        caches = self.model.new_caches()
        logits = self._forward(idx, caches, mask)[:, -1]
        gens = [None if r.seed is None else torch.Generator().manual_seed(r.seed) for r in reqs]
        out = [[] for _ in reqs]
        lps = [[] for _ in reqs]
        for step in range(steps):
            logp = F.log_softmax(logits.float(), dim=-1)
            nxt = []
            for b, r in enumerate(reqs):
                tok = 0  # a finished row rides along until the longest one is done (static batching's waste)
                if step < r.max_tokens:
                    tok = int(sample_next_token(logits[b:b + 1], r.temperature, None, r.top_p, gens[b]))
                    out[b].append(tok)
                    lps[b].append(float(logp[b, tok]))
                    if on_token is not None:
                        on_token(b, tok)
                nxt.append(tok)
            if step == steps - 1:
                break
            valid = torch.cat([valid, torch.ones(B, 1, dtype=torch.bool)], dim=1)
            step_mask = valid[:, None, None, :] if padded else None
            logits = self._forward(torch.tensor(nxt)[:, None], caches, step_mask)[:, -1]
        return [Generation(out[b], lps[b], self.tokenizer.decode(out[b]), len(r.prompt_ids))
                for b, r in enumerate(reqs)]

    def generate(self, prompt, max_tokens: int = 16, temperature: float = 0.0, seed: int | None = None,
                 top_p: float | None = None) -> Generation:
        """One request, unbatched: ``prompt`` is text or a list of token ids."""
        ids = self.tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
        return _raise_if_error(self.generate_batch([GenRequest(ids, max_tokens, temperature, top_p, seed)])[0])


class EchoBackend:
    """A model-free backend that answers every prompt with its first ``max_tokens`` bytes: for measuring the
    serving machinery (retries, limits, caches) without paying for a forward pass."""

    def __init__(self, name: str = "echo", max_context: int = 1024):
        self.name, self.max_context, self.tokenizer = name, max_context, ByteTokenizer()

    def generate_batch(self, reqs: list[GenRequest], on_token=None) -> list:
        out = []
        for row, r in enumerate(reqs):
            ids = (list(r.prompt_ids) * r.max_tokens)[: r.max_tokens]
            for tok in ids:
                if on_token is not None:
                    on_token(row, tok)
            out.append(Generation(ids, [0.0] * len(ids), self.tokenizer.decode(ids), len(r.prompt_ids)))
        return out

    def generate(self, prompt, max_tokens: int = 16, temperature: float = 0.0, seed: int | None = None,
                 top_p: float | None = None) -> Generation:
        ids = self.tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
        return self.generate_batch([GenRequest(ids, max_tokens, temperature, top_p, seed)])[0]


def _raise_if_error(result):
    if isinstance(result, BaseException):
        raise result
    return result


class FaultError(RuntimeError):
    """An injected failure, as an HTTP status (429 or 503) with the ``Retry-After`` seconds the server suggests."""

    def __init__(self, status: int, retry_after: float | None = None):
        super().__init__(f"injected fault: HTTP {status}" + (f", retry after {retry_after}s" if retry_after else ""))
        self.status, self.retry_after = status, retry_after


class FaultInjector:
    """Wrap a backend; each request fails with probability ``error_rate`` (seeded) and every call is slowed by
    ``latency_s``. Failures are 429 or 503 (``statuses``) carrying ``Retry-After: retry_after_s``.

    Change ``error_rate``/``latency_s`` on the fly to replay an outage. ``injected`` counts the faults.
    """

    def __init__(self, backend, *, error_rate: float = 0.0, statuses: Iterable[int] = (429, 503),
                 retry_after_s: float | None = 0.1, latency_s: float = 0.0, seed: int = 0,
                 sleep: Callable[[float], None] = time.sleep):
        if not hasattr(backend, "generate_batch"):
            raise TypeError(f"backend must have generate_batch(reqs), got {type(backend).__name__}")
        statuses = tuple(statuses)
        if not statuses or any(s not in (429, 500, 502, 503, 504) for s in statuses):
            raise ValueError(f"statuses must be HTTP error codes among 429/500/502/503/504, got {statuses!r}")
        self.backend, self.statuses, self.retry_after_s, self.sleep = backend, statuses, retry_after_s, sleep
        self.error_rate, self.latency_s = error_rate, latency_s
        self._check()
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self.injected = 0
        self.calls = 0

    def _check(self) -> None:
        if not isinstance(self.error_rate, (int, float)) or not 0.0 <= self.error_rate <= 1.0:
            raise ValueError(f"error_rate must be in [0, 1], got {self.error_rate!r}")
        if not isinstance(self.latency_s, (int, float)) or self.latency_s < 0:
            raise ValueError(f"latency_s must be a number >= 0, got {self.latency_s!r}")

    def __getattr__(self, name):  # name, tokenizer, max_context, ... come from the wrapped backend
        if name == "backend":
            raise AttributeError(name)
        return getattr(self.backend, name)

    def draw(self) -> FaultError | None:
        """Decide one request's fate (seeded)."""
        self._check()
        with self._lock:
            self.calls += 1
            if self._rng.random() < self.error_rate:
                self.injected += 1
                return FaultError(self._rng.choice(self.statuses), self.retry_after_s)
        return None

    def generate_batch(self, reqs: list[GenRequest], on_token=None) -> list:
        faults = [self.draw() for _ in reqs]
        if self.latency_s:
            self.sleep(self.latency_s)
        ok = [i for i, f in enumerate(faults) if f is None]
        results: list = list(faults)
        if ok:
            remap = (lambda row, tok: on_token(ok[row], tok)) if on_token else None
            for i, r in zip(ok, self.backend.generate_batch([reqs[i] for i in ok], remap)):
                results[i] = r
        return results

    def generate(self, prompt, max_tokens: int = 16, temperature: float = 0.0, seed: int | None = None,
                 top_p: float | None = None) -> Generation:
        ids = self.tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
        return _raise_if_error(self.generate_batch([GenRequest(ids, max_tokens, temperature, top_p, seed)])[0])


# ----------------------------------------------------------------------------------------------- batching
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

    def __init__(self, backend, *, max_batch: int = 8, max_wait_ms: float = 5.0):
        if not isinstance(max_batch, int) or max_batch < 1:
            raise ValueError(f"max_batch must be an int >= 1, got {max_batch!r}")
        if not isinstance(max_wait_ms, (int, float)) or max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be a number >= 0, got {max_wait_ms!r}")
        self.backend, self.max_batch, self.max_wait_ms = backend, max_batch, float(max_wait_ms)
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
        p = _Pending(req, asyncio.get_running_loop().create_future(), stream)
        await self._queue.put(p)
        return await p.future

    async def _gather(self) -> list[_Pending]:
        loop = asyncio.get_running_loop()
        batch = [await self._queue.get()]
        deadline = loop.time() + self.max_wait_ms / 1000
        while len(batch) < self.max_batch:
            if not self._queue.empty():
                batch.append(self._queue.get_nowait())
                continue
            left = deadline - loop.time()
            if left <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), left))
            except asyncio.TimeoutError:
                break
        return [p for p in batch if not p.future.done()]  # a client that went away is not served

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._gather()
            if not batch:
                continue
            self.batch_sizes[len(batch)] += 1

            def on_token(row, tok, batch=batch):
                q = batch[row].stream
                if q is not None:
                    loop.call_soon_threadsafe(q.put_nowait, tok)

            try:
                results = await loop.run_in_executor(
                    self._executor, self.backend.generate_batch, [p.req for p in batch], on_token)
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


# ----------------------------------------------------------------------------------------------- the app
@dataclass
class RateLimit:
    """Per-API-key limits: ``requests_per_s`` (burst ``burst``) and optionally ``tokens_per_s`` (burst
    ``token_burst``), where a request costs its prompt tokens plus ``max_tokens``."""

    requests_per_s: float
    burst: float = 1.0
    tokens_per_s: float | None = None
    token_burst: float | None = None


class _ApiError(Exception):
    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 type_: str = "invalid_request_error", headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type, self.headers = (
            status, message, param, code, type_, headers or {})


def _error_body(status, message, param=None, code=None, type_="invalid_request_error") -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code, "status": status}}


class _Metrics:
    def __init__(self, window: int = 10_000):
        self.requests: Counter = Counter()  # (model, status) -> count
        self.latency_ms: deque = deque(maxlen=window)
        self.tokens_in = self.tokens_out = self.cache_hits = self.cache_misses = 0
        self._lock = threading.Lock()

    def record(self, rec: dict) -> None:
        with self._lock:
            self.requests[(rec["model"], rec["status"])] += 1
            if rec["status"] == 200:
                self.latency_ms.append(rec["latency_ms"])
                self.tokens_in += rec["tokens_in"]
                self.tokens_out += rec["tokens_out"]
            if rec.get("cache_hit") is True:
                self.cache_hits += 1
            elif rec.get("cache_hit") is False:
                self.cache_misses += 1

    def snapshot(self, batchers: dict) -> dict:
        with self._lock:
            lat = list(self.latency_ms)
            by_status = Counter()
            for (_, status), n in self.requests.items():
                by_status[str(status)] += n
            return {
                "requests_total": sum(self.requests.values()),
                "requests_by_status": dict(by_status),
                "requests_by_model": {m: sum(n for (mm, _), n in self.requests.items() if mm == m)
                                      for m in {m for m, _ in self.requests}},
                "latency_ms": {"p50": percentile(lat, 50), "p95": percentile(lat, 95), "p99": percentile(lat, 99),
                               "count": len(lat)},
                "tokens_in": self.tokens_in, "tokens_out": self.tokens_out,
                "cache_hits": self.cache_hits, "cache_misses": self.cache_misses,
                "batch_sizes": {name: {str(k): v for k, v in sorted(b.batch_sizes.items())}
                                for name, b in batchers.items()},
            }


def prometheus_text(snap: dict) -> str:
    """A :meth:`_Metrics.snapshot` in Prometheus' text exposition format (counters, and latency quantiles as a
    summary), so a standard scraper and Grafana can read the server without an extra client library."""
    def esc(v) -> str:
        return str(v).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

    lines = ["# HELP course_requests_total Completed HTTP requests by status code.",
             "# TYPE course_requests_total counter"]
    lines += [f'course_requests_total{{status="{esc(k)}"}} {v}' for k, v in sorted(snap["requests_by_status"].items())]
    lines += ["# HELP course_model_requests_total Requests by model.", "# TYPE course_model_requests_total counter"]
    lines += [f'course_model_requests_total{{model="{esc(k)}"}} {v}' for k, v in sorted(snap["requests_by_model"].items())
              if k is not None]
    lat = snap["latency_ms"]
    lines += ["# HELP course_request_latency_seconds Request latency over the recent window.",
              "# TYPE course_request_latency_seconds summary"]
    for q in ("50", "95", "99"):
        if lat[f"p{q}"] is not None and math.isfinite(lat[f"p{q}"]):  # no requests yet: no quantiles
            lines.append(f'course_request_latency_seconds{{quantile="0.{q}"}} {lat[f"p{q}"] / 1e3:.6f}')
    lines.append(f"course_request_latency_seconds_count {lat['count']}")
    for name, key, help_ in (("course_tokens_in_total", "tokens_in", "Prompt tokens read."),
                             ("course_tokens_out_total", "tokens_out", "Tokens generated."),
                             ("course_cache_hits_total", "cache_hits", "Answers served from the cache."),
                             ("course_cache_misses_total", "cache_misses", "Cache lookups that missed.")):
        lines += [f"# HELP {name} {help_}", f"# TYPE {name} counter", f"{name} {snap[key]}"]
    return "\n".join(lines) + "\n"


def _as_models(models) -> dict:
    if isinstance(models, dict):
        out = dict(models)
    elif isinstance(models, (list, tuple)):
        out = {getattr(m, "name", None): m for m in models}
    else:
        out = {getattr(models, "name", None): models}
    if not out:
        raise ValueError("models must name at least one backend")
    for name, backend in out.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"model names must be non-empty strings, got {name!r}")
        for attr in ("generate_batch", "tokenizer", "max_context"):
            if not hasattr(backend, attr):
                raise TypeError(f"models[{name!r}] must be a backend with {attr} (e.g. GPTBackend), got "
                                f"{type(backend).__name__}")
    return out


def _as_keys(api_keys) -> dict | None:
    if api_keys is None:
        return None
    if isinstance(api_keys, str):
        raise TypeError("api_keys must be a dict {key: client name} or a list of keys, not a single str")
    keys = dict(api_keys) if isinstance(api_keys, dict) else {k: f"client-{i}" for i, k in enumerate(api_keys)}
    if not keys or any(not isinstance(k, str) or len(k) < 8 for k in keys):
        raise ValueError("api_keys must hold at least one key, each a str of at least 8 characters")
    return keys


def _field_int(body, name, default, lo, hi):
    value = body.get(name, default)
    if value is None and default is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise _ApiError(422, f"'{name}' must be an integer, got {type(value).__name__}", param=name)
    if not lo <= value <= hi:
        raise _ApiError(422, f"'{name}' must be between {lo} and {hi}, got {value}", param=name)
    return value


def _field_float(body, name, default, lo, hi, *, lo_open=False):
    value = body.get(name, default)
    if value is None and default is None:
        return None
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise _ApiError(422, f"'{name}' must be a finite number, got {str(value)[:40]!r}", param=name)
    if value > hi or value < lo or (lo_open and value == lo):
        bracket = "(" if lo_open else "["
        raise _ApiError(422, f"'{name}' must be in {bracket}{lo}, {hi}], got {value}", param=name)
    return float(value)


def create_app(models, *, api_keys=None, rate_limit: RateLimit | None = None, max_batch: int = 8,
               max_wait_ms: float = 5.0, max_body_bytes: int = 64 * 1024, max_tokens_limit: int = 256,
               cache=None, log_path: str | Path | None = None, log_window: int = 10_000):
    """The FastAPI app serving ``models`` (``{name: backend}``, a backend, or a list of backends).

    ``api_keys``: ``None`` (no authentication) or ``{key: client name}`` / a list of keys; requests need
    ``Authorization: Bearer <key>``. ``rate_limit``: a :class:`RateLimit` applied per key. ``cache``: a
    :class:`~course_utils.gateway.SemanticCache` or ``ExactCache`` consulted for deterministic requests
    (temperature 0, or a fixed seed), scoped by model and settings. Each request writes one JSON line to the
    ``course_utils.serving.requests`` logger (and ``log_path``) and to ``app.state.request_log``.
    """
    models = _as_models(models)
    keys = _as_keys(api_keys)
    if rate_limit is not None and not isinstance(rate_limit, RateLimit):
        raise TypeError(f"rate_limit must be a RateLimit or None, got {type(rate_limit).__name__}")
    if not isinstance(max_body_bytes, int) or max_body_bytes < 256:
        raise ValueError(f"max_body_bytes must be an int >= 256, got {max_body_bytes!r}")
    if not isinstance(max_tokens_limit, int) or max_tokens_limit < 1:
        raise ValueError(f"max_tokens_limit must be an int >= 1, got {max_tokens_limit!r}")
    batchers = {name: Batcher(b, max_batch=max_batch, max_wait_ms=max_wait_ms) for name, b in models.items()}
    metrics = _Metrics(log_window)
    buckets: dict = {}
    buckets_lock = threading.Lock()
    log_file = Path(log_path) if log_path is not None else None

    @contextlib.asynccontextmanager
    async def lifespan(app):
        for b in batchers.values():
            await b.start()
        try:
            yield
        finally:
            for b in batchers.values():
                await b.stop()

    app = FastAPI(title="course_utils.serving", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.models, app.state.batchers, app.state.metrics = models, batchers, metrics
    app.state.request_log = deque(maxlen=log_window)
    app.state.cache = cache

    def error_response(err: _ApiError):
        return JSONResponse(_error_body(err.status, err.message, err.param, err.code, err.type),
                            status_code=err.status, headers=err.headers)

    @app.exception_handler(_ApiError)
    async def _api_error(request, err: _ApiError):
        return error_response(err)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, err):
        code = "not_found" if err.status_code == 404 else None
        return JSONResponse(_error_body(err.status_code, str(err.detail), None, code), status_code=err.status_code)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request, err):
        return JSONResponse(_error_body(422, "invalid request"), status_code=422)

    @app.exception_handler(Exception)
    async def _internal_error(request, err):  # never a traceback to the client
        log.exception("internal error")
        return JSONResponse(_error_body(500, "internal server error", type_="server_error"), status_code=500)

    def authenticate(request) -> str:
        if keys is None:
            return "anonymous"
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise _ApiError(401, "missing API key: send 'Authorization: Bearer <key>'", code="invalid_api_key",
                            type_="authentication_error")
        token_b = token.strip().encode("utf-8", "surrogateescape")
        found = None
        for key, client in keys.items():  # compare with every key, in constant time: no early exit to time
            if hmac.compare_digest(token_b, key.encode()):
                found = client
        if found is None:
            raise _ApiError(401, "invalid API key", code="invalid_api_key", type_="authentication_error")
        return found

    def rate_check(client: str, cost_tokens: int) -> None:
        if rate_limit is None:
            return
        with buckets_lock:
            if client not in buckets:
                rq = TokenBucket(rate_limit.requests_per_s, rate_limit.burst)
                tk = (TokenBucket(rate_limit.tokens_per_s, rate_limit.token_burst or rate_limit.tokens_per_s)
                      if rate_limit.tokens_per_s else None)
                buckets[client] = (rq, tk)
            rq, tk = buckets[client]
        wait = rq.wait_time(1)
        if tk is not None:
            if cost_tokens > tk.capacity:
                raise _ApiError(422, f"this request needs {cost_tokens} tokens, more than your token burst "
                                     f"({int(tk.capacity)}); lower max_tokens", param="max_tokens")
            wait = max(wait, tk.wait_time(cost_tokens))
        if wait > 0 or not rq.try_acquire(1) or (tk is not None and not tk.try_acquire(cost_tokens)):
            retry = max(1, math.ceil(wait))
            raise _ApiError(429, f"rate limit exceeded for {client}; retry in {wait:.2f}s", code="rate_limit_exceeded",
                            type_="rate_limit_error", headers={"Retry-After": str(retry),
                                                                "retry-after-ms": str(max(1, int(wait * 1000)))})

    async def read_body(request) -> dict:
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > max_body_bytes):
            raise _ApiError(413, f"request body too large: limit is {max_body_bytes} bytes", code="body_too_large")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_body_bytes:
                raise _ApiError(413, f"request body too large: limit is {max_body_bytes} bytes", code="body_too_large")
            chunks.append(chunk)
        raw = b"".join(chunks)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise _ApiError(400, "request body is not valid UTF-8") from None
        try:
            body = json.loads(text, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))
        except (ValueError, RecursionError):
            raise _ApiError(400, "request body is not valid JSON", code="invalid_json") from None
        if not isinstance(body, dict):
            raise _ApiError(422, f"request body must be a JSON object, got {type(body).__name__}")
        return body

    def parse(body: dict):
        name = body.get("model")
        if not isinstance(name, str) or not name:
            raise _ApiError(422, "'model' is required and must be a non-empty string", param="model")
        if name not in models:
            raise _ApiError(404, f"the model {name[:80]!r} does not exist; see GET /v1/models", param="model",
                            code="model_not_found")
        backend = models[name]
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1:
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise _ApiError(422, "'prompt' must be a string (or a list holding one string)", param="prompt")
        if not prompt:
            raise _ApiError(422, "'prompt' must not be empty", param="prompt")
        try:
            ids = backend.tokenizer.encode(prompt)
        except Exception:
            raise _ApiError(422, "'prompt' could not be tokenized", param="prompt") from None
        if not ids or len(ids) >= backend.max_context:
            raise _ApiError(422, f"'prompt' has {len(ids)} tokens; this model's context is {backend.max_context}",
                            param="prompt")
        limit = min(max_tokens_limit, backend.max_context - len(ids))
        max_tokens = _field_int(body, "max_tokens", 16, 1, limit)
        temperature = _field_float(body, "temperature", 1.0, 0.0, 2.0)
        top_p = _field_float(body, "top_p", None, 0.0, 1.0, lo_open=True)
        seed = _field_int(body, "seed", None, 0, MAX_SEED)
        stream = body.get("stream", False)
        if stream is None:
            stream = False
        if not isinstance(stream, bool):
            raise _ApiError(422, "'stream' must be a boolean", param="stream")
        n = _field_int(body, "n", 1, 1, 1)
        logprobs = _field_int(body, "logprobs", None, 0, 5)
        if body.get("stop") is not None:
            raise _ApiError(422, "'stop' sequences are not supported by this server", param="stop")
        del n
        return name, backend, prompt, GenRequest(ids, max_tokens, temperature, top_p, seed), stream, logprobs

    def retries_of(request) -> int:
        value = request.headers.get("x-stainless-retry-count") or request.headers.get("x-retry-count") or "0"
        return int(value) if value.isdigit() and len(value) < 6 else 0

    def write_log(rec: dict) -> None:
        metrics.record(rec)
        app.state.request_log.append(rec)
        line = json.dumps(rec, sort_keys=True)
        request_log.info(line)
        if log_file is not None:
            with log_file.open("a", encoding="utf-8") as fh:
                fh.write(line + "\n")

    def completion_body(rid, created, name, gen: Generation, tokenizer, logprobs, cached=False) -> dict:
        choice = {"text": gen.text, "index": 0, "logprobs": None, "finish_reason": gen.finish_reason}
        if logprobs is not None:
            tokens = [tokenizer.decode([t]) for t in gen.token_ids]
            offsets, pos = [], 0
            for t in tokens:
                offsets.append(pos)
                pos += len(t)
            choice["logprobs"] = {"tokens": tokens, "token_logprobs": gen.logprobs, "top_logprobs": None,
                                  "text_offset": offsets}
        body = {"id": rid, "object": "text_completion", "created": created, "model": name, "choices": [choice],
                "usage": {"prompt_tokens": gen.prompt_tokens, "completion_tokens": len(gen.token_ids),
                          "total_tokens": gen.prompt_tokens + len(gen.token_ids)}}
        if cached:
            body["system_fingerprint"] = "cache"
        return body

    @app.get("/health")
    async def health():
        return {"status": "ok", "models": sorted(models)}

    @app.get("/metrics")
    async def get_metrics(format: str = "json"):
        snap = metrics.snapshot(batchers)
        if cache is not None and hasattr(cache, "stats"):
            snap["cache"] = cache.stats()
        if format == "prometheus":  # what a Prometheus scraper reads: `metrics_path: /metrics?format=prometheus`
            return PlainTextResponse(prometheus_text(snap), media_type="text/plain; version=0.0.4")
        if format != "json":
            raise _ApiError(422, f"format must be 'json' or 'prometheus', got {format!r}", param="format")
        return snap

    @app.get("/v1/models")
    async def list_models(request: Request):
        authenticate(request)
        return {"object": "list", "data": [{"id": n, "object": "model", "created": 0, "owned_by": "course"}
                                           for n in sorted(models)]}

    @app.post("/v1/completions")
    async def completions(request: Request):
        t0 = time.perf_counter()
        rid = "cmpl-" + uuid.uuid4().hex[:24]
        rec = {"id": rid, "ts": time.time(), "model": None, "client": None, "status": 500, "tokens_in": 0,
               "tokens_out": 0, "latency_ms": 0.0, "cache_hit": None, "retries": retries_of(request),
               "stream": False}
        try:
            client = authenticate(request)
            rec["client"] = client
            body = await read_body(request)
            name, backend, prompt, req, stream, logprobs = parse(body)
            rec.update(model=name, tokens_in=len(req.prompt_ids), stream=stream)
            rate_check(client, len(req.prompt_ids) + req.max_tokens)
            created = int(time.time())
            scope = {"model": name, "max_tokens": req.max_tokens, "temperature": req.temperature,
                     "top_p": req.top_p, "seed": req.seed}
            cacheable = cache is not None and (req.temperature == 0 or req.seed is not None)
            if cacheable:
                hit = await asyncio.to_thread(cache.get, prompt, scope)
                rec["cache_hit"] = hit is not None
                if hit is not None:
                    gen = Generation(hit.token_ids, hit.logprobs, hit.text, len(req.prompt_ids), hit.finish_reason)
                    rec.update(status=200, tokens_out=len(gen.token_ids))
                    out = completion_body(rid, created, name, gen, backend.tokenizer, logprobs, cached=True)
                    if stream:
                        return StreamingResponse(_sse_once(out), media_type="text/event-stream",
                                                 headers={"x-request-id": rid})
                    return JSONResponse(out, headers={"x-request-id": rid})
            if not stream:
                gen = await _submit(batchers[name], req)
                if cacheable:
                    await asyncio.to_thread(cache.put, prompt, gen, scope)
                rec.update(status=200, tokens_out=len(gen.token_ids))
                return JSONResponse(completion_body(rid, created, name, gen, backend.tokenizer, logprobs),
                                    headers={"x-request-id": rid})
            # Streaming: wait for the first token (or the error) before committing to a 200 response.
            queue: asyncio.Queue = asyncio.Queue()
            task = asyncio.ensure_future(batchers[name].submit(req, queue))
            first = await queue.get()
            if first is None:
                gen = await _result(task)  # raises the error (FaultError -> 429/503)
            rec.update(status=200)
            return StreamingResponse(
                _sse_stream(rid, created, name, backend.tokenizer, first, queue, task, rec, write_log, t0,
                            (cache, prompt, scope) if cacheable else None),
                media_type="text/event-stream", headers={"x-request-id": rid})
        except _ApiError as err:
            rec["status"] = err.status
            return error_response(err)
        finally:
            if not rec["stream"] or rec["status"] != 200 or rec["cache_hit"]:
                rec["latency_ms"] = (time.perf_counter() - t0) * 1000
                write_log(rec)

    async def _submit(batcher, req):
        return await _result(asyncio.ensure_future(batcher.submit(req)))

    async def _result(task):
        try:
            return await task
        except FaultError as err:
            headers = {"Retry-After": str(max(1, math.ceil(err.retry_after)))} if err.retry_after else {}
            if err.retry_after is not None:
                headers["retry-after-ms"] = str(int(err.retry_after * 1000))
            kind = "rate_limit_error" if err.status == 429 else "server_error"
            raise _ApiError(err.status, f"upstream model unavailable (HTTP {err.status})", code="overloaded",
                            type_=kind, headers=headers) from None
        except ValueError as err:
            raise _ApiError(422, str(err)) from None
        except Exception:
            log.exception("generation failed")
            raise _ApiError(503, "generation failed; try again", type_="server_error") from None

    return app


async def _sse_once(body: dict):
    yield f"data: {json.dumps(body)}\n\n"
    yield "data: [DONE]\n\n"


async def _sse_stream(rid, created, name, tokenizer, first, queue, task, rec, write_log, t0, cache_info):
    """Server-sent events: one chunk per token (text decoded incrementally, so UTF-8 never splits), then [DONE]."""
    ids, sent = [], ""
    tok = first
    try:
        while tok is not None:
            ids.append(tok)
            text = tokenizer.decode(ids)
            if not text.endswith("\ufffd"):  # wait for the rest of a multi-byte character
                delta, sent = text[len(sent):], text
                chunk = {"id": rid, "object": "text_completion", "created": created, "model": name,
                         "choices": [{"text": delta, "index": 0, "logprobs": None, "finish_reason": None}]}
                yield f"data: {json.dumps(chunk)}\n\n"
            tok = await queue.get()
        gen = await task
        tail = gen.text[len(sent):] if gen.text.startswith(sent) else ""
        final = {"id": rid, "object": "text_completion", "created": created, "model": name,
                 "choices": [{"text": tail, "index": 0, "logprobs": None, "finish_reason": gen.finish_reason}],
                 "usage": {"prompt_tokens": gen.prompt_tokens, "completion_tokens": len(gen.token_ids),
                           "total_tokens": gen.prompt_tokens + len(gen.token_ids)}}
        yield f"data: {json.dumps(final)}\n\n"
        yield "data: [DONE]\n\n"
        rec["tokens_out"] = len(gen.token_ids)
        if cache_info is not None:
            cache, prompt, scope = cache_info
            await asyncio.to_thread(cache.put, prompt, gen, scope)
    except Exception:  # the client sees a truncated stream; the log records the failure
        rec["status"] = 500
        log.exception("stream failed")
    finally:
        rec["latency_ms"] = (time.perf_counter() - t0) * 1000
        write_log(rec)


# ----------------------------------------------------------------------------------------------- models to serve
# Two GPTs of different sizes that add numbers: a task whose answers can be checked, for the model cascade.
ASSETS = Path(__file__).parent / "assets"
ADDER_CONFIGS = {  # name -> (GPTConfig kwargs, training steps)
    "adder-small": (dict(vocab_size=256, d_model=16, n_layers=2, n_heads=2, max_seq_len=32), 8000),
    "adder-large": (dict(vocab_size=256, d_model=32, n_layers=2, n_heads=4, max_seq_len=32), 3000),
}
# sha256 of the committed checkpoints, written by build_adders(); a mismatch means a stale or altered file.
ADDER_SHA256 = {
    "adder-small": "19a372944f77ce80090dce4370321b9b8a011d2fa28bf2c14f09eb87f9810222",
    "adder-large": "640b65d9d51fe957bd229aa17c81406a56bb0fdcf4190f1191e0779a4b851dab",
}


def addition_problem(rng: random.Random, max_digits: int = 3) -> tuple[str, str]:
    """``("47+815=", "268\n")``: each operand has 1..``max_digits`` digits (uniformly), so difficulty varies.

    The sum is written least-significant digit first (862 → "268"), so each digit depends only on digits the model
    has already seen and the carry — the format that lets small transformers learn addition (Lee et al., 2023,
    "Teaching Arithmetic to Small Transformers").
    """
    a = rng.randint(0, 10 ** rng.randint(1, max_digits) - 1)
    b = rng.randint(0, 10 ** rng.randint(1, max_digits) - 1)
    return f"{a}+{b}=", f"{str(a + b)[::-1]}\n"


def addition_problems(n: int, seed: int, max_digits: int = 3) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    return [addition_problem(rng, max_digits) for _ in range(n)]


def answer_additions(backend, problems, *, batch_size: int | None = None) -> tuple[list[bool], list[list[float]]]:
    """Greedy answers of ``backend`` to ``problems`` (pairs from :func:`addition_problems`): whether each answer
    line is exactly right, and the log-probabilities of its first ``len(answer)`` tokens (the confidence a cascade
    reads). ``batch_size`` requests per padded batch (None: all at once)."""
    if isinstance(problems, (str, bytes)) or not problems or not all(
            isinstance(p, tuple) and len(p) == 2 and all(isinstance(t, str) for t in p) for p in problems):
        raise ValueError("problems must be a non-empty list of (prompt, answer) string pairs, e.g. addition_problems(10, 0)")
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size must be a positive int or None, got {batch_size!r}")
    step = batch_size or len(problems)
    gens = []
    for i in range(0, len(problems), step):
        gens += backend.generate_batch([GenRequest(backend.tokenizer.encode(q), 5, 0.0) for q, _ in problems[i:i + step]])
    correct = [g.text.split("\n")[0] + "\n" == a for g, (_, a) in zip(gens, problems)]
    return correct, [list(g.logprobs[: len(a)]) for g, (_, a) in zip(gens, problems)]


class AdditionData:
    """``get_batch(split, batch_size, block_size, generator)`` for :func:`course_utils.train.train`: byte ids,
    loss only on the answer (prompt and padding targets are -1). Train and val draw from different seeds."""

    block_size = 16

    def get_batch(self, split: str, batch_size: int, block_size: int, generator: torch.Generator):
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator)) * 2 + (split == "val")
        x = torch.zeros(batch_size, block_size, dtype=torch.long)
        y = torch.full((batch_size, block_size), -1, dtype=torch.long)
        for i, (q, a) in enumerate(addition_problems(batch_size, seed)):
            ids = list((q + a).encode())
            x[i, : len(ids) - 1] = torch.tensor(ids[:-1])
            y[i, len(q) - 1: len(ids) - 1] = torch.tensor(ids[len(q):])
        return x, y


def train_adder(name: str, *, seed: int = 0, steps: int | None = None, progress: bool = False):
    """Train one of :data:`ADDER_CONFIGS` from scratch (seeded; about a minute for the large one on 2 cores)."""
    from .model import GPT, GPTConfig
    from .train import train

    if name not in ADDER_CONFIGS:
        raise ValueError(f"name must be one of {sorted(ADDER_CONFIGS)}, got {name!r}")
    cfg, default_steps = ADDER_CONFIGS[name]
    torch.manual_seed(seed)
    model = GPT(GPTConfig(**cfg))
    train(model, AdditionData(), steps or default_steps, lr=3e-3, warmup=50, batch_size=64,
          block_size=AdditionData.block_size, eval_every=10**9, eval_iters=1, weight_decay=0.0, seed=seed,
          progress=progress)
    return model.eval()


def build_adders(directory: str | Path = ASSETS, names=tuple(ADDER_CONFIGS)) -> dict:
    """Retrain the adders (seeded) and save ``serve_<name>.safetensors``; return their sha256 digests.

    ``python -c "from course_utils.serving import build_adders; print(build_adders())"`` rebuilds them.
    """
    from .model import save_checkpoint, sha256_of

    digests = {}
    for name in names:
        path = save_checkpoint(train_adder(name, progress=True), Path(directory) / f"serve_{name.replace('-', '_')}.safetensors",
                               meta={"task": "addition", "built_by": "course_utils.serving.build_adders"})
        digests[name] = sha256_of(path)
    return digests


def load_adder(name: str, *, verify: bool = True) -> GPTBackend:
    """The committed adder checkpoint as a backend (sha256-checked: safetensors, never pickle)."""
    from .model import load_checkpoint, sha256_of

    if name not in ADDER_CONFIGS:
        raise ValueError(f"name must be one of {sorted(ADDER_CONFIGS)}, got {name!r}")
    path = ASSETS / f"serve_{name.replace('-', '_')}.safetensors"
    if verify and name in ADDER_SHA256:
        digest = sha256_of(path)
        if digest != ADDER_SHA256[name]:
            raise ValueError(f"{path.name}: sha256 {digest[:12]}… differs from the recorded {ADDER_SHA256[name][:12]}…; "
                             "rebuild with course_utils.serving.build_adders()")
    return GPTBackend(load_checkpoint(path), ByteTokenizer(), name=name)


# ----------------------------------------------------------------------------------------------- running it
@contextlib.contextmanager
def start_server(app, host: str = "127.0.0.1", port: int = 0, *, timeout_s: float = 30.0, log_level: str = "warning"):
    """Run ``app`` with uvicorn in a background thread; yield its base URL (``http://127.0.0.1:PORT``).

    ``port=0`` picks a free port. The server is shut down when the ``with`` block ends, also on an exception.
    """
    import uvicorn

    if not isinstance(port, int) or not 0 <= port < 65536:
        raise ValueError(f"port must be an int in [0, 65535], got {port!r}")
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, lifespan="on", access_log=False,
                            timeout_graceful_shutdown=2)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + timeout_s
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"uvicorn did not start on {host}:{port} within {timeout_s}s")
            time.sleep(0.01)
        bound = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://{host}:{bound}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def load_backend(name: str = "tiny-gpt", checkpoint: str | Path | None = None, *, seed: int = 0) -> GPTBackend:
    """A backend for the command line: a checkpoint (safetensors + JSON, no pickle) or, without one, a small
    seeded untrained GPT over bytes (it answers with noise, but every piece of the server works)."""
    from .model import GPT, GPTConfig, load_checkpoint

    if checkpoint is not None:
        model = load_checkpoint(checkpoint)
        tokenizer = ByteTokenizer() if model.config.vocab_size <= 256 else _corpus_tokenizer(model.config.vocab_size)
        return GPTBackend(model, tokenizer, name=name)
    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=256, d_model=64, n_layers=2, n_heads=4, max_seq_len=256))
    log.warning("serving an untrained %s (pass --checkpoint to serve trained weights)", name)
    return GPTBackend(model, ByteTokenizer(), name=name)


def _corpus_tokenizer(vocab_size: int):
    from .tokenization import BPETokenizer

    path = Path(__file__).parent / "assets" / "corpus_bpe512.json"
    tok = BPETokenizer.load(path)
    if tok.vocab_size > vocab_size:
        raise ValueError(f"no tokenizer with at most {vocab_size} ids for this checkpoint")
    return tok


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m course_utils.serving",
                                     description="Serve a course model with an OpenAI-compatible API.")
    parser.add_argument("--model", default="tiny-gpt", help="the model's name in the API (default tiny-gpt)")
    parser.add_argument("--checkpoint", default=None, help="a .safetensors checkpoint from save_checkpoint")
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: this machine only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--api-key", action="append", default=None,
                        help="accepted Bearer key (repeatable); none given = no authentication")
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--rate", type=float, default=None, help="requests per second per key (burst = 2x)")
    args = parser.parse_args(argv)
    import uvicorn

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    backend = load_backend(args.model, args.checkpoint)
    limit = RateLimit(args.rate, burst=max(1.0, 2 * args.rate)) if args.rate else None
    app = create_app({args.model: backend}, api_keys=args.api_key, rate_limit=limit, max_batch=args.max_batch,
                     max_wait_ms=args.max_wait_ms)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":  # pragma: no cover
    main()
