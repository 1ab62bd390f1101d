"""Schedules studies: does one-cycle reach a given accuracy in far fewer epochs than the other lr schedules?
(Smith & Topin, super-convergence; fast.ai 2018.)

Runs: one optimizer at a fixed weight decay; each schedule's peak lr chosen on validation at the selection
budget (seed 0), then each schedule at every budget (each its own run to the end of its schedule) with fresh
seeds. Judged: the claim's schedule (the first) at the short budget against every other at the long one: twice
the epochs must give no gain beyond the margin. Drawn: test accuracy per budget, beside the lr selection.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pandas as pd
from omegaconf import MISSING

from runner.config import check
from runner.render import markdown, metric_name, new_figure, save, wrapped
from runner.sweep import key_of, value_of
from studies import StudyKind
from studies.section import (
    ACC_METRICS,
    Section,
    arm_text,
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
from studies.stats import combine, no_gain, welch_rule
from studies.trials import (
    Arm,
    Context,
    ScaleBase,
    arm_info,
    axis,
    best_row,
    curve_rows,
    merged,
    number_text,
    run_rows,
    run_sweep,
)


# ------------------------------------------------------------------------------------------------ config
@dataclass
class SchedulesScale(ScaleBase):
    arm: str = MISSING  # shared.arms: the optimizer of every run
    weight_decay: float = MISSING  # fixed for every run, in the arm's convention
    trials: list[str] = MISSING  # extra overrides of every run of the study
    schedules: list[str] = MISSING  # conf/schedule options; the first is the claim's (one_cycle)
    lr: list[float] = MISSING  # peak lr grid, searched per schedule on validation at select_budget
    select_budget: int = MISSING  # epochs of the selection runs
    budgets: list[int] = MISSING  # epochs of the confirmation runs (one run per budget and seed)
    short: int = MISSING  # the claim's schedule at `short` epochs ...
    long: int = MISSING  # ... against every other at `long` epochs
    margin: float = MISSING  # accuracy points

    def __post_init__(self) -> None:
        super().__post_init__()
        check(
            self.short in self.budgets and self.long in self.budgets,
            "study.short/long",
            "must both be in study.budgets",
            (self.short, self.long),
        )
        check(self.short < self.long, "study.short", "must be < study.long", (self.short, self.long))
        check(self.margin > 0, "study.margin", "must be > 0", self.margin)


# ------------------------------------------------------------------------------------------------ run
def run_schedules(ctx: Context) -> tuple[list[dict], list[dict], dict]:
    scale, rows, curves, chosen = ctx.study.scale, [], [], {}
    arm = ctx.arm(scale.arm)
    for schedule in scale.schedules:
        select = run_sweep(ctx, f"schedule-{schedule}-lr", schedule_select_args(ctx, schedule))
        rows += run_rows(select, ctx.study.name, schedule, "select")
        lr = best_row(select, ("optimizer.lr",))["optimizer.lr"]
        chosen[schedule] = lr
        confirm = run_sweep(ctx, f"schedule-{schedule}-budgets", schedule_budget_args(ctx, schedule, lr))
        rows += run_rows(confirm, ctx.study.name, schedule, "confirm")
        curves += curve_rows(confirm, ctx.study.name, schedule, "trainer.epochs")
    return (
        rows,
        curves,
        {
            "arm": arm_info(arm),
            "weight_decay": scale.weight_decay,
            "schedules": list(scale.schedules),
            "chosen": chosen,
            "budgets": list(scale.budgets),
            "short": scale.short,
            "long": scale.long,
            "margin": scale.margin,
            "select_budget": scale.select_budget,
            "lr": list(scale.lr),
            "target": target_of(ctx, arm),
        },
    )


def schedule_common(ctx: Context, schedule: str) -> list[str]:
    scale = ctx.study.scale
    arm = ctx.arm(scale.arm)
    return [
        *ctx.base(arm).trials,
        *arm.overrides,
        *scale.trials,
        f"schedule={schedule}",
        f"optimizer.weight_decay={number_text(scale.weight_decay)}",
    ]


def schedule_select_args(ctx: Context, schedule: str) -> list[str]:
    """The schedule's peak lr, searched on validation at the selection budget (seed 0)."""
    scale = ctx.study.scale
    return [
        *schedule_common(ctx, schedule),
        *ctx.base(ctx.arm(scale.arm)).select,
        f"trainer.epochs={scale.select_budget}",
        axis("optimizer.lr", scale.lr),
    ]


def schedule_budget_args(ctx: Context, schedule: str, lr: str) -> list[str]:
    """The schedule at its chosen lr, one run per budget and seed (each to the end of its own schedule)."""
    scale = ctx.study.scale
    return [
        *schedule_common(ctx, schedule),
        *ctx.base(ctx.arm(scale.arm)).confirm,
        f"optimizer.lr={lr}",
        axis("trainer.epochs", list(scale.budgets)),
        axis("seed", ctx.seeds),
    ]


def target_of(ctx: Context, arm: Arm) -> str:
    found = [
        value_of(o)
        for o in merged([*ctx.base(arm).confirm, *ctx.plan.extra])
        if key_of(o) == "trainer.target"
    ]
    return found[-1] if found else ""


def planned_sweeps(ctx: Context) -> list[tuple[str, list[str]]]:
    """Each schedule's lr selection, then its budgets at the first lr of the grid."""
    scale = ctx.study.scale
    return [
        sweep
        for schedule in scale.schedules
        for sweep in (
            (f"schedule-{schedule}-lr", schedule_select_args(ctx, schedule)),
            (
                f"schedule-{schedule}-budgets",
                schedule_budget_args(ctx, schedule, number_text(scale.lr[0])),
            ),
        )
    ]


# ------------------------------------------------------------------------------------------------ verdict
def analyze_schedules(runs: pd.DataFrame, curves: pd.DataFrame, settings: dict) -> Section:
    metric = first(runs["metric"])
    claimed, others = settings["schedules"][0], settings["schedules"][1:]
    short, long = settings["short"], settings["long"]
    confirm = runs[runs["role"] == "confirm"]
    fast = at_budget(confirm, claimed, short)
    verdicts = []
    for other in others:
        what = f"test {metric_name(metric)} of {other} at {long} epochs - {claimed} at {short}"
        rule = partial(no_gain, margin=settings["margin"], what=what, unit="points")
        verdicts.append(welch_rule(at_budget(confirm, other, long), fast, what, rule))
    verdict = combine(verdicts, f"{claimed} at {short} epochs against every other schedule at {long}")
    table = []
    for schedule in settings["schedules"]:
        for budget in settings["budgets"]:
            part = confirm[(confirm["arm"] == schedule) & (confirm["epochs"] == budget)]
            done = finished(part)
            reached = done["epochs_to_target"].notna().sum()
            table.append(
                [
                    schedule,
                    settings["chosen"][schedule],
                    str(budget),
                    f"{len(done)}/{len(part)}",
                    mean_std_text(points(done["val_metric"], metric)),
                    mean_std_text(points(done["test_metric"], metric)),
                    f"{mean_std_text(done['epochs_to_target'])} ({reached}/{len(done)})",
                ]
            )
    header = [
        "schedule",
        "lr (chosen on val)",
        "epochs",
        "seeds finished",
        f"val {metric_name(metric)} ({unit_name(metric)})",
        f"test {metric_name(metric)} ({unit_name(metric)})",
        f"epochs to {settings['target'] or 'target'} (runs that reached it)",
    ]
    body = [
        claim_line(settings),
        "",
        f"Design: {arm_text(settings)}, each schedule's peak lr chosen on "
        f"validation among {values_text(settings['lr'])} at {settings['select_budget']} epochs (seed 0); then every "
        f"budget of {values_text(settings['budgets'])} epochs with seeds {values_text(settings['seeds'])}. Each run "
        f'records when it first reaches {settings["target"] or "the target"} on validation. Our test of "far fewer '
        f'epochs": {claimed} with {short} epochs against each other schedule with {long}; twice the epochs '
        f"must give no gain beyond the margin ({settings['margin']:g} points).",
        "",
        markdown(header, table),
        "",
    ]
    ours = f"{claimed} at {short} epochs: test {mean_std_text(fast)}; " + "; ".join(
        f"{o} at {long}: {mean_std_text(at_budget(confirm, o, long))}" for o in others
    )
    return Section(
        "schedules",
        title(settings),
        verdict,
        ours,
        body,
        "schedules.png",
        lambda path: plot_schedules(path, runs, settings),
    )


def at_budget(confirm: pd.DataFrame, schedule: str, epochs: int) -> pd.Series:
    """The finished confirmation runs of a schedule at a budget: their test metric in report units."""
    done = finished(confirm, arm=schedule)
    done = done[done["epochs"] == epochs]
    return points(done["test_metric"], first(done["metric"]))


# ------------------------------------------------------------------------------------------------ figure
def plot_schedules(path: Path, runs: pd.DataFrame, settings: dict) -> None:
    fig = new_figure((12.0, 4.6))
    left, right = fig.subplots(1, 2)
    metric = first(runs["metric"])
    for i, schedule in enumerate(settings["schedules"]):
        done = finished(runs, arm=schedule, role="confirm")
        stats = done.groupby("epochs")["test_metric"].agg(["mean", "std"]).reset_index()
        mean, std = points(stats["mean"], metric), points(stats["std"].fillna(0), metric)
        left.errorbar(
            stats["epochs"],
            mean,
            yerr=std,
            marker="o",
            capsize=4,
            color=f"C{i}",
            label=f"{schedule} (lr {settings['chosen'][schedule]})",
        )
        select = finished(runs, arm=schedule, role="select").sort_values("lr")
        right.plot(
            select["lr"], points(select["val_metric"], metric), marker="o", color=f"C{i}", label=schedule
        )
    target = settings["target"]
    if target and ">=" in target and metric in ACC_METRICS:
        left.axhline(
            100 * float(target.split(">=")[1]), color="grey", ls="--", lw=1, label=f"target {target} (val)"
        )
    left.set_xscale("log", base=2)
    left.set_xticks(settings["budgets"], [str(b) for b in settings["budgets"]])
    left.set_xlabel("training budget (epochs; each point is its own run to the end of its schedule)")
    left.set_ylabel(f"test {metric_name(metric)} ({unit_name(metric)}), mean ± std over seeds")
    left.set_title("accuracy at equal budgets", fontsize=9.5)
    right.set_xscale("log")
    right.set_xlabel("peak learning rate (per step)")
    right.set_ylabel(f"validation {metric_name(metric)} ({unit_name(metric)}), seed 0")
    right.set_title(f"lr selection at {settings['select_budget']} epochs", fontsize=9.5)
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7.5)
    fig.suptitle(wrapped(f"schedules: {settings['claim']}\n{setting_text(settings)}", 140), fontsize=10.5)
    save(fig, path)


KIND = StudyKind(
    scale=SchedulesScale,
    arms=lambda scale: [scale.arm],
    sweeps=planned_sweeps,
    run=run_schedules,
    analyze=analyze_schedules,
)
