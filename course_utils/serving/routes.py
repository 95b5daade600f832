"""The HTTP routes, kept thin: each one authenticates (a dependency), reads and validates its body (a dependency
and a pydantic schema), builds a job and answers. The work lives in :mod:`.completions`; the server's state in
:class:`.app.Server` (``request.app.state.server``).

A request whose client disconnects is cancelled (streaming or not), so its slot in the scheduler is freed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.requests import ClientDisconnect

from ..chat import render_chat
from . import completions as cmp
from . import protocol
from .metrics import prometheus_text
from .protocol import ApiError

router = APIRouter()
log = logging.getLogger("course_utils.serving")
DISCONNECT_POLL_S = 0.05


def server_of(request: Request):
    return request.app.state.server


def record(request: Request) -> dict:
    """The request's log record, written once when the request ends (see :meth:`Server.finish`)."""
    value = request.headers.get("x-stainless-retry-count") or request.headers.get("x-retry-count") or "0"
    rec = {
        "id": None,
        "ts": time.time(),
        "t0": time.perf_counter(),
        "endpoint": request.url.path,
        "model": None,
        "client": None,
        "status": 500,
        "tokens_in": 0,
        "tokens_out": 0,
        "latency_ms": 0.0,
        "cache_hit": None,
        "retries": int(value) if value.isdigit() and len(value) < 6 else 0,
        "stream": False,
    }
    request.state.rec = rec
    return rec


def client(request: Request, rec: dict = Depends(record)) -> str:
    name = server_of(request).auth(request)
    rec["client"] = name
    return name


async def json_body(request: Request, rec: dict = Depends(record)) -> dict:
    """The body as a JSON object: ``application/json`` only, at most ``max_body_bytes``, read within
    ``body_timeout_s`` (a stalled upload is dropped with 408; an aborted one is logged as 499)."""
    server = server_of(request)
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/json":
        raise ApiError(
            415, f"Content-Type must be application/json, got {ctype[:60] or 'none'!r}", code="unsupported_media_type"
        )
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > server.max_body_bytes):
        raise _too_large(server.max_body_bytes)
    try:
        async with asyncio.timeout(server.body_timeout_s):
            raw = await _read(request, server.max_body_bytes)
    except TimeoutError:
        raise ApiError(
            408, f"the request body did not arrive within {server.body_timeout_s:g}s", code="request_timeout"
        ) from None
    except ClientDisconnect:
        raise ApiError(499, "the client closed the connection during the upload", code="client_closed") from None
    return _decode(raw)


def _too_large(limit: int) -> ApiError:
    return ApiError(413, f"request body too large: limit is {limit} bytes", code="body_too_large")


async def _read(request: Request, limit: int) -> bytes:
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


# a JSON number with more digits than any field accepts (seeds are < 2**63: 19 digits), and the key before it
_HUGE_INT = re.compile(r'"([^"\\]{0,200})"\s*:\s*(-?\d{40,})')


def _decode(raw: bytes) -> dict:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(400, "request body is not valid UTF-8") from None
    huge = _HUGE_INT.search(text)
    if huge:  # Python refuses to parse > 4,300 digits: say which value is wrong, not "not valid JSON"
        field, digits = huge.group(1), huge.group(2)
        raise ApiError(
            400,
            f"invalid '{field[:80]}': a number of {len(digits.lstrip('-'))} digits is far beyond any accepted value",
            param=field[:200],
        )
    try:
        body = json.loads(text, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))
    except (ValueError, RecursionError):
        raise ApiError(400, "request body is not valid JSON", code="invalid_json") from None
    if not isinstance(body, dict):
        raise ApiError(400, f"request body must be a JSON object, got {type(body).__name__}")
    return body


# ----------------------------------------------------------------------------------------------- disconnects
async def _watch(request: Request, work: asyncio.Future, left: asyncio.Event) -> None:
    """Cancel ``work`` as soon as the client disconnects (polled: the ASGI server tells no one otherwise)."""
    while not work.done():
        if await request.is_disconnected():
            left.set()
            work.cancel()
            return
        await asyncio.sleep(DISCONNECT_POLL_S)


async def until_disconnect(request: Request, work: asyncio.Future):
    """Await ``work``; cancel it (and answer 499) if the client goes away first."""
    left = asyncio.Event()
    watcher = asyncio.ensure_future(_watch(request, work, left))
    try:
        return await work
    except asyncio.CancelledError:
        if left.is_set():
            raise ApiError(499, "the client closed the connection", code="client_closed") from None
        raise
    finally:
        watcher.cancel()
        if not work.done():
            work.cancel()


# ----------------------------------------------------------------------------------------------- routes
@router.get("/health")
async def health(request: Request):
    return {"status": "ok", "models": sorted(server_of(request).models)}


async def metrics_access(request: Request, rec: dict = Depends(record)) -> None:
    if not server_of(request).public_metrics:
        client(request, rec)


@router.get("/metrics", dependencies=[Depends(metrics_access)])
async def get_metrics(request: Request, format: str = "json"):
    snap = server_of(request).snapshot()
    if format == "prometheus":  # what a Prometheus scraper reads: `metrics_path: /metrics?format=prometheus`
        return PlainTextResponse(prometheus_text(snap), media_type="text/plain; version=0.0.4")
    if format != "json":
        raise ApiError(400, f"format must be 'json' or 'prometheus', got {format[:40]!r}", param="format")
    return snap


@router.get("/v1/models", dependencies=[Depends(client)])
async def list_models(request: Request):
    server = server_of(request)
    return {"object": "list", "data": [server.model_card(n) for n in server.all_model_names()]}


@router.get("/v1/models/{model_id:path}", dependencies=[Depends(client)])
async def get_model(request: Request, model_id: str):
    server = server_of(request)
    if model_id not in server.all_model_names():
        raise _unknown_model(model_id)
    return server.model_card(model_id)


def _unknown_model(name: str) -> ApiError:
    return ApiError(
        404, f"the model {name[:80]!r} does not exist; see GET /v1/models", param="model", code="model_not_found"
    )


@router.post("/v1/completions")
async def completions(
    request: Request, rec: dict = Depends(record), who: str = Depends(client), body: dict = Depends(json_body)
):
    req = protocol.parse(protocol.CompletionRequest, body)
    server = server_of(request)
    backend = server.backend(req.model)
    ids_list = [cmp.prompt_ids(backend, p) for p in req.prompts()]
    max_tokens = 16 if req.max_tokens is None else req.max_tokens
    cmp.check_budget(backend, ids_list, max_tokens, server.max_tokens_limit, "max_tokens")
    prompt_lps = []
    if req.echo and req.logprobs is not None:  # the prompt's own log-probabilities, one forward pass per prompt
        if not hasattr(backend, "prompt_logprobs"):
            raise ApiError(400, f"'echo' with 'logprobs' is not supported by the model {req.model!r}", param="echo")
        prompt_lps = [await asyncio.to_thread(backend.prompt_logprobs, ids, req.logprobs) for ids in ids_list]
    texts = [p if isinstance(p, str) else backend.tokenizer.decode(p) for p in req.prompts()]
    reqs = cmp.sampling_requests(
        req,
        ids_list,
        max_tokens=max_tokens,
        top_logprobs=req.logprobs,
        vocab_size=getattr(backend.tokenizer, "vocab_size", None),
    )
    job = server.job(False, req, backend, who, texts, reqs, req.stops(), echo=bool(req.echo), logprobs=req.logprobs)
    job.prompt_logprobs = prompt_lps
    return await answer(request, job, bool(req.stream), rec)


@router.post("/v1/chat/completions")
async def chat_completions(
    request: Request, rec: dict = Depends(record), who: str = Depends(client), body: dict = Depends(json_body)
):
    req = protocol.parse(protocol.ChatCompletionRequest, body)
    server = server_of(request)
    backend = server.backend(req.model)
    render = getattr(backend.tokenizer, "apply_chat_template", render_chat)  # a model's own template (SmolLM2's)
    try:
        text = render([{"role": m.template_role(), "content": m.content} for m in req.messages])
    except (ValueError, TypeError) as err:
        raise ApiError(400, str(err), param="messages") from None
    ids = cmp.prompt_ids(backend, text, "messages")
    max_tokens, field_name = req.max_new_tokens(min(server.max_tokens_limit, backend.max_context - len(ids)))
    cmp.check_budget(backend, [ids], max_tokens, server.max_tokens_limit, field_name)
    top = (req.top_logprobs or 0) if req.logprobs else None
    if req.top_logprobs is not None and not req.logprobs:
        raise ApiError(400, "'top_logprobs' needs 'logprobs': true", param="top_logprobs")
    stops, stop_ids = cmp.chat_stops(backend)
    reqs = cmp.sampling_requests(
        req,
        [ids],
        max_tokens=max_tokens,
        top_logprobs=top,
        stop_token_ids=stop_ids,
        vocab_size=getattr(backend.tokenizer, "vocab_size", None),
    )
    job = server.job(True, req, backend, who, [text], reqs, req.stops() + stops, logprobs=top)
    return await answer(request, job, bool(req.stream), rec)


async def answer(request: Request, job: cmp.Job, stream: bool, rec: dict):
    """Run ``job``: one JSON body, or an SSE stream that starts once the first token (or the error) is known."""
    server = server_of(request)
    rec.update(id=job.rid, model=job.model, tokens_in=job.prompt_tokens, stream=stream)
    server.limiter.check(job.client, job.prompt_tokens + sum(r.max_tokens for r in job.reqs))
    if not stream:
        choices = await until_disconnect(request, asyncio.ensure_future(cmp.run(job)))
        rec.update(status=200, tokens_out=sum(c.completion_tokens for c in choices), cache_hit=_hit(job))
        server.finish(rec)
        return JSONResponse(cmp.body(job, choices), headers={"x-request-id": job.rid})
    deltas = cmp.stream(job)
    first = await until_disconnect(request, asyncio.ensure_future(anext(deltas, None)))
    rec.update(status=200, cache_hit=_hit(job))
    return StreamingResponse(
        _events(request, job, deltas, first, rec), media_type="text/event-stream", headers={"x-request-id": job.rid}
    )


def _hit(job: cmp.Job):
    return None if not job.cache_hits else all(job.cache_hits)


async def _events(request: Request, job: cmp.Job, deltas, first, rec: dict):
    """The SSE body; a producer task makes the events, so a client that leaves cancels it (and its requests)."""
    queue: asyncio.Queue = asyncio.Queue()

    async def produce():
        try:
            async for event, tokens in cmp.sse(job, deltas, first):
                rec["tokens_out"] = tokens
                await queue.put(event)
        except Exception:  # the client sees a truncated stream; the log records the failure
            rec["status"] = 500
            log.exception("stream failed")
        finally:
            queue.put_nowait(None)

    producer = asyncio.ensure_future(produce())
    left = asyncio.Event()
    watcher = asyncio.ensure_future(_watch(request, producer, left))
    try:
        while (event := await queue.get()) is not None:
            yield event
    finally:  # reached early when the client left (our watcher, or the ASGI server cancelling the body)
        completed = producer.done() and not left.is_set()
        producer.cancel()
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await producer
        with contextlib.suppress(Exception):
            await deltas.aclose()
        if not completed:
            rec["status"] = 499
        server_of(request).finish(rec)
