"""Measuring how long things take: the best-of-N wall-clock timer and latency percentiles.

Timings belong in notebooks' prints and in ``benchmarks/`` tables, never in test assertions (they differ from
machine to machine and with the load on it).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from .validate import check_number, positive_int

__all__ = ["best_of", "percentile"]


def best_of(fn: Callable[[], Any], n: int = 3, *, with_result: bool = False):
    """Seconds of the fastest of ``n`` calls of ``fn()`` (wall clock, ``time.perf_counter``).

    The minimum is the run least disturbed by other processes, so it is the most repeatable number on a shared
    machine. With ``with_result=True`` returns ``(seconds, result of the last call)``.
    """
    if not callable(fn):
        raise TypeError(f"fn must be a function of no arguments, got {type(fn).__name__}")
    n = positive_int("n", n)
    best, out = float("inf"), None
    for _ in range(n):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return (best, out) if with_result else best


def percentile(values: Iterable[float], q: float) -> float:
    """The ``q``-th percentile (0–100) of ``values``; NaN when empty."""
    q = check_number("q", q, 0, 100)
    values = list(values)
    return float(np.percentile(values, q)) if values else float("nan")
