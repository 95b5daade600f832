"""The client side of serving, by name: this module only re-exports (chapter 8's gateway is split by concern).

- :mod:`course_utils.resilience` — :class:`RetryableError`, :func:`retry_after_of`, :func:`backoff_delay`,
  :func:`retry_call`, :class:`CircuitBreaker`, :class:`CircuitOpenError`, :func:`call_with_fallback`.
- :mod:`course_utils.ratelimit` — :class:`TokenBucket`.
- :mod:`course_utils.caches` — :class:`SemanticCache`, :class:`ExactCache` and the workload simulator
  (:data:`INTENTS`, :data:`PARAPHRASES`, :func:`tail_intent`, :func:`intent_text`, :func:`paraphrase_stream`,
  :func:`simulate_cache`).
- :mod:`course_utils.cascade` — :func:`cascade_outcome`, :func:`pick_cascade_threshold`, :func:`cascade_curve`,
  :func:`fit_logistic`, :func:`predict_logistic`.
- :mod:`course_utils.timing` — :func:`percentile`.

``from course_utils.gateway import TokenBucket, retry_call, SemanticCache`` keeps working; new code imports from
the modules above.
"""

from __future__ import annotations

from ..timing import percentile
from .caches import (
    INTENTS,
    PARAPHRASES,
    ExactCache,
    SemanticCache,
    intent_text,
    paraphrase_stream,
    simulate_cache,
    tail_intent,
)
from .cascade import cascade_curve, cascade_outcome, fit_logistic, pick_cascade_threshold, predict_logistic
from .ratelimit import TokenBucket
from .resilience import (
    CircuitBreaker,
    CircuitOpenError,
    RetryableError,
    backoff_delay,
    call_with_fallback,
    retry_after_of,
    retry_call,
)

__all__ = [
    "RetryableError",
    "retry_after_of",
    "backoff_delay",
    "retry_call",
    "call_with_fallback",
    "TokenBucket",
    "CircuitBreaker",
    "CircuitOpenError",
    "SemanticCache",
    "ExactCache",
    "percentile",
    "INTENTS",
    "PARAPHRASES",
    "paraphrase_stream",
    "tail_intent",
    "intent_text",
    "simulate_cache",
    "cascade_outcome",
    "pick_cascade_threshold",
    "cascade_curve",
    "fit_logistic",
    "predict_logistic",
]
