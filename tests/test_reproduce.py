"""`adamrun reproduce`: every study's config composes (both scales), the verdict rules decide synthetic tables as
they say, the report is a function of its CSVs alone, and (slow) every study runs end to end on tiny limits
through the real sweeps, resuming without re-running a trial."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from runner import reproduce, verdict
from runner.config import CONF_DIR
from runner.errors import UsageError
from tests.test_faults import adamrun, assert_one_line

REPO = Path(__file__).resolve().parents[1]
COMMITTED = REPO / "results" / "reproduction"
STUDIES = sorted(p.stem for p in (CONF_DIR / "study").glob("*.yaml"))


# ------------------------------------------------------------------------------------------------ configs
@pytest.mark.parametrize("scale", ["offline", "full"])
def test_every_study_composes_one_trial_of_each_of_its_sweeps(scale):
    plan = reproduce.plan([f"scale={scale}"])
    assert [s.name for s in plan.studies] == list(plan.settings.studies)
    assert sorted(plan.settings.studies) == STUDIES  # make reproduce runs every study there is
    assert reproduce.check_trials(plan) >= len(STUDIES)


def test_the_offline_budget_fits_90_minutes_with_margin():
    plan = reproduce.plan([])
    minutes = sum(s.scale.minutes for s in plan.studies)
    assert minutes <= 75, f"the studies' expected minutes add up to {minutes}"


def test_a_study_override_changes_its_config_and_a_typo_is_one_line():
    plan = reproduce.plan(["study=schedules", "study.budgets=[1,2]", "study.short=1", "study.long=2"])
    assert list(plan.studies[0].scale.budgets) == [1, 2]
    with pytest.raises(UsageError, match="unknown config key 'study.budget'"):
        reproduce.plan(["study=schedules", "study.budget=[1]"])
    with pytest.raises(UsageError, match="must both be in study.budgets"):
        reproduce.plan(["study=schedules", "study.short=3"])
    with pytest.raises(UsageError, match="at least 3 distinct seeds"):
        reproduce.plan(["shared.seeds=[1,2]"])
    with pytest.raises(UsageError, match="study.margin must be > 0"):  # refused before hours of runs
        reproduce.plan(["study=decoupling", "study.margin=0"])
    with pytest.raises(UsageError, match="study.short must be < study.long"):
        reproduce.plan(["study=schedules", "study.short=4"])
    with pytest.raises(UsageError, match="must differ from study.baseline"):
        reproduce.plan(["study=amsgrad", "study.contender=adamw"])


def test_trial_overrides_go_to_every_trial_and_a_bad_one_stops_before_any_run():
    plan = reproduce.plan(["study=warmup", "trainer.threads=1", "data.train_limit=2000"])
    assert plan.extra == ["trainer.threads=1", "data.train_limit=2000"]
    bad = reproduce.plan(["study=warmup", "trainer.epochz=1"])
    with pytest.raises(UsageError, match="study warmup, sweep warmup: unknown config key 'trainer.epochz'"):
        reproduce.check_trials(bad)


def test_cli_mistakes_are_one_line_and_exit_2(monkeypatch, capsys, tmp_path):
    code, _, err = adamrun(monkeypatch, capsys, "reproduce", "study=adamw_vs_sgd")
    assert code == 2
    assert_one_line(err, "unknown study 'adamw_vs_sgd'", "decoupling")
    code, _, err = adamrun(monkeypatch, capsys, "reproduce", "scale=huge")
    assert code == 2
    assert_one_line(err, "scale must be one of offline, full")
    code, _, err = adamrun(monkeypatch, capsys, "reproduce", "--report-only", f"out_dir={tmp_path / 'none'}")
    assert code == 2
    assert_one_line(err, "no study has written its CSVs")


def test_sweeps_are_named_by_their_trials_not_by_runtime_settings():
    trials = ["optimizer=adamw", "optimizer.lr=1e-3,3e-3"]
    assert reproduce.digest(trials) == reproduce.digest(
        [*trials, "trainer.threads=1", "hydra.launcher.n_jobs=1"]
    )
    assert reproduce.digest(trials) != reproduce.digest([*trials, "data=cifar10"])
    assert reproduce.merged(["data=fashion_mnist", "seed=1", "data=cifar10"]) == ["seed=1", "data=cifar10"]
    assert reproduce.first_trial(
        ["optimizer.lr=1e-3,3e-3", "recipe.widths=[8,8]", "trainer.target=val_acc>=0.5"]
    )[:2] == ["optimizer.lr=0.001", "recipe.widths=[8,8]"]


# ------------------------------------------------------------------------------------------------ rules
def test_superiority_clear_win_tie_loss_and_noise():
    rng = np.random.default_rng(0)
    base = 90 + rng.normal(0, 0.1, 5)
    win = welch(base + 2, base)
    assert verdict.superiority(win, "higher", "acc").outcome == verdict.SUPPORTED
    assert verdict.superiority(win, "lower", "error").outcome == verdict.NOT_SUPPORTED
    tie = verdict.welch([90.0, 90.1, 89.9], [90.0, 89.9, 90.1])
    assert verdict.superiority(tie, "higher", "acc").outcome == verdict.INCONCLUSIVE
    noise = verdict.welch([88.0, 93.0, 90.5], [91.0, 87.0, 90.0])  # +1.2 points, spread of 2.5
    assert verdict.superiority(noise, "higher", "acc").outcome == verdict.INCONCLUSIVE


def welch(a, b):
    return verdict.welch(list(a), list(b))


def test_welch_interval_matches_scipy():
    from scipy import stats

    a, b = [1.0, 2.0, 4.0, 3.5], [0.5, 0.7, 1.9]
    diff = verdict.welch(a, b)
    test = stats.ttest_ind(a, b, equal_var=False)
    ci = test.confidence_interval(0.95)
    assert (diff.low, diff.high) == pytest.approx((ci.low, ci.high))
    assert diff.df == pytest.approx(test.df)


def test_no_gain_and_equivalence_use_the_stated_margin():
    same = verdict.welch([90.0, 90.1, 89.9, 90.05], [90.02, 89.95, 90.0, 90.1])
    assert verdict.no_gain(same, 0.5, "gain").outcome == verdict.SUPPORTED
    assert verdict.equivalence(same, 0.5, "diff").outcome == verdict.SUPPORTED
    big = verdict.welch([92.0, 92.1, 91.9], [90.0, 90.1, 89.9])  # a gain of 2 points, well past the margin
    assert verdict.no_gain(big, 0.5, "gain").outcome == verdict.NOT_SUPPORTED
    assert verdict.equivalence(big, 0.5, "diff").outcome == verdict.NOT_SUPPORTED
    wide = verdict.welch([90.0, 92.0, 88.0], [90.0, 89.0, 91.0])  # the interval straddles the margins
    assert verdict.no_gain(wide, 0.5, "gain").outcome == verdict.INCONCLUSIVE
    assert verdict.equivalence(wide, 0.5, "diff").outcome == verdict.INCONCLUSIVE
    with pytest.raises(ValueError, match="margin"):
        verdict.no_gain(same, 0, "gain")


def test_slope_interval_and_the_combined_verdict():
    x = [-3.5, -3.0, -2.5, -2.0, -1.5]
    line = verdict.slope(x, [-1.0 * v - 5 for v in x])
    assert line.value == pytest.approx(-1) and line.estimate().high == pytest.approx(-1)
    flat = verdict.slope(x, [-3.0, -3.1, -2.9, -3.05, -2.95])
    assert abs(flat.value) < 0.1
    moves = verdict.superiority(verdict.slope_difference(flat, line), "higher", "slope difference")
    assert moves.outcome == verdict.SUPPORTED
    both = verdict.combine([moves, verdict.Verdict(verdict.INCONCLUSIVE, "x")])
    assert both.outcome == verdict.INCONCLUSIVE and "(1)" in both.rule and "(2)" in both.rule
    assert (
        verdict.combine([moves, verdict.Verdict(verdict.NOT_SUPPORTED, "y")]).outcome == verdict.NOT_SUPPORTED
    )


# ------------------------------------------------------------------------------------------------ synthetic studies
BASES = {
    "cnn": {
        "trials": ["recipe=cifar10", "data=fashion_mnist", "trainer.epochs=3"],
        "select": [],
        "confirm": [],
    }
}


def settings(study: str, kind: str, **details) -> dict:
    return {
        "study": study,
        "order": 0,
        "kind": kind,
        "claim": f"the {study} claim.",
        "source": "a paper",
        "paper": "a figure",
        "untested": "",
        "scale": "offline",
        "minutes_expected": 1,
        "wall_s": 60.0,
        "segments": 1,
        "load_at_start": 0.0,
        "command": f"adamrun reproduce study={study}",
        "bases": BASES,
        "seeds": [1, 2, 3, 4],
        "extra": [],
        "sweeps": [],
        "machine": "test",
        **details,
    }


def arm_info(label: str, lr: list[float], wd: list[float]) -> dict:
    return {
        "label": label,
        "wd_name": "wd",
        "overrides": [f"optimizer={label.lower()}"],
        "base": "cnn",
        "lr": lr,
        "weight_decay": wd,
    }


def run(
    arm: str, role: str, seed: int, test: float, val: float, lr=1e-3, wd=1e-3, epochs=3, variant="", **extra
):
    return {
        "study": "",
        "arm": arm,
        "role": role,
        "variant": variant,
        "optimizer": arm,
        "schedule": "one_cycle",
        "lr": lr,
        "weight_decay": wd,
        "epochs": epochs,
        "seed": seed,
        "status": extra.get("status", "finished"),
        "metric": "acc",
        "goal": "max",
        "val_metric": val,
        "test_metric": test,
        "epochs_to_target": extra.get("epochs_to_target", ""),
        "time_to_target_s": "",
        "wall_s": 10.0,
        "sweep": "s",
        "run_id": f"{arm}-{role}-{seed}-{lr}-{wd}-{epochs}-{variant}",
    }


def write_study(
    folder: Path, name: str, rows: list[dict], details: dict, curves: list[dict] | None = None
) -> None:
    reproduce.write_table(folder / f"{name}_runs.csv", rows, reproduce.RUN_COLUMNS)
    reproduce.write_table(folder / f"{name}_curves.csv", curves or [], reproduce.CURVE_COLUMNS)
    reproduce.write_settings(folder / f"{name}_settings.csv", details)


def compare_study(folder: Path, gap: float, spread: float, name: str = "adamw_vs_adam") -> None:
    rng = np.random.default_rng(1)
    rows = [run("adam_l2", "select", 0, 0.8, 0.8, lr=lr) for lr in (1e-3, 3e-3)]
    rows += [run("adamw", "select", 0, 0.8, 0.81, lr=lr) for lr in (1e-3, 3e-3)]
    for seed in (1, 2, 3, 4):
        rows.append(run("adam_l2", "confirm", seed, 0.88 + rng.normal(0, spread), 0.88))
        rows.append(run("adamw", "confirm", seed, 0.88 + gap + rng.normal(0, spread), 0.88))
    curves = [
        {
            "study": name,
            "arm": a,
            "variant": "",
            "seed": s,
            "epoch": e,
            "val_metric": 0.8 + 0.02 * e,
            "train_loss": 1.0,
        }
        for a in ("adam_l2", "adamw")
        for s in (1, 2)
        for e in (1, 2, 3)
    ]
    details = settings(
        name,
        "compare",
        arms={
            "adam_l2": arm_info("Adam-L2", [1e-3, 3e-3], [1e-3]),
            "adamw": arm_info("AdamW", [1e-3, 3e-3], [1e-3]),
        },
        baseline="adam_l2",
        contender="adamw",
        relative=True,
        chosen={a: {"lr": "0.001", "weight_decay": "0.001", "cells": 2} for a in ("adam_l2", "adamw")},
        tests=[{"metric": "test_error", "better": "lower", "rule": "superiority", "margin": None}],
    )
    write_study(folder, name, rows, details, curves)


@pytest.mark.parametrize(
    ("gap", "spread", "expected"),
    [
        (0.02, 0.001, verdict.SUPPORTED),
        (-0.02, 0.001, verdict.NOT_SUPPORTED),
        (0.0, 0.01, verdict.INCONCLUSIVE),
    ],
)
def test_compare_study_decides_from_its_csvs(tmp_path, gap, spread, expected):
    compare_study(tmp_path, gap, spread)
    (section,) = verdict.sections(tmp_path)
    assert section.verdict.outcome == expected
    assert "superiority: test_error AdamW - Adam-L2" in section.verdict.rule


def test_a_comparison_needs_three_finished_seeds_a_side_and_names_the_ones_left_out(tmp_path):
    compare_study(tmp_path, 0.02, 0.001)  # a clear win on 4 seeds a side ...
    runs = pd.read_csv(tmp_path / "adamw_vs_adam_runs.csv")
    diverged = (runs["arm"] == "adamw") & (runs["role"] == "confirm") & runs["seed"].isin([1, 2])
    runs.loc[diverged, "status"] = "diverged"  # ... of which two AdamW seeds diverge
    runs.to_csv(tmp_path / "adamw_vs_adam_runs.csv", index=False)
    (section,) = verdict.sections(tmp_path)
    assert section.verdict.outcome == verdict.INCONCLUSIVE
    assert "fewer than 3 seeds" in section.verdict.rule
    assert "left out: Adam-L2 0, AdamW 2" in section.verdict.rule


@pytest.mark.parametrize(
    ("base_reached", "cont_reached", "cont_runs", "expected"),
    [
        (0, 4, 4, verdict.SUPPORTED),  # only the contender got there, on every seed
        (4, 0, 4, verdict.NOT_SUPPORTED),
        (0, 0, 0, verdict.INCONCLUSIVE),  # a side with no finished run wins nothing
        (1, 4, 4, verdict.INCONCLUSIVE),  # one baseline time is no mean
    ],
)
def test_time_to_target_when_some_runs_never_get_there(base_reached, cont_reached, cont_runs, expected):
    def side(reached: int, total: int) -> pd.Series:
        return pd.Series([2.0 + 0.5 * i for i in range(reached)] + [math.nan] * (total - reached))

    values = {"sgd": side(base_reached, 4), "adamw": side(cont_reached, cont_runs)}
    done = {arm: pd.DataFrame(index=v.index) for arm, v in values.items()}
    test = {"metric": "epochs_to_target", "better": "lower", "rule": "superiority", "margin": None}
    got = verdict.target_test(test, done, values, ("SGD", "AdamW"), "epochs", ("sgd", "adamw"))
    assert got.outcome == expected, got.rule
    assert f"SGD reached the target in {base_reached}/4 runs" in got.rule


def decoupling_study(folder: Path, noise: float = 0.002, measure: str = "edge") -> None:
    """Adam-L2's accuracy depends on lr x wd (a diagonal ridge), AdamW's on lambda alone (axis-aligned)."""
    rng = np.random.default_rng(2)
    lrs, wds = [1e-4, 3e-4, 1e-3, 3e-3, 1e-2], [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1]
    rows = []
    for lr in lrs:
        for wd in wds:
            coupled = 0.9 - 0.02 * (math.log10(lr * wd) + 6.5) ** 2 + rng.normal(0, noise)
            decoupled = 0.9 - 0.02 * (math.log10(wd) + 3) ** 2 + rng.normal(0, noise)
            rows += [
                run("adam_l2", "select", 0, 0.0, coupled, lr=lr, wd=wd),
                run("adamw", "select", 0, 0.0, decoupled, lr=lr, wd=wd),
            ]
    details = settings(
        "decoupling",
        "decoupling",
        arms={"adam_l2": arm_info("Adam-L2", lrs, wds), "adamw": arm_info("AdamW", lrs, wds)},
        coupled="adam_l2",
        decoupled="adamw",
        torch_view=True,
        margin=0.5,
        measure=measure,
        drop=1.0,
    )
    write_study(folder, "decoupling", rows, details)


@pytest.mark.parametrize("measure", ["edge", "best"])
def test_decoupling_finds_the_diagonal_and_the_axis_aligned_ridge(tmp_path, measure):
    decoupling_study(tmp_path, measure=measure)
    runs, _, details = verdict.load_study_tables(tmp_path, "decoupling")
    found = {r.arm: r for r in verdict.ridges(runs, details)}
    assert found["adam_l2"].fit(measure).value == pytest.approx(-1, abs=0.15)
    assert found["adamw"].fit(measure).value == pytest.approx(0, abs=0.15)
    assert verdict.torch_ridge(found["adamw"]).fit(measure).value == pytest.approx(-1, abs=0.15)
    (section,) = verdict.sections(tmp_path)
    assert section.verdict.outcome == verdict.SUPPORTED


def test_a_decoupled_coupling_is_not_supported(tmp_path):
    """Both optimizers with the same diagonal ridge: AdamW's slope is -1, outside the margin."""
    decoupling_study(tmp_path)
    runs = pd.read_csv(tmp_path / "decoupling_runs.csv")
    coupled = runs[runs["arm"] == "adam_l2"].assign(arm="adamw", run_id=lambda d: d["run_id"] + "w")
    reproduce.write_table(
        tmp_path / "decoupling_runs.csv",
        [*runs[runs["arm"] == "adam_l2"].to_dict("records"), *coupled.to_dict("records")],
        reproduce.RUN_COLUMNS,
    )
    (section,) = verdict.sections(tmp_path)
    assert section.verdict.outcome == verdict.NOT_SUPPORTED


def test_best_wd_is_refined_between_cells_and_the_good_region_ends_where_accuracy_drops():
    grid = pd.DataFrame(
        {
            "lr": [1e-3] * 3 + [3e-3] * 3,
            "weight_decay": [1e-4, 1e-3, 1e-2] * 2,
            "val_metric": [0.80, 0.90, 0.88, 0.70, 0.80, 0.85],
            "metric": "acc",
        }
    )
    rows = verdict.wd_measures(grid, "max", drop=1.0).set_index("lr")
    assert -3 < rows.loc[1e-3, "best"] < -2.5 and not rows.loc[1e-3, "best_at_edge"]  # pulled towards 1e-2
    assert rows.loc[3e-3, "best"] == pytest.approx(-2) and rows.loc[3e-3, "best_at_edge"]
    assert rows.loc[1e-3, "edge"] == pytest.approx(-3 + 0.5) and not rows.loc[1e-3, "censored"]  # 89 halfway
    assert rows.loc[3e-3, "edge"] == pytest.approx(-2) and rows.loc[3e-3, "censored"]


def test_warmup_counts_diverged_runs_at_chance_and_as_unstable(tmp_path):
    rows = []
    for seed in (1, 2, 3):
        rows += [run("adamw", "confirm", seed, 0.85, 0.85, lr=1e-3, variant=w) for w in ("none", "linear")]
        rows.append(
            run("adamw", "confirm", seed, math.nan, math.nan, lr=1e-1, variant="none", status="diverged")
        )
        rows.append(run("adamw", "confirm", seed, 0.80 + 0.01 * seed, 0.8, lr=1e-1, variant="linear"))
    details = settings(
        "warmup",
        "warmup",
        arm=arm_info("AdamW", [1e-3], [1e-3]),
        weight_decay=1e-3,
        warmups=["none", "linear"],
        lr=[1e-3, 1e-1],
        chance=0.1,
        unstable_below=0.5,
        trials=[],
    )
    write_study(tmp_path, "warmup", rows, details)
    runs, _, loaded = verdict.load_study_tables(tmp_path, "warmup")
    table = verdict.warmup_table(runs, loaded).set_index(["warmup", "lr"])
    assert table.loc[("none", 1e-1), "unstable"] == 3 and table.loc[("none", 1e-1), "test"] == [10.0] * 3
    assert table.loc[("linear", 1e-1), "unstable"] == 0
    (section,) = verdict.sections(tmp_path)
    assert section.verdict.outcome == verdict.SUPPORTED


def schedules_study(folder: Path) -> None:
    rows = []
    accuracy = {"one_cycle": {1: 0.80, 2: 0.88, 4: 0.90}, "constant": {1: 0.70, 2: 0.80, 4: 0.85}}
    for schedule, by_budget in accuracy.items():
        rows += [run(schedule, "select", 0, 0.0, 0.8, lr=lr, epochs=2) for lr in (1e-3, 3e-3)]
        for budget, acc in by_budget.items():
            rows += [
                run(
                    schedule,
                    "confirm",
                    s,
                    acc + 0.002 * s,
                    acc,
                    lr=3e-3,
                    epochs=budget,
                    epochs_to_target=budget if acc >= 0.88 else "",
                )
                for s in (1, 2, 3)
            ]
    details = settings(
        "schedules",
        "schedules",
        arm=arm_info("AdamW", [1e-3], [1e-3]),
        weight_decay=1e-3,
        schedules=["one_cycle", "constant"],
        chosen={"one_cycle": "0.003", "constant": "0.003"},
        budgets=[1, 2, 4],
        short=2,
        long=4,
        margin=0.5,
        select_budget=2,
        lr=[1e-3, 3e-3],
        target="val_acc>=0.88",
    )
    write_study(folder, "schedules", rows, details)


def test_schedules_one_cycle_at_half_the_epochs_against_the_others(tmp_path):
    schedules_study(tmp_path)
    text = verdict.render_report(tmp_path)
    assert "`trainer.epochs=1,2,4 (lr chosen at 2)`" in text  # the study's own budgets ...
    assert "`trainer.epochs=3`" not in text  # ... not its base's
    (section,) = verdict.sections(tmp_path)
    assert section.verdict.outcome == verdict.SUPPORTED  # 88% at 2 epochs vs 85% at 4
    assert "constant at 4 epochs - one_cycle at 2" in section.verdict.rule


# ------------------------------------------------------------------------------------------------ the report
def test_report_is_a_function_of_its_csvs(tmp_path):
    compare_study(tmp_path, 0.02, 0.001)
    decoupling_study(tmp_path)
    schedules_study(tmp_path)
    reproduce.write_table(
        tmp_path / "untested.csv", [{"claim": "c", "source": "s", "why": "w"}], ["claim", "source", "why"]
    )
    path = verdict.write_report(tmp_path)
    text = path.read_text()
    assert text == verdict.render_report(tmp_path)
    for png in ("decoupling.png", "adamw_vs_adam.png", "schedules.png"):
        assert (tmp_path / png).stat().st_size > 10_000
    assert text.index("## Verdicts") < text.index("## decoupling") < text.index("## Commands and time")
    assert "not tested here" in text and "**supported**" in text
    copy = tmp_path / "copy"
    copy.mkdir()
    for csv in tmp_path.glob("*.csv"):
        shutil.copy(csv, copy)
    assert verdict.render_report(copy) == text  # the CSVs alone give the same report
    runs = pd.read_csv(copy / "adamw_vs_adam_runs.csv")
    runs.loc[(runs["arm"] == "adamw") & (runs["role"] == "confirm"), "test_metric"] -= 0.04
    runs.to_csv(copy / "adamw_vs_adam_runs.csv", index=False)
    changed = verdict.render_report(copy)  # a number changed in a CSV changes the table and the verdict
    assert changed != text and "| **not supported** |" in changed.split("## adamw_vs_adam")[0]


def test_committed_report_equals_what_its_committed_csvs_give():
    assert (COMMITTED / "report.md").read_text() == verdict.render_report(COMMITTED)
    for section in verdict.sections(COMMITTED):  # every study ran, and drew its figure
        assert (COMMITTED / section.figure).stat().st_size > 10_000


# ------------------------------------------------------------------------------------------------ end to end
CNN = [
    "recipe=cifar10",
    "data=fashion_mnist",
    "data.train_limit=400",
    "data.val_size=100",
    "recipe.widths=[8,8,16,16]",
    "trainer.batch_size=50",
    "trainer.eval_batch_size=200",
    "trainer.epochs=1",
    "optimizer.decay_mode=torch",
]
ARTICLES = {
    f"{topic} {i}": {
        "title": f"{topic} {i}",
        "topic": topic,
        "extract": f"{topic} {i} is a word about {topic.lower()} and more words.\nAgain: words.",
    }
    for topic in ("Arts", "People")
    for i in range(8)
}


def tiny_arguments(tmp_path: Path) -> list[str]:
    """Every study on fixture-sized limits: tiny nets, 1 epoch, 3 x 2 grids, 3 seeds, a 16-article corpus."""
    corpus = tmp_path / "wiki.json"
    corpus.write_text(json.dumps(ARTICLES))
    lm = [
        "recipe=wikitext2",
        "data=wiki_offline",
        "model=awd_lstm_small",
        "~data.val_size",
        "data.wiki.package=null",
        f"data.wiki.file={corpus}",
        "data.wiki.split=[0.5,0.25,0.25]",
        "data.train_limit=null",
        "data.test_limit=null",
        "trainer.epochs=1",
        "optimizer.decay_mode=torch",
        "model.emb_size=8",
        "model.hidden_size=8",
        "trainer.batch_size=2",
        "recipe.bptt=5",
        "recipe.eval_batch_size=1",
    ]
    arguments = [
        f"shared.bases.cnn.trials={json.dumps(CNN)}",
        'shared.bases.cnn.select=["data.test_limit=100"]',
        'shared.bases.cnn.confirm=["data.test_limit=100", "trainer.eval_every=0.5", "trainer.target=val_acc>=0.2"]',
        f"shared.bases.lm.trials={json.dumps(lm)}",
        "shared.seeds=[1,2,3]",
    ]
    for arm in ("adam_l2", "adamw", "amsgrad"):
        arguments += [f"shared.arms.{arm}.lr=[1e-3,1e-2,3e-2]", f"shared.arms.{arm}.weight_decay=[1e-4,1e-2]"]
    arguments += ["shared.arms.sgd.lr=[0.01,0.1,0.3]", "shared.arms.sgd.weight_decay=[1e-4,1e-2]"]
    return [
        *arguments,
        "trainer.threads=1",
        "trainer.log_every=2",
        f"out_dir={tmp_path / 'out'}",
        f"work_dir={tmp_path / 'work'}",
    ]


STUDY_OVERRIDES = {  # the non-grid studies, shrunk the same way
    "schedules": [
        "study.schedules=[one_cycle,constant]",
        "study.lr=[1e-2]",
        "study.select_budget=1",
        "study.budgets=[1,2]",
        "study.short=1",
        "study.long=2",
    ],
    "warmup": ["study.lr=[1e-1]", "study.trials=[schedule=cosine]"],
}


@pytest.fixture(scope="module")
def tiny_reproduction(tmp_path_factory) -> Path:
    """Every study, one after the other, through the real sweeps (joblib, 2 jobs x 1 thread)."""
    tmp = tmp_path_factory.mktemp("reproduce")
    for study in reproduce.load_settings().studies:
        plan = reproduce.plan([f"study={study}", *STUDY_OVERRIDES.get(study, []), *tiny_arguments(tmp)])
        reproduce.run(plan, echo=lambda line: None, report=False)
    verdict.write_report(tmp / "out")
    return tmp


@pytest.mark.slow
def test_every_study_runs_end_to_end_and_reports(tiny_reproduction):
    out = tiny_reproduction / "out"
    text = (out / "report.md").read_text()
    assert text == verdict.render_report(out)
    for study in STUDIES:
        runs = pd.read_csv(out / f"{study}_runs.csv")
        assert len(runs) and (runs["status"] == "finished").any(), study
        assert (out / f"{study}.png").stat().st_size > 10_000
        assert f"## {study}:" in text
    for section in verdict.sections(out):
        assert section.verdict.outcome in (verdict.SUPPORTED, verdict.NOT_SUPPORTED, verdict.INCONCLUSIVE)
    adamw = pd.read_csv(out / "adamw_vs_adam_runs.csv")
    amsgrad = pd.read_csv(out / "amsgrad_runs.csv")
    shared = set(adamw.loc[adamw["arm"] == "adamw", "sweep"]) & set(
        amsgrad.loc[amsgrad["arm"] == "adamw", "sweep"]
    )
    assert len(shared) == 2  # AdamW's grid and seeds: one sweep each, serving both studies
    assert adamw.loc[adamw["role"] == "select", "test_metric"].isna().all()  # selection shows no test figure
    confirm = adamw[adamw["role"] == "confirm"]
    assert sorted(confirm["seed"].unique()) == [1, 2, 3] and confirm["test_metric"].notna().all()


@pytest.mark.slow
def test_a_finished_study_run_again_reruns_no_trial(tiny_reproduction):
    lines = []
    before = {p: p.read_text() for p in (tiny_reproduction / "work").rglob("run.json")}
    timing = tiny_reproduction / "work" / "amsgrad-offline.timing.json"
    spent = timing.read_text()
    plan = reproduce.plan(["study=amsgrad", *tiny_arguments(tiny_reproduction)])
    reproduce.run(plan, echo=lines.append, report=False)
    assert all("trials done" in line for line in lines if ": grid-" in line or ": seeds-" in line), lines
    assert {p: p.read_text() for p in (tiny_reproduction / "work").rglob("run.json")} == before
    assert timing.read_text() == spent  # nothing trained: the study's measured time stays what it was
