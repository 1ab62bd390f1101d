"""What the kinds share to judge a claim on seeds added in looks: the per-seed values of an arm (a diverged run
counted at its stated value, never dropped), the sequential comparison those values give at the study's
pre-registered design, the time to a target from the learning curves (interpolated between evaluations, a run
that never gets there censored), and the check that the claim's mechanism acted at this budget.

The run (studies/<kind>.py) and the report call the same functions on the same rows, so the looks a study ran
are the looks its report re-derives from the CSVs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from omegaconf import MISSING

from runner.config import check
from studies.section import points
from studies.sequential import Claim, Decision, Sequential, design, sequential, untested

RULES = ("superiority", "no_gain", "non_inferiority")


@dataclass
class Test:
    """The comparison a claim's words name: contender - baseline on `metric`, judged by `rule`."""

    metric: str = MISSING  # test_metric | test_error: the test set, read once per confirmation run
    better: str = MISSING  # higher | lower: which values of the metric are better
    rule: str = MISSING  # superiority | no_gain | non_inferiority
    margin: float | None = None  # no_gain, non_inferiority: in report units (accuracy points)
    effect: float | None = None  # superiority: the source's contender - baseline, in report units
    diverged: float | None = (
        None  # the value (report units) a diverged confirmation run counts as; null: left out
    )

    def __post_init__(self) -> None:
        check(self.rule in RULES, "test.rule", f"must be one of {', '.join(RULES)}", self.rule)
        check(self.better in ("higher", "lower"), "test.better", "must be higher or lower", self.better)
        check(self.rule == "superiority" or (self.margin or 0) > 0, "test.margin", "must be > 0", self.margin)


def seed_values(runs: pd.DataFrame, arm: str, test: dict) -> dict[int, float]:
    """Seed -> the test's value for the arm's confirmation runs, in report units. A diverged run counts as
    test.diverged (chance, for accuracy); a run that failed or is not done yet has no value."""
    part = runs[(runs["arm"] == arm) & (runs["role"] == "confirm")]
    metric = next((str(m) for m in part["metric"] if str(m) not in ("", "nan")), "")
    out = {}
    for _, row in part.iterrows():
        if row["status"] == "finished" and pd.notna(row["test_metric"]):
            value = float(points(pd.Series([row["test_metric"]]), metric).iloc[0])
            out[int(row["seed"])] = 100 - value if test["metric"] == "test_error" else value
        elif row["status"] == "diverged" and test.get("diverged") is not None:
            out[int(row["seed"])] = float(test["diverged"])
    return out


def claim_of(test: dict, what: str, unit: str) -> Claim:
    return Claim(test["rule"], test["better"], what, test.get("margin"), test.get("effect"), unit)


def compared(
    contender: dict[int, float], baseline: dict[int, float], claim: Claim, sequencing: dict, stages: list[int]
) -> Sequential:
    """The looks that the seeds both arms have so far allow, in seed order (the order the looks add them)."""
    seeds = sorted(set(contender) & set(baseline))
    return sequential(
        design(stages, sequencing["alpha"]),
        claim,
        [contender[s] for s in seeds],
        [baseline[s] for s in seeds],
        sequencing["primary"],
        sequencing["futility"],
    )


def design_text(sequencing: dict, stages: list[int]) -> str:
    first = sequencing["first_seed"]
    return (
        f"seeds {first}-{first + stages[-1] - 1} added in looks after {', '.join(map(str, stages))} seeds per arm; "
        f"each look reads the {sequencing['primary']} interval at its Lan-DeMets O'Brien-Fleming level (alpha "
        f"{sequencing['alpha']:g} over all looks) and stops when decided, when futile (conditional power of "
        f"support below {sequencing['futility']:.0%}) or at the cap"
    )


# ------------------------------------------------------------------------------------------------ target
def crossing(curve: pd.DataFrame, target: float, better: str) -> tuple[float, bool]:
    """(epochs, reached): where the validation curve first reaches `target`, linearly interpolated between the
    evaluation before and the one at the crossing (the first evaluation itself when it already crosses); a
    curve that never gets there is censored at its last epoch."""
    curve = curve.sort_values("epoch")
    epochs, values = curve["epoch"].to_numpy(float), curve["val_metric"].to_numpy(float)
    sign = 1 if better == "higher" else -1
    hits = np.flatnonzero(sign * values >= sign * target)
    if not len(hits):
        return (float(epochs[-1]) if len(epochs) else math.nan), False
    i = int(hits[0])
    if i == 0:
        return float(epochs[0]), True
    share = (target - values[i - 1]) / (values[i] - values[i - 1])
    return float(epochs[i - 1] + share * (epochs[i] - epochs[i - 1])), True


def crossings(curves: pd.DataFrame, arm: str, seeds: list[int], target: float, better: str) -> list[tuple]:
    """(epochs, reached) per seed of the arm, in the order of `seeds`; a seed with no curve (diverged) never
    reached the target: censored at 0 epochs, behind every finisher."""
    out = []
    for seed in seeds:
        curve = curves[(curves["arm"] == arm) & (curves["seed"].astype(int) == seed)]
        out.append(crossing(curve, target, better) if not curve.empty else (0.0, False))
    return out


# ------------------------------------------------------------------------------------------------ mechanism
MECHANISMS = ("decay", "edges", "averaging", "none")


@dataclass
class Mechanism:
    """What must act at this budget for the comparison to test the claim; failing, the study is not tested."""

    kind: str = MISSING  # decay | edges (decoupling only) | averaging | none
    min_shrink: float | None = (
        None  # decay: the share of the weights' norm the chosen decay removes, at least
    )
    min_spread: float | None = None  # decay: accuracy points; an arm whose chosen decay removes less (its
    # grid's smallest decay: nearly none) passes if its validation at its chosen lr spans this much along its
    # wd axis (its decay acts there; its best is to use almost none), while one arm still needs min_shrink.
    # null: every arm needs min_shrink
    arm: str | None = None  # averaging: the NT-ASGD arm, whose every confirmation run must start averaging
    min_rows: int | None = None  # edges: lr rows per grid seed, in each verdict arm and at every threshold,
    # whose good region ends inside the grid (the slope is fitted to those rows: 3 at least)

    def __post_init__(self) -> None:
        check(self.kind in MECHANISMS, "mechanism.kind", f"must be one of {', '.join(MECHANISMS)}", self.kind)
        check(self.kind != "decay" or 0 < (self.min_shrink or 0) < 1, "mechanism.min_shrink", "must be in (0, 1)",
              self.min_shrink)  # fmt: skip
        check(self.min_spread is None or self.min_spread > 0, "mechanism.min_spread", "must be above 0 points",
              self.min_spread)  # fmt: skip
        check(self.kind != "edges" or (self.min_rows or 0) >= 3, "mechanism.min_rows", "must be 3 or more",
              self.min_rows)  # fmt: skip
        check(
            self.kind != "averaging" or bool(self.arm), "mechanism.arm", "must name the NT-ASGD arm", self.arm
        )


@dataclass(frozen=True)
class Check:
    held: bool
    text: str  # what was measured, against what threshold


def grid_row(runs: pd.DataFrame, arm: str, lr: float) -> pd.DataFrame:
    """The arm's finished grid runs at `lr`, every wd and grid seed."""
    grid = runs[(runs["arm"] == arm) & (runs["role"] == "select") & (runs["status"] == "finished")]
    return grid[np.isclose(grid["lr"], lr)]


def decay_shrink(runs: pd.DataFrame, arm: str, lr: float, wd: float) -> float:
    """1 - |theta| at (lr, wd) / |theta| at (lr, the grid's smallest wd), mean over the grid seeds: the share
    of the weights' norm that this weight decay removes over a run, against (nearly) none."""
    row = grid_row(runs, arm, lr)
    if row.empty or row["weight_norm"].isna().all():
        return math.nan
    smallest = row["weight_decay"].min()
    at = row[np.isclose(row["weight_decay"], wd)]["weight_norm"].mean()
    none = row[np.isclose(row["weight_decay"], smallest)]["weight_norm"].mean()
    return 1 - at / none if none > 0 else math.nan


def decay_spread(runs: pd.DataFrame, arm: str, lr: float) -> float:
    """Accuracy points the arm's mean validation (over the grid seeds) spans along its wd axis at `lr`: how
    much its weight decay moves the result there. Finished cells only (a diverged one has no accuracy)."""
    row = grid_row(runs, arm, lr)
    if row["weight_decay"].nunique() < 2:
        return math.nan
    metric = str(row["metric"].iloc[0]) if "metric" in row else ""
    means = points(row.groupby("weight_decay")["val_metric"].mean(), metric)
    return float(means.max() - means.min())


def decay_check(mechanism: dict, runs: pd.DataFrame, settings: dict) -> Check:
    """Weight decay acts at the chosen settings: each arm's decay removes min_shrink of the weights' norm or,
    where min_spread is set, moves its accuracy by that much along its wd axis, with one arm at min_shrink."""
    min_shrink, min_spread = mechanism["min_shrink"], mechanism.get("min_spread")
    parts, each, shrinks = [], True, False
    for arm, chosen in settings["chosen"].items():
        if chosen["cells"] <= 1:
            continue
        lr = float(chosen["lr"])
        shrink = decay_shrink(runs, arm, lr, float(chosen["weight_decay"]))
        shrunk = math.isfinite(shrink) and shrink >= min_shrink
        shrinks |= shrunk
        label = settings["arms"][arm]["label"]
        text = f"{label} {shrink:.1%}" if math.isfinite(shrink) else f"{label} not measured"
        if min_spread is None:
            each &= shrunk
        else:
            spread = decay_spread(runs, arm, lr)
            each &= shrunk or (math.isfinite(spread) and spread >= min_spread)
            text += f" (its accuracy spans {spread:.1f} points along its wd axis)"
        parts.append(text)
    measured = (
        "weight decay acts: at each chosen setting, the share of the weights' norm its decay removes over a "
        "run (against the grid's smallest decay at the same lr, mean of the grid seeds): " + ", ".join(parts)
    )
    if min_spread is None:
        return Check(each, measured + f"; needed at least {min_shrink:.0%} for each")
    return Check(
        each and shrinks,
        measured + f"; needed, for each, at least {min_shrink:.0%} or a spread of at least {min_spread:g} "
        f"points at its chosen lr, and at least {min_shrink:.0%} for one",
    )


def mechanism_check(mechanism: dict, runs: pd.DataFrame, settings: dict) -> Check:
    """The study's mechanism at the settings it chose (decay) or in the runs it made (averaging)."""
    if mechanism["kind"] == "none":
        return Check(True, "")
    if mechanism["kind"] == "decay":
        return decay_check(mechanism, runs, settings)
    assert mechanism["kind"] == "averaging", mechanism["kind"]  # edges: studies/decoupling.py reads its grids
    part = runs[
        (runs["arm"] == mechanism["arm"]) & (runs["role"] == "confirm") & (runs["status"] == "finished")
    ]
    averaged = int((part["averaged"] == 1).sum())
    label = settings["arms"][mechanism["arm"]]["label"]
    return Check(
        len(part) > 0 and averaged == len(part),
        f"NT-ASGD's averaging triggers within the budget: {averaged} of {len(part)} {label} runs started "
        "averaging (the rest were plain SGD throughout); needed every one",
    )


def not_tested(check_: Check) -> Decision:
    return untested(f"at this budget, the mechanism did not act: {check_.text}")
