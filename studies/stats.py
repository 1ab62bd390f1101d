"""The statistics of `adamrun reproduce`'s verdicts: intervals of a difference, and the rules that turn them
into *supported*, *not supported* or *inconclusive at this budget*.

Every rule reads a 95% confidence interval (CI) of a difference in the metric's own units (accuracy points,
perplexity, epochs, decades of weight decay per decade of lr), never a bare p-value, and says in words what it
decided (`Verdict.rule`), so the report prints the rule next to the numbers it was applied to:

- superiority ("A beats B"): the CI of A - B lies wholly on the claimed side of 0 -> supported; wholly on the
  other side -> not supported; it contains 0 -> inconclusive.
- equivalence ("B matches A", margin m): the CI of B - A lies wholly inside (-m, +m) -> supported; wholly
  outside it -> not supported; else inconclusive.

The rules of seeds added in looks (no gain, non-inferiority, superiority with a claimed effect) are in
studies/sequential.py; these two judge the decoupling study's slopes. Differences of means use Welch's t interval (unequal variances, Welch-Satterthwaite degrees of freedom,
scipy's t quantiles); differences of slopes, the OLS slope's t interval with the same degrees-of-freedom rule.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

SUPPORTED = "supported"
NOT_SUPPORTED = "not supported"
INCONCLUSIVE = "inconclusive at this budget"
UNTESTED = "not tested here"  # a claim no study here can test: the report lists it
LEVEL = 0.95  # two-sided confidence level of every interval
MIN_SEEDS = 3  # finished seeds per side that a comparison needs (the "at least 3")
SHOWN = 2  # significant digits of a CI's half-width that Estimate.text prints
EXACT_SHOWN = 4  # significant digits of an estimate with no spread (its CI is the estimate itself)


@dataclass(frozen=True)
class Estimate:
    """A difference (or a slope) with its two-sided confidence interval."""

    value: float
    low: float
    high: float
    df: float  # degrees of freedom of the t quantile (inf: no spread at all)
    level: float = LEVEL

    def text(self, unit: str = "") -> str:
        """'-1.003 (95% CI -1.041 to -0.965, df 7)': all three at the same fixed decimals, enough to show the
        interval's half-width to SHOWN significant digits, so a narrow interval never prints as its estimate."""
        places, unit = self.decimals(), f" {unit}" if unit else ""
        return (
            f"{self.value:+.{places}f}{unit} ({self.level:.0%} CI {self.low:+.{places}f} to "
            f"{self.high:+.{places}f}, df {self.df:.3g})"
        )

    def decimals(self) -> int:
        """Decimals that show the half-width to SHOWN significant digits (the estimate's own when it is exact)."""
        half = (self.high - self.low) / 2
        scale, shown = (half, SHOWN) if half > 0 else (abs(self.value), EXACT_SHOWN)
        if not (math.isfinite(scale) and scale > 0):
            return 0
        return max(0, shown - 1 - math.floor(math.log10(scale)))


@dataclass(frozen=True)
class Verdict:
    outcome: str  # SUPPORTED | NOT_SUPPORTED | INCONCLUSIVE | UNTESTED
    rule: str  # the rule, in words, with the numbers it was applied to


def t_quantile(df: float, level: float = LEVEL) -> float:
    from scipy.stats import t

    return float(t.ppf(0.5 + level / 2, df)) if math.isfinite(df) else float(_normal_quantile(level))


def _normal_quantile(level: float) -> float:
    from scipy.stats import norm

    return float(norm.ppf(0.5 + level / 2))


def welch(a: Sequence[float], b: Sequence[float], level: float = LEVEL) -> Estimate:
    """mean(a) - mean(b) with Welch's t interval; needs 2+ values on each side."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"Welch's interval needs 2+ values per group (got {len(a)} and {len(b)})")
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    return interval(float(a.mean() - b.mean()), [va, vb], [len(a) - 1, len(b) - 1], level)


def interval(
    value: float, variances: Sequence[float], dfs: Sequence[float], level: float = LEVEL
) -> Estimate:
    """value ± t * sqrt(sum of variances), with Welch-Satterthwaite's degrees of freedom for the sum."""
    se2 = float(sum(variances))
    if se2 == 0:  # every group constant: the difference is exact
        return Estimate(value, value, value, math.inf, level)
    df = se2**2 / sum(v**2 / d for v, d in zip(variances, dfs, strict=True) if v > 0)
    half = t_quantile(df, level) * math.sqrt(se2)
    return Estimate(value, value - half, value + half, df, level)


@dataclass(frozen=True)
class Slope:
    value: float
    variance: float  # of the estimate (se squared)
    df: int  # n - 2

    def estimate(self, level: float = LEVEL) -> Estimate:
        return interval(self.value, [self.variance], [self.df], level)


def slope(x: Sequence[float], y: Sequence[float]) -> Slope:
    """The OLS slope of y on x with its variance; needs 3+ points with 2+ distinct x."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) < 3 or np.ptp(x) == 0:
        raise ValueError(f"a slope with an interval needs 3+ points at 2+ x values (got {len(x)})")
    dx = x - x.mean()
    b = float((dx * (y - y.mean())).sum() / (dx**2).sum())
    residuals = y - y.mean() - b * dx
    variance = float((residuals**2).sum() / (len(x) - 2) / (dx**2).sum())
    return Slope(b, variance, len(x) - 2)


def slope_difference(a: Slope, b: Slope, level: float = LEVEL) -> Estimate:
    """slope a - slope b (independent fits), Welch-Satterthwaite degrees of freedom."""
    return interval(a.value - b.value, [a.variance, b.variance], [a.df, b.df], level)


# ------------------------------------------------------------------------------------------------ rules
def superiority(diff: Estimate, claimed: str, what: str, unit: str = "") -> Verdict:
    """`diff` is A - B for the claim "A is better than B"; claimed: 'higher' or 'lower' (which side is better)."""
    if claimed not in ("higher", "lower"):
        raise ValueError(f"claimed must be 'higher' or 'lower' (got {claimed!r})")
    sign = 1 if claimed == "higher" else -1
    low, high = sorted((sign * diff.low, sign * diff.high))
    outcome = SUPPORTED if low > 0 else NOT_SUPPORTED if high < 0 else INCONCLUSIVE
    side = "above" if claimed == "higher" else "below"
    other = "below" if claimed == "higher" else "above"
    rule = (f"superiority: {what} = {diff.text(unit=unit)}; supported if the 95% CI lies wholly {side} 0, "
            f"not supported if wholly {other} 0, else inconclusive")  # fmt: skip
    return Verdict(outcome, rule)


def equivalence(diff: Estimate, margin: float, what: str, unit: str = "") -> Verdict:
    """`diff` is B - A for the claim "B matches A" within +-margin."""
    check_margin(margin)
    inside = -margin < diff.low and diff.high < margin
    outside = diff.low >= margin or diff.high <= -margin
    outcome = SUPPORTED if inside else NOT_SUPPORTED if outside else INCONCLUSIVE
    rule = (f"equivalence (margin ±{margin:g}{' ' + unit if unit else ''}): {what} = {diff.text(unit=unit)}; "
            f"supported if the 95% CI lies wholly inside ±{margin:g}, not supported if wholly outside it, "
            "else inconclusive")  # fmt: skip
    return Verdict(outcome, rule)


def check_margin(margin: float) -> None:
    if not margin > 0:
        raise ValueError(f"a margin must be > 0 (got {margin!r})")


def combine(verdicts: Sequence[Verdict], joiner: str = "all of") -> Verdict:
    """A claim made of parts holds when every part is supported; one part not supported refutes it."""
    outcomes = {v.outcome for v in verdicts}
    if outcomes == {SUPPORTED}:
        outcome = SUPPORTED
    elif NOT_SUPPORTED in outcomes:
        outcome = NOT_SUPPORTED
    else:
        outcome = INCONCLUSIVE
    rule = f"{joiner}: " + "; ".join(f"({i + 1}) {v.rule} -> {v.outcome}" for i, v in enumerate(verdicts))
    return Verdict(outcome, rule)
