"""Compare studies on synthetic result tables with known answers: a clear win, a clear null, noise, a censored
arm, failed mechanism checks; the looks stop where the design says, and the report re-derives them."""

from __future__ import annotations

import pandas as pd
import pytest

from studies import compare, report, sequential, stats
from studies.looks import crossing, decay_shrink, mechanism_check
from tests.studies.synthetic import DECAY, SEEDS, compare_study


def section_of(folder):
    (section,) = report.sections(folder)
    return section


def test_a_clear_win_is_supported_before_the_cap(tmp_path):
    compare_study(tmp_path, gap=0.03, spread=0.002)  # AdamW 3 points better, 0.2-point noise
    section = section_of(tmp_path)
    assert section.verdict.outcome == stats.SUPPORTED, section.verdict.rule
    looks = compare.looks_of(*report.load_study_tables(tmp_path, "adamw_vs_adam")[::2])
    assert looks.stop == "decided" and looks.looks[-1].n < 16  # stopped early: the rest of the seeds unread
    assert "look " in section.verdict.rule and "Welch" in section.verdict.rule  # both intervals printed
    assert section.p_value is not None and section.p_value < 0.025


def test_a_tight_null_is_smaller_than_the_claimed_effect(tmp_path):
    compare_study(tmp_path, gap=0.0, spread=0.002)  # no difference, tight: excludes the source's -2 points
    section = section_of(tmp_path)
    assert section.verdict.outcome == sequential.SMALLER, section.verdict.rule


def test_a_clear_loss_is_not_supported(tmp_path):
    compare_study(tmp_path, gap=-0.03, spread=0.002)
    assert section_of(tmp_path).verdict.outcome == stats.NOT_SUPPORTED


def test_noise_stops_at_the_cap_or_for_futility_and_is_never_a_verdict(tmp_path):
    test = {"metric": "test_error", "better": "lower", "rule": "superiority", "diverged": 90.0}  # no effect
    compare_study(tmp_path, gap=0.002, spread=0.02, test=test)  # a 0.2-point gap in 2-point noise
    section = section_of(tmp_path)
    assert section.verdict.outcome == stats.INCONCLUSIVE, section.verdict.rule
    assert "stopped for futility" in section.verdict.rule or "stopped at the cap" in section.verdict.rule


def test_a_study_waits_for_the_seeds_of_its_next_look(tmp_path):
    compare_study(tmp_path, gap=0.0, spread=0.02, seeds=4)  # look 1 undecided, look 2 needs 6 seeds
    runs, _, settings = report.load_study_tables(tmp_path, "adamw_vs_adam")
    looks = compare.looks_of(runs, settings)
    assert looks.stop == "" and looks.next_n == 6 and len(looks.looks) == 1


def test_a_failed_decay_check_is_not_tested_whatever_the_numbers(tmp_path):
    compare_study(tmp_path, gap=0.03, spread=0.002, shrink=0.01)  # a clear win, but decay removed 1%
    section = section_of(tmp_path)
    assert section.verdict.outcome == stats.UNTESTED
    assert "1.0%" in section.verdict.rule and "at least 10%" in section.verdict.rule
    assert section.p_value is None  # not a member of the family-wise view


def test_the_decay_share_is_read_against_the_smallest_decay_at_the_same_lr(tmp_path):
    compare_study(tmp_path, gap=0.0, spread=0.01, shrink=0.3)
    runs, _, _ = report.load_study_tables(tmp_path, "adamw_vs_adam")
    assert decay_shrink(runs, "adamw", 1e-3, 1e-3) == pytest.approx(0.3)
    assert decay_shrink(runs, "adamw", 1e-3, 1e-5) == pytest.approx(0.0)


def test_nt_asgd_that_never_averaged_is_plain_sgd_and_not_tested(tmp_path):
    compare_study(tmp_path, gap=0.03, spread=0.002)
    path = tmp_path / "adamw_vs_adam_settings.csv"
    settings = report.read_settings(path)
    settings["mechanism"] = {"kind": "averaging", "arm": "adam_l2", "min_shrink": None}
    from studies.trials import write_settings

    write_settings(path, settings)
    runs = pd.read_csv(tmp_path / "adamw_vs_adam_runs.csv")
    confirm = (runs["arm"] == "adam_l2") & (runs["role"] == "confirm")
    runs.loc[confirm, "averaged"] = 0.0
    runs.loc[confirm & (runs["seed"] == 101), "averaged"] = 1.0  # one of them triggered
    runs.to_csv(tmp_path / "adamw_vs_adam_runs.csv", index=False)
    section = section_of(tmp_path)
    assert section.verdict.outcome == stats.UNTESTED
    assert "1 of 16" in section.verdict.rule
    runs.loc[confirm, "averaged"] = 1.0
    runs.to_csv(tmp_path / "adamw_vs_adam_runs.csv", index=False)
    assert section_of(tmp_path).verdict.outcome == stats.SUPPORTED


def test_a_diverged_seed_counts_at_chance_not_dropped(tmp_path):
    compare_study(tmp_path, gap=0.03, spread=0.002)
    runs = pd.read_csv(tmp_path / "adamw_vs_adam_runs.csv")
    lost = (runs["arm"] == "adamw") & (runs["role"] == "confirm") & runs["seed"].isin(SEEDS[:3])
    runs.loc[lost, ["status", "test_metric"]] = ["diverged", float("nan")]
    runs.to_csv(tmp_path / "adamw_vs_adam_runs.csv", index=False)
    section = section_of(tmp_path)
    # 3 of AdamW's first seeds at 90 points of error: the win is gone, and the looks see why
    assert section.verdict.outcome != stats.SUPPORTED
    values = compare.looks_of(*report.load_study_tables(tmp_path, "adamw_vs_adam")[::2]).looks[0].paired
    assert values.value > 50  # error AdamW - Adam-L2 at look 1: the diverged seeds at 90 points


# ------------------------------------------------------------------------------------------------ target
def test_the_crossing_is_interpolated_between_evaluations_and_a_miss_is_censored():
    curve = pd.DataFrame({"epoch": [2, 4, 6], "val_metric": [0.80, 0.84, 0.86]})
    assert crossing(curve, 0.82, "higher") == (pytest.approx(3.0), True)
    assert crossing(curve, 0.80, "higher") == (2.0, True)
    assert crossing(curve, 0.90, "higher") == (6.0, False)


def curves_for(epochs_to_target: dict[str, list[float | None]]) -> list[dict]:
    """Straight validation curves rising 0.8 -> 0.9 over 10 epochs, shifted so each seed crosses 0.85 where
    asked (None: it never does)."""
    rows = []
    for arm, times in epochs_to_target.items():
        for seed, time in zip(SEEDS, times, strict=False):
            for epoch in range(1, 11):
                value = 0.80 if time is None else 0.85 + 0.01 * (epoch - time)
                rows.append({"study": "adamw_vs_adam", "arm": arm, "variant": "", "seed": seed, "epoch": epoch,
                             "val_metric": value, "train_loss": 1.0})  # fmt: skip
    return rows


def test_speed_is_judged_with_every_run_counted_a_censored_arm_included(tmp_path):
    """On the seeds the accuracy looks ran (here one look of 16: a time test on 3 seeds a side cannot reach
    p < 0.05, so the report would say so)."""
    accuracy = {"metric": "test_metric", "better": "higher", "rule": "non_inferiority", "margin": 0.5,
                "diverged": 10.0}  # fmt: skip
    sooner = {"adamw": [2.5] * 16, "adam_l2": [6.5] * 10 + [None] * 6}  # 6 baseline runs never got there
    compare_study(tmp_path, gap=0.0, spread=0.002, test=accuracy, timing={"target": 0.85, "better": "higher"},
                  curves=curves_for(sooner), stages=[16])  # fmt: skip
    section = section_of(tmp_path)
    assert section.verdict.outcome == stats.SUPPORTED, section.verdict.rule
    assert "baseline 6 of" in section.verdict.rule  # the censored runs are named, not dropped
    slower = {"adamw": [None] * 16, "adam_l2": [3.0] * 16}  # the contender never gets there
    compare_study(tmp_path, gap=0.0, spread=0.002, test=accuracy, timing={"target": 0.85, "better": "higher"},
                  curves=curves_for(slower), stages=[16])  # fmt: skip
    assert section_of(tmp_path).verdict.outcome == stats.NOT_SUPPORTED


def decay_grid(arm: str, chosen_wd: float, shrink: float, accuracy: dict[float, float]) -> list[dict]:
    """One lr row of an arm's grid, 2 seeds a cell: `accuracy` per wd (validation, a fraction); the chosen cell
    ends with 1 - shrink of the weights' norm at the row's smallest wd."""
    smallest = min(accuracy)
    return [
        {
            "arm": arm,
            "role": "select",
            "status": "finished",
            "metric": "acc",
            "lr": 1e-2,
            "weight_decay": wd,
            "seed": seed,
            "val_metric": acc,
            "weight_norm": 10.0 * (1 - shrink) if wd == chosen_wd and wd != smallest else 10.0,
        }  # fmt: skip
        for wd, acc in accuracy.items()
        for seed in (1, 2)
    ]


def decay_settings(coupled_wd: float, decoupled_wd: float) -> dict:
    return {
        "arms": {"adam_l2": {"label": "Adam-L2"}, "adamw": {"label": "AdamW"}},
        "chosen": {
            "adam_l2": {"lr": "0.01", "weight_decay": str(coupled_wd), "cells": 3},
            "adamw": {"lr": "0.01", "weight_decay": str(decoupled_wd), "cells": 3},
        },  # fmt: skip
    }


SPREAD = {"kind": "decay", "min_shrink": 0.1, "min_spread": 2.0}


def test_an_arm_best_at_its_smallest_decay_passes_where_its_decay_moves_its_accuracy():
    """Adam-L2 best at its grid's smallest L2 (0% removed, by construction) while larger L2s cost it 5 points:
    its decay acts, its best is to use almost none; AdamW's chosen decay removes 40%: weight decay acts."""
    runs = pd.DataFrame(
        decay_grid("adam_l2", 1e-6, 0.0, {1e-6: 0.86, 1e-4: 0.85, 1e-2: 0.81})
        + decay_grid("adamw", 1e-2, 0.4, {1e-5: 0.85, 1e-3: 0.855, 1e-2: 0.86})
    )
    check = mechanism_check(SPREAD, runs, decay_settings(1e-6, 1e-2))
    assert check.held, check.text
    assert "Adam-L2 0.0% (its accuracy spans 5.0 points" in check.text and "AdamW 40.0%" in check.text
    assert not mechanism_check(DECAY, runs, decay_settings(1e-6, 1e-2)).held  # the first registration's rule


def test_a_decay_that_neither_shrinks_nor_moves_the_accuracy_has_not_acted():
    runs = pd.DataFrame(
        decay_grid("adam_l2", 1e-6, 0.0, {1e-6: 0.86, 1e-4: 0.855, 1e-2: 0.85})  # 1 point: below 2
        + decay_grid("adamw", 1e-2, 0.4, {1e-5: 0.85, 1e-3: 0.855, 1e-2: 0.86})
    )
    assert not mechanism_check(SPREAD, runs, decay_settings(1e-6, 1e-2)).held


def test_two_arms_both_best_without_decay_compare_unregularized_optimizers_and_are_not_tested():
    """Each at its grid's smallest decay: both spreads are large, yet no chosen setting is regularized."""
    runs = pd.DataFrame(
        decay_grid("adam_l2", 1e-6, 0.0, {1e-6: 0.86, 1e-4: 0.85, 1e-2: 0.81})
        + decay_grid("adamw", 1e-5, 0.0, {1e-5: 0.86, 1e-3: 0.85, 1e-2: 0.80})
    )
    check = mechanism_check(SPREAD, runs, decay_settings(1e-6, 1e-5))
    assert not check.held and "at least 10% for one" in check.text
