"""course_utils.stats: Wilson and bootstrap intervals agree with known values and reject bad input."""

import numpy as np
import pytest

from course_utils.stats import (
    bootstrap_ci,
    compare_paired,
    format_ci,
    intervals_overlap,
    mcnemar_exact,
    paired_bootstrap_diff,
    sign_flip_exact,
    wilson_interval,
)


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


def test_mcnemar_exact_matches_binomial_tail():
    # 10 discordant items split 9/1: two-sided tail 2 * (1 + 10) / 1024
    assert mcnemar_exact(9, 1) == pytest.approx(2 * 11 / 1024)
    assert mcnemar_exact(1, 9) == mcnemar_exact(9, 1)
    assert mcnemar_exact(0, 0) == 1.0 and mcnemar_exact(5, 5) == 1.0
    with pytest.raises(ValueError, match="a_only"):
        mcnemar_exact(-1, 3)


def test_compare_paired_binary_uses_mcnemar_and_sees_what_overlap_hides():
    # 80 items: both right on 50, A alone right on 12, B alone on 1, both wrong on 17.
    a = np.array([1] * 50 + [1] * 12 + [0] * 1 + [0] * 17)
    b = np.array([1] * 50 + [0] * 12 + [1] * 1 + [0] * 17)
    r = compare_paired(a, b, names=("RAG", "FT"))
    assert r.test == "exact McNemar" and (r.a_only, r.b_only) == (12, 1)
    assert r.p_value < 0.01 and r.verdict == "RAG better" and r.shown
    # The separate Wilson intervals overlap, yet the paired test shows the difference.
    assert intervals_overlap(wilson_interval(int(a.sum()), 80), wilson_interval(int(b.sum()), 80))
    assert "RAG better" in str(r) and "McNemar" in str(r)
    swapped = compare_paired(b, a, names=("FT", "RAG"))
    assert swapped.verdict == "RAG better" and swapped.p_value == r.p_value


def test_compare_paired_not_shown_is_not_no_difference():
    a = np.array([1, 0, 1, 0, 1, 1, 0, 1])
    b = np.array([0, 1, 1, 0, 1, 0, 1, 1])
    r = compare_paired(a, b)
    assert r.verdict == "not shown" and not r.shown and r.p_value > 0.05


def test_compare_paired_continuous_uses_bootstrap():
    rng = np.random.default_rng(1)
    base = rng.uniform(0, 1, 60)
    r = compare_paired(base + 0.05, base, names=("new", "old"))
    assert r.test == "paired bootstrap" and r.verdict == "new better" and r.low > 0
    same = compare_paired(base, base[rng.permutation(60)])
    assert same.verdict == "not shown"
    with pytest.raises(ValueError, match="same items"):
        compare_paired([0.1, 0.2], [0.1])
    with pytest.raises(ValueError, match="alpha"):
        compare_paired([0.1, 0.2], [0.1, 0.3], alpha=0.7)


def test_sign_flip_exact_enumerates_sign_patterns():
    # 3 positive differences: only the all-plus and all-minus patterns are as extreme, 2 of 8
    assert sign_flip_exact([0.1, 0.2, 0.3]) == pytest.approx(2 / 8)
    assert sign_flip_exact([0.04, 0.05]) == 1.0 / 2  # two seeds: the smallest possible p is 0.5
    assert sign_flip_exact([0.1, -0.1]) == 1.0
    with pytest.raises(ValueError, match="at most 20"):
        sign_flip_exact(np.ones(21))


def test_compare_paired_few_items_is_exact_not_bootstrap():
    # Two seeds that agree in sign: every bootstrap resample agrees too (p = 0), which is not evidence.
    r = compare_paired([3.23, 3.32], [3.20, 3.28], names=("dense", "MoE"))
    assert r.test == "exact sign-flip" and r.p_value == 0.5 and r.verdict == "not shown"
    assert "sign-flip" in str(r)
    # Twelve items all favouring A: p = 2 / 4096, shown.
    big = compare_paired(np.arange(12) + 1.0, np.arange(12) + 0.5, names=("A", "B"))
    assert big.test == "exact sign-flip" and big.p_value == pytest.approx(2 / 4096) and big.verdict == "A better"


def test_compare_paired_lower_is_better_for_losses():
    rng = np.random.default_rng(3)
    loss_b = rng.uniform(2, 3, 40)
    r = compare_paired(loss_b - 0.1, loss_b, names=("MoE", "dense"), lower_is_better=True)
    assert r.diff < 0 and r.verdict == "MoE better" and "lower is better" in str(r)
    assert compare_paired(loss_b - 0.1, loss_b, names=("MoE", "dense")).verdict == "dense better"
    with pytest.raises(TypeError, match="lower_is_better"):
        compare_paired(loss_b, loss_b, lower_is_better="yes")


def test_a_bootstrap_p_value_is_never_zero():
    # 200 items, A always better: no resample crosses 0, yet 2000 resamples cannot show p below 1/2000
    c = compare_paired([1.0] * 100 + [0.5] * 100, [0.0] * 100 + [0.25] * 100)
    assert c.test == "paired bootstrap" and c.verdict == "A better"
    assert c.p_value == pytest.approx(2 / 2001)
