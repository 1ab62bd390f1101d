"""Schedules studies: does one-cycle reach in far fewer epochs what the other lr schedules need many for?
(Smith & Topin, super-convergence: 10k iterations of one-cycle against about 80k of a piecewise-constant lr.)

Runs: one optimizer at a fixed weight decay; the claim's schedule (the first) at the short budget, every other
at the long one, in the claim's ratio; each schedule's peak lr chosen on validation at its own budget (the
grid seeds), then fresh seeds in looks. Judged: non-inferiority of the claim's schedule at the short budget
against each other schedule at the long one, each a sequential comparison on the same seeds; the claim holds
when every one does. Drawn: test accuracy per schedule at its budget, beside the lr selection.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from omegaconf import MISSING, OmegaConf

from runner.config import check
from runner.render import markdown, metric_name, new_figure, save, wrapped
from studies import StudyKind
from studies.looks import Test, claim_of, compared, design_text, seed_values
from studies.section import (
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
from studies.sequential import Decision, Sequential
from studies.stats import NOT_SUPPORTED, SUPPORTED, combine
from studies.trials import (
    Context,
    ScaleBase,
    arm_info,
    axis,
    best_row,
    frame,
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
    lr: list[float] = MISSING  # peak lr grid, searched per schedule on validation at its own budget
    short: int = MISSING  # epochs of the claim's schedule ...
    long: int = MISSING  # ... and of every other (long / short: the claim's ratio)
    test: Test = MISSING  # claim's schedule at short - other at long, per other schedule

    def __post_init__(self) -> None:
        super().__post_init__()
        check(
            0 < self.short < self.long, "study.short", "must be > 0 and < study.long", (self.short, self.long)
        )


# ------------------------------------------------------------------------------------------------ run
def budget_of(settings, schedule: str) -> int:
    return settings["short"] if schedule == settings["schedules"][0] else settings["long"]


def run_schedules(ctx: Context) -> tuple[list[dict], list[dict], dict]:
    scale, rows, chosen = ctx.study.scale, [], {}
    settings = {
        "arm": arm_info(ctx.arm(scale.arm)),
        "weight_decay": scale.weight_decay,
        "schedules": list(scale.schedules),
        "short": scale.short,
        "long": scale.long,
        "lr": list(scale.lr),
        "test": OmegaConf.to_container(scale.test),
        "sequencing": ctx.sequencing,
        "stages": ctx.stages,
        "trials": list(scale.trials),
        "chosen": chosen,
    }
    for schedule in scale.schedules:
        select = run_sweep(ctx, f"schedule-{schedule}-lr", select_args(ctx, schedule))
        rows += run_rows(select, ctx.study.name, schedule, "select")
        chosen[schedule] = best_row(select, ("optimizer.lr",))["optimizer.lr"]
    confirm = []
    for k in range(len(ctx.stages)):
        for schedule in scale.schedules:
            folder = run_sweep(
                ctx, f"schedule-{schedule}-look{k + 1}", confirm_args(ctx, schedule, chosen[schedule], k)
            )
            confirm += run_rows(folder, ctx.study.name, schedule, "confirm")
        if all(c.stop for c in comparisons(frame(rows + confirm), settings)):
            break
    return rows + confirm, [], settings


def common_args(ctx: Context, schedule: str) -> list[str]:
    scale = ctx.study.scale
    arm = ctx.arm(scale.arm)
    budget = scale.short if schedule == scale.schedules[0] else scale.long
    return [
        *ctx.base(arm).trials,
        *arm.overrides,
        *scale.trials,
        f"schedule={schedule}",
        f"optimizer.weight_decay={number_text(scale.weight_decay)}",
        f"trainer.epochs={budget}",
    ]


def select_args(ctx: Context, schedule: str) -> list[str]:
    """The schedule's peak lr, searched on validation at its own budget with the grid seeds."""
    scale = ctx.study.scale
    return [
        *common_args(ctx, schedule),
        *ctx.base(ctx.arm(scale.arm)).select,
        f"trainer.eval_every={scale.short if schedule == scale.schedules[0] else scale.long}",
        axis("optimizer.lr", scale.lr),
        axis("seed", ctx.grid_seeds),
    ]


def confirm_args(ctx: Context, schedule: str, lr: str, k: int) -> list[str]:
    """The schedule at its chosen lr and budget, look k's new seeds."""
    scale = ctx.study.scale
    return [
        *common_args(ctx, schedule),
        *ctx.base(ctx.arm(scale.arm)).confirm,
        f"optimizer.lr={lr}",
        axis("seed", ctx.stage_seeds(k)),
    ]


def planned_sweeps(ctx: Context) -> list[tuple[str, list[str]]]:
    """Each schedule's lr selection, then its first look at the first lr of the grid."""
    first_lr = number_text(ctx.study.scale.lr[0])
    return [
        sweep
        for schedule in ctx.study.scale.schedules
        for sweep in (
            (f"schedule-{schedule}-lr", select_args(ctx, schedule)),
            (f"schedule-{schedule}-look1", confirm_args(ctx, schedule, first_lr, 0)),
        )
    ]


# ------------------------------------------------------------------------------------------------ verdict
def comparisons(runs: pd.DataFrame, settings: dict) -> list[Sequential]:
    """The claim's schedule at the short budget against each other at the long one, on the seeds so far."""
    claimed, test = settings["schedules"][0], settings["test"]
    fast = seed_values(runs, claimed, test)
    out = []
    for other in settings["schedules"][1:]:
        what = f"test accuracy of {claimed} at {settings['short']} epochs - {other} at {settings['long']}"
        out.append(
            compared(
                fast,
                seed_values(runs, other, test),
                claim_of(test, what, "points"),
                settings["sequencing"],
                settings["stages"],
            )  # fmt: skip
        )
    return out


def verdict_of(found: list[Sequential], settings: dict) -> Decision:
    joined = combine(
        [c.decision for c in found],
        f"{settings['schedules'][0]} at {settings['short']} epochs against every other schedule at {settings['long']}",
    )
    return Decision(joined.outcome, joined.rule)


def analyze_schedules(runs: pd.DataFrame, curves: pd.DataFrame, settings: dict) -> Section:
    metric = first(runs["metric"])
    claimed, short, long = settings["schedules"][0], settings["short"], settings["long"]
    found = comparisons(runs, settings)
    verdict = verdict_of(found, settings)
    confirm = runs[runs["role"] == "confirm"]
    table = []
    for schedule in settings["schedules"]:
        part = confirm[confirm["arm"] == schedule]
        done = finished(part)
        table.append(
            [
                schedule,
                settings["chosen"][schedule],
                str(budget_of(settings, schedule)),
                f"{len(done)}/{len(part)}",
                mean_std_text(points(done["val_metric"], metric)),
                mean_std_text(points(done["test_metric"], metric)),
            ]
        )
    header = [
        "schedule",
        "lr (chosen on val)",
        "epochs",
        "seeds finished",
        f"val {metric_name(metric)} ({unit_name(metric)})",
        f"test {metric_name(metric)} ({unit_name(metric)})",
    ]
    test = settings["test"]
    body = [
        claim_line(settings),
        "",
        f"Design: {arm_text(settings)}; {claimed} at {short} epochs, every other schedule at {long} ({long // short}x "
        f"the epochs: the claim's ratio); each schedule's peak lr chosen on validation among "
        f"{values_text(settings['lr'])} at its own budget (the grid seeds); then "
        f"{design_text(settings['sequencing'], settings['stages'])}. Test, per other schedule: {test['rule']} of "
        f"{claimed} at {short} epochs (margin {test['margin']:g} points): a run with {long // short}x fewer epochs "
        "about as good as the longer one.",
        "",
        markdown(header, table),
        "",
    ]
    ours = "; ".join(
        f"{s} at {budget_of(settings, s)} epochs: test {mean_std_text(points(finished(confirm, arm=s)['test_metric'], metric))}"
        for s in settings["schedules"]
    )
    held = [c.p_value for c in found if c.p_value is not None]
    return Section(
        "schedules",
        title(settings),
        verdict,
        ours,
        body,
        "schedules.png",
        lambda path: plot_schedules(path, runs, settings),
        # every part must hold (an intersection-union test): its p-value is the largest part's
        p_value=max(held)
        if len(held) == len(found) and verdict.outcome in (SUPPORTED, NOT_SUPPORTED)
        else None,
    )


# ------------------------------------------------------------------------------------------------ figure
def plot_schedules(path: Path, runs: pd.DataFrame, settings: dict) -> None:
    fig = new_figure((12.0, 4.6))
    left, right = fig.subplots(1, 2)
    metric = first(runs["metric"])
    for i, schedule in enumerate(settings["schedules"]):
        values = points(finished(runs, arm=schedule, role="confirm")["test_metric"], metric)
        budget = budget_of(settings, schedule)
        left.scatter([i] * len(values), values, color=f"C{i}", s=14, zorder=3)
        if len(values):
            left.errorbar(i + 0.2, values.mean(), yerr=values.std(ddof=1) if len(values) > 1 else 0, fmt="D",
                          color="black", capsize=4)  # fmt: skip
        select = finished(runs, arm=schedule, role="select").groupby("lr")["val_metric"].mean()
        right.plot(
            select.index,
            points(select, metric),
            marker="o",
            color=f"C{i}",
            label=f"{schedule} at {budget} epochs",
        )
    left.set_xticks(
        range(len(settings["schedules"])),
        [f"{s}\n{budget_of(settings, s)} epochs" for s in settings["schedules"]],
        fontsize=8,
    )
    left.set_ylabel(f"test {metric_name(metric)} ({unit_name(metric)}): a seed each, mean ± std")
    left.set_title("the claim's schedule at the short budget, the others at the long one", fontsize=9.5)
    right.set_xscale("log")
    right.set_xlabel("peak learning rate (per step)")
    right.set_ylabel(f"validation {metric_name(metric)} ({unit_name(metric)}), mean of the grid seeds")
    right.set_title("lr selection, each schedule at its own budget", fontsize=9.5)
    for ax in (left, right):
        ax.grid(alpha=0.3)
    right.legend(fontsize=7.5)
    fig.suptitle(wrapped(f"schedules: {settings['claim']}\n{setting_text(settings)}", 140), fontsize=10.5)
    save(fig, path)


KIND = StudyKind(
    scale=SchedulesScale,
    arms=lambda scale: [scale.arm],
    sweeps=planned_sweeps,
    run=run_schedules,
    analyze=analyze_schedules,
)
