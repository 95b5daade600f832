"""course_utils.stats: Wilson and bootstrap intervals agree with known values and reject bad input."""

import numpy as np
import pytest

from course_utils.stats import bootstrap_ci, format_ci, intervals_overlap, paired_bootstrap_diff, wilson_interval


def test_wilson_matches_textbook_values():
    # Newcombe (1998), table I: 81/263 -> 0.2553 to 0.3662; 15/148 -> 0.0624 to 0.1605.
    lo, hi = wilson_interval(81, 263)
    assert lo == pytest.approx(0.2553, abs=5e-4) and hi == pytest.approx(0.3662, abs=5e-4)
    lo, hi = wilson_interval(15, 148)
    assert lo == pytest.approx(0.0624, abs=5e-4) and hi == pytest.approx(0.1605, abs=5e-4)


def test_wilson_edges_stay_in_unit_interval_and_narrow_with_n():
    assert wilson_interval(0, 10)[0] == 0.0 and 0.2 < wilson_interval(0, 10)[1] < 0.35
    assert wilson_interval(10, 10)[1] == 1.0 and 0.65 < wilson_interval(10, 10)[0] < 0.8
    small, big = wilson_interval(8, 10), wilson_interval(800, 1000)
    assert big[1] - big[0] < (small[1] - small[0]) / 5
    assert small[0] < 0.8 < small[1]
    lo90, hi90 = wilson_interval(8, 10, level=0.9)
    assert small[0] < lo90 and hi90 < small[1]


def test_wilson_rejects_bad_input():
    with pytest.raises(ValueError, match="k must be"):
        wilson_interval(11, 10)
    with pytest.raises(ValueError, match="n must be"):
        wilson_interval(0, 0)
    with pytest.raises(TypeError, match="k must be an int"):
        wilson_interval(0.5, 10)
    with pytest.raises(ValueError, match="level"):
        wilson_interval(1, 10, level=95)


def test_bootstrap_is_seeded_covers_the_mean_and_matches_normal_width():
    rng = np.random.default_rng(1)
    values = rng.normal(2.0, 1.0, size=400)
    lo, hi = bootstrap_ci(values, seed=3)
    assert (lo, hi) == bootstrap_ci(values, seed=3)
    assert lo < values.mean() < hi
    # Width close to the normal interval 2 * 1.96 * s / sqrt(n).
    expected = 2 * 1.96 * values.std(ddof=1) / np.sqrt(values.size)
    assert (hi - lo) == pytest.approx(expected, rel=0.15)


def test_bootstrap_of_hits_agrees_with_wilson_roughly():
    hits = np.array([1] * 70 + [0] * 30)
    b, w = bootstrap_ci(hits), wilson_interval(70, 100)
    assert abs(b[0] - w[0]) < 0.03 and abs(b[1] - w[1]) < 0.03


def test_bootstrap_custom_statistic_and_constant_values():
    assert bootstrap_ci([1.0, 1.0, 1.0]) == (1.0, 1.0)
    lo, hi = bootstrap_ci(np.arange(50.0), statistic=np.median, n_resamples=500)
    assert lo < 24.5 < hi


def test_bootstrap_rejects_bad_input():
    with pytest.raises(ValueError, match="values"):
        bootstrap_ci([])
    with pytest.raises(TypeError, match="values"):
        bootstrap_ci("abc")
    with pytest.raises(ValueError, match="n_resamples"):
        bootstrap_ci([1.0, 2.0], n_resamples=10)
    with pytest.raises(ValueError, match="finite"):
        bootstrap_ci([1.0, float("nan")])
    with pytest.raises(TypeError, match="statistic"):
        bootstrap_ci([1.0, 2.0], statistic=3)


def test_paired_difference_sees_a_consistent_gain_that_unpaired_intervals_miss():
    rng = np.random.default_rng(0)
    base = rng.uniform(0, 1, size=60)
    a, b = base + 0.05, base
    diff, lo, hi = paired_bootstrap_diff(a, b)
    assert diff == pytest.approx(0.05) and lo > 0
    assert intervals_overlap(bootstrap_ci(a), bootstrap_ci(b))  # unpaired: would say "no difference"
    _, lo0, hi0 = paired_bootstrap_diff(base, base[::-1].copy())
    assert lo0 < 0 < hi0
    with pytest.raises(ValueError, match="same items"):
        paired_bootstrap_diff([1.0, 2.0], [1.0])


def test_format_and_overlap():
    assert format_ci(0.915, (0.85, 0.962)) == "0.915 [0.85, 0.96]"
    assert intervals_overlap((0.1, 0.3), (0.3, 0.5)) and not intervals_overlap((0.1, 0.2), (0.3, 0.5))
    with pytest.raises(ValueError, match="interval"):
        intervals_overlap((0.3, 0.1), (0.0, 1.0))
