"""95% intervals for the small samples the course measures on: Wilson for a proportion, bootstrap for a mean.

A verdict that compares two methods on 80 questions needs an interval: with n = 80 a proportion near 0.8 is only
known to about ±0.09. ``wilson_interval(k, n)`` is the score interval of Wilson (1927), which stays inside [0, 1]
and behaves at k = 0 or k = n, unlike the normal approximation. ``bootstrap_ci(values)`` resamples the per-item
values (questions) with replacement and returns the percentile interval of a statistic (the mean by default);
``paired_bootstrap_diff(a, b)`` does the same for the difference of two methods scored on the same items, which
is what "A beats B" needs.

Verdicts come from ``compare_paired(a, b)``: two methods scored on the *same* items. 0/1 scores (accuracy) get
the exact McNemar test (McNemar 1947; exact binomial form on the discordant pairs, as in Dietterich 1998), other
scores (recall@k, reciprocal ranks, per-seed losses) a paired bootstrap — or, for at most ``EXACT_SIGN_FLIP_MAX``
items, the exact sign-flip (paired permutation) test, since a bootstrap p-value on a handful of items is not a
test (with 2 seeds that agree in sign every resample does, and the bootstrap would claim p = 0). The verdict is
"A better", "B better" or "not shown" at a stated α. Overlapping per-method intervals never mean
"no difference": a difference that the test does not detect is *not shown* on this sample, which is a statement
about the sample size as much as the methods.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

__all__ = [
    "wilson_interval",
    "bootstrap_ci",
    "paired_bootstrap_diff",
    "format_ci",
    "intervals_overlap",
    "mcnemar_exact",
    "sign_flip_exact",
    "EXACT_SIGN_FLIP_MAX",
    "PairedComparison",
    "compare_paired",
]

# z for a two-sided 95% interval (the course's default everywhere).
Z95 = 1.959963984540054


def _check_level(level: float) -> float:
    if isinstance(level, bool) or not isinstance(level, (int, float)) or not 0.0 < float(level) < 1.0:
        raise ValueError(f"level must be a float in (0, 1), got {level!r}")
    return float(level)


def _z(level: float) -> float:

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
    """Whether two intervals ``(low, high)`` overlap.

    Overlap is *not* evidence of no difference: two methods scored on the same items can differ clearly while
    their separate intervals overlap. Use ``compare_paired`` for verdicts.
    """
    for name, iv in (("a", a), ("b", b)):
        if len(iv) != 2 or iv[0] > iv[1]:
            raise ValueError(f"{name} must be an interval (low, high) with low <= high, got {iv!r}")
    return a[0] <= b[1] and b[0] <= a[1]


def mcnemar_exact(a_only: int, b_only: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts.

    ``a_only``: items method A got right and B wrong; ``b_only``: the reverse. Under "no difference" each
    discordant item is a fair coin, so the p-value is the two-sided binomial tail of ``min(a_only, b_only)`` in
    ``a_only + b_only`` tosses (1.0 when there are no discordant items).
    """
    for name, v in (("a_only", a_only), ("b_only", b_only)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
            raise ValueError(f"{name} must be a non-negative int, got {v!r}")
    n, k = int(a_only) + int(b_only), min(int(a_only), int(b_only))
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2.0**n
    return min(1.0, 2.0 * tail)


# Up to this many items, non-0/1 scores get the exact sign-flip test (2^n sign patterns, 4,096 at most).
EXACT_SIGN_FLIP_MAX = 12


def sign_flip_exact(diffs: Sequence[float]) -> float:
    """Two-sided exact p-value of the paired permutation (sign-flip) test of ``mean(diffs) == 0``.

    Under "no difference" each item's difference is as likely to have either sign, so the p-value is the share of
    the ``2**n`` sign patterns whose mean is at least as far from 0 as the observed one. With ``n`` items it is never
    below ``2 / 2**n`` (0.5 for two seeds): a test on two seeds cannot show anything at α = 0.05.
    """
    d = _as_values(diffs, "diffs")
    if d.size > 20:
        raise ValueError(f"diffs must have at most 20 items for the exact test, got {d.size}")
    signs = 1 - 2 * ((np.arange(2**d.size)[:, None] >> np.arange(d.size)) & 1)  # every ±1 pattern, one per row
    means = np.abs(signs @ d) / d.size
    observed = abs(float(d.mean()))
    return float(np.mean(means >= observed - 1e-12 * max(1.0, observed)))


@dataclass(frozen=True)
class PairedComparison:
    """The result of ``compare_paired``: what to print next to a verdict."""

    name_a: str
    name_b: str
    n: int
    mean_a: float
    mean_b: float
    diff: float  # mean(a) - mean(b)
    low: float  # paired interval of diff at level 1 - alpha
    high: float
    p_value: float
    test: str  # "exact McNemar", "exact sign-flip" or "paired bootstrap"
    alpha: float
    a_only: int | None = None  # discordant counts (0/1 scores only)
    b_only: int | None = None
    lower_is_better: bool = False  # scores are losses: a negative diff favours A

    @property
    def verdict(self) -> str:
        """'A better', 'B better' (with the methods' names) or 'not shown'."""
        a_ahead = self.diff < 0 if self.lower_is_better else self.diff > 0
        if self.p_value < self.alpha and self.diff != 0:
            return f"{self.name_a if a_ahead else self.name_b} better"
        return "not shown"

    @property
    def shown(self) -> bool:
        """Whether the test detected a difference at ``alpha``."""
        return self.verdict != "not shown"

    def __str__(self) -> str:
        counts = f", discordant {self.a_only}/{self.b_only}" if self.a_only is not None else ""
        lower = ", lower is better" if self.lower_is_better else ""
        level = round(100 * (1 - self.alpha))
        return (
            f"{self.name_a} {self.mean_a:.3f} vs {self.name_b} {self.mean_b:.3f}: "
            f"diff {self.diff:+.3f} [{self.low:+.3f}, {self.high:+.3f}] ({level}% paired), "
            f"{self.test} p = {self.p_value:.2g}{counts} (n = {self.n}{lower})"
            f" → {self.verdict} at α = {self.alpha:g}"
        )


def compare_paired(
    a: Sequence[float],
    b: Sequence[float],
    *,
    names: tuple[str, str] = ("A", "B"),
    alpha: float = 0.05,
    n_resamples: int = 2000,
    seed: int = 0,
    lower_is_better: bool = False,
) -> PairedComparison:
    """Compare two methods scored on the same items; the course's one source of verdicts.

    ``a[i]`` and ``b[i]`` are the two methods' scores on item ``i``. All-0/1 scores use the exact McNemar test
    (``mcnemar_exact``); other scores on at most ``EXACT_SIGN_FLIP_MAX`` items the exact sign-flip test
    (``sign_flip_exact``), and on more items a paired bootstrap of the mean difference, whose p-value is twice the
    smaller share of resampled differences on either side of 0 (as ``(k + 1) / (R + 1)``: never 0). The interval
    is the paired bootstrap interval of ``mean(a) - mean(b)`` at level ``1 - alpha`` in both cases. Seeded, so a
    notebook prints the same verdict on every run and machine. ``lower_is_better=True`` for losses: then a negative
    difference favours A.
    """
    alpha = _check_level(alpha)
    if not isinstance(lower_is_better, bool):
        raise TypeError(f"lower_is_better must be a bool, got {type(lower_is_better).__name__}")
    if alpha >= 0.5:
        raise ValueError(f"alpha must be below 0.5, got {alpha!r}")
    if len(names) != 2 or not all(isinstance(x, str) for x in names):
        raise TypeError(f"names must be two strings, got {names!r}")
    a_arr, b_arr = _as_values(a, "a"), _as_values(b, "b")
    if a_arr.shape != b_arr.shape:
        raise ValueError(f"a and b must score the same items, got lengths {a_arr.size} and {b_arr.size}")
    _check_resamples(n_resamples)
    d = a_arr - b_arr
    rng = np.random.default_rng(seed)
    boot = d[rng.integers(0, d.size, size=(n_resamples, d.size))].mean(axis=1)
    low, high = (float(x) for x in np.quantile(boot, [alpha / 2, 1 - alpha / 2]))
    binary = bool(np.all((a_arr == 0) | (a_arr == 1)) and np.all((b_arr == 0) | (b_arr == 1)))
    a_only = b_only = None
    if binary:
        a_only, b_only = int(np.sum(d > 0)), int(np.sum(d < 0))
        p, test = mcnemar_exact(a_only, b_only), "exact McNemar"
    elif d.size <= EXACT_SIGN_FLIP_MAX:
        p, test = sign_flip_exact(d), "exact sign-flip"
    else:
        # Shift-free bootstrap p-value: how often the resampled mean difference lands on the other side of 0,
        # counted as (k + 1) / (R + 1) (Davison & Hinkley, 1997): R resamples cannot show a p-value below 1 / R,
        # so a difference that never crossed 0 reports p ≈ 1e-3, not an impossible 0.
        tail = min(int(np.sum(boot <= 0)), int(np.sum(boot >= 0)))
        p = min(1.0, 2.0 * (tail + 1) / (n_resamples + 1))
        test = "paired bootstrap"
    return PairedComparison(
        names[0],
        names[1],
        int(d.size),
        float(a_arr.mean()),
        float(b_arr.mean()),
        float(d.mean()),
        low,
        high,
        float(p),
        test,
        alpha,
        a_only,
        b_only,
        lower_is_better,
    )
