"""The sequential verdicts on synthetic tables with known answers: the rules, the seeds that would decide, the
Lan-DeMets bounds (against the published values and a Monte-Carlo), the error rate of the whole procedure over
simulated null comparisons, Holm's adjustment, and times to a target that some runs never reach."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import mannwhitneyu

from studies import sequential as sq
from studies import stats

STAGES = (3, 6, 10, 16)  # seeds per arm at each look
ALPHA = 0.05  # two-sided


@pytest.fixture(scope="module")
def design() -> sq.Design:
    return sq.design(STAGES, ALPHA)


def spread_like(mean: float, sd: float, n: int, seed: int = 0) -> np.ndarray:
    """n values with exactly this mean and standard deviation (ddof 1)."""
    x = np.random.default_rng(seed).normal(size=n)
    return mean + sd * (x - x.mean()) / x.std(ddof=1)


# ------------------------------------------------------------------------------------------------ rules
def test_a_clear_win_is_supported_and_a_clear_loss_is_not():
    base = 90 + spread_like(0, 0.1, 5)
    win = sq.paired(base + 2 + spread_like(0, 0.1, 5, seed=1), base)
    claim = sq.Claim("superiority", "higher", "test accuracy A - B", effect=2.0, unit="points")
    assert sq.judge(claim, win, 5).outcome == stats.SUPPORTED
    assert sq.superiority(win, "lower", "test error A - B").outcome == stats.NOT_SUPPORTED
    assert "supported if the CI lies wholly above 0 and reaches +2 points" in sq.judge(claim, win).rule


def test_a_tight_null_is_smaller_than_claimed_and_about_as_good():
    base = 8 + spread_like(0, 0.05, 5)
    null = sq.paired(base + spread_like(0, 0.05, 5, seed=1), base)  # test error, points: no difference
    assert null.low < 0 < null.high and null.high - null.low < 0.3
    claimed = sq.Claim("superiority", "lower", "test error AdamW - Adam-L2", effect=-1.99, unit="points")
    assert sq.judge(claimed, null, 5).outcome == sq.SMALLER
    assert "smaller than claimed if wholly above -1.99 points" in sq.judge(claimed, null).rule
    unclaimed = sq.Claim("superiority", "lower", "test error AdamW - Adam-L2")
    assert sq.judge(unclaimed, null).outcome == stats.INCONCLUSIVE  # the sign alone stays open
    about = sq.Claim("non_inferiority", "lower", "test error AdamW - Adam-L2", margin=0.5, unit="points")
    assert sq.judge(about, null).outcome == stats.SUPPORTED
    assert sq.judge(sq.Claim("no_gain", "lower", "gain", margin=0.5), null).outcome == stats.SUPPORTED


def test_the_sign_can_hold_while_the_size_falls_short():
    small = stats.Estimate(0.5, 0.3, 0.7, 10)  # accuracy points: surely positive, surely below +2
    assert sq.superiority(small, "higher", "diff", effect=2.0).outcome == sq.SMALLER
    assert sq.superiority(small, "higher", "diff", effect=0.6).outcome == stats.SUPPORTED
    assert sq.superiority(small, "higher", "diff").outcome == stats.SUPPORTED


def test_the_margins_decide_both_ways():
    gain = stats.Estimate(2.0, 1.5, 2.5, 10)  # the contender's accuracy 2 points higher
    assert sq.no_gain(gain, "higher", 0.5, "gain").outcome == stats.NOT_SUPPORTED
    assert sq.non_inferiority(gain, "higher", 0.5, "diff").outcome == stats.SUPPORTED
    loss = stats.Estimate(-2.0, -2.5, -1.5, 10)
    assert sq.no_gain(loss, "higher", 0.5, "gain").outcome == stats.SUPPORTED
    assert sq.non_inferiority(loss, "higher", 0.5, "diff").outcome == stats.NOT_SUPPORTED
    assert sq.non_inferiority(loss, "lower", 0.5, "diff").outcome == stats.SUPPORTED  # lower is better
    wide = stats.Estimate(-0.5, -3.0, 2.0, 2)
    assert sq.non_inferiority(wide, "higher", 0.5, "diff").outcome == stats.INCONCLUSIVE
    assert "supported if the CI lies wholly above -0.5" in sq.non_inferiority(wide, "higher", 0.5, "d").rule


def test_noise_is_inconclusive_and_names_the_seeds_that_would_decide():
    diffs = np.array([2.5, -1.0, 0.8])  # accuracy points per seed: +0.77 with a spread of 1.75
    noise = sq.paired(diffs, np.zeros(3))
    claim = sq.Claim("superiority", "higher", "diff", unit="points")
    decision = sq.judge(claim, noise, 3)
    assert decision.outcome == stats.INCONCLUSIVE
    se, z = sq.standard_error(noise), 1.959964
    assert (
        z * se * math.sqrt(3 / decision.seeds) <= noise.value < z * se * math.sqrt(3 / (decision.seeds - 1))
    )
    assert decision.label == f"inconclusive ({decision.seeds} seeds per arm would decide)"
    planned = sq.judge(claim, noise, 3, power=0.8).seeds  # with that many seeds and the same spread: decided
    assert planned > decision.seeds
    more = sq.paired(spread_like(noise.value, diffs.std(ddof=1), planned), np.zeros(planned))
    assert sq.judge(claim, more).outcome == stats.SUPPORTED


def test_claims_check_their_numbers_and_an_untested_one_says_why():
    with pytest.raises(ValueError, match="margin"):
        sq.Claim("no_gain", "higher", "gain")
    with pytest.raises(ValueError, match="side of 0"):
        sq.Claim("superiority", "lower", "error", effect=1.99)  # lower is better: a claimed win is negative
    with pytest.raises(ValueError, match="rule"):
        sq.Claim("equivalence", "higher", "diff", margin=0.5)
    assert sq.untested("GPU-weeks per seed").label == "not tested here (GPU-weeks per seed)"


# ------------------------------------------------------------------------------------------------ design
def test_the_spending_function_spends_alpha_by_the_last_look():
    fractions = np.linspace(0.05, 1, 20)
    spent = sq.obrien_fleming(fractions, ALPHA)
    assert spent[-1] == pytest.approx(ALPHA, abs=1e-15)
    assert np.all(np.diff(spent) > 0) and spent[0] < 1e-10


def test_four_equal_looks_match_the_published_lan_demets_obrien_fleming_bounds():
    equal = sq.design((3, 6, 9, 12), ALPHA)  # information fractions 0.25, 0.5, 0.75, 1
    assert equal.z == pytest.approx((4.333, 2.963, 2.359, 2.014), abs=1e-3)  # gsDesign / rpact / ldbounds
    assert equal.spent[-1] == pytest.approx(ALPHA, abs=1e-12)
    assert [sq.level_text(level) for level in equal.levels] == ["99.9985%", "99.7%", "98.2%", "95.6%"]


@pytest.mark.parametrize("stages", [(3, 6, 9, 12), STAGES])
def test_the_bounds_spend_what_the_function_says_by_monte_carlo(stages):
    found = sq.design(stages, ALPHA)
    assert all(a > b for a, b in zip(found.z, found.z[1:], strict=False))
    fractions = np.asarray(found.fractions)
    n = 400_000  # Brownian paths of the score, observed at the looks
    steps = np.random.default_rng(1).normal(size=(n, len(stages))) * np.sqrt(np.diff(fractions, prepend=0))
    z = steps.cumsum(axis=1) / np.sqrt(fractions)
    crossed = np.logical_or.accumulate(np.abs(z) >= np.asarray(found.z), axis=1).mean(axis=0)
    error = 4 * np.sqrt(np.asarray(found.spent) * (1 - np.asarray(found.spent)) / n)
    assert np.all(np.abs(crossed - found.spent) <= error + 1e-6)


def test_a_stage_wise_p_value_reaches_alpha_over_2_at_the_bound(design):
    for k, z in enumerate(design.z):
        assert design.p_value(k, z) == pytest.approx(design.spent[k] / 2, rel=1e-6)
        assert design.p_value(k, z + 0.5) < design.spent[k] / 2 < design.p_value(k, z - 0.5)


# ------------------------------------------------------------------------------------------------ looks
def test_a_comparison_waits_for_its_seeds_then_stops_when_decided(design):
    claim = sq.Claim("superiority", "higher", "test accuracy A - B", unit="points")
    base = 90 + spread_like(0, 1, 16)
    few = sq.sequential(design, claim, base[:4] + 2 + spread_like(0, 1, 4, seed=7), base[:4])
    assert (few.stop, few.next_n, len(few.looks), few.p_value) == ("", 6, 1, None)  # 4 seeds: look 1 only
    assert "continues: the next look at 6 seeds per arm" in few.decision.rule
    exact = sq.sequential(design, claim, base + 2 + spread_like(0, 0.001, 16, seed=2), base)
    assert (exact.stop, len(exact.looks), exact.decision.outcome) == ("decided", 1, stats.SUPPORTED)
    assert exact.p_value < ALPHA / 2
    assert "look 1 of 4 (3 seeds per arm, paired interval" in exact.decision.rule
    none = sq.sequential(design, claim, [], [])
    assert none.next_n == 3 and not none.looks and none.decision.outcome == stats.INCONCLUSIVE


def test_both_intervals_come_back_and_the_primary_decides(design):
    rng = np.random.default_rng(3)
    shared = rng.normal(0, 3, 16)  # a seed's noise that both arms share (data order, init)
    base, cont = 90 + shared + rng.normal(0, 0.2, 16), 90.6 + shared + rng.normal(0, 0.2, 16)
    claim = sq.Claim("superiority", "higher", "test accuracy A - B", unit="points")
    by_seed = sq.sequential(design, claim, cont, base, primary="paired", futility=0)
    unpaired = sq.sequential(design, claim, cont, base, primary="welch", futility=0)
    assert by_seed.decision.outcome == stats.SUPPORTED
    assert unpaired.decision.outcome == stats.INCONCLUSIVE and unpaired.stop == "cap"
    last = unpaired.looks[-1]
    assert last.welch.high - last.welch.low > 5 * (last.paired.high - last.paired.low)
    assert "Welch" in by_seed.decision.rule and "paired:" in unpaired.decision.rule
    with pytest.raises(ValueError, match="primary"):
        sq.sequential(design, claim, cont, base, primary="pooled")


def test_futility_stops_a_comparison_that_neither_side_can_decide(design):
    claim = sq.Claim("superiority", "higher", "test accuracy A - B", effect=0.5, unit="points")
    base = 90 + spread_like(0, 1, 16)
    flat = base + spread_like(0, 3.0, 16, seed=4)  # no trend, wide: neither support nor refutation in reach
    stopped = sq.sequential(design, claim, flat, base, futility=0.2)
    assert stopped.stop == "futile"
    last = stopped.looks[-1]
    assert last.conditional_power < 0.2 and last.refute_power < 0.2
    assert "stopped for futility" in stopped.decision.rule and "of refutation" in stopped.decision.rule
    assert sq.sequential(design, claim, flat, base, futility=0).stop != "futile"


def test_a_comparison_trending_against_the_claim_goes_on_until_it_is_refuted(design):
    """Futility is about deciding, not about supporting: "not supported" is an answer worth the seeds."""
    claim = sq.Claim("non_inferiority", "higher", "test accuracy A - B", margin=0.5, unit="points")
    base = 90 + spread_like(0, 1, 16)
    worse = base - 3 + spread_like(0, 0.3, 16, seed=4)  # 3 points worse: support hopeless, refutation near
    result = sq.sequential(design, claim, worse, base, futility=0.1)
    assert result.looks[0].conditional_power < 0.1 and result.looks[0].refute_power >= 0.1
    assert result.stop == "decided" and result.decision.outcome == stats.NOT_SUPPORTED


# ------------------------------------------------------------------------------------------------ simulation
def simulate(design, claim, effect, n, primary, futility, seed):
    data = np.random.default_rng(seed).normal(size=(n, 2, STAGES[-1]))  # per-seed metric, sd 1 a side
    return [sq.sequential(design, claim, a + effect, b, primary, futility) for a, b in data]


def test_null_comparisons_declare_superiority_at_most_alpha_over_2_of_the_time(design):
    n = 2000
    claim = sq.Claim("superiority", "higher", "diff")  # no futility stop: the strictest case for the error
    outcomes = [r.decision.outcome for r in simulate(design, claim, 0.0, n, "paired", 0.0, seed=5)]
    wins = outcomes.count(stats.SUPPORTED) / n
    wrong = (wins * n + outcomes.count(stats.NOT_SUPPORTED)) / n
    assert wins <= ALPHA / 2 + 3 * math.sqrt(ALPHA / 2 * (1 - ALPHA / 2) / n)
    assert wrong <= ALPHA + 3 * math.sqrt(ALPHA * (1 - ALPHA) / n)


def test_clear_effects_are_decided_in_most_runs(design):
    n = 400
    claim = sq.Claim("superiority", "higher", "diff", effect=1.5)  # the truth: 1.5 per-seed sds
    results = simulate(design, claim, 1.5, n, "paired", 0.1, seed=6)
    assert sum(r.stop == "decided" for r in results) / n >= 0.9
    assert sum(r.decision.outcome == stats.SUPPORTED for r in results) / n >= 0.9
    assert np.mean([len(r.looks) for r in results]) < len(STAGES)  # most stop before the cap


# ------------------------------------------------------------------------------------------------ family
def test_holm_steps_down_in_the_order_given():
    family = sq.holm([0.01, 0.04, 0.03, 0.005], alpha=0.05)
    assert [a.adjusted for a in family] == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert [a.held for a in family] == [True, False, False, True]
    assert [a.held for a in sq.holm([0.01, 0.03])] == [True, False]  # one-sided, 0.025, by default


# ---------------------------------------------------------------------------------------- time to target
def test_runs_that_never_reach_the_target_are_counted_not_dropped():
    contender = [(4.0, True), (5.0, True), (4.0, True), (5.0, True), (4.0, True), (5.0, True)]  # epochs
    baseline = [(6.0, True), (7.0, True), (10.0, False), (10.0, False), (3.0, False), (10.0, False)]
    result = sq.time_to_target(contender, baseline, "epochs to target A - B", "epochs")
    assert result.baseline.censored == (2, 3, 4, 5) and result.baseline.n == 6
    assert result.sooner == 1.0 and result.decision.outcome == stats.SUPPORTED
    assert "baseline 4 of 6" in result.decision.rule
    dropped = mannwhitneyu([t for t, _ in contender], [6.0, 7.0], method="exact").pvalue
    assert dropped > 0.05 > result.p_value  # dropping the 4 would have left it inconclusive
    assert result.contender.value == 4.0 and result.baseline.value is None  # 4 of 6 never got there


def test_dropping_slow_runs_would_reverse_the_verdict():
    contender = [(5.0, True)] * 6
    baseline = [(3.0, True)] * 3 + [(10.0, False)] * 3  # faster when it arrives; half never arrive
    result = sq.time_to_target(contender, baseline, "epochs to target A - B")
    assert result.sooner == 0.5 and result.decision.outcome == stats.INCONCLUSIVE
    assert (
        mannwhitneyu([5.0] * 6, [3.0] * 3, method="exact").pvalue < 0.05
    )  # the dropped view: "not supported"


def test_kaplan_meier_median_and_its_interval():
    every = sq.km_median([1, 2, 3, 4, 5], [True] * 5)
    assert (every.value, every.low, every.high) == (3.0, 2.0, None)  # the band is undefined where S = 0
    some = sq.km_median([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], [True] * 7 + [False] * 3)
    assert some.value == 5.0 and some.low <= 5.0 and some.censored == (7, 8, 9)
