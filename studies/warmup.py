"""Warmup studies: does a warmup keep an adaptive optimizer stable at a high learning rate? (Ma & Yarats,
arXiv:1910.04209: the untuned linear warmup over 2 / (1 - beta2) steps is about as good as RAdam.)

Runs: one optimizer at a fixed weight decay, every warmup x peak lr x seed. Judged: a run is unstable when it
diverged or ends below a validation threshold, and a diverged run counts at chance in the accuracy; each
warmup must beat the baseline (the first, none) on test accuracy at the largest lr. Drawn: the final accuracy
per lr, beside the share of unstable runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import MISSING

from runner.render import markdown, metric_name, new_figure, save, wrapped
from studies import StudyKind
from studies.section import (
    Section,
    arm_text,
    claim_line,
    first,
    mean_std_text,
    points,
    setting_text,
    title,
    unit_name,
    values_text,
)
from studies.stats import INCONCLUSIVE, Verdict, combine, superiority, welch_rule
from studies.trials import Context, ScaleBase, arm_info, axis, number_text, run_rows, run_sweep


# ------------------------------------------------------------------------------------------------ config
@dataclass
class WarmupScale(ScaleBase):
    arm: str = MISSING  # shared.arms: the optimizer of every run
    weight_decay: float = MISSING  # fixed for every run, in the arm's convention
    trials: list[str] = MISSING  # extra overrides of every run (schedule, batch size, epochs)
    warmups: list[str] = MISSING  # schedule.warmup values; the first is the baseline (none)
    lr: list[float] = MISSING  # peak lrs, each run with every warmup and seed
    chance: float = MISSING  # accuracy counted for a diverged run (a useless model: 1 / classes)
    unstable_below: float = MISSING  # a run is unstable when it diverged or ends below this val accuracy


# ------------------------------------------------------------------------------------------------ run
def run_warmup(ctx: Context) -> tuple[list[dict], list[dict], dict]:
    scale = ctx.study.scale
    arm = ctx.arm(scale.arm)
    folder = run_sweep(ctx, "warmup", warmup_args(ctx))
    rows = run_rows(folder, ctx.study.name, scale.arm, "confirm", "schedule.warmup")
    return (
        rows,
        [],
        {
            "arm": arm_info(arm),
            "weight_decay": scale.weight_decay,
            "warmups": list(scale.warmups),
            "lr": list(scale.lr),
            "chance": scale.chance,
            "unstable_below": scale.unstable_below,
            "trials": list(scale.trials),
        },
    )


def warmup_args(ctx: Context) -> list[str]:
    """Every warmup x peak lr x seed, at the fixed weight decay."""
    scale = ctx.study.scale
    arm = ctx.arm(scale.arm)
    return [
        *ctx.base(arm).trials,
        *ctx.base(arm).confirm,
        *arm.overrides,
        *scale.trials,
        f"optimizer.weight_decay={number_text(scale.weight_decay)}",
        axis("schedule.warmup", list(scale.warmups)),
        axis("optimizer.lr", scale.lr),
        axis("seed", ctx.seeds),
    ]


def planned_sweeps(ctx: Context) -> list[tuple[str, list[str]]]:
    return [("warmup", warmup_args(ctx))]


# ------------------------------------------------------------------------------------------------ verdict
def warmup_table(runs: pd.DataFrame, settings: dict) -> pd.DataFrame:
    """Per (warmup, lr): unstable runs (diverged, or validation below the threshold), and the final test metric
    with a diverged run counted at chance."""
    metric = first(runs["metric"])
    out = []
    for (warmup, lr), part in runs.groupby(["variant", "lr"], sort=True):
        ended = part[part["status"].isin(["finished", "diverged"])]
        diverged = ended["status"] == "diverged"
        unstable = diverged | (ended["val_metric"] < settings["unstable_below"])
        test = points(ended["test_metric"].where(~diverged, settings["chance"]), metric)
        out.append(
            {
                "warmup": warmup,
                "lr": lr,
                "runs": len(ended),
                "diverged": int(diverged.sum()),
                "unstable": int(unstable.sum()),
                "test": list(test),
            }
        )
    return pd.DataFrame(out, columns=["warmup", "lr", "runs", "diverged", "unstable", "test"])


def analyze_warmup(runs: pd.DataFrame, curves: pd.DataFrame, settings: dict) -> Section:
    metric = first(runs["metric"])
    table = warmup_table(runs, settings)
    baseline, others = settings["warmups"][0], settings["warmups"][1:]
    top = max(settings["lr"])
    at_top = table[table["lr"] == top].set_index("warmup")
    verdicts = []
    for other in others:
        if baseline not in at_top.index or other not in at_top.index:
            verdicts.append(Verdict(INCONCLUSIVE, f"no runs at lr {top:g}"))
            continue
        what = f"test {metric_name(metric)} at lr {top:g}, warmup {other} - {baseline}"
        rule = partial(superiority, claimed="higher", what=what, unit="points")
        verdicts.append(welch_rule(at_top.loc[other, "test"], at_top.loc[baseline, "test"], what, rule))
    verdict = verdicts[0] if len(verdicts) == 1 else combine(verdicts, "every warmup")
    rows = [
        [r.warmup, f"{r.lr:g}", f"{r.unstable}/{r.runs}", str(r.diverged), mean_std_text(r.test)]
        for r in table.itertuples()
    ]
    body = [
        claim_line(settings),
        "",
        f"Design: {arm_text(settings, settings['trials'])} at peak lrs "
        f"{values_text(settings['lr'])}, with schedule.warmup = {', '.join(settings['warmups'])} (linear: the untuned "
        f"2 / (1 - beta2) steps of Ma & Yarats), seeds {values_text(settings['seeds'])}. A run is unstable when it "
        f"diverged (a non-finite loss) or ends below {100 * settings['unstable_below']:g}% validation accuracy; a "
        f"diverged run counts as chance ({100 * settings['chance']:g}%) in the accuracy. Test: the accuracy at the "
        f"largest lr ({top:g}).",
        "",
        markdown(
            [
                "warmup",
                "peak lr",
                "unstable runs",
                "diverged",
                f"test {metric_name(metric)} ({unit_name(metric)})",
            ],
            rows,
        ),
        "",
    ]
    ours = "; ".join(
        f"lr {top:g}, warmup {w}: unstable {at_top.loc[w, 'unstable']}/{at_top.loc[w, 'runs']}, test "
        f"{mean_std_text(at_top.loc[w, 'test'])}"
        for w in settings["warmups"]
        if w in at_top.index
    )
    return Section(
        "warmup",
        title(settings),
        verdict,
        ours,
        body,
        "warmup.png",
        lambda path: plot_warmup(path, table, settings, metric),
    )


# ------------------------------------------------------------------------------------------------ figure
def plot_warmup(path: Path, table: pd.DataFrame, settings: dict, metric: str) -> None:
    fig = new_figure((12.0, 4.4))
    left, right = fig.subplots(1, 2)
    lrs = sorted(table["lr"].unique())
    width = 0.8 / max(len(settings["warmups"]), 1)
    for i, warmup in enumerate(settings["warmups"]):
        part = table[table["warmup"] == warmup].set_index("lr").reindex(lrs)
        means = [np.mean(t) if isinstance(t, list) and t else np.nan for t in part["test"]]
        stds = [np.std(t, ddof=1) if isinstance(t, list) and len(t) > 1 else 0 for t in part["test"]]
        left.errorbar(lrs, means, yerr=stds, marker="o", capsize=4, color=f"C{i}", label=f"warmup {warmup}")
        share = (part["unstable"] / part["runs"]).fillna(0)
        right.bar(
            np.arange(len(lrs)) + (i - (len(settings["warmups"]) - 1) / 2) * width,
            share,
            width,
            color=f"C{i}",
            label=f"warmup {warmup}",
        )
    left.set_xscale("log")
    left.set_xlabel("peak learning rate (per step)")
    left.set_ylabel(f"test {metric_name(metric)} ({unit_name(metric)}), diverged = chance")
    left.set_title("final accuracy, mean ± std over seeds", fontsize=9.5)
    right.set_xticks(range(len(lrs)), [f"{lr:g}" for lr in lrs])
    right.set_xlabel("peak learning rate (per step)")
    right.set_ylabel("fraction of runs unstable")
    right.set_ylim(0, 1.05)
    right.set_title(
        f"unstable: diverged, or validation below {100 * settings['unstable_below']:g}%", fontsize=9.5
    )
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(wrapped(f"warmup: {settings['claim']}\n{setting_text(settings)}", 140), fontsize=10.5)
    save(fig, path)


KIND = StudyKind(
    scale=WarmupScale,
    arms=lambda scale: [scale.arm],
    sweeps=planned_sweeps,
    run=run_warmup,
    analyze=analyze_warmup,
)
