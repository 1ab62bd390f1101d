"""The statistics of "the reproduction decides": verdict rules read from a claim's words, seeds added in
stages until a comparison is decided (group-sequential), Holm's family-wise view, and times to a target that
some runs never reach.

Rules (contender - baseline, in the metric's units; `better` says which side of a difference is better):

- superiority ("A beats B"): supported if the CI lies wholly on the claimed side of 0; not supported if wholly
  on the other side; with the paper's effect, "smaller than claimed at this budget" if the CI stops short of it
  (whether or not it still contains 0); else inconclusive.
- no gain (non-superiority, margin m): supported if the CI of the gain lies wholly below +m; not supported if
  wholly above it; else inconclusive.
- non-inferiority ("about as good as", margin m): supported if the CI of the gain lies wholly above -m; not
  supported if wholly below it; else inconclusive.

An inconclusive decision says how many seeds per arm would decide at the observed difference and spread
(normal approximation). A group-sequential comparison looks at its seeds in stages (e.g. 3, 6, 10, 16 per arm)
and stops when decided, when futile or at the last stage: the two-sided alpha is spent over the looks by
Lan-DeMets' O'Brien-Fleming-like function, applied to each side with alpha/2 (the convention of gsDesign,
rpact and ldbounds, whose 4 equal looks at alpha = 0.05 give |z| >= 4.333, 2.963, 2.359, 2.014); each look's
critical z comes from the Armitage-McPherson-Rowe recursion over the joint law of the sequential z statistics,
and becomes the two-sided CI level the rules read at that look (the small-sample t intervals use that nominal
level). Futility is non-binding (the bounds ignore it): a look stops when the conditional power of "supported"
under the design effect falls below a threshold.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import brentq

# Phi, its inverse, Student's t cdf and its inverse: scalar calls ~40x faster than scipy.stats' (a look makes
# several, and a simulation thousands of looks)
from scipy.special import ndtr, ndtri, stdtr, stdtrit
from scipy.stats import mannwhitneyu, norm

from studies.stats import (
    INCONCLUSIVE,
    LEVEL,
    MIN_SEEDS,
    NOT_SUPPORTED,
    SUPPORTED,
    UNTESTED,
    Estimate,
    Verdict,
    interval,
    welch,
)

SMALLER = "smaller than claimed at this budget"
DECIDED = (SUPPORTED, NOT_SUPPORTED, SMALLER)  # the outcomes that stop a sequential comparison
RULES = ("superiority", "no_gain", "non_inferiority")
PRIMARY = ("paired", "welch")


# ------------------------------------------------------------------------------------------------ claims
@dataclass(frozen=True)
class Decision(Verdict):
    """A verdict with what would settle it: the seeds per arm an inconclusive one needs, or why a claim is
    untested."""

    seeds: int | None = None  # inconclusive: seeds per arm that would decide at the observed spread
    why: str = ""  # not tested here: the reason

    @property
    def label(self) -> str:
        """The outcome as a report prints it, with the seeds that would decide or the reason it is untested."""
        if self.outcome == INCONCLUSIVE and self.seeds is not None:
            return f"inconclusive ({self.seeds} seeds per arm would decide)"
        if self.outcome == UNTESTED and self.why:
            return f"{UNTESTED} ({self.why})"
        return self.outcome


@dataclass(frozen=True)
class Claim:
    """A claim's words made testable: contender - baseline on one metric, the rule the words name, the numbers."""

    rule: str  # superiority | no_gain | non_inferiority
    better: str  # higher | lower: which values of the metric are better
    what: str  # the difference in words, e.g. "test error AdamW - Adam-L2"
    margin: float | None = None  # no_gain, non_inferiority: > 0, in the metric's units (accuracy points)
    effect: float | None = None  # superiority: the paper's contender - baseline (signed, metric units)
    unit: str = ""

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise ValueError(f"rule must be one of {', '.join(RULES)} (got {self.rule!r})")
        sign = _sign(self.better)
        if self.rule != "superiority" and not (self.margin or 0) > 0:
            raise ValueError(f"a {self.rule} claim needs a margin > 0 (got {self.margin!r})")
        if self.rule == "superiority" and self.effect is not None and not sign * self.effect > 0:
            raise ValueError(
                f"the claimed effect must lie on the {self.better} side of 0 (got {self.effect!r})"
            )


def untested(why: str) -> Decision:
    """A claim that no study here can test: the report lists it with the reason."""
    return Decision(UNTESTED, f"not tested here: {why}", why=why)


def judge(
    claim: Claim, diff: Estimate, n: int | None = None, level: float = LEVEL, power: float = 0.5
) -> Decision:
    """The claim's rule on `diff`; when inconclusive and the seeds per arm `n` are known, the seeds per arm
    that a fixed design at `level` would need to decide (with `power`, see seeds_to_decide)."""
    if claim.rule == "superiority":
        decision = superiority(diff, claim.better, claim.what, claim.effect, claim.unit)
    elif claim.rule == "no_gain":
        decision = no_gain(diff, claim.better, claim.margin, claim.what, claim.unit)
    else:
        decision = non_inferiority(diff, claim.better, claim.margin, claim.what, claim.unit)
    if decision.outcome != INCONCLUSIVE or n is None:
        return decision
    seeds = seeds_to_decide(diff, n, boundaries(claim), level, power)
    return Decision(decision.outcome, decision.rule, seeds=seeds)


def superiority(
    diff: Estimate, better: str, what: str, effect: float | None = None, unit: str = ""
) -> Decision:
    """`diff` is contender - baseline for "the contender is better"; `effect`, the paper's difference, turns a
    CI that stops short of it into "smaller than claimed" (the sign may hold, the size does not)."""
    sign = _sign(better)
    low, high = sorted((sign * diff.low, sign * diff.high))  # the gain: positive is better
    claimed = None if effect is None else sign * effect
    if high < 0:
        outcome = NOT_SUPPORTED
    elif claimed is not None and high < claimed:
        outcome = SMALLER
    else:
        outcome = SUPPORTED if low > 0 else INCONCLUSIVE
    good, bad = _sides(sign)
    claimed_text = "" if effect is None else _number(effect, unit)
    head = "superiority" if effect is None else f"superiority (claimed effect {claimed_text})"
    reaches = "" if effect is None else f" and reaches {claimed_text}"
    smaller = "" if effect is None else f", smaller than claimed if wholly {bad} {claimed_text}"
    rule = (
        f"{head}: {what} = {_text(diff, unit)}; supported if the CI lies wholly {good} 0{reaches}, not "
        f"supported if wholly {bad} 0{smaller}, else inconclusive"
    )
    return Decision(outcome, rule)


def no_gain(diff: Estimate, better: str, margin: float, what: str, unit: str = "") -> Decision:
    """`diff` is contender - baseline for "the contender gives no gain": a gain below the margin is no gain."""
    sign = _sign(better)
    low, high = sorted((sign * diff.low, sign * diff.high))
    outcome = SUPPORTED if high < margin else NOT_SUPPORTED if low > margin else INCONCLUSIVE
    good, bad = _sides(sign)
    edge = _number(sign * margin, unit)
    rule = (
        f"no gain (margin {_number(margin, unit, signed=False)}): {what} = {_text(diff, unit)}; supported if "
        f"the CI lies wholly {bad} {edge}, not supported if wholly {good} it, else inconclusive"
    )
    return Decision(outcome, rule)


def non_inferiority(diff: Estimate, better: str, margin: float, what: str, unit: str = "") -> Decision:
    """`diff` is contender - baseline for "the contender is about as good": a loss within the margin is."""
    sign = _sign(better)
    low, high = sorted((sign * diff.low, sign * diff.high))
    outcome = SUPPORTED if low > -margin else NOT_SUPPORTED if high < -margin else INCONCLUSIVE
    good, bad = _sides(sign)
    edge = _number(-sign * margin, unit)
    rule = (
        f"non-inferiority (margin {_number(margin, unit, signed=False)}): {what} = {_text(diff, unit)}; "
        f"supported if the CI lies wholly {good} {edge}, not supported if wholly {bad} it, else inconclusive"
    )
    return Decision(outcome, rule)


def boundaries(claim: Claim) -> tuple[float, ...]:
    """The differences (contender - baseline, metric units) whose exclusion by the CI decides the claim."""
    sign = _sign(claim.better)
    if claim.rule == "superiority":
        return (0.0,) if claim.effect is None else (0.0, claim.effect)
    return (sign * claim.margin,) if claim.rule == "no_gain" else (-sign * claim.margin,)


def seeds_to_decide(
    diff: Estimate, n: int, edges: Sequence[float], level: float = LEVEL, power: float = 0.5
) -> int | None:
    """Seeds per arm at which a CI at `level` would clear the nearest deciding edge, if the difference and the
    per-seed spread stay as observed now (the standard error shrinks as 1 / sqrt(seeds), normal quantiles).
    power 0.5: the expected half-width just clears it (a coin flip of deciding); 0.8: the usual planning power.
    None when no number would: no spread to shrink, or the difference sits on every edge."""
    se = standard_error(diff)
    gaps = [abs(diff.value - edge) for edge in edges if diff.value != edge]
    if se == 0 or not gaps:
        return None
    z = ndtri(0.5 + level / 2) + ndtri(power)
    return max(n + 1, math.ceil(n * (z * se / max(gaps)) ** 2))


def standard_error(diff: Estimate) -> float:
    """The standard error behind an interval: its half-width over its t quantile."""
    half = (diff.high - diff.low) / 2
    return half / stdtrit(diff.df, 0.5 + diff.level / 2) if half > 0 else 0.0


def support_p_value(claim: Claim, diff: Estimate) -> float:
    """The one-sided p-value of "supported" against its edge (for superiority, the sign only): a CI at level
    1 - 2p just touches the edge. Holm's input for claims judged once on a fixed number of seeds."""
    return float(stdtr(diff.df, -_support_statistic(claim, diff)))  # an exact difference: 0 or 1


def _support_statistic(claim: Claim, diff: Estimate) -> float:
    """(distance of the difference past the "supported" edge, toward support) / its standard error."""
    sign, se = _sign(claim.better), standard_error(diff)
    toward, edge = _support_side(claim)
    distance = toward * (sign * diff.value - edge)
    if se == 0:
        return math.inf if distance > 0 else -math.inf
    return distance / se


def _support_side(claim: Claim) -> tuple[int, float]:
    """Which way the gain must go for "supported" (+1 above, -1 below) and past which gain (metric units)."""
    if claim.rule == "superiority":
        return 1, 0.0
    return (-1, claim.margin) if claim.rule == "no_gain" else (1, -claim.margin)


def _sign(better: str) -> int:
    if better not in ("higher", "lower"):
        raise ValueError(f"better must be 'higher' or 'lower' (got {better!r})")
    return 1 if better == "higher" else -1


def _sides(sign: int) -> tuple[str, str]:
    """The words for the better and the worse side of a raw difference."""
    return ("above", "below") if sign > 0 else ("below", "above")


def _number(value: float, unit: str, signed: bool = True) -> str:
    text = f"{value:+.4g}" if signed else f"{value:.4g}"
    return f"{text} {unit}" if unit else text


def _text(diff: Estimate, unit: str) -> str:
    return f"{_number(diff.value, unit)} ({level_text(diff.level)} CI {diff.low:+.4g} to {diff.high:+.4g})"


def level_text(level: float) -> str:
    """A CI level with two significant digits of what it leaves out: 95%, 95.7%, 99.9985%."""
    miss = 100 * (1 - level)
    digits = 2 + max(0, 1 - math.floor(math.log10(miss))) if miss > 0 else 3
    return f"{100 * level:.{digits}g}%"


# ------------------------------------------------------------------------------------------------ intervals
def paired(contender: Sequence[float], baseline: Sequence[float], level: float = LEVEL) -> Estimate:
    """Mean of the per-seed differences with its t interval: arms that share seeds (data order, init) share
    that noise, and the differences cancel it."""
    diffs = np.asarray(contender, dtype=float) - np.asarray(baseline, dtype=float)
    if len(diffs) < 2:
        raise ValueError(f"a paired interval needs 2+ seeds (got {len(diffs)})")
    return interval(float(diffs.mean()), [diffs.var(ddof=1) / len(diffs)], [len(diffs) - 1], level)


# ------------------------------------------------------------------------------------------------ design
def obrien_fleming(fraction: float | np.ndarray, alpha: float) -> float | np.ndarray:
    """Lan-DeMets' O'Brien-Fleming-like spending, alpha*(t) = 2 - 2 Phi(z_{1-alpha/2} / sqrt(t)): the error
    spent by information fraction t: next to none at early looks (they decide only huge effects), alpha at 1."""
    return 2 - 2 * ndtr(ndtri(1 - alpha / 2) / np.sqrt(fraction))


@dataclass(frozen=True)
class Design:
    """The looks of a group-sequential comparison and the critical |z| of each."""

    stages: tuple[int, ...]  # seeds per arm at each look, increasing; the last is the cap
    alpha: float  # two-sided error rate, alpha / 2 spent on each side
    z: tuple[float, ...]  # critical |z| per look
    spent: tuple[float, ...]  # cumulative two-sided alpha spent by each look
    # per look: the score grid and the mass (density x Simpson weight) of the comparisons that reach it
    # undecided, under no difference: what a stage-wise p-value integrates
    reaching: tuple[tuple[np.ndarray, np.ndarray], ...] = field(repr=False, compare=False)

    @property
    def fractions(self) -> tuple[float, ...]:
        return tuple(n / self.stages[-1] for n in self.stages)

    @property
    def levels(self) -> tuple[float, ...]:
        """The two-sided CI level each look's rules read: the interval excludes an edge exactly when |z|
        clears the look's critical value."""
        return tuple(float(2 * ndtr(z) - 1) for z in self.z)

    def p_value(self, k: int, z: float) -> float:
        """One-sided stage-wise-ordering p-value of a comparison that stopped at look k (0-based) with `z`
        toward support: the chance, with no difference, of crossing the upper bound at an earlier look or of
        reaching look k and a z at least this large. At most alpha / 2 exactly when z clears look k's bound."""
        before = self.spent[k - 1] / 2 if k > 0 else 0.0
        grid, mass = self.reaching[k]
        step = self.fractions[k] - (self.fractions[k - 1] if k > 0 else 0.0)
        return before + _exceed(grid, mass, z * math.sqrt(self.fractions[k]), step)


def design(stages: Sequence[int], alpha: float = 0.05, points: int = 801) -> Design:
    """Critical values of Lan-DeMets O'Brien-Fleming-like spending (alpha / 2 a side) at looks after `stages`
    seeds per arm, by the Armitage-McPherson-Rowe recursion: the score S = z sqrt(t) moves by independent normal
    steps of variance t_k - t_{k-1}; each bound is solved so that the mass crossing it is the look's share of
    alpha, and the mass that continues is carried to the next look on a grid of `points` (Simpson's rule)."""
    stages = tuple(int(n) for n in stages)
    if stages[0] < MIN_SEEDS or any(b <= a for a, b in zip(stages, stages[1:], strict=False)):
        raise ValueError(f"stages must increase from at least {MIN_SEEDS} seeds per arm (got {stages})")
    fractions = np.asarray(stages, dtype=float) / stages[-1]
    side = obrien_fleming(fractions, alpha / 2)  # cumulative one-sided alpha per look
    grid, mass, zs, reaching = np.zeros(1), np.ones(1), [], []  # the score starts at 0 with certainty
    for k, fraction in enumerate(fractions):
        step, scale = fraction - (fractions[k - 1] if k else 0.0), math.sqrt(fraction)
        z = _critical(grid, mass, step, scale, side[k] - (side[k - 1] if k else 0.0))
        reaching.append((grid, mass))
        zs.append(z)
        grid, mass = _carry(grid, mass, step, z * scale, points)
    return Design(stages, alpha, tuple(zs), tuple(2 * float(s) for s in side), tuple(reaching))


def _critical(grid: np.ndarray, mass: np.ndarray, step: float, scale: float, share: float) -> float:
    """The |z| of a look whose bound on the score, z * scale, the running comparisons cross upward with
    probability `share` (searched over 0 to 40: P(Z > 40) is 0 in floating point)."""
    return float(brentq(lambda z: _exceed(grid, mass, z * scale, step) - share, 0.0, 40.0, xtol=1e-12))


def _exceed(grid: np.ndarray, mass: np.ndarray, bound: float, step: float) -> float:
    """P(S at the next look >= bound) over the comparisons still running, the score moving by N(0, step)."""
    return float(np.sum(mass * ndtr((grid - bound) / math.sqrt(step))))


def _carry(
    grid: np.ndarray, mass: np.ndarray, step: float, bound: float, points: int
) -> tuple[np.ndarray, np.ndarray]:
    """The mass of the comparisons that stay within (-bound, bound) at this look, on a new Simpson grid."""
    new = np.linspace(-bound, bound, points)
    weights = np.ones(points)
    weights[1:-1:2], weights[2:-1:2] = 4, 2
    weights *= (new[1] - new[0]) / 3
    kernel = norm.pdf((new[:, None] - grid[None, :]) / math.sqrt(step)) / math.sqrt(step)
    return new, weights * (kernel @ mass)


# ------------------------------------------------------------------------------------------------ looks
@dataclass(frozen=True)
class Look:
    """One look of a sequential comparison: both intervals at the look's level, and what the primary says."""

    k: int  # 0-based
    n: int  # seeds per arm
    level: float  # the look's two-sided CI level
    paired: Estimate
    welch: Estimate
    decision: Decision  # the claim's rule on the primary interval
    conditional_power: float  # of "supported" at the last look, under the design effect
    refute_power: float = 0.0  # of "not supported" at the last look, under the current trend


@dataclass(frozen=True)
class Sequential:
    """A comparison's looks so far, and whether it stopped (decided, futile, cap) or needs more seeds."""

    claim: Claim
    design: Design
    primary: str  # paired | welch
    futility: float  # conditional power below which a look stops as futile
    looks: tuple[Look, ...]
    stop: str  # decided | futile | cap | "" (running: `next_n` seeds per arm for the next look)
    next_n: int | None
    p_value: float | None  # stopped: the one-sided stage-wise p-value of support (Holm's input)

    @property
    def decision(self) -> Decision:
        """The last look's decision, its rule led by where the comparison stands."""
        if not self.looks:
            return Decision(
                INCONCLUSIVE, f"{self.claim.what}: no look yet (the first needs {self.next_n} seeds per arm)"
            )
        last = self.looks[-1]
        other = last.welch if self.primary == "paired" else last.paired
        where = (
            f"look {last.k + 1} of {len(self.design.stages)} ({last.n} seeds per arm, {self.primary} interval "
            f"at the Lan-DeMets O'Brien-Fleming level {level_text(last.level)}; "
            f"{'Welch' if self.primary == 'paired' else 'paired'}: {_text(other, self.claim.unit)})"
        )
        return Decision(
            last.decision.outcome, f"{where}: {last.decision.rule}; {self._stop_text()}", last.decision.seeds
        )

    def _stop_text(self) -> str:
        last = self.looks[-1]
        if self.stop == "futile":
            return (
                f"stopped for futility: conditional power of support {last.conditional_power:.0%} and of "
                f"refutation {last.refute_power:.0%} are both below {self.futility:.0%} (non-binding)"
            )
        if self.stop == "":
            return f"continues: the next look at {self.next_n} seeds per arm"
        return "stopped: decided" if self.stop == "decided" else "stopped at the cap"


def sequential(
    design: Design,
    claim: Claim,
    contender: Sequence[float],
    baseline: Sequence[float],
    primary: str = "paired",
    futility: float = 0.1,
    seeds_power: float = 0.5,
) -> Sequential:
    """Walk the looks that the seeds so far allow (contender[i] and baseline[i] share seed i) and stop at the
    first that decides, is futile or is the cap; otherwise say how many seeds per arm the next look needs.
    `futility` 0 turns the futility stop off; `seeds_power`: the power of an inconclusive look's seeds
    estimate."""
    if primary not in PRIMARY:
        raise ValueError(f"primary must be one of {', '.join(PRIMARY)} (got {primary!r})")
    a, b = np.asarray(contender, dtype=float), np.asarray(baseline, dtype=float)
    if len(a) != len(b) or not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError(
            f"a sequential comparison needs a finite value for every seed of both arms (got {len(a)} and "
            f"{len(b)} values)"
        )
    looks: list[Look] = []
    for k, n in enumerate(design.stages):
        if n > len(a):
            return Sequential(claim, design, primary, futility, tuple(looks), "", n, None)
        looks.append(look(design, claim, k, a[:n], b[:n], primary, seeds_power))
        stop = _stop(design, looks[-1], futility)
        if stop:
            break
    last = looks[-1]
    z = -float(ndtri(support_p_value(claim, last.paired if primary == "paired" else last.welch)))
    return Sequential(claim, design, primary, futility, tuple(looks), stop, None, design.p_value(last.k, z))


def look(
    design: Design,
    claim: Claim,
    k: int,
    contender: np.ndarray,
    baseline: np.ndarray,
    primary: str = "paired",
    seeds_power: float = 0.5,
) -> Look:
    """Look k (0-based) at its seeds: both intervals at the look's level, the rule on the primary one, and
    the conditional power that futility reads."""
    level = design.levels[k]
    estimates = {"paired": paired(contender, baseline, level), "welch": welch(contender, baseline, level)}
    diff = estimates[primary]
    decision = judge(claim, diff, design.stages[k], 1 - design.alpha, seeds_power)
    chance = conditional_power(claim, diff, design.fractions[k], design.z[-1])
    refute = refutation_power(claim, diff, design.fractions[k], design.z[-1])
    return Look(k, design.stages[k], level, estimates["paired"], estimates["welch"], decision, chance, refute)


def conditional_power(claim: Claim, diff: Estimate, fraction: float, z_final: float) -> float:
    """P(the last look's z toward support clears z_final | the z now at information `fraction`), under the
    design effect: the paper's effect for superiority (the current trend when it gives none), no difference for
    no gain and non-inferiority. Lan & Wittes' B-value form: B(t) = z sqrt(t) moves by drift x dt."""
    se = standard_error(diff)
    z = _support_statistic(claim, diff)
    if fraction >= 1 or se == 0 or math.isinf(z):
        return float(z >= z_final)
    toward, edge = _support_side(claim)
    if claim.rule != "superiority":
        design_gain = 0.0  # no gain, non-inferiority: the arms equal
    else:
        design_gain = _sign(claim.better) * (diff.value if claim.effect is None else claim.effect)
    drift = toward * (design_gain - edge) / (se * math.sqrt(fraction))  # the expected z at the cap
    rest = 1 - fraction
    return float(ndtr((z * math.sqrt(fraction) + drift * rest - z_final) / math.sqrt(rest)))


def refutation_power(claim: Claim, diff: Estimate, fraction: float, z_final: float) -> float:
    """P(the last look's CI lies wholly on the refuting side of its edge | now), under the current trend: the
    other way a comparison can still be decided ("not supported": below 0 for superiority, above the margin for
    no gain, below minus the margin for non-inferiority)."""
    se = standard_error(diff)
    toward, edge = _support_side(claim)
    if se == 0:
        return 0.0
    z = -toward * (_sign(claim.better) * diff.value - edge) / se  # toward refutation
    if fraction >= 1:
        return float(z >= z_final)
    rest = 1 - fraction
    drift = z / math.sqrt(fraction)  # the trend: the expected z at the cap if the difference stays as it is
    return float(ndtr((z * math.sqrt(fraction) + drift * rest - z_final) / math.sqrt(rest)))


def _stop(design: Design, last: Look, futility: float) -> str:
    """Decided, at the cap, or futile: neither support (under the design effect) nor refutation (under the
    trend) has a chance of at least `futility` by the cap, so more seeds would not decide it."""
    if last.decision.outcome in DECIDED:
        return "decided"
    if last.k == len(design.stages) - 1:
        return "cap"
    return "futile" if max(last.conditional_power, last.refute_power) < futility else ""


# ------------------------------------------------------------------------------------------------ family
@dataclass(frozen=True)
class Adjusted:
    """One claim of a family under Holm's step-down rule."""

    p: float
    adjusted: float  # Holm's adjusted p-value
    held: bool  # adjusted <= alpha: supported family-wise


def holm(p_values: Sequence[float], alpha: float = (1 - LEVEL) / 2) -> list[Adjusted]:
    """Holm's step-down adjustment, in the order given: the i-th smallest of m p-values is scaled by m - i + 1,
    and no adjusted value is below the one before it. The default alpha fits one-sided p-values of support
    (support_p_value, Sequential.p_value) beside 95% intervals."""
    p = np.asarray(p_values, dtype=float)
    order = np.argsort(p, kind="stable")
    scaled = np.minimum(1.0, (len(p) - np.arange(len(p))) * p[order])
    adjusted = np.empty_like(p)
    adjusted[order] = np.maximum.accumulate(scaled)
    return [Adjusted(float(q), float(a), bool(a <= alpha)) for q, a in zip(p, adjusted, strict=True)]


# ---------------------------------------------------------------------------------------- time to target
@dataclass(frozen=True)
class Median:
    """Kaplan-Meier median time to the target of one arm with its CI; None where the curve (or the band of a
    limit) never falls to 0.5 within the runs' times: "not reached"."""

    value: float | None
    low: float | None
    high: float | None
    censored: tuple[int, ...]  # the runs (positions) that never reached the target
    n: int  # runs, every one of them counted


@dataclass(frozen=True)
class TimeToTarget:
    """Contender vs baseline time to a target, every run counted: one that never got there is the slowest."""

    sooner: float  # P(a contender run reaches the target before a baseline run), ties counted half
    p_value: float  # two-sided, exact Mann-Whitney (Gehan's test when the unreached runs all ran the budget)
    contender: Median
    baseline: Median
    decision: Decision


def time_to_target(
    contender: Sequence[tuple[float, bool]],
    baseline: Sequence[tuple[float, bool]],
    what: str,
    unit: str = "",
    level: float = LEVEL,
) -> TimeToTarget:
    """Did the contender reach the target sooner? Each run is (time, reached); a run that did not reach it
    ranks behind every finisher (tied with the other such runs), so no run is dropped. Supported if the exact
    rank test rejects at 1 - level with the contender sooner; not supported if it rejects the other way."""
    (ta, ra), (tb, rb) = _runs(contender), _runs(baseline)
    ranked_a, ranked_b = np.where(ra, ta, np.inf), np.where(rb, tb, np.inf)
    test = mannwhitneyu(ranked_a, ranked_b, alternative="two-sided", method="exact")
    sooner = 1 - float(test.statistic) / (len(ta) * len(tb))
    p = float(test.pvalue)
    medians = km_median(ta, ra, level), km_median(tb, rb, level)
    alpha = 1 - level
    outcome = INCONCLUSIVE if p >= alpha else SUPPORTED if sooner > 0.5 else NOT_SUPPORTED
    rule = (
        f"time to target, {what}: P(contender sooner) = {sooner:.2f}, exact Mann-Whitney p = {p:.3g}, every run "
        f"counted (not reached, slower than every finisher: contender {len(medians[0].censored)} of {len(ta)}, "
        f"baseline {len(medians[1].censored)} of {len(tb)}); Kaplan-Meier medians: contender "
        f"{_median_text(medians[0], unit, level)}, baseline {_median_text(medians[1], unit, level)}; supported "
        f"if p < {alpha:.2g} with the contender sooner, not supported if p < {alpha:.2g} the other way, else "
        "inconclusive"
    )
    return TimeToTarget(sooner, p, medians[0], medians[1], Decision(outcome, rule))


def km_median(times: Sequence[float], reached: Sequence[bool], level: float = LEVEL) -> Median:
    """Kaplan-Meier median with its CI from Greenwood's variance on the log scale (survfit's default bands):
    the first times the curve, its lower band and its upper band reach 0.5 (the CI holds the times whose band
    contains 0.5). A run that stopped short of the target is censored at its own time; where the curve reaches
    0 its band is undefined, so an upper limit there is "not reached"."""
    times, reached = np.asarray(times, dtype=float), np.asarray(reached, dtype=bool)
    events = np.unique(times[reached])
    at_risk = np.array([(times >= e).sum() for e in events])
    dying = np.array([((times == e) & reached).sum() for e in events])
    curve = np.cumprod(1 - dying / np.maximum(at_risk, 1))
    with np.errstate(divide="ignore", invalid="ignore"):
        spread = np.sqrt(np.cumsum(dying / (at_risk * (at_risk - dying))))
        z = ndtri(0.5 + level / 2)
        lower = np.where(curve > 0, curve * np.exp(-z * spread), 0.0)
        upper = np.where(curve > 0, np.minimum(1.0, curve * np.exp(z * spread)), np.nan)
    censored = tuple(int(i) for i in np.flatnonzero(~reached))
    halves = (_first_at_half(events, band) for band in (curve, lower, upper))
    return Median(*halves, censored, len(times))


def _first_at_half(events: np.ndarray, curve: np.ndarray) -> float | None:
    below = np.flatnonzero(curve <= 0.5)
    return float(events[below[0]]) if len(below) else None


def _runs(pairs: Sequence[tuple[float, bool]]) -> tuple[np.ndarray, np.ndarray]:
    if len(pairs) < 1:
        raise ValueError("a time-to-target comparison needs at least one run per arm")
    times = np.asarray([time for time, _ in pairs], dtype=float)
    reached = np.asarray([bool(done) for _, done in pairs])
    return times, reached


def _median_text(median: Median, unit: str, level: float) -> str:
    def show(value: float | None) -> str:
        return "not reached" if value is None else f"{value:.4g}{' ' + unit if unit else ''}"

    return f"{show(median.value)} ({level_text(level)} CI {show(median.low)} to {show(median.high)})"
