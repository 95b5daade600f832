"""Chapter 8: a small but real OpenAI-compatible server around the course's models.

    client ──HTTP──► auth (Bearer key, constant-time) ─► rate limit (token bucket per key) ─► validate (pydantic)
           ◄──JSON / SSE── cache? ─► scheduler ─► one forward pass per decode step for the whole batch ─► model

The package, by concern:

- :mod:`.protocol` — OpenAI's request schemas (completions, chat completions, embeddings) and response shapes;
  invalid input is a 400 ``invalid_request_error`` naming the field.
- :mod:`.backends` — :class:`GPTBackend` (batched decoding with a padding mask), :class:`EchoBackend`,
  :class:`EmbeddingBackend` (chapter 6's all-MiniLM-L6-v2), :func:`load_backend`.
- :mod:`.scheduler` — :class:`Batcher` (static batching).
- :mod:`.generation` — tokens to text: stop strings on the decoded text, cancellation.
- :mod:`.completions` — prompts × ``n`` choices as one job; JSON and server-sent-event answers.
- :mod:`.faults` — :class:`FaultInjector`, :class:`FaultError`; :mod:`.metrics` — counters and Prometheus text;
  :mod:`.auth` — keys, :class:`RateLimit`; :mod:`.routes`, :mod:`.embeddings` — the HTTP routes;
  :mod:`.app` — :func:`create_app`, :func:`start_server`; :mod:`.cli` — the command line.

Routes: ``POST /v1/completions``, ``POST /v1/chat/completions``, ``POST /v1/embeddings``, ``GET /v1/models``,
``GET /v1/models/{id}``, ``GET /health``, ``GET /metrics`` (JSON or ``?format=prometheus``).

Command line: ``python -m course_utils.serving --model tiny-gpt --port 8000`` (see ``--help``). The adder models
of the cascade live in :mod:`course_utils.adder` (re-exported here, lazily: :mod:`~course_utils.adder` imports
:mod:`.backends`, so importing it here eagerly made ``from course_utils.adder import build_adders`` a cycle).
"""

import importlib

from .app import create_app, start_server
from .auth import RateLimit
from .backends import ByteTokenizer, EchoBackend, EmbeddingBackend, Generation, GenRequest, GPTBackend, load_backend
from .cli import main
from .faults import FaultError, FaultInjector
from .metrics import Metrics, prometheus_text
from .protocol import MAX_SEED
from .scheduler import Batcher

_ADDER_NAMES = frozenset(
    {
        "ADDER_CONFIGS",
        "ADDER_SHA256",
        "ASSETS",
        "AdditionData",
        "addition_problem",
        "addition_problems",
        "answer_additions",
        "build_adders",
        "load_adder",
        "train_adder",
    }
)


def __getattr__(name: str):
    if name in _ADDER_NAMES:  # bound once, all together, as an eager import would have bound them
        adder = importlib.import_module("course_utils.serving.adder")
        globals().update({n: getattr(adder, n) for n in _ADDER_NAMES})
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ByteTokenizer",
    "GenRequest",
    "Generation",
    "GPTBackend",
    "EchoBackend",
    "EmbeddingBackend",
    "addition_problem",
    "addition_problems",
    "AdditionData",
    "answer_additions",
    "train_adder",
    "build_adders",
    "load_adder",
    "ADDER_CONFIGS",
    "ADDER_SHA256",
    "FaultError",
    "FaultInjector",
    "Batcher",
    "RateLimit",
    "Metrics",
    "prometheus_text",
    "create_app",
    "start_server",
    "load_backend",
    "main",
    "MAX_SEED",
    "ASSETS",
]
