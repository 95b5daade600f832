"""course_utils.timing: the best-of-N timer and percentiles (behaviour only; no assertion depends on speed)."""

import math

import pytest

from course_utils.timing import best_of, percentile


def test_best_of_calls_n_times_and_returns_the_minimum(monkeypatch):
    import course_utils.timing as timing

    calls = []
    clock = iter([0.0, 5.0, 10.0, 11.0, 20.0, 23.0])  # durations 5, 1, 3 -> best is 1
    monkeypatch.setattr(timing.time, "perf_counter", lambda: next(clock))
    best, out = best_of(lambda: calls.append(1) or len(calls), 3, with_result=True)
    monkeypatch.undo()
    assert (best, out, len(calls)) == (1.0, 3, 3)
    assert isinstance(best_of(lambda: None, n=1), float)


def test_best_of_rejects_bad_arguments():
    with pytest.raises(ValueError, match="n must be a positive int"):
        best_of(lambda: None, 0)
    with pytest.raises(TypeError, match="fn"):
        best_of(3)


def test_percentile():
    assert percentile([1, 2, 3, 4], 50) == 2.5 and percentile(range(101), 95) == 95.0
    assert math.isnan(percentile([], 50))
