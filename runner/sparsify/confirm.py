"""The winner on more seeds: is it within the margin of the dense model's accuracy on average, or was seed 0
lucky?

The winner is chosen once, on the validation split of the run's own seed (report.winner). Then only the dense
model and that winner are re-run with each of `confirm.seeds` (fine-tune, prune, distil, quantize: each seeded),
under seeds/<seed>/, on the run's own split, so every seed is tested on the same test examples and none of them
was ever read to choose. The winner's own engine and precision are rebuilt; dense is fp32 PyTorch, the
reference of every drop. pipeline.confirm runs those seeds; this module chooses and does the arithmetic.

    stages/confirm/confirm.json   {"winner": ..., "seeds": [{seed, dense, winner, drop}], "mean_drop", "low", ...}
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

RESULT = "confirm.json"


def paired_interval(dense: list[float], winner: list[float], level: float) -> dict[str, float]:
    """Mean of the per-seed drops (dense - winner) and its paired-t interval at `level` (n - 1 degrees of
    freedom); equal drops on every seed are an exact mean (a zero-width interval)."""
    from scipy.stats import t

    drops = np.asarray(dense, dtype=float) - np.asarray(winner, dtype=float)
    mean, n = float(drops.mean()), len(drops)
    if n < 2:
        raise ValueError(f"an interval over seeds needs 2 or more of them (got {n})")
    half = float(t.ppf(0.5 + level / 2, n - 1)) * float(drops.std(ddof=1)) / math.sqrt(n)
    return {"mean_drop": mean, "low": mean - half, "high": mean + half, "df": n - 1, "level": level}


UNDERTRAINED = "not decided: dense under-trained"


def decided(found: dict, max_mean_drop: float) -> str:
    """The rule fixed in conf (confirm.max_mean_drop), applied to the mean drop over every seed. A winner above
    dense by more than the margin on average means the reference itself was short of training (its students,
    distilled from it for longer, learned more): the rule would hold by default, so it decides nothing."""
    if found["mean_drop"] < -max_mean_drop - 1e-12:
        return UNDERTRAINED
    return "met" if found["mean_drop"] <= max_mean_drop + 1e-12 else "not met"


def chosen(rows: list[dict], timings: list[dict], headline: list[int]) -> dict:
    """The headline winner of a run's comparison (chosen on validation), with its and dense's test accuracy."""
    from runner.sparsify import report

    best = report.winner(report.at(report.comparison(rows, timings), headline))
    dense = next(r for r in rows if report.is_baseline(r))
    return {"name": report.name(best), **{k: best[k] for k in ("variant", "precision", "engine")},
            "accuracy": best["accuracy"], "dense_accuracy": dense["accuracy"],
            "int8_baseline": best["int8_baseline"]}  # fmt: skip


def summary(winner: dict, seeds: list[dict], settings: Any) -> dict:
    """confirm.json: every seed's drop, their mean and paired interval, and the rule of conf's `confirm`."""
    seeds = [s | {"drop": s["dense"] - s["winner"]} for s in seeds]
    found = paired_interval([s["dense"] for s in seeds], [s["winner"] for s in seeds], settings.level)
    rule = decided(found, settings.max_mean_drop)
    return {
        "winner": winner["name"],
        "seeds": seeds,
        **found,
        "max_mean_drop": settings.max_mean_drop,
        "rule": rule,
    }
