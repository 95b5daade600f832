"""95% intervals for the small samples the course measures on: Wilson for a proportion, bootstrap for a mean.

A verdict that compares two methods on 80 questions needs an interval: with n = 80 a proportion near 0.8 is only
known to about ±0.09. ``wilson_interval(k, n)`` is the score interval of Wilson (1927), which stays inside [0, 1]
and behaves at k = 0 or k = n, unlike the normal approximation. ``bootstrap_ci(values)`` resamples the per-item
values (questions) with replacement and returns the percentile interval of a statistic (the mean by default);
``paired_bootstrap_diff(a, b)`` does the same for the difference of two methods scored on the same items, which
is what "A beats B" needs. ``overlap_verdict`` turns two intervals into the words the notebooks print.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

__all__ = ["wilson_interval", "bootstrap_ci", "paired_bootstrap_diff", "format_ci", "intervals_overlap"]

# z for a two-sided 95% interval (the course's default everywhere).
Z95 = 1.959963984540054


def _check_level(level: float) -> float:
    if isinstance(level, bool) or not isinstance(level, (int, float)) or not 0.0 < float(level) < 1.0:
        raise ValueError(f"level must be a float in (0, 1), got {level!r}")
    return float(level)


def _z(level: float) -> float:
    from statistics import NormalDist

    return Z95 if level == 0.95 else NormalDist().inv_cdf(0.5 + level / 2)


def wilson_interval(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a proportion k/n: ``(low, high)``, both in [0, 1].

    ``k`` successes out of ``n`` trials (ints, 0 ≤ k ≤ n, n ≥ 1).
    """
    for name, v in (("k", k), ("n", n)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise TypeError(f"{name} must be an int, got {type(v).__name__}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if not 0 <= k <= n:
        raise ValueError(f"k must be between 0 and n={n}, got {k}")
    z = _z(_check_level(level))
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # Clamp round-off so that k = 0 gives exactly 0 and k = n exactly 1.
    return max(0.0, centre - half) if k else 0.0, min(1.0, centre + half) if k < n else 1.0


def _as_values(values, name: str) -> np.ndarray:
    if isinstance(values, (str, bytes)) or not hasattr(values, "__len__"):
        raise TypeError(f"{name} must be a sequence of numbers, got {type(values).__name__}")
    arr = np.asarray(values, dtype=float)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D sequence of numbers, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite numbers")
    return arr


def _check_resamples(n_resamples: int) -> None:
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, int) or n_resamples < 100:
        raise ValueError(f"n_resamples must be an int >= 100, got {n_resamples!r}")


def bootstrap_ci(
    values: Sequence[float],
    statistic: Callable[[np.ndarray], float] = np.mean,
    *,
    n_resamples: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic`` over per-item ``values`` (e.g. reciprocal ranks, 0/1 hits).

    Seeded (``seed``), so a notebook prints the same interval on every run. ``statistic`` takes a 1-D array and
    returns a float; it is applied to each of ``n_resamples`` resamples drawn with replacement.
    """
    arr = _as_values(values, "values")
    _check_resamples(n_resamples)
    level = _check_level(level)
    if not callable(statistic):
        raise TypeError(f"statistic must be callable, got {type(statistic).__name__}")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, arr.size, size=(n_resamples, arr.size))
    if statistic is np.mean:
        stats = arr[idx].mean(axis=1)
    else:
        stats = np.array([float(statistic(arr[i])) for i in idx])
    lo, hi = np.quantile(stats, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def paired_bootstrap_diff(
    a: Sequence[float], b: Sequence[float], *, n_resamples: int = 2000, level: float = 0.95, seed: int = 0
) -> tuple[float, float, float]:
    """Mean difference ``mean(a) - mean(b)`` over the same items and its paired bootstrap interval.

    Returns ``(diff, low, high)``. An interval that contains 0 means "no measurable difference" on this sample.
    """
    a_arr, b_arr = _as_values(a, "a"), _as_values(b, "b")
    if a_arr.shape != b_arr.shape:
        raise ValueError(f"a and b must score the same items, got lengths {a_arr.size} and {b_arr.size}")
    d = a_arr - b_arr
    lo, hi = bootstrap_ci(d, n_resamples=n_resamples, level=level, seed=seed)
    return float(d.mean()), lo, hi


def format_ci(value: float, interval: tuple[float, float], digits: int = 3) -> str:
    """``'0.915 [0.85, 0.96]'``: a value with its interval, for tables and prints."""
    if not isinstance(digits, int) or isinstance(digits, bool) or digits < 0:
        raise ValueError(f"digits must be a non-negative int, got {digits!r}")
    lo, hi = interval
    return f"{value:.{digits}f} [{lo:.{max(digits - 1, 0)}f}, {hi:.{max(digits - 1, 0)}f}]"


def intervals_overlap(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """Whether two intervals ``(low, high)`` overlap: if they do, the course reports "no clear difference"."""
    for name, iv in (("a", a), ("b", b)):
        if len(iv) != 2 or iv[0] > iv[1]:
            raise ValueError(f"{name} must be an interval (low, high) with low <= high, got {iv!r}")
    return a[0] <= b[1] and b[0] <= a[1]
