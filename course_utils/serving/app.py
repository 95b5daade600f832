"""The FastAPI application: :func:`create_app` wires the backends, their schedulers, authentication, limits, the
cache and the metrics into :class:`Server` (``app.state.server``), installs OpenAI-style error handlers (invalid
input is a 400 naming the field, never FastAPI's 422; no traceback ever reaches a client) and the routes;
:func:`start_server` runs an app with uvicorn in a background thread.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from pathlib import Path

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..validate import check_int, nonnegative_float, positive_float, positive_int
from . import completions as cmp
from . import protocol
from .auth import Auth, RateLimit, RateLimiter
from .backends import EmbeddingBackend
from .embeddings import router as embeddings_router
from .metrics import Metrics, RequestLog
from .protocol import ApiError, error_body
from .routes import router
from .scheduler import DEFAULT_MAX_QUEUE, Batcher, default_scheduler
from .transport import server_config

log = logging.getLogger("course_utils.serving")


def as_models(models) -> dict:
    """``{name: backend}`` from a dict, a list of backends or one backend (checked)."""
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
                raise TypeError(
                    f"models[{name!r}] must be a backend with {attr} (e.g. GPTBackend), got {type(backend).__name__}"
                )
    return out


class Server:
    """What the routes share: the models and their schedulers, the embedders, auth, limits, cache and metrics."""

    def __init__(
        self,
        models: dict,
        embedders: dict,
        schedulers: dict,
        *,
        auth: Auth,
        limiter: RateLimiter,
        cache,
        request_log: RequestLog,
        max_body_bytes: int,
        max_tokens_limit: int,
        body_timeout_s: float,
        public_metrics: bool,
    ):
        self.models, self.embedders, self.schedulers = models, embedders, schedulers
        self.auth, self.limiter, self.cache, self.request_log = auth, limiter, cache, request_log
        self.max_body_bytes, self.max_tokens_limit = max_body_bytes, max_tokens_limit
        self.body_timeout_s, self.public_metrics = body_timeout_s, public_metrics
        self.created = int(time.time())  # the models' cards' "created": when they were loaded into this server

    def all_model_names(self) -> list[str]:
        return sorted(self.models) + sorted(self.embedders)

    def model_card(self, name: str) -> dict:
        """OpenAI's model object; ``created`` is when this server loaded its models (Unix seconds)."""
        return {"id": name, "object": "model", "created": self.created, "owned_by": "course"}

    def backend(self, name: str):
        """The generation model ``name``; the embedding model's name is a 404 that says what kind it is."""
        if name in self.embedders:
            raise ApiError(
                404,
                f"{name[:80]!r} is an embedding model, not a text generation model: use it on POST /v1/embeddings "
                f"(generation models here: {', '.join(sorted(self.models))})",
                param="model",
                code="model_not_supported",
            )
        if name not in self.models:
            raise ApiError(
                404,
                f"the model {name[:80]!r} does not exist; see GET /v1/models",
                param="model",
                code="model_not_found",
            )
        return self.models[name]

    def embedder(self, name: str):
        """The embedding model ``name``; a generation model's name is a 404 that says what kind it is."""
        if name in self.models:
            shown = ", ".join(sorted(self.embedders)) or "none on this server"
            raise ApiError(
                404,
                f"{name[:80]!r} is a text generation model, not an embedding model: use it on /v1/completions or "
                f"/v1/chat/completions (embedding models: {shown})",
                param="model",
                code="model_not_supported",
            )
        if name not in self.embedders:
            raise ApiError(
                404,
                f"the embedding model {name[:80]!r} does not exist; see GET /v1/models",
                param="model",
                code="model_not_found",
            )
        return self.embedders[name]

    def job(self, chat: bool, req, backend, who: str, texts, reqs, stops, *, echo=False, logprobs=None) -> cmp.Job:
        include_usage = bool(req.stream and req.stream_options and req.stream_options.include_usage)
        prompt_tokens = sum(len(r.prompt_ids) for r in reqs[:: (req.n or 1)])
        return cmp.Job(
            chat,
            req.model,
            backend,
            self.schedulers[req.model],
            who,
            texts,
            reqs,
            stops,
            req.n or 1,
            echo,
            logprobs,
            include_usage,
            self.cache,
            protocol.new_id("chatcmpl" if chat else "cmpl"),
            int(time.time()),
            prompt_tokens,
        )

    def finish(self, rec: dict) -> None:
        """Write ``rec`` to the request log once (later calls for the same request do nothing)."""
        if rec.get("done"):
            return
        rec["done"] = True
        t0 = rec.pop("t0", None)
        if t0 is not None:
            rec["latency_ms"] = (time.perf_counter() - t0) * 1000
        self.request_log.write({k: v for k, v in rec.items() if k != "done"})

    def snapshot(self) -> dict:
        snap = self.request_log.metrics.snapshot(self.schedulers)
        if self.cache is not None and hasattr(self.cache, "stats"):
            snap["cache"] = self.cache.stats()
        return snap


def _install_error_handlers(app: FastAPI) -> None:
    def finish(request: Request, status: int) -> None:
        rec = getattr(request.state, "rec", None)
        if rec is not None:
            rec["status"] = status
            app.state.server.finish(rec)

    @app.exception_handler(ApiError)
    async def _api_error(request, err: ApiError):
        finish(request, err.status)
        return JSONResponse(err.body(), status_code=err.status, headers=err.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, err):
        code = "not_found" if err.status_code == 404 else None
        return JSONResponse(error_body(err.status_code, str(err.detail), None, code), status_code=err.status_code)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request, err):  # OpenAI answers 400, not FastAPI's 422
        first = (err.errors() or [{}])[0]
        param = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
        return JSONResponse(
            error_body(400, f"invalid '{param}': {first.get('msg', 'invalid value')}", param), status_code=400
        )

    @app.exception_handler(Exception)
    async def _internal_error(request, err):  # never a traceback to the client
        log.exception("internal error")
        finish(request, 500)
        return JSONResponse(error_body(500, "internal server error", type_="server_error"), status_code=500)


def create_app(
    models,
    *,
    api_keys=None,
    rate_limit: RateLimit | None = None,
    max_batch: int = 8,
    max_wait_ms: float = 5.0,
    max_body_bytes: int = 64 * 1024,
    max_tokens_limit: int = 256,
    cache=None,
    log_path: str | Path | None = None,
    log_window: int = 10_000,
    embeddings=None,
    public_metrics: bool = False,
    body_timeout_s: float = 10.0,
    failed_auth_per_s: float = 1.0,
    failed_auth_burst: float = 10,
    scheduler_factory=None,
    max_queue: int = DEFAULT_MAX_QUEUE,
):
    """The FastAPI app serving ``models`` (``{name: backend}``, a backend, or a list of backends).

    Every setting is checked here (a ``ValueError``/``TypeError`` naming it), not only by the command line: a bad
    one never builds an app that answers 500 to every request.

    ``api_keys``: ``None`` (no authentication) or ``{key: client name}`` / a list of keys; requests need
    ``Authorization: Bearer <key>`` (``/metrics`` too, unless ``public_metrics``). ``rate_limit``: a
    :class:`RateLimit` applied per key. ``cache``: a :class:`~course_utils.gateway.SemanticCache` or ``ExactCache``
    consulted for deterministic requests (temperature 0, or a fixed seed), scoped by model, settings and client.
    ``embeddings``: ``True`` (chapter 6's all-MiniLM-L6-v2), an :class:`EmbeddingBackend`, or a list of them.
    ``scheduler_factory(backend)``: how requests are scheduled (default: continuous batching with
    :class:`~.scheduler.EngineScheduler` for a course GPT, the static :class:`Batcher` for other backends). Each request
    writes one JSON line to the ``course_utils.serving.requests`` logger (and ``log_path``) and to
    ``app.state.server.request_log`` (iterable: the last ``log_window`` records). ``max_queue``: requests waiting
    per model (default schedulers); one more is a 503 with ``Retry-After`` (load shedding).

    ``app.state.server`` (a :class:`Server`) is the app's one piece of state: its ``models``, ``schedulers``,
    ``request_log``, ``cache``, ``auth`` and limits are what the routes read, and what a test or notebook inspects.
    """
    models = as_models(models)
    auth = Auth(api_keys, failed_per_s=failed_auth_per_s, failed_burst=failed_auth_burst)
    limiter = RateLimiter(rate_limit)
    check_int("max_body_bytes", max_body_bytes, 256)
    positive_int("max_tokens_limit", max_tokens_limit)
    positive_float("body_timeout_s", body_timeout_s)
    positive_int("max_batch", max_batch)
    nonnegative_float("max_wait_ms", max_wait_ms)
    positive_int("log_window", log_window)
    if not isinstance(public_metrics, bool):
        raise TypeError(f"public_metrics must be a bool, got {type(public_metrics).__name__}")
    if cache is not None and not all(callable(getattr(cache, m, None)) for m in ("get", "put")):
        raise TypeError(f"cache must be None or have get() and put() (e.g. ExactCache), got {type(cache).__name__}")
    if scheduler_factory is not None and not callable(scheduler_factory):
        raise TypeError(f"scheduler_factory must be a function backend -> scheduler, got {scheduler_factory!r}")
    embedders = _as_embedders(embeddings)
    if scheduler_factory is None:  # checks the settings
        Batcher(models[next(iter(models))], max_batch=max_batch, max_wait_ms=max_wait_ms, max_queue=max_queue)
    make = scheduler_factory or (
        lambda b: default_scheduler(b, max_batch=max_batch, max_wait_ms=max_wait_ms, max_queue=max_queue)
    )
    schedulers = {name: make(b) for name, b in models.items()}
    metrics = Metrics(log_window)
    server = Server(
        models,
        embedders,
        schedulers,
        auth=auth,
        limiter=limiter,
        cache=cache,
        request_log=RequestLog(metrics, log_window, log_path),
        max_body_bytes=max_body_bytes,
        max_tokens_limit=max_tokens_limit,
        body_timeout_s=body_timeout_s,
        public_metrics=bool(public_metrics),
    )

    @contextlib.asynccontextmanager
    async def lifespan(app):
        for s in schedulers.values():
            await s.start()
        try:
            yield
        finally:
            for s in schedulers.values():
                await s.stop()

    app = FastAPI(title="course_utils.serving", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = server  # the one handle on the app's state: models, schedulers, request_log, cache, ...
    _install_error_handlers(app)
    app.include_router(router)

    app.include_router(embeddings_router)
    return app


def _as_embedders(embeddings) -> dict:
    if embeddings is None or embeddings is False:
        return {}
    if embeddings is True:
        embeddings = [EmbeddingBackend()]
    if not isinstance(embeddings, (list, tuple)):
        embeddings = [embeddings]
    for e in embeddings:
        if not hasattr(e, "embed") or not isinstance(getattr(e, "name", None), str):
            raise TypeError(f"embeddings must be True or EmbeddingBackend objects, got {type(e).__name__}")
    return {e.name: e for e in embeddings}


@contextlib.contextmanager
def start_server(
    app, host: str = "127.0.0.1", port: int = 0, *, timeout_s: float = 30.0, log_level: str = "warning", **limits
):
    """Run ``app`` with uvicorn in a background thread; yield its base URL (``http://127.0.0.1:PORT``).

    ``port=0`` picks a free port. ``limits``: the connection limits of :func:`.transport.server_config` (header
    and keep-alive timeouts, header size, connections). The server is shut down when the ``with`` block ends,
    also on an exception.
    """

    check_int("port", port, 0, 65535)
    config = server_config(
        app, host, port, log_level=log_level, lifespan="on", access_log=False, timeout_graceful_shutdown=2, **limits
    )
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
