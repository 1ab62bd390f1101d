"""Compare studies: the verdict of each test from the study's CSVs, the seeds it needs, and the times to a target
that some runs never reach."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from studies import compare, report, stats
from tests.studies.synthetic import compare_study


@pytest.mark.parametrize(
    ("gap", "spread", "expected"),
    [
        (0.02, 0.001, stats.SUPPORTED),
        (-0.02, 0.001, stats.NOT_SUPPORTED),
        (0.0, 0.01, stats.INCONCLUSIVE),
    ],
)
def test_compare_study_decides_from_its_csvs(tmp_path, gap, spread, expected):
    compare_study(tmp_path, gap, spread)
    (section,) = report.sections(tmp_path)
    assert section.verdict.outcome == expected
    assert "superiority: test_error AdamW - Adam-L2" in section.verdict.rule


def test_a_comparison_needs_three_finished_seeds_a_side_and_names_the_ones_left_out(tmp_path):
    compare_study(tmp_path, 0.02, 0.001)  # a clear win on 4 seeds a side ...
    runs = pd.read_csv(tmp_path / "adamw_vs_adam_runs.csv")
    diverged = (runs["arm"] == "adamw") & (runs["role"] == "confirm") & runs["seed"].isin([1, 2])
    runs.loc[diverged, "status"] = "diverged"  # ... of which two AdamW seeds diverge
    runs.to_csv(tmp_path / "adamw_vs_adam_runs.csv", index=False)
    (section,) = report.sections(tmp_path)
    assert section.verdict.outcome == stats.INCONCLUSIVE
    assert "fewer than 3 seeds" in section.verdict.rule
    assert "left out: Adam-L2 0, AdamW 2" in section.verdict.rule


@pytest.mark.parametrize(
    ("base_reached", "cont_reached", "cont_runs", "expected"),
    [
        (0, 4, 4, stats.SUPPORTED),  # only the contender got there, on every seed
        (4, 0, 4, stats.NOT_SUPPORTED),
        (0, 0, 0, stats.INCONCLUSIVE),  # a side with no finished run wins nothing
        (1, 4, 4, stats.INCONCLUSIVE),  # one baseline time is no mean
    ],
)
def test_time_to_target_when_some_runs_never_get_there(base_reached, cont_reached, cont_runs, expected):
    def side(reached: int, total: int) -> pd.Series:
        return pd.Series([2.0 + 0.5 * i for i in range(reached)] + [math.nan] * (total - reached))

    values = {"sgd": side(base_reached, 4), "adamw": side(cont_reached, cont_runs)}
    done = {arm: pd.DataFrame(index=v.index) for arm, v in values.items()}
    test = {"metric": "epochs_to_target", "better": "lower", "rule": "superiority", "margin": None}
    got = compare.target_test(test, done, values, ("SGD", "AdamW"), "epochs", ("sgd", "adamw"))
    assert got.outcome == expected, got.rule
    assert f"SGD reached the target in {base_reached}/4 runs" in got.rule
