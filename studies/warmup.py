"""Warmup studies: does a warmup keep an adaptive optimizer stable at a high learning rate? (Ma & Yarats,
arXiv:1910.04209: the untuned linear warmup over 2 / (1 - beta2) steps is about as good as RAdam.)

Runs: one optimizer at a fixed weight decay, every warmup x peak lr x seed (fresh seeds). A run is unstable when
it diverged by the one definition every command uses (runner.loop.diverged: a training loss that is not finite,
or above trainer.divergence times the run's first one), checked at every step here. Mechanism: the lr range must
reach lrs at which the arm without warmup is unstable in some seeds; else the claim is not tested. Judged at the
pre-registered lr: both fewer unstable runs with warmup (Fisher's exact test, one-sided) and a higher test
accuracy (a diverged run counts at chance; the paired interval of the seeds). Drawn: the final accuracy per lr,
beside the share of unstable runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import MISSING, OmegaConf
from scipy.stats import fisher_exact

from runner.config import check
from runner.render import markdown, metric_name, new_figure, save, wrapped
from studies import StudyKind
from studies.looks import Check, Test, claim_of, compared, not_tested, seed_values
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
from studies.sequential import Decision
from studies.stats import INCONCLUSIVE, LEVEL, NOT_SUPPORTED, SUPPORTED, combine
from studies.trials import Context, ScaleBase, arm_info, axis, number_text, run_rows, run_sweep


# ------------------------------------------------------------------------------------------------ config
@dataclass
class WarmupScale(ScaleBase):
    arm: str = MISSING  # shared.arms: the optimizer of every run
    weight_decay: float = MISSING  # fixed for every run, in the arm's convention
    trials: list[str] = MISSING  # extra overrides of every run (schedule, batch size, epochs)
    warmups: list[str] = MISSING  # schedule.warmup values: the baseline (none), then the claim's
    lr: list[float] = MISSING  # peak lrs, each run with every warmup and seed
    judge_lr: float = MISSING  # the lr the verdict reads (one of lr), fixed before the run
    test: Test = MISSING  # warmup - none on test accuracy at judge_lr (a diverged run at chance)

    def __post_init__(self) -> None:
        super().__post_init__()
        check(len(self.warmups) == 2, "study.warmups", "must be [baseline, contender]", self.warmups)
        check(self.judge_lr in self.lr, "study.judge_lr", "must be one of study.lr", self.judge_lr)


# ------------------------------------------------------------------------------------------------ run
def run_warmup(ctx: Context) -> tuple[list[dict], list[dict], dict]:
    scale = ctx.study.scale
    folder = run_sweep(ctx, "warmup", warmup_args(ctx))
    rows = run_rows(folder, ctx.study.name, scale.arm, "confirm", "schedule.warmup")
    return (
        rows,
        [],
        {
            "arm": arm_info(ctx.arm(scale.arm)),
            "weight_decay": scale.weight_decay,
            "warmups": list(scale.warmups),
            "lr": list(scale.lr),
            "judge_lr": scale.judge_lr,
            "test": OmegaConf.to_container(scale.test),
            "sequencing": ctx.sequencing,
            "stages": ctx.stages,
            "trials": list(scale.trials),
            "divergence": divergence_of(ctx),
        },
    )


def divergence_of(ctx: Context) -> float:
    """trainer.divergence as the study's runs use it: the multiple of the first loss that counts as diverged."""
    from runner.config import compose

    return float(compose(warmup_args(ctx, first=True)).trainer.divergence)


def warmup_args(ctx: Context, first: bool = False) -> list[str]:
    """Every warmup x peak lr x seed, at the fixed weight decay (first: one trial of them, to compose)."""
    scale = ctx.study.scale
    arm = ctx.arm(scale.arm)
    seeds, warmups, lrs = ctx.seeds, list(scale.warmups), list(scale.lr)
    if first:
        seeds, warmups, lrs = seeds[:1], warmups[:1], lrs[:1]
    return [
        *ctx.base(arm).trials,
        *ctx.base(arm).confirm,
        *arm.overrides,
        *scale.trials,
        f"optimizer.weight_decay={number_text(scale.weight_decay)}",
        axis("schedule.warmup", warmups),
        axis("optimizer.lr", lrs),
        axis("seed", seeds),
    ]


def planned_sweeps(ctx: Context) -> list[tuple[str, list[str]]]:
    return [("warmup", warmup_args(ctx))]


# ------------------------------------------------------------------------------------------------ verdict
def warmup_table(runs: pd.DataFrame, settings: dict) -> pd.DataFrame:
    """Per (warmup, lr): the runs that ended, those that diverged (unstable), and the test metric in report
    units with a diverged run counted as the test's diverged value."""
    metric = first(runs["metric"])
    out = []
    for (warmup, lr), part in runs.groupby(["variant", "lr"], sort=True):
        ended = part[part["status"].isin(["finished", "diverged"])]
        diverged = ended["status"] == "diverged"
        test = points(ended["test_metric"], metric).where(~diverged, settings["test"]["diverged"])
        out.append(
            {
                "warmup": warmup,
                "lr": lr,
                "runs": len(ended),
                "unstable": int(diverged.sum()),
                "test": list(test),
            }
        )
    return pd.DataFrame(out, columns=["warmup", "lr", "runs", "unstable", "test"])


def instability_check(table: pd.DataFrame, settings: dict) -> Check:
    """The mechanism: without warmup, some seeds are unstable at some lr of the study."""
    none = table[table["warmup"] == settings["warmups"][0]]
    parts = ", ".join(f"lr {r.lr:g}: {r.unstable}/{r.runs}" for r in none.itertuples())
    return Check(
        bool((none["unstable"] > 0).any()),
        f"unstable runs without warmup (diverged: a training loss not finite or above {settings['divergence']:g}x "
        f"the run's first, checked every step, the definition every adamrun command uses): {parts}; needed some "
        "at one lr at least",
    )


def stability(table: pd.DataFrame, settings: dict) -> Decision:
    """Fewer unstable runs with warmup at the judged lr: Fisher's exact test, one-sided each way."""
    lr, (base, other) = settings["judge_lr"], settings["warmups"]
    at = table[np.isclose(table["lr"], lr)].set_index("warmup")
    if base not in at.index or other not in at.index:
        return Decision(INCONCLUSIVE, f"stability: no runs of both warmups at lr {lr:g}")
    counts = [[at.loc[w, "unstable"], at.loc[w, "runs"] - at.loc[w, "unstable"]] for w in (other, base)]
    fewer = fisher_exact(counts, alternative="less").pvalue
    more = fisher_exact(counts, alternative="greater").pvalue
    alpha = (1 - LEVEL) / 2
    outcome = SUPPORTED if fewer < alpha else NOT_SUPPORTED if more < alpha else INCONCLUSIVE
    rule = (
        f"stability at lr {lr:g}: unstable runs with warmup {other} {counts[0][0]}/{at.loc[other, 'runs']}, without "
        f"{counts[1][0]}/{at.loc[base, 'runs']}; Fisher's exact one-sided p = {fewer:.3g} (fewer with warmup), "
        f"{more:.3g} (more); supported if the first is below {alpha:g}, not supported if the second is, else "
        "inconclusive"
    )
    return Decision(outcome, rule)


def accuracy(runs: pd.DataFrame, settings: dict):
    """Warmup - none on test accuracy at the judged lr, a diverged run at chance: the sequential comparison."""
    lr, (base, other) = settings["judge_lr"], settings["warmups"]
    at = runs[np.isclose(runs["lr"], lr)]
    values = {
        w: seed_values(at[at["variant"] == w], at["arm"].iloc[0], settings["test"]) for w in (base, other)
    }
    what = f"test accuracy at lr {lr:g}, warmup {other} - {base}"
    return compared(values[other], values[base], claim_of(settings["test"], what, "points"), settings["sequencing"],
                    settings["stages"])  # fmt: skip


def analyze_warmup(runs: pd.DataFrame, curves: pd.DataFrame, settings: dict) -> Section:
    metric = first(runs["metric"])
    table = warmup_table(runs, settings)
    mechanism = instability_check(table, settings)
    found = accuracy(runs, settings) if not runs.empty else None
    if not mechanism.held:
        verdict = not_tested(mechanism)
    else:
        joined = combine([stability(table, settings), found.decision], "both of")
        verdict = Decision(joined.outcome, joined.rule)
    rows = [
        [r.warmup, f"{r.lr:g}", f"{r.unstable}/{r.runs}", mean_std_text(r.test)] for r in table.itertuples()
    ]
    seeds = settings["sequencing"]["first_seed"]
    body = [
        claim_line(settings),
        "",
        f"Design: {arm_text(settings, settings['trials'])} at peak lrs {values_text(settings['lr'])}, with "
        f"schedule.warmup = {', '.join(settings['warmups'])} (linear: the untuned 2 / (1 - beta2) steps of Ma & "
        f"Yarats), seeds {seeds}-{seeds + settings['stages'][-1] - 1}. A diverged run counts as "
        f"{settings['test']['diverged']:g} points (chance) in the accuracy. Tests at lr {settings['judge_lr']:g}, "
        "fixed before the run: stability (Fisher's exact test) and test accuracy (paired, superiority).",
        "",
        f"Mechanism check: {mechanism.text}: **{'held' if mechanism.held else 'failed'}**.",
        "",
        markdown(
            [
                "warmup",
                "peak lr",
                "unstable runs (diverged)",
                f"test {metric_name(metric)} ({unit_name(metric)})",
            ],
            rows,
        ),  # fmt: skip
        "",
    ]
    at_top = table[np.isclose(table["lr"], settings["judge_lr"])].set_index("warmup")
    ours = "; ".join(
        f"lr {settings['judge_lr']:g}, warmup {w}: unstable {at_top.loc[w, 'unstable']}/{at_top.loc[w, 'runs']}, test "
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
        p_value=None,  # two tests joined (an exact count test and an interval): no single p-value for Holm
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
    right.set_title(f"unstable: diverged (loss above {settings['divergence']:g}x its first, or not finite)",
                    fontsize=9.5)  # fmt: skip
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
