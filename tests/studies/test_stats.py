"""The verdict rules decide synthetic differences as they say, on intervals that match scipy's."""

from __future__ import annotations

import re

import numpy as np
import pytest

from studies import stats


def test_superiority_clear_win_tie_loss_and_noise():
    rng = np.random.default_rng(0)
    base = 90 + rng.normal(0, 0.1, 5)
    win = welch(base + 2, base)
    assert stats.superiority(win, "higher", "acc").outcome == stats.SUPPORTED
    assert stats.superiority(win, "lower", "error").outcome == stats.NOT_SUPPORTED
    tie = stats.welch([90.0, 90.1, 89.9], [90.0, 89.9, 90.1])
    assert stats.superiority(tie, "higher", "acc").outcome == stats.INCONCLUSIVE
    noise = stats.welch([88.0, 93.0, 90.5], [91.0, 87.0, 90.0])  # +1.2 points, spread of 2.5
    assert stats.superiority(noise, "higher", "acc").outcome == stats.INCONCLUSIVE


def welch(a, b):
    return stats.welch(list(a), list(b))


def test_welch_interval_matches_scipy():
    import scipy.stats

    a, b = [1.0, 2.0, 4.0, 3.5], [0.5, 0.7, 1.9]
    diff = stats.welch(a, b)
    test = scipy.stats.ttest_ind(a, b, equal_var=False)
    ci = test.confidence_interval(0.95)
    assert (diff.low, diff.high) == pytest.approx((ci.low, ci.high))
    assert diff.df == pytest.approx(test.df)


def test_equivalence_uses_the_stated_margin():
    same = stats.welch([90.0, 90.1, 89.9, 90.05], [90.02, 89.95, 90.0, 90.1])
    assert stats.equivalence(same, 0.5, "diff").outcome == stats.SUPPORTED
    big = stats.welch([92.0, 92.1, 91.9], [90.0, 90.1, 89.9])  # a gain of 2 points, well past the margin
    assert stats.equivalence(big, 0.5, "diff").outcome == stats.NOT_SUPPORTED
    wide = stats.welch([90.0, 92.0, 88.0], [90.0, 89.0, 91.0])  # the interval straddles the margins
    assert stats.equivalence(wide, 0.5, "diff").outcome == stats.INCONCLUSIVE
    with pytest.raises(ValueError, match="margin"):
        stats.equivalence(same, 0, "diff")


def test_slope_interval_and_the_combined_verdict():
    x = [-3.5, -3.0, -2.5, -2.0, -1.5]
    line = stats.slope(x, [-1.0 * v - 5 for v in x])
    assert line.value == pytest.approx(-1) and line.estimate().high == pytest.approx(-1)
    flat = stats.slope(x, [-3.0, -3.1, -2.9, -3.05, -2.95])
    assert abs(flat.value) < 0.1
    moves = stats.superiority(stats.slope_difference(flat, line), "higher", "slope difference")
    assert moves.outcome == stats.SUPPORTED
    both = stats.combine([moves, stats.Verdict(stats.INCONCLUSIVE, "x")])
    assert both.outcome == stats.INCONCLUSIVE and "(1)" in both.rule and "(2)" in both.rule
    assert stats.combine([moves, stats.Verdict(stats.NOT_SUPPORTED, "y")]).outcome == stats.NOT_SUPPORTED


def test_text_shows_the_interval_to_two_significant_digits_and_the_degrees_of_freedom():
    """Fixed decimals from the half-width: the SGD edge's slope no longer prints as -1 (95% CI -1 to -1)."""
    assert stats.Estimate(-1.0031, -1.0412, -0.9650, 7).text() == "-1.003 (95% CI -1.041 to -0.965, df 7)"
    assert stats.Estimate(1.234567, 0.734567, 1.734567, 5.3421).text("points") == (
        "+1.23 points (95% CI +0.73 to +1.73, df 5.34)"
    )
    assert stats.Estimate(12.3, -27.7, 52.3, 4.0, level=0.9).text() == "+12 (90% CI -28 to +52, df 4)"
    assert stats.Estimate(0.5, 0.5, 0.5, float("inf")).text() == "+0.5000 (95% CI +0.5000 to +0.5000, df inf)"


def test_a_narrow_slope_prints_apart_from_its_bounds():
    """Nine points 0.01 off a line of slope -1.003: the OLS interval is about +-0.014, the text -1.003 and two
    bounds that differ from it, with the fit's n - 2 = 7 degrees of freedom."""
    x = np.linspace(-3.5, -1.5, 9)
    text = stats.slope(x, -1.003 * x + np.tile([0.01, -0.01], 5)[:9]).estimate().text()
    value, low, high = re.findall(r"[+-]\d+\.\d+", text)
    assert value == "-1.003" and low != value != high and text.endswith(", df 7)")
