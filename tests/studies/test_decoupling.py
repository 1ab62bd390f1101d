"""Decoupling studies: the ridge of each grid, its slope, and the verdict they give."""

from __future__ import annotations

import pandas as pd
import pytest

from studies import decoupling, report, stats, trials
from tests.studies.synthetic import decoupling_study


@pytest.mark.parametrize("measure", ["edge", "best"])
def test_decoupling_finds_the_diagonal_and_the_axis_aligned_ridge(tmp_path, measure):
    decoupling_study(tmp_path, measure=measure)
    runs, _, details = report.load_study_tables(tmp_path, "decoupling")
    found = {r.arm: r for r in decoupling.ridges(runs, details)}
    assert found["adam_l2"].fit(measure).value == pytest.approx(-1, abs=0.15)
    assert found["adamw"].fit(measure).value == pytest.approx(0, abs=0.15)
    assert decoupling.torch_ridge(found["adamw"]).fit(measure).value == pytest.approx(-1, abs=0.15)
    (section,) = report.sections(tmp_path)
    assert section.verdict.outcome == stats.SUPPORTED


def test_a_decoupled_coupling_is_not_supported(tmp_path):
    """Both optimizers with the same diagonal ridge: AdamW's slope is -1, outside the margin."""
    decoupling_study(tmp_path)
    runs = pd.read_csv(tmp_path / "decoupling_runs.csv")
    coupled = runs[runs["arm"] == "adam_l2"].assign(arm="adamw", run_id=lambda d: d["run_id"] + "w")
    trials.write_table(
        tmp_path / "decoupling_runs.csv",
        [*runs[runs["arm"] == "adam_l2"].to_dict("records"), *coupled.to_dict("records")],
        trials.RUN_COLUMNS,
    )
    (section,) = report.sections(tmp_path)
    assert section.verdict.outcome == stats.NOT_SUPPORTED


def test_best_wd_is_refined_between_cells_and_the_good_region_ends_where_accuracy_drops():
    grid = pd.DataFrame(
        {
            "lr": [1e-3] * 3 + [3e-3] * 3,
            "weight_decay": [1e-4, 1e-3, 1e-2] * 2,
            "val_metric": [0.80, 0.90, 0.88, 0.70, 0.80, 0.85],
            "metric": "acc",
        }
    )
    rows = decoupling.wd_measures(grid, "max", drop=1.0).set_index("lr")
    assert -3 < rows.loc[1e-3, "best"] < -2.5 and not rows.loc[1e-3, "best_at_edge"]  # pulled towards 1e-2
    assert rows.loc[3e-3, "best"] == pytest.approx(-2) and rows.loc[3e-3, "best_at_edge"]
    assert rows.loc[1e-3, "edge"] == pytest.approx(-3 + 0.5) and not rows.loc[1e-3, "censored"]  # 89 halfway
    assert rows.loc[3e-3, "edge"] == pytest.approx(-2) and rows.loc[3e-3, "censored"]
