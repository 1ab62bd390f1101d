"""Compare studies: does one optimizer (the contender) beat, match or give no gain over another (the
baseline), each at its own best setting? (adamw_vs_adam, amsgrad, sgd_vs_adamw, lm_optimizers.)

Runs: each arm's setting is the best validation cell of its lr x wd grid (seed 0), or its published setting
when it has no grid; then fresh seeds at that setting, each reading the test set once, at its end. Judged:
each of the study's tests (test metric or error, epochs or seconds to the target) by its rule (superiority, no
gain or equivalence) on Welch's 95% interval of contender - baseline; every test must hold. Drawn: the test
metric per seed with its mean and CI, beside the validation curves.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from omegaconf import MISSING, OmegaConf

from runner.config import check
from runner.render import markdown, metric_name, new_figure, save, wrapped
from studies import StudyKind
from studies.section import (
    ACC_METRICS,
    Section,
    claim_line,
    finished,
    first,
    mean_std_text,
    points,
    setting_text,
    title,
    unit_name,
    values_text,
)
from studies.stats import (
    INCONCLUSIVE,
    MIN_SEEDS,
    NOT_SUPPORTED,
    SUPPORTED,
    Estimate,
    Verdict,
    combine,
    equivalence,
    no_gain,
    superiority,
    t_quantile,
    welch_rule,
)
from studies.trials import (
    Choice,
    Context,
    ScaleBase,
    arm_info,
    choose,
    confirm_args,
    confirm_sweep,
    curve_rows,
    grid_args,
    number_text,
    run_rows,
)

RULES = ("superiority", "no_gain", "equivalence")
TEST_METRICS = ("test_metric", "test_error", "epochs_to_target", "time_to_target_s")


# ------------------------------------------------------------------------------------------------ config
@dataclass
class Test:
    """One comparison of a study: contender - baseline on `metric`, judged by `rule`."""

    metric: str = MISSING  # test_metric | epochs_to_target | time_to_target_s
    better: str = MISSING  # higher | lower: which values of the metric are better
    rule: str = MISSING  # superiority (contender better) | no_gain (contender no better) | equivalence
    margin: float | None = None  # no_gain, equivalence: in the metric's units as shown (points, epochs)

    def __post_init__(self) -> None:
        check(
            self.metric in TEST_METRICS,
            "test.metric",
            f"must be one of {', '.join(TEST_METRICS)}",
            self.metric,
        )
        check(self.rule in RULES, "test.rule", f"must be one of {', '.join(RULES)}", self.rule)
        check(self.better in ("higher", "lower"), "test.better", "must be higher or lower", self.better)
        check(self.rule == "superiority" or (self.margin or 0) > 0, "test.margin", "must be > 0", self.margin)


@dataclass
class CompareScale(ScaleBase):
    baseline: str = MISSING  # shared.arms
    contender: str = MISSING
    tests: list[Test] = MISSING
    relative: bool = MISSING  # also show the relative difference of the test error (L&H's "15% lower")

    def __post_init__(self) -> None:
        super().__post_init__()
        check(
            self.baseline != self.contender,
            "study.contender",
            "must differ from study.baseline",
            self.contender,
        )


# ------------------------------------------------------------------------------------------------ run
def run_compare(ctx: Context) -> tuple[list[dict], list[dict], dict]:
    scale, rows, curves, chosen = ctx.study.scale, [], [], {}
    for name in (scale.baseline, scale.contender):
        choice, grid = choose(ctx, name)
        if grid is not None:
            rows += run_rows(grid, ctx.study.name, name, "select")
        folder = confirm_sweep(ctx, name, choice)
        rows += run_rows(folder, ctx.study.name, name, "confirm")
        curves += curve_rows(folder, ctx.study.name, name)
        chosen[name] = {"lr": choice.lr, "weight_decay": choice.weight_decay, "cells": choice.cells}
    tests = [OmegaConf.to_container(t) for t in scale.tests]
    arms = {name: arm_info(ctx.arm(name)) for name in (scale.baseline, scale.contender)}
    return (
        rows,
        curves,
        {
            "arms": arms,
            "baseline": scale.baseline,
            "contender": scale.contender,
            "chosen": chosen,
            "tests": tests,
            "relative": scale.relative,
        },
    )


def planned_sweeps(ctx: Context) -> list[tuple[str, list[str]]]:
    """Each arm's grid (when it has one), then its seeds at the grid's first cell."""
    scale, sweeps = ctx.study.scale, []
    for name in (scale.baseline, scale.contender):
        arm = ctx.arm(name)
        first_cell = Choice(number_text(arm.lr[0]), number_text(arm.weight_decay[0]), 1)
        sweeps += [(f"grid-{name}", grid_args(ctx, name))] if arm.searched else []
        sweeps.append((f"seeds-{name}", confirm_args(ctx, name, first_cell)))
    return sweeps


# ------------------------------------------------------------------------------------------------ verdict
def metric_values(runs: pd.DataFrame, test: dict) -> pd.Series:
    """The per-seed numbers a test compares, in report units (accuracy, error: points; others as they are)."""
    metric = first(runs["metric"])
    column = test["metric"]
    if column == "test_error":
        return 100 - points(runs["test_metric"], metric)
    if column in ("test_metric", "val_metric"):
        return points(runs[column], metric)
    return runs[column]


def apply_test(
    test: dict, baseline: pd.Series, contender: pd.Series, labels: tuple[str, str], unit: str
) -> Verdict:
    base, cont = baseline.dropna(), contender.dropna()
    name = f"{test['metric']} {labels[1]} - {labels[0]}"
    return welch_rule(cont, base, name, lambda diff: rule_of(test, diff, name, labels, unit))


def rule_of(test: dict, diff: Estimate, name: str, labels: tuple[str, str], unit: str) -> Verdict:
    if test["rule"] == "superiority":
        return superiority(diff, test["better"], name, unit)
    signed = diff if test["better"] == "higher" else Estimate(-diff.value, -diff.high, -diff.low, diff.df)
    if test["rule"] == "no_gain":
        return no_gain(
            signed, test["margin"], f"gain of {labels[1]} over {labels[0]} in {test['metric']}", unit
        )
    return equivalence(diff, test["margin"], name, unit)


def metric_unit(test: dict, metric: str) -> str:
    if test["metric"] in ("test_metric", "val_metric", "test_error"):
        return "points" if metric in ACC_METRICS else metric
    return {"epochs_to_target": "epochs", "time_to_target_s": "s"}.get(test["metric"], "")


def analyze_compare(runs: pd.DataFrame, curves: pd.DataFrame, settings: dict) -> Section:
    base, cont = settings["baseline"], settings["contender"]
    labels = (settings["arms"][base]["label"], settings["arms"][cont]["label"])
    metric = first(runs["metric"])
    confirm = {a: runs[(runs["arm"] == a) & (runs["role"] == "confirm")] for a in (base, cont)}
    verdicts = []
    for test in settings["tests"]:
        done = {a: finished(confirm[a]) for a in (base, cont)}
        values = {a: metric_values(done[a], test) for a in (base, cont)}
        if test["metric"] in ("epochs_to_target", "time_to_target_s"):
            verdicts.append(target_test(test, done, values, labels, metric_unit(test, metric), (base, cont)))
        else:
            verdicts.append(apply_test(test, values[base], values[cont], labels, metric_unit(test, metric)))
    verdict = verdicts[0] if len(verdicts) == 1 else combine(verdicts, "every part")
    left_out = {a: len(confirm[a]) - len(finished(confirm[a])) for a in (base, cont)}
    if any(left_out.values()):  # a diverged or failed seed is not silently dropped
        verdict = Verdict(
            verdict.outcome,
            f"{verdict.rule}; seeds that did not finish, left out: {labels[0]} {left_out[base]}, "
            f"{labels[1]} {left_out[cont]}",
        )
    timed = runs["epochs_to_target"].notna().any()  # a study whose runs have a target shows the times to it
    table = [compare_row(settings, a, runs, metric, timed) for a in (base, cont)]
    header = [
        "optimizer",
        "chosen on validation (lr, wd)",
        "grid cells",
        f"best val, seed 0 ({unit_name(metric)})",
        "seeds",
        f"test {metric_name(metric)} ({unit_name(metric)})",
    ]
    header += ["epochs to target (runs that reached it)", "seconds to target"] if timed else []
    body = [claim_line(settings), "", compare_design(settings, runs), "", markdown(header, table), ""]
    ours = "; ".join(
        f"{labels[i]} test {metric_name(metric)} {mean_std_text(points(finished(confirm[a])['test_metric'], metric))}"
        for i, a in enumerate((base, cont))
    )
    if settings.get("relative"):
        rel = relative_error(confirm[base], confirm[cont], metric)
        body += [
            f"Relative difference of the mean test error, 1 - error({labels[1]}) / error({labels[0]}): "
            f"{rel:+.1%} (the source: 15% after 1,800 epochs).",
            "",
        ]
        ours += f"; relative error difference {rel:+.1%}"
    return Section(
        settings["study"],
        title(settings),
        verdict,
        ours,
        body,
        f"{settings['study']}.png",
        lambda path: plot_compare(path, runs, curves, settings),
    )


def target_test(
    test: dict, done: dict, values: dict, labels: tuple[str, str], unit: str, arms: tuple[str, str]
) -> Verdict:
    """Time or epochs to target, over the runs that reached it; a run that never did is named, and a side
    where most runs missed it makes the comparison inconclusive (the times of the others are biased low)."""
    base, cont = arms
    reached = {a: values[a].notna().sum() for a in arms}
    total = {a: len(done[a]) for a in arms}
    if reached[base] < total[base] or reached[cont] < total[cont]:
        note = (
            f"{test['metric']}: {labels[0]} reached the target in {reached[base]}/{total[base]} runs, "
            f"{labels[1]} in {reached[cont]}/{total[cont]}"
        )
        if min(total.values()) < MIN_SEEDS:
            return Verdict(INCONCLUSIVE, note + f"; fewer than {MIN_SEEDS} finished runs on a side")
        if reached[cont] == total[cont] and reached[base] == 0:
            return Verdict(
                SUPPORTED if test["better"] == "lower" else NOT_SUPPORTED, note + " (only one side got there)"
            )
        if reached[base] == total[base] and reached[cont] == 0:
            return Verdict(
                NOT_SUPPORTED if test["better"] == "lower" else SUPPORTED, note + " (only one side got there)"
            )
        if (
            min(reached.values()) < MIN_SEEDS
            or reached[base] < total[base] / 2
            or reached[cont] < total[cont] / 2
        ):
            return Verdict(INCONCLUSIVE, note + "; too few reached it to compare")
    return apply_test(test, values[base], values[cont], labels, unit)


def relative_error(base: pd.DataFrame, cont: pd.DataFrame, metric: str) -> float:
    err = {k: 100 - points(finished(v)["test_metric"], metric).mean() for k, v in (("b", base), ("c", cont))}
    return 1 - err["c"] / err["b"] if err["b"] else math.nan


def compare_row(settings: dict, arm: str, runs: pd.DataFrame, metric: str, timed: bool) -> list[str]:
    chosen = settings["chosen"][arm]
    info = settings["arms"][arm]
    grid = finished(runs, arm=arm, role="select")
    confirm = runs[(runs["arm"] == arm) & (runs["role"] == "confirm")]
    done = finished(confirm)
    best = points(grid["val_metric"], metric).max() if not grid.empty else math.nan
    reached = done["epochs_to_target"].notna().sum()
    seeds = ", ".join(str(s) for s in sorted(done["seed"], key=int))
    status = "" if len(done) == len(confirm) else f" ({len(confirm) - len(done)} not finished)"
    row = [
        info["label"],
        f"{chosen['lr']}, {chosen['weight_decay']} ({info['wd_name']})",
        str(chosen["cells"]),
        "" if math.isnan(best) else f"{best:.2f}",
        seeds + status,
        mean_std_text(points(done["test_metric"], metric)),
    ]
    if timed:
        row += [
            f"{mean_std_text(done['epochs_to_target'])} ({reached}/{len(done)})",
            mean_std_text(done["time_to_target_s"], 1),
        ]
    return row


def compare_design(settings: dict, runs: pd.DataFrame) -> str:
    parts = []
    for arm in (settings["baseline"], settings["contender"]):
        info, chosen = settings["arms"][arm], settings["chosen"][arm]
        how = (
            f"grid lr {values_text(info['lr'])} x {info['wd_name']} {values_text(info['weight_decay'])}, seed 0, "
            "best validation metric"
            if chosen["cells"] > 1
            else "its published setting (not searched)"
        )
        parts.append(f"{info['label']} (`{' '.join(info['overrides'])}`): {how}")
    return (
        "Design: "
        + "; ".join(parts)
        + f". Then seeds {values_text(settings['seeds'])} at each chosen setting, "
        "each reading the test set once at its end. Tests: "
        + "; ".join(test_text(t) for t in settings["tests"])
        + "."
    )


def test_text(test: dict) -> str:
    margin = f", margin {test['margin']:g}" if test.get("margin") else ""
    return f"{test['metric']} ({test['rule']}{margin}, {test['better']} is better)"


# ------------------------------------------------------------------------------------------------ figure
def plot_compare(path: Path, runs: pd.DataFrame, curves: pd.DataFrame, settings: dict) -> None:
    fig = new_figure((12.0, 4.6))
    left, right = fig.subplots(1, 2, width_ratios=[2, 3])
    metric = first(runs["metric"])
    for i, arm in enumerate((settings["baseline"], settings["contender"])):
        label = settings["arms"][arm]["label"]
        done = finished(runs, arm=arm, role="confirm")
        values = points(done["test_metric"], metric)
        left.scatter([i] * len(values), values, color=f"C{i}", zorder=3, label=f"{label}: a seed each")
        if len(values) >= 2:
            half = t_quantile(len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values))
            left.errorbar(
                i + 0.15,
                values.mean(),
                yerr=half,
                fmt="D",
                color="black",
                capsize=5,
                label="mean, 95% CI" if i == 0 else None,
            )
        part = curves[curves["arm"] == arm]
        if not part.empty:
            stats = part.groupby("epoch")["val_metric"].agg(["mean", "std"]).reset_index()
            mean, std = points(stats["mean"], metric), points(stats["std"].fillna(0), metric)
            right.plot(stats["epoch"], mean, color=f"C{i}", marker="o", ms=3, label=label)
            right.fill_between(stats["epoch"], mean - std, mean + std, color=f"C{i}", alpha=0.2, lw=0)
    left.set_xticks(
        [0, 1], [settings["arms"][a]["label"] for a in (settings["baseline"], settings["contender"])]
    )
    left.set_xlim(-0.5, 1.7)
    left.set_ylabel(f"test {metric_name(metric)} ({unit_name(metric)})")
    left.set_title("test metric per seed (each run reads the test set once)", fontsize=9.5)
    left.legend(fontsize=7.5)
    right.set_xlabel("epoch")
    right.set_ylabel(f"validation {metric_name(metric)} ({unit_name(metric)})")
    if metric not in ACC_METRICS:
        right.set_yscale("log")
    right.set_title("validation curves, mean ± std over seeds", fontsize=9.5)
    right.legend(fontsize=8)
    for ax in (left, right):
        ax.grid(alpha=0.3)
    fig.suptitle(
        wrapped(f"{settings['study']}: {settings['claim']}\n{setting_text(settings)}", 140), fontsize=10.5
    )
    save(fig, path)


KIND = StudyKind(
    scale=CompareScale,
    arms=lambda scale: [scale.baseline, scale.contender],
    sweeps=planned_sweeps,
    run=run_compare,
    analyze=analyze_compare,
)
