"""course_utils.gateway.cascade: cascade thresholds and curves, and the logistic router."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import NON_POSITIVE

from course_utils.gateway import cascade_curve, cascade_outcome, fit_logistic, pick_cascade_threshold, predict_logistic


def test_cascade_threshold_and_curve():
    conf = np.array([-3.0, -2.0, -1.0, -0.5])
    small = np.array([False, False, True, True])
    large = np.array([True, True, True, False])
    assert pick_cascade_threshold(conf, small, large, 0.5) == -np.inf  # the small model alone reaches 50%
    assert pick_cascade_threshold(conf, small, large, 1.0) == -1.0  # escalate the two unsure ones
    assert pick_cascade_threshold(conf, small, large, 1.01) == np.inf  # unreachable: always escalate
    out = cascade_outcome(conf, small, large, -1.0, cost_small=1, cost_large=10)
    assert out == {"threshold": -1.0, "accuracy": 1.0, "escalation_rate": 0.5, "cost": 6.0}
    curve = cascade_curve(conf, small, large)
    assert [c["escalation_rate"] for c in curve] == [0.0, 0.0, 0.25, 0.5, 0.75, 1.0]
    with pytest.raises(ValueError, match="1-D"):
        cascade_outcome(conf, small[:2], large, 0.0)


def test_logistic_router_learns_a_separable_rule():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 3))
    y = X[:, 0] + 0.5 * X[:, 2] > 0
    params = fit_logistic(X, y)
    acc = ((predict_logistic(params, X) > 0.5) == y).mean()
    assert acc > 0.95


@pytest.mark.parametrize("arg", ["cost_small", "cost_large"])
@pytest.mark.parametrize("bad", NON_POSITIVE)
def test_cascade_rejects_bad_costs(arg, bad):
    conf, ok = np.array([0.1, 0.9]), np.array([True, False])
    with pytest.raises(ValueError, match=arg):
        cascade_outcome(conf, ok, ok, 0.5, **{arg: bad})
    with pytest.raises(ValueError, match=arg):
        cascade_curve(conf, ok, ok, **{arg: bad})


def test_cascade_rejects_nan_threshold_confidence_and_target_but_takes_infinite_thresholds():
    conf, ok = np.array([0.1, 0.9]), np.array([True, False])
    assert cascade_outcome(conf, ok, ok, float("inf"))["escalation_rate"] == 1.0
    with pytest.raises(ValueError, match="threshold"):
        cascade_outcome(conf, ok, ok, float("nan"))
    with pytest.raises(ValueError, match="confidence"):
        cascade_outcome(np.array([0.1, np.nan]), ok, ok, 0.5)
    for bad in (float("nan"), float("inf"), -0.1):
        with pytest.raises(ValueError, match="target_accuracy"):
            pick_cascade_threshold(conf, ok, ok, bad)


@pytest.mark.parametrize(
    "arg,bad", [("lr", float("nan")), ("lr", -0.5), ("lr", 0), ("steps", 0), ("l2", -1.0), ("l2", float("inf"))]
)
def test_fit_logistic_rejects_bad_hyperparameters(arg, bad):
    X, y = np.eye(3), np.array([0, 1, 1])
    with pytest.raises(ValueError, match=arg):
        fit_logistic(X, y, **{arg: bad})


def test_predict_logistic_rejects_params_of_another_width():
    params = fit_logistic(np.eye(3), np.array([0, 1, 1]), steps=5)
    with pytest.raises(ValueError, match="params"):
        predict_logistic(params, np.ones((2, 4)))
