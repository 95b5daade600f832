"""Model cascades: answer with a small model, escalate to a large one when the small one is not confident.

- :func:`cascade_outcome` — accuracy, escalation rate and cost of one confidence threshold;
  :func:`cascade_curve` the same at every candidate threshold; :func:`pick_cascade_threshold` the cheapest
  threshold that reaches a target accuracy.
- :func:`fit_logistic` / :func:`predict_logistic` — a tiny logistic-regression router (gradient descent on
  standardised features) that turns features of a query into the probability that the small model is right.

The adder task both models answer, its training and checkpoints live with the serving code
(:mod:`course_utils.serving`; :mod:`course_utils.adder` once it moves there).
"""

from __future__ import annotations

import math

import numpy as np

from ..validate import nonnegative_float, positive_float, positive_int

__all__ = ["cascade_outcome", "pick_cascade_threshold", "cascade_curve", "fit_logistic", "predict_logistic"]


def _arrays(confidence, small_correct, large_correct):
    c = np.asarray(confidence, dtype=float)
    s = np.asarray(small_correct, dtype=bool)
    l = np.asarray(large_correct, dtype=bool)
    if c.ndim != 1 or c.shape != s.shape or c.shape != l.shape or c.size == 0:
        raise ValueError(
            f"confidence, small_correct and large_correct must be 1-D of one non-zero length, got "
            f"{c.shape}, {s.shape}, {l.shape}"
        )
    if not np.isfinite(c).all():
        raise ValueError(f"confidence must be finite, got {int((~np.isfinite(c)).sum())} NaN/inf values")
    return c, s, l


def _costs(cost_small, cost_large) -> tuple[float, float]:
    return positive_float("cost_small", cost_small), positive_float("cost_large", cost_large)


def _threshold(threshold) -> float:
    """A number, ±inf allowed (never / always escalate), NaN not."""
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.number)):
        raise TypeError(f"threshold must be a number (±inf allowed), got {threshold!r}")
    if math.isnan(threshold):
        raise ValueError(f"threshold must be a number (±inf allowed), got {threshold!r}")
    return float(threshold)


def cascade_outcome(
    confidence, small_correct, large_correct, threshold: float, *, cost_small: float = 1.0, cost_large: float = 10.0
) -> dict:
    """Small model first; escalate to the large one where ``confidence < threshold``.

    Returns ``accuracy``, ``escalation_rate`` and mean ``cost`` per query (an escalated query pays for both).
    """
    c, s, l = _arrays(confidence, small_correct, large_correct)
    threshold = _threshold(threshold)
    cost_small, cost_large = _costs(cost_small, cost_large)
    up = c < threshold
    return {
        "threshold": float(threshold),
        "accuracy": float(np.where(up, l, s).mean()),
        "escalation_rate": float(up.mean()),
        "cost": float(cost_small + cost_large * up.mean()),
    }


def pick_cascade_threshold(confidence, small_correct, large_correct, target_accuracy: float) -> float:
    """The threshold with the fewest escalations whose cascade accuracy reaches ``target_accuracy``.

    Candidates are ``-inf`` (never escalate), every observed confidence, and ``+inf`` (always escalate); when
    none reaches the target, ``+inf``.
    """
    c, s, l = _arrays(confidence, small_correct, large_correct)
    target_accuracy = nonnegative_float("target_accuracy", target_accuracy)  # > 1: unreachable, +inf
    for t in [-np.inf, *np.unique(c), np.inf]:  # escalation grows with t: the first that works escalates least
        if np.where(c < t, l, s).mean() >= target_accuracy - 1e-12:
            return float(t)
    return float("inf")


def cascade_curve(
    confidence, small_correct, large_correct, *, cost_small: float = 1.0, cost_large: float = 10.0
) -> list[dict]:
    """:func:`cascade_outcome` at every candidate threshold: the cost-accuracy curve."""
    c, s, l = _arrays(confidence, small_correct, large_correct)
    cost_small, cost_large = _costs(cost_small, cost_large)
    return [
        cascade_outcome(c, s, l, t, cost_small=cost_small, cost_large=cost_large)
        for t in [-np.inf, *np.unique(c), np.inf]
    ]


def fit_logistic(X, y, *, l2: float = 1e-3, steps: int = 500, lr: float = 0.5) -> np.ndarray:
    """Logistic regression by gradient descent on standardised features: returns weights ``[mean, std, w, b]``."""
    X = np.asarray(X, dtype=float)
    y = np.asarray(y, dtype=float)
    if X.ndim != 2 or y.shape != (X.shape[0],) or X.shape[0] == 0:
        raise ValueError(f"X must be [n, d] and y [n] with n > 0, got {X.shape} and {y.shape}")
    if not (np.isfinite(X).all() and np.isfinite(y).all()):
        raise ValueError("X and y must be finite (no NaN/inf)")
    l2, steps, lr = nonnegative_float("l2", l2), positive_int("steps", steps), positive_float("lr", lr)
    mu, sd = X.mean(0), X.std(0) + 1e-9
    Z = (X - mu) / sd
    w, b = np.zeros(X.shape[1]), 0.0
    for _ in range(steps):
        p = 1 / (1 + np.exp(-(Z @ w + b)))
        w -= lr * (Z.T @ (p - y) / len(y) + l2 * w)
        b -= lr * float(np.mean(p - y))
    return np.concatenate([mu, sd, w, [b]])


def predict_logistic(params: np.ndarray, X) -> np.ndarray:
    """Probabilities from :func:`fit_logistic`'s parameters."""
    X = np.asarray(X, dtype=float)
    params = np.asarray(params, dtype=float)
    if X.ndim != 2 or params.shape != (3 * X.shape[1] + 1,):
        raise ValueError(f"X must be [n, d] and params [3d + 1] (from fit_logistic), got {X.shape} and {params.shape}")
    d = X.shape[1]
    mu, sd, w, b = params[:d], params[d : 2 * d], params[2 * d : 3 * d], params[-1]
    return 1 / (1 + np.exp(-(((X - mu) / sd) @ w + b)))
