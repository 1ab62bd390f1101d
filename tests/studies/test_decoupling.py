"""Decoupling studies: the ridge of each grid, its slope, and the verdict they give."""

from __future__ import annotations

import pandas as pd
import pytest

from runner.errors import UsageError
from studies import decoupling, report, reproduce, stats, trials
from tests.studies.synthetic import EDGES, decoupling_study


@pytest.mark.parametrize("measure", ["edge", "best"])
def test_decoupling_finds_the_diagonal_and_the_axis_aligned_ridge(tmp_path, measure):
    decoupling_study(tmp_path, measure=measure)
    runs, _, details = report.load_study_tables(tmp_path, "decoupling")
    found = {r.arm: r for r in decoupling.ridges(runs, details, 1.0)}
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
            "seed": 1,
        }
    )
    rows = decoupling.wd_measures(grid, "max", drop=1.0).set_index("lr")
    assert -3 < rows.loc[1e-3, "best"] < -2.5 and not rows.loc[1e-3, "best_at_edge"]  # pulled towards 1e-2
    assert rows.loc[3e-3, "best"] == pytest.approx(-2) and rows.loc[3e-3, "best_at_edge"]
    assert rows.loc[1e-3, "edge"] == pytest.approx(-3 + 0.5) and not rows.loc[1e-3, "censored"]  # 89 halfway
    assert rows.loc[3e-3, "edge"] == pytest.approx(-2) and rows.loc[3e-3, "censored"]


def test_each_seed_of_a_replicate_grid_gives_its_own_rows_to_the_fit(tmp_path):
    decoupling_study(tmp_path)
    runs, _, details = report.load_study_tables(tmp_path, "decoupling")
    found = {r.arm: r for r in decoupling.ridges(runs, details, 1.0)}
    assert len(found["adamw"].rows) == 10 and set(found["adamw"].rows["seed"]) == {
        "1",
        "2",
    }  # 5 lrs x 2 seeds
    assert found["adamw"].fit("edge").df == 10 - 2 - int(found["adamw"].rows["censored"].sum())


def test_a_verdict_that_flips_with_the_threshold_is_inconclusive():
    supported = stats.Verdict(stats.SUPPORTED, "a")
    refuted = stats.Verdict(stats.NOT_SUPPORTED, "b")
    assert decoupling.every_threshold({0.5: supported, 1.0: supported}).outcome == stats.SUPPORTED
    assert decoupling.every_threshold({0.5: refuted, 1.0: refuted}).outcome == stats.NOT_SUPPORTED
    mixed = decoupling.every_threshold({0.5: supported, 1.0: refuted})
    assert mixed.outcome == stats.INCONCLUSIVE and "[0.5 points below the row's best]" in mixed.rule


def test_a_grid_where_decay_removes_next_to_nothing_is_not_tested(tmp_path):
    decoupling_study(tmp_path)
    runs = pd.read_csv(tmp_path / "decoupling_runs.csv")
    runs["weight_norm"] = 10.0  # every decay leaves the weights' norm as it is
    runs.to_csv(tmp_path / "decoupling_runs.csv", index=False)
    (section,) = report.sections(tmp_path)
    assert section.verdict.outcome == stats.UNTESTED and "weight decay acts" in section.verdict.rule


def test_the_edge_check_fails_where_a_good_region_runs_off_its_grid(tmp_path):
    """AdamW's good region (around lambda 1e-3) ends inside its grid while the grid goes to 1e-1; cut the grid at
    1e-3 and every row's edge is censored at the grid's end: nothing left for the slope, so not tested."""
    decoupling_study(tmp_path, mechanism=EDGES)
    (section,) = report.sections(tmp_path)
    assert section.verdict.outcome == stats.SUPPORTED
    assert "Adam-L2 5 of 5, AdamW 5 of 5; needed at least 3 in each" in section.verdict.rule + "".join(
        section.body
    )
    runs = pd.read_csv(tmp_path / "decoupling_runs.csv")
    cut = runs[(runs["arm"] != "adamw") | (runs["weight_decay"] <= 1e-3)]
    cut.to_csv(tmp_path / "decoupling_runs.csv", index=False)
    (section,) = report.sections(tmp_path)
    assert section.verdict.outcome == stats.UNTESTED
    assert "AdamW 0 of 5; needed at least 3 in each" in section.verdict.rule


def test_the_edge_check_belongs_to_decoupling_studies_and_needs_three_rows():
    with pytest.raises(UsageError, match="min_rows"):
        reproduce.plan(["study=decoupling", "study.mechanism.min_rows=2"])
    with pytest.raises(UsageError, match="edges is a decoupling study's check"):
        reproduce.plan(["study=adamw_vs_adam", "study.mechanism.kind=edges", "+study.mechanism.min_rows=3"])
