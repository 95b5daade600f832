"""Argument validators: one copy of "is this an int in range / a finite number in range" for every module.

Each validator returns the value (an ``int`` or a ``float``) so a call reads ``n = positive_int("n", n)``, and
raises an error that names the argument, says what was expected and shows what it got. A value of the wrong
type raises :class:`ArgumentTypeError`, which is both a ``TypeError`` and a ``ValueError`` (callers that caught
either before a check moved here keep working); a value of the right type out of range raises ``ValueError``.
``bool`` is never accepted as a number (``True`` is an ``int`` to Python, never a count to the course).
"""

from __future__ import annotations

import math
import numbers

__all__ = [
    "ArgumentTypeError",
    "check_int",
    "positive_int",
    "nonnegative_int",
    "check_number",
    "positive_float",
    "nonnegative_float",
    "finite_float",
    "probability",
]


class ArgumentTypeError(TypeError, ValueError):
    """An argument of the wrong type (a ``TypeError``, and a ``ValueError`` for callers that catch that)."""


def _int_expectation(low: int | None, high: int | None) -> str:
    if low == 1 and high is None:
        return "a positive int"
    if low == 0 and high is None:
        return "a non-negative int"
    if low is not None and high is not None:
        return f"an int in {low}..{high}"
    if low is not None:
        return f"an int >= {low}"
    if high is not None:
        return f"an int <= {high}"
    return "an int"


def check_int(name: str, value, low: int | None = None, high: int | None = None) -> int:
    """``value`` if it is an int (not a bool) with ``low <= value <= high`` (either bound may be None)."""
    expected = _int_expectation(low, high)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ArgumentTypeError(f"{name} must be {expected}, got {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(f"{name} must be {expected}, got {value!r}")
    return int(value)


def positive_int(name: str, value) -> int:
    """``value`` if it is an int >= 1."""
    return check_int(name, value, 1)


def nonnegative_int(name: str, value) -> int:
    """``value`` if it is an int >= 0."""
    return check_int(name, value, 0)


def _interval(low, high, low_open: bool, high_open: bool) -> str:
    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    if low is not None:
        return f"{'>' if low_open else '>='} {low}"
    if high is not None:
        return f"{'<' if high_open else '<='} {high}"
    return ""


def check_number(
    name: str,
    value,
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """``float(value)`` if ``value`` is a finite real number (not a bool) inside the given bounds.

    ``low_open``/``high_open`` exclude the bound itself: ``check_number("p", p, 0, 1, low_open=True)`` is (0, 1].
    """
    expected = f"a finite number {_interval(low, high, low_open, high_open)}".rstrip()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ArgumentTypeError(f"{name} must be {expected}, got {value!r}")
    v = float(value)
    bad = not math.isfinite(v)
    if low is not None:
        bad |= v <= low if low_open else v < low
    if high is not None:
        bad |= v >= high if high_open else v > high
    if bad:
        raise ValueError(f"{name} must be {expected}, got {value!r}")
    return v


def positive_float(name: str, value) -> float:
    """``float(value)`` if it is a finite number > 0."""
    return check_number(name, value, 0, low_open=True)


def nonnegative_float(name: str, value) -> float:
    """``float(value)`` if it is a finite number >= 0."""
    return check_number(name, value, 0)


def finite_float(name: str, value) -> float:
    """``float(value)`` if it is a finite number (no NaN, no ±inf)."""
    return check_number(name, value)


def probability(name: str, value) -> float:
    """``float(value)`` if it is a number in [0, 1]."""
    return check_number(name, value, 0, 1)
