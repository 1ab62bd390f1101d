"""Compare studies: does one optimizer (the contender) beat, match or give no gain over another (the
baseline), each at its own best setting? (adamw_vs_adam, amsgrad, sgd_vs_adamw, lm_optimizers.)

Runs: each arm's setting is the best cell of its lr x wd grid (the mean validation metric over the grid
seeds), or its published setting when it has no grid; then fresh seeds at that setting, added in looks (each
run reads the test set once, at its end) until the comparison is decided, futile or at its cap. Judged: first
the mechanism check (weight decay must act at the chosen settings; NT-ASGD must start averaging): failing, the
study is "not tested at this budget"; then the claim's rule (superiority with the source's effect, no gain,
non-inferiority) on the primary interval at the last look's level, with the time to a target beside it where
the claim is one of speed. Drawn: the test metric per seed with its mean and CI, beside the validation curves.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import MISSING, OmegaConf

from runner.config import check
from runner.render import markdown, metric_name, new_figure, save, wrapped
from studies import StudyKind
from studies.looks import (
    Check,
    Mechanism,
    Test,
    claim_of,
    compared,
    crossings,
    design_text,
    mechanism_check,
    not_tested,
    seed_values,
)
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
from studies.sequential import Decision, Sequential, time_to_target
from studies.stats import combine, t_quantile
from studies.trials import (
    Choice,
    Context,
    ScaleBase,
    arm_info,
    choose,
    confirm_args,
    confirm_sweep,
    curve_rows,
    frame,
    grid_args,
    number_text,
    run_rows,
)


# ------------------------------------------------------------------------------------------------ config
@dataclass
class Timing:
    """ "A bit faster": epochs to a validation target, every confirmation run counted (censored if never)."""

    target: float = (
        MISSING  # validation metric as logged (accuracy: a fraction) whose first crossing is timed
    )
    better: str = "higher"  # which side of the target is reached


@dataclass
class CompareScale(ScaleBase):
    baseline: str = MISSING  # shared.arms
    contender: str = MISSING
    test: Test = MISSING  # the claim's comparison, decided in looks
    timing: Timing | None = None  # also: time to a target (a claim of speed), judged on the same seeds
    mechanism: Mechanism = MISSING  # what must act at this budget for the test to test the claim
    relative: bool = MISSING  # also show the relative difference of the test error (L&H's "15% lower")

    def __post_init__(self) -> None:
        super().__post_init__()
        check(
            self.baseline != self.contender,
            "study.contender",
            "must differ from study.baseline",
            self.contender,
        )
        kind = getattr(self.mechanism, "kind", None)
        check(
            kind != "edges", "mechanism.kind", "edges is a decoupling study's check (its grids' edges)", kind
        )


# ------------------------------------------------------------------------------------------------ run
def run_compare(ctx: Context) -> tuple[list[dict], list[dict], dict]:
    """Each arm's setting, then seeds look by look until the comparison stops (or at once, one look, when the
    mechanism did not act: its verdict is "not tested", the look only shows the numbers)."""
    scale, rows, chosen = ctx.study.scale, [], {}
    arms, choices = (scale.baseline, scale.contender), {}
    for name in arms:
        choices[name], grid = choose(ctx, name)
        rows += run_rows(grid, ctx.study.name, name, "select") if grid is not None else []
        chosen[name] = {
            "lr": choices[name].lr,
            "weight_decay": choices[name].weight_decay,
            "cells": choices[name].cells,
        }
    settings = {
        "arms": {name: arm_info(ctx.arm(name)) for name in arms},
        "baseline": scale.baseline,
        "contender": scale.contender,
        "chosen": chosen,
        "test": OmegaConf.to_container(scale.test),
        "timing": OmegaConf.to_container(scale.timing) if scale.timing else None,
        "mechanism": OmegaConf.to_container(scale.mechanism),
        "sequencing": ctx.sequencing,
        "stages": ctx.stages,
        "relative": scale.relative,
    }
    confirm, curves = [], []
    for k in range(len(ctx.stages)):
        for name in arms:
            folder = confirm_sweep(ctx, name, choices[name], k)
            confirm += run_rows(folder, ctx.study.name, name, "confirm")
            curves += curve_rows(folder, ctx.study.name, name)
        table = frame(rows + confirm)
        if looks_of(table, settings).stop or not mechanism_check(settings["mechanism"], table, settings).held:
            break
    return rows + confirm, curves, settings


def planned_sweeps(ctx: Context) -> list[tuple[str, list[str]]]:
    """Each arm's grid (when it has one), then its first look's seeds at the grid's first cell."""
    scale, sweeps = ctx.study.scale, []
    for name in (scale.baseline, scale.contender):
        arm = ctx.arm(name)
        first_cell = Choice(number_text(arm.lr[0]), number_text(arm.weight_decay[0]), 1)
        sweeps += [(f"grid-{name}", grid_args(ctx, name))] if arm.searched else []
        sweeps.append((f"seeds-{name}-look1", confirm_args(ctx, name, first_cell, ctx.stage_seeds(0))))
    return sweeps


# ------------------------------------------------------------------------------------------------ verdict
def labels_of(settings: dict) -> tuple[str, str]:
    return tuple(settings["arms"][settings[role]]["label"] for role in ("baseline", "contender"))


def unit_of(test: dict, metric: str) -> str:
    return "points" if metric in ACC_METRICS else metric


def looks_of(runs: pd.DataFrame, settings: dict) -> Sequential:
    """The study's sequential comparison on the confirmation seeds its CSV holds."""
    test, (base_label, cont_label) = settings["test"], labels_of(settings)
    metric = first(runs["metric"])
    claim = claim_of(test, f"{test['metric']} {cont_label} - {base_label}", unit_of(test, metric))
    return compared(
        seed_values(runs, settings["contender"], test),
        seed_values(runs, settings["baseline"], test),
        claim,
        settings["sequencing"],
        settings["stages"],
    )


def timing_of(runs: pd.DataFrame, curves: pd.DataFrame, settings: dict, n: int) -> Decision | None:
    """Epochs to the validation target over the first n seeds of each arm, every run counted."""
    timing = settings.get("timing")
    if not timing or n < 1:
        return None
    seeds = settings["sequencing"]["first_seed"] + np.arange(n)
    runs_of = {
        role: crossings(curves, settings[role], [int(s) for s in seeds], timing["target"], timing["better"])
        for role in ("contender", "baseline")
    }
    base_label, cont_label = labels_of(settings)
    return time_to_target(
        runs_of["contender"],
        runs_of["baseline"],
        f"epochs to validation {timing['target']:g}, {cont_label} vs {base_label}",
        "epochs",
    ).decision


def verdict_of(
    runs: pd.DataFrame, curves: pd.DataFrame, settings: dict
) -> tuple[Decision, Sequential, Check]:
    mechanism = mechanism_check(settings["mechanism"], runs, settings)
    looks = looks_of(runs, settings)
    if not mechanism.held:
        return not_tested(mechanism), looks, mechanism
    decision = looks.decision
    timed = timing_of(runs, curves, settings, looks.looks[-1].n if looks.looks else 0)
    if timed is not None:
        joined = combine([decision, timed], "both of")
        decision = Decision(
            joined.outcome, joined.rule, decision.seeds if joined.outcome == decision.outcome else None
        )
    return decision, looks, mechanism


def analyze_compare(runs: pd.DataFrame, curves: pd.DataFrame, settings: dict) -> Section:
    base, cont = settings["baseline"], settings["contender"]
    labels = labels_of(settings)
    metric = first(runs["metric"])
    confirm = {a: runs[(runs["arm"] == a) & (runs["role"] == "confirm")] for a in (base, cont)}
    verdict, looks, mechanism = verdict_of(runs, curves, settings)
    timed = bool(settings.get("timing"))
    table = [compare_row(settings, a, runs, metric) for a in (base, cont)]
    header = [
        "optimizer",
        "chosen on validation (lr, wd)",
        "grid cells",
        f"best mean val, grid seeds ({unit_name(metric)})",
        "confirmation seeds run",
        f"test {metric_name(metric)} ({unit_name(metric)})",
    ]
    body = [claim_line(settings), "", compare_design(settings), "", markdown(header, table), ""]
    if mechanism.text:
        body += [f"Mechanism check: {mechanism.text}: **{'held' if mechanism.held else 'failed'}**.", ""]
    body += [looks_table(looks), ""] if looks.looks else []
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
    if timed:
        ours += f"; epochs to validation {settings['timing']['target']:g} in the table"
    return Section(
        settings["study"],
        title(settings),
        verdict,
        ours,
        body,
        f"{settings['study']}.png",
        lambda path: plot_compare(path, runs, curves, settings),
        p_value=looks.p_value if mechanism.held else None,
    )


def looks_table(looks: Sequential) -> str:
    rows = [
        [
            str(look.k + 1),
            str(look.n),
            f"{look.level:.4%}",
            f"{look.paired.value:+.3g} ({look.paired.low:+.3g} to {look.paired.high:+.3g})",
            f"{look.welch.value:+.3g} ({look.welch.low:+.3g} to {look.welch.high:+.3g})",
            look.decision.outcome,
            f"{look.conditional_power:.0%}",
            f"{look.refute_power:.0%}",
        ]
        for look in looks.looks
    ]
    return markdown(
        ["look", "seeds per arm", "CI level", "paired difference (CI)", "Welch difference (CI)", "primary says",
         "conditional power of support", "of refutation"],
        rows,
    )  # fmt: skip


def relative_error(base: pd.DataFrame, cont: pd.DataFrame, metric: str) -> float:
    err = {k: 100 - points(finished(v)["test_metric"], metric).mean() for k, v in (("b", base), ("c", cont))}
    return 1 - err["c"] / err["b"] if err["b"] else math.nan


def compare_row(settings: dict, arm: str, runs: pd.DataFrame, metric: str) -> list[str]:
    chosen = settings["chosen"][arm]
    info = settings["arms"][arm]
    grid = finished(runs, arm=arm, role="select")
    confirm = runs[(runs["arm"] == arm) & (runs["role"] == "confirm")]
    done = finished(confirm)
    cells = (
        grid.groupby(["lr", "weight_decay"])["val_metric"].mean()
        if not grid.empty
        else pd.Series(dtype=float)
    )
    best = float(points(cells, metric).max()) if len(cells) else math.nan
    status = "" if len(done) == len(confirm) else f" ({len(confirm) - len(done)} diverged or failed)"
    return [
        info["label"],
        f"{chosen['lr']}, {chosen['weight_decay']} ({info['wd_name']})",
        str(chosen["cells"]),
        "" if math.isnan(best) else f"{best:.2f}",
        f"{len(confirm)}{status}",
        mean_std_text(points(done["test_metric"], metric)),
    ]


def compare_design(settings: dict) -> str:
    parts = []
    for arm in (settings["baseline"], settings["contender"]):
        info, chosen = settings["arms"][arm], settings["chosen"][arm]
        how = (
            f"grid lr {values_text(info['lr'])} x {info['wd_name']} {values_text(info['weight_decay'])}, each cell "
            "with every grid seed, best mean validation metric"
            if chosen["cells"] > 1
            else "its published setting (not searched)"
        )
        parts.append(f"{info['label']} (`{' '.join(info['overrides'])}`): {how}")
    test = settings["test"]
    rule = test["rule"] + (f", margin {test['margin']:g}" if test.get("margin") else "")
    rule += f", the source's effect {test['effect']:+g}" if test.get("effect") is not None else ""
    timing = settings.get("timing")
    return (
        "Design: "
        + "; ".join(parts)
        + f". Then {design_text(settings['sequencing'], settings['stages'])}; each "
        f"run reads the test set once at its end. Test: {test['metric']} ({rule}, {test['better']} is better)"
        + (f"; a diverged run counts as {test['diverged']:g}" if test.get("diverged") is not None else "")
        + (
            f"; and epochs to validation {timing['target']:g} (interpolated between evaluations, a run that never "
            "reaches it slower than every one that does), on the same seeds"
            if timing
            else ""
        )
        + "."
    )


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
