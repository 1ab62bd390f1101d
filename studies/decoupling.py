"""Decoupling studies: does decoupled weight decay free the best weight decay from the learning rate, where L2
ties them together? (Loshchilov & Hutter, arXiv:1711.05101, Figure 2.)

Runs: an lr x wd grid per arm, every cell with each grid seed (replicates), read on validation; optionally the
decoupled arm's best cell once more in torch's convention (wd = lambda / lr), which must be the same training.
Judged: first the mechanism (weight decay acts at both verdict arms' best cells), then per seed and lr row where
the good weight decays are (the best wd, or the upper edge of the good region), and the slope of log10(wd) on
log10(lr) over every such row with its 95% CI: the decoupled slope must exceed the coupled one and be flat within
the margin, at every good-region threshold the config states in advance. Drawn: each grid as a heat map of the
mean validation metric, with the per-row measure and its fit.
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
from runner.sweep import key_of
from studies import StudyKind
from studies.looks import Check, Mechanism, mechanism_check, not_tested
from studies.section import (
    Section,
    claim_line,
    finished,
    first,
    points,
    setting_text,
    title,
    unit_name,
    values_text,
)
from studies.sequential import Decision
from studies.stats import (
    INCONCLUSIVE,
    NOT_SUPPORTED,
    SUPPORTED,
    Slope,
    Verdict,
    combine,
    equivalence,
    slope,
    slope_difference,
    superiority,
)
from studies.trials import (
    Context,
    ScaleBase,
    Shared,
    Study,
    arm_info,
    arm_overrides,
    choose,
    grid_args,
    grid_sweep,
    run_rows,
    run_sweep,
)

MEASURES = {"edge": "upper edge of the good region", "best": "best wd"}  # what a verdict can read per lr


# ------------------------------------------------------------------------------------------------ config
@dataclass
class DecouplingScale(ScaleBase):
    arms: list[str] = MISSING  # shared.arms, each with an lr x wd grid
    coupled: str = MISSING  # the L2 arm of the verdict
    decoupled: str = MISSING  # the decoupled arm (paper convention) of the verdict
    torch_view: bool = MISSING  # redraw the decoupled arm in torch's convention (wd = lambda / lr)
    torch_check: bool = MISSING  # run the decoupled arm's best cell once in torch's convention
    measure: str = MISSING  # what the verdict reads: edge (of the good region) | best (argmax wd)
    drops: list[float] = MISSING  # accuracy points below a row's best where its good region ends: the verdict
    # must hold at every one (the table and figure show the first)
    margin: float = MISSING  # decades of wd per decade of lr
    mechanism: Mechanism = MISSING  # decay: weight decay acts at each verdict arm's best cell; edges: its
    # good region ends inside the grid in enough lr rows (what the edge slope is fitted to)

    def __post_init__(self) -> None:
        super().__post_init__()
        check(
            self.measure in MEASURES, "study.measure", f"must be one of {', '.join(MEASURES)}", self.measure
        )
        check(
            len(self.drops) > 0 and all(d > 0 for d in self.drops), "study.drops", "must be > 0", self.drops
        )
        check(self.margin > 0, "study.margin", "must be > 0", self.margin)
        kind = getattr(self.mechanism, "kind", None)
        check(
            kind != "edges" or self.measure == "edge",
            "mechanism.kind",
            "edges needs study.measure=edge",
            kind,
        )


def check_arms(study: Study, shared: Shared) -> None:
    """The verdict's two arms are among the study's, and each has a grid to find a ridge in."""
    for arm in (study.scale.coupled, study.scale.decoupled):
        check(
            arm in study.scale.arms,
            f"study {study.name}: coupled/decoupled",
            "must be in study.arms",
            arm,
        )
        check(shared.arms[arm].searched, f"shared.arms.{arm}", "needs an lr x wd grid", arm)


# ------------------------------------------------------------------------------------------------ run
def run_decoupling(ctx: Context) -> tuple[list[dict], list[dict], dict]:
    scale, rows = ctx.study.scale, []
    for name in scale.arms:
        rows += run_rows(grid_sweep(ctx, name), ctx.study.name, name, "select")
    extra = {}
    if scale.torch_check:
        extra = torch_check(ctx, scale.decoupled)
        rows += extra.pop("rows")
    arms = {name: arm_info(ctx.arm(name)) for name in scale.arms}
    return (
        rows,
        [],
        {
            "arms": arms,
            "coupled": scale.coupled,
            "decoupled": scale.decoupled,
            "torch_view": scale.torch_view,
            "margin": scale.margin,
            "measure": scale.measure,
            "drops": list(scale.drops),
            "drop": scale.drops[0],
            "mechanism": OmegaConf.to_container(scale.mechanism),
            "chosen": chosen_cells(ctx, [scale.coupled, scale.decoupled]),
            **extra,
        },
    )


def chosen_cells(ctx: Context, names: list[str]) -> dict:
    """Each arm's best grid cell (mean validation over the grid seeds): where the mechanism check reads."""
    out = {}
    for name in names:
        choice, _ = choose(ctx, name)
        out[name] = {"lr": choice.lr, "weight_decay": choice.weight_decay, "cells": choice.cells}
    return out


def torch_check(ctx: Context, name: str) -> dict:
    """The decoupled arm's best cell once more in torch's convention (wd = lambda / lr): the same training."""
    arm, (choice, _) = ctx.arm(name), choose(ctx, name)
    wd = float(choice.weight_decay) / float(choice.lr)
    overrides = [o for o in arm_overrides(ctx, arm, "select") if key_of(o) != "optimizer.decay_mode"]
    folder = run_sweep(
        ctx,
        f"torch-check-{name}",
        [
            *overrides,
            "optimizer.decay_mode=torch",
            f"optimizer.lr={choice.lr}",
            f"optimizer.weight_decay={wd!r}",
            f"seed={ctx.grid_seeds[0]}",  # the grid run it must equal: the same init and data order
        ],
    )
    rows = run_rows(folder, ctx.study.name, name, "torch_check")
    return {"rows": rows, "torch_check": {"lr": choice.lr, "lambda": choice.weight_decay, "wd": repr(wd)}}


def planned_sweeps(ctx: Context) -> list[tuple[str, list[str]]]:
    return [(f"grid-{name}", grid_args(ctx, name)) for name in ctx.study.scale.arms]


# ------------------------------------------------------------------------------------------------ verdict
@dataclass
class Ridge:
    """Per lr row of a grid: where the good weight decays are (log10 wd), and the slope of each measure."""

    arm: str
    label: str
    rows: pd.DataFrame  # lr, best, best_at_edge, edge, censored, best_val
    fits: dict  # measure -> stats.Slope, or None with fewer than 3 usable rows

    def fit(self, measure: str):
        return self.fits[measure]


def wd_measures(grid: pd.DataFrame, goal: str, drop: float) -> pd.DataFrame:
    """For each grid seed and lr row (log10 wd throughout):

    - best: the wd of the best validation metric, refined by a parabola through the best cell and its two
      neighbours (within half a cell), so it is not stuck on the grid; best_at_edge when that cell is the grid's
      first or last;
    - edge: the upper edge of the row's good region: the wd at which the metric, walking up from the best cell,
      first falls `drop` (report units: accuracy points) below the row's best, interpolated linearly between the
      two cells around the crossing; censored at the grid's last wd when it never falls that far.

    On a short budget the accuracy is often flat in wd up to the point where decay starts to hurt; the edge
    finds that point, the argmax wanders over the flat part. Rows without a finished run are left out."""
    out = []
    sign = -1 if goal == "min" else 1
    metric = first(grid["metric"]) if "metric" in grid else ""
    for (seed, lr), row in grid.groupby(["seed", "lr"], sort=True):
        row = row[row["weight_decay"] > 0].sort_values("weight_decay")
        if row.empty:
            continue
        x = row["weight_decay"].map(math.log10).to_numpy()
        y = sign * points(row["val_metric"], metric).to_numpy()
        i = int(y.argmax())
        out.append(
            {
                "seed": seed,
                "lr": lr,
                "best": refined_best(x, y, i),
                "best_at_edge": i in (0, len(x) - 1),
                **good_edge(x, y, i, drop),
                "best_val": sign * y[i],
            }
        )
    return pd.DataFrame(out, columns=["seed", "lr", "best", "best_at_edge", "edge", "censored", "best_val"])


def refined_best(x, y, i: int) -> float:
    if i in (0, len(x) - 1):
        return float(x[i])
    curvature = y[i - 1] - 2 * y[i] + y[i + 1]
    if curvature >= 0:
        return float(x[i])
    shift = 0.5 * (y[i - 1] - y[i + 1]) / curvature  # in cells
    return float(x[i] + max(-0.5, min(0.5, shift)) * (x[i + 1] - x[i - 1]) / 2)


def good_edge(x, y, i: int, drop: float) -> dict:
    floor = y[i] - drop
    for j in range(i + 1, len(x)):
        if y[j] < floor:
            share = (y[j - 1] - floor) / (y[j - 1] - y[j])
            return {"edge": float(x[j - 1] + share * (x[j] - x[j - 1])), "censored": False}
    return {"edge": float(x[-1]), "censored": True}


def fit_rows(rows: pd.DataFrame, measure: str):
    """The slope of a measure on log10(lr): over the rows where it is known (a censored edge is not)."""
    usable = rows[~rows["censored"]] if measure == "edge" else rows
    return slope(usable["lr"].map(math.log10), usable[measure]) if len(usable) >= 3 else None


def edges_check(mechanism: dict, by_drop: dict[float, dict[str, Ridge]], settings: dict) -> Check:
    """Weight decay acts where the slope reads it: in each verdict arm's grid, for every grid seed and at every
    good-region threshold, at least min_rows lr rows have a good region that ends inside the grid (past its
    edge more decay costs more than the threshold). A region that runs off the grid is censored: it says
    nothing of where decay starts to hurt, and a grid of such rows cannot test the claim."""
    need, parts, held = mechanism["min_rows"], [], True
    for arm in (settings["coupled"], settings["decoupled"]):
        lrs = len(settings["arms"][arm]["lr"])
        fewest = min(min(inside_rows(found[arm].rows).values(), default=0) for found in by_drop.values())
        held &= fewest >= need
        parts.append(f"{settings['arms'][arm]['label']} {fewest} of {lrs}")
    return Check(
        held,
        "weight decay acts where the slope reads it: lr rows whose good region ends inside the grid, the "
        "fewest over the grid seeds and thresholds: "
        + ", ".join(parts)
        + f"; needed at least {need} in each",
    )


def inside_rows(rows: pd.DataFrame) -> dict:
    """Grid seed -> its lr rows whose good region ends inside the grid (an edge, not censored)."""
    return (~rows["censored"].astype(bool)).groupby(rows["seed"]).sum().astype(int).to_dict()


def ridges(runs: pd.DataFrame, settings: dict, drop: float) -> list[Ridge]:
    found = []
    for arm, info in settings["arms"].items():
        grid = finished(runs, arm=arm, role="select")
        goal = grid["goal"].iloc[0] if not grid.empty else "max"
        rows = wd_measures(grid, goal, drop)
        found.append(Ridge(arm, info["label"], rows, {m: fit_rows(rows, m) for m in MEASURES}))
    return found


def torch_ridge(ridge: Ridge) -> Ridge:
    """The same runs in torch's convention: wd = lambda / lr, so log wd = log lambda - log lr, and slope - 1."""
    log_lr = ridge.rows["lr"].map(math.log10)
    rows = ridge.rows.assign(best=ridge.rows["best"] - log_lr, edge=ridge.rows["edge"] - log_lr)
    fits = {m: None if f is None else Slope(f.value - 1, f.variance, f.df) for m, f in ridge.fits.items()}
    return Ridge(
        ridge.arm + "_torch", ridge.label + " in torch's convention (wd = λ / lr, same runs)", rows, fits
    )


def slope_text(fit) -> str:
    return "fewer than 3 usable lr rows" if fit is None else fit.estimate().text()


def verdict_at(found: dict, settings: dict) -> Verdict:
    """The slope rule at one good-region threshold: the decoupled slope above the coupled one, and flat."""
    coupled, decoupled = found[settings["coupled"]], found[settings["decoupled"]]
    measure, margin = settings["measure"], settings["margin"]
    if coupled.fit(measure) is None or decoupled.fit(measure) is None:
        return Verdict(INCONCLUSIVE, f"needs 3+ rows with a known {MEASURES[measure]} in both grids")
    unit = "decades of wd per decade of lr"
    moves = superiority(
        slope_difference(decoupled.fit(measure), coupled.fit(measure)),
        "higher",
        f"slope({decoupled.label}) - slope({coupled.label}) of the {MEASURES[measure]}, in {unit}",
    )
    flat = equivalence(
        decoupled.fit(measure).estimate(),
        margin,
        f"slope({decoupled.label}) of the {MEASURES[measure]}",
        unit,
    )
    return combine([moves, flat], "both of")


def every_threshold(verdicts: dict[float, Verdict]) -> Decision:
    """Supported only if the rule holds at every threshold stated in advance; not supported only if it fails
    at every one; else inconclusive (the answer depends on a knob)."""
    outcomes = {v.outcome for v in verdicts.values()}
    outcome = (
        SUPPORTED
        if outcomes == {SUPPORTED}
        else NOT_SUPPORTED
        if outcomes == {NOT_SUPPORTED}
        else INCONCLUSIVE
    )
    rule = "at every good-region threshold stated in advance: " + "; ".join(
        f"[{drop:g} points below the row's best] {v.rule} -> {v.outcome}" for drop, v in verdicts.items()
    )
    return Decision(outcome, rule)


def analyze_decoupling(runs: pd.DataFrame, curves: pd.DataFrame, settings: dict) -> Section:
    by_drop = {drop: {r.arm: r for r in ridges(runs, settings, drop)} for drop in settings["drops"]}
    found = by_drop[settings["drop"]]  # the first threshold: the table and the figure
    coupled, decoupled = found[settings["coupled"]], found[settings["decoupled"]]
    shown = list(found.values()) + ([torch_ridge(decoupled)] if settings["torch_view"] else [])
    measure = settings["measure"]
    per_drop = {drop: verdict_at(ridges_at, settings) for drop, ridges_at in by_drop.items()}
    mechanism = (
        edges_check(settings["mechanism"], by_drop, settings)
        if settings["mechanism"]["kind"] == "edges"
        else mechanism_check(settings["mechanism"], runs, settings)
    )
    verdict = every_threshold(per_drop) if mechanism.held else not_tested(mechanism)
    body = [claim_line(settings), "", decoupling_design(runs, settings), "", grid_lines(settings), ""]
    table = [
        [
            r.label,
            per_lr(r.rows, "best", "best_at_edge", "grid edge"),
            slope_text(r.fit("best")),
            per_lr(r.rows, "edge", "censored", "beyond the grid"),
            slope_text(r.fit("edge")),
        ]
        for r in shown
    ]
    body += [
        markdown(
            [
                "optimizer",
                "best wd per lr (lr: wd)",
                "its slope (95% CI)",
                f"upper edge of the good region per lr (lr: wd; {settings['drop']:.1f} points below the best)",
                "its slope (95% CI)",
            ],
            table,
        ),
        "",
    ]
    if "torch_check" in settings:
        body += [torch_check_line(runs, settings), ""]
    body += [f"Mechanism check: {mechanism.text}: **{'held' if mechanism.held else 'failed'}**.", ""]
    ours = "; ".join(
        f"{r.label}: slope of the {MEASURES[measure]} {slope_text(r.fit(measure))}"
        for r in (coupled, decoupled)
    )
    return Section(
        "decoupling",
        title(settings),
        verdict,
        ours,
        body,
        "decoupling.png",
        lambda path: plot_decoupling(path, runs, shown, settings),
    )


def decoupling_design(runs: pd.DataFrame, settings: dict) -> str:
    return (
        "Design: an lr x weight-decay grid per optimizer, each cell with every grid seed, each trial scored on the "
        f"validation split ({n_runs(runs, 'select')} runs). Per seed and lr row, two measures of where the good weight decays are: the best "
        "wd (argmax, refined by a parabola through its neighbours), and the upper edge of the good region (the wd "
        f"at which the accuracy first falls {settings['drop']:.1f} points below the row's best; rows where it never "
        "does are censored and left out of the fit). Then the least-squares slope of log10(wd) on log10(lr) with "
        "its 95% t interval: 0 means the good region stays put when the lr moves (decoupled), -1 that it moves as "
        f"1 / lr (only lr x wd matters). The verdict reads the {MEASURES[settings['measure']]}: at a budget of a "
        "few epochs the accuracy is nearly flat in wd until decay starts to hurt, so the argmax mostly measures "
        "noise; the edge is where the grid has signal. The verdict must hold at every threshold of "
        f"{', '.join(f'{d:g}' for d in settings['drops'])} points (the table shows the first)."
    )


def per_lr(rows: pd.DataFrame, column: str, flag: str, note: str) -> str:
    return "; ".join(
        f"s{r['seed']} {r['lr']:g}: {10 ** r[column]:.2g}{f' ({note})' if r[flag] else ''}"
        for _, r in rows.iterrows()
    )


def torch_check_line(runs: pd.DataFrame, settings: dict) -> str:
    check_ = settings["torch_check"]
    paper = finished(runs, arm=settings["decoupled"], role="select")
    paper = paper[(paper["lr"] == float(check_["lr"])) & (paper["weight_decay"] == float(check_["lambda"]))]
    torch_run = finished(runs, role="torch_check")
    paper = paper[paper["seed"].isin(torch_run["seed"])]  # the same seed (an older check ran seed 0: no pair)
    if paper.empty or torch_run.empty:
        return "Torch-convention check: not finished (no grid run of the check's seed)."
    a, b = paper["val_metric"].iloc[0], torch_run["val_metric"].iloc[0]
    return (
        f"Torch-convention check: the best {settings['decoupled']} cell (lr {check_['lr']}, λ {check_['lambda']}) run "
        f"again with `optimizer.decay_mode=torch optimizer.weight_decay={float(check_['wd']):.6g}` (= λ / lr) "
        f"gave validation {b:.4f} against {a:.4f}: {'the same run' if abs(a - b) < 1e-4 else 'NOT the same'}, so "
        "the torch panel is the paper grid re-drawn, not a new experiment."
    )


def grid_lines(settings: dict) -> str:
    parts = []
    for info in settings["arms"].values():
        parts.append(
            f"{info['label']} (`{' '.join(info['overrides'])}`): lr {values_text(info['lr'])} x "
            f"{info['wd_name']} {values_text(info['weight_decay'])}"
        )
    return "Grids: " + "; ".join(parts) + "."


def n_runs(runs: pd.DataFrame, role: str | None = None) -> int:
    return int((runs["role"] == role).sum()) if role else len(runs)


# ------------------------------------------------------------------------------------------------ figure
def cell_means(grid: pd.DataFrame) -> pd.DataFrame:
    """Per (lr, wd) cell: the mean validation metric of its seeds, and whether every seed finished."""
    grid = grid.assign(done=grid["status"] == "finished")
    return (
        grid.groupby(["lr", "weight_decay"])
        .agg(val_metric=("val_metric", "mean"), finished=("done", "all"))
        .reset_index()
    )


def plot_decoupling(path: Path, runs: pd.DataFrame, shown: list[Ridge], settings: dict) -> None:
    import matplotlib
    from matplotlib.colors import Normalize

    fig = new_figure((4.2 * len(shown) + 1.2, 5.2))
    axes = fig.subplots(1, len(shown), squeeze=False)[0]
    every = finished(runs, role="select")
    values = points(every["val_metric"], first(every["metric"]))
    low, high = (
        float(np.nanpercentile(values, 20)) if len(values) else 0.0,
        float(values.max()) if len(values) else 1.0,
    )
    norm, cmap = Normalize(low, high), matplotlib.colormaps["viridis"].with_extremes(under="#3b0f3b")
    image = None
    for ax, ridge in zip(axes, shown, strict=True):
        arm = ridge.arm.removesuffix("_torch")
        grid = cell_means(runs[(runs["arm"] == arm) & (runs["role"] == "select")])
        wd = grid["weight_decay"] / (grid["lr"] if ridge.arm.endswith("_torch") else 1)
        done = grid["finished"]
        score = points(grid["val_metric"], first(every["metric"]))
        image = ax.scatter(wd[done], grid["lr"][done], c=score[done], cmap=cmap, norm=norm, marker="s", s=420)
        ax.scatter(wd[~done], grid["lr"][~done], marker="x", color="red", s=60, label="diverged / failed")
        for x, y, v in zip(wd[done], grid["lr"][done], score[done], strict=True):
            ax.annotate(
                f"{v:.1f}",
                (x, y),
                ha="center",
                va="center",
                fontsize=6.5,
                color="white" if v < (low + high) / 2 else "black",
            )
        measure = settings["measure"]
        known = ridge.rows[~ridge.rows["censored"]] if measure == "edge" else ridge.rows
        ax.scatter(
            10 ** known[measure],
            known["lr"],
            marker="D",
            s=18,
            color="red",
            zorder=4,
            label=f"{MEASURES[measure]} of each lr",
        )
        fit = ridge.fit(measure)
        if fit is not None:
            log_lr = np.log10(known["lr"].to_numpy())
            intercept = known[measure].mean() - fit.value * log_lr.mean()
            ax.plot(
                10 ** (intercept + fit.value * log_lr),
                10**log_lr,
                "--",
                color="red",
                lw=1.2,
                label=f"fit: slope {slope_text(fit)}",
            )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.margins(0.12)
        info = settings["arms"][arm]
        wd_name = "torch wd = λ / lr" if ridge.arm.endswith("_torch") else info["wd_name"]
        ax.set_xlabel(f"weight decay ({wd_name})")
        ax.set_ylabel("peak learning rate (per step)")
        ax.set_title(wrapped(ridge.label, 48), fontsize=9.5)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), frameon=False)
    bar = fig.colorbar(image, ax=list(axes), shrink=0.85, extend="min")
    bar.set_label(
        f"validation {metric_name(first(every['metric']))} ({unit_name(first(every['metric']))}), mean of the grid seeds"
    )
    fig.suptitle(
        wrapped(
            f"Where is the best weight decay for each learning rate? ({settings['source']})\n"
            + setting_text(settings),
            150,
        ),
        fontsize=10.5,
    )
    save(fig, path)


KIND = StudyKind(
    scale=DecouplingScale,
    arms=lambda scale: list(scale.arms),
    sweeps=planned_sweeps,
    run=run_decoupling,
    analyze=analyze_decoupling,
    check=check_arms,
)
