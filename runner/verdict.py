"""The verdicts of `adamrun reproduce`, and the report that shows them: everything here reads only CSVs.

The first half is the statistics: intervals of a difference, and the rules that turn them into *supported*,
*not supported* or *inconclusive at this budget*. Every rule reads a 95% confidence interval (CI) of a difference
in the metric's own units (accuracy points, perplexity, epochs, decades of weight decay per decade of lr), never a
bare p-value, and says in words what it decided (`Verdict.rule`), so the report prints the rule next to the
numbers it was applied to:

- superiority ("A beats B"): the CI of A - B lies wholly on the claimed side of 0 -> supported; wholly on the
  other side -> not supported; it contains 0 -> inconclusive.
- no gain ("B gives no gain over A", margin m > 0 in the metric's units): the CI of the gain B - A lies wholly
  below +m -> supported; wholly above +m -> not supported (a gain larger than the margin); else inconclusive.
- equivalence ("B matches A", margin m): the CI of B - A lies wholly inside (-m, +m) -> supported; wholly
  outside it -> not supported; else inconclusive.

Differences of means use Welch's t interval (unequal variances, Welch-Satterthwaite degrees of freedom; scipy's
t quantiles); differences of slopes use the OLS slope's t interval with the same degrees-of-freedom rule.

The second half is the report: each study's analysis (from <study>_runs.csv, <study>_curves.csv and
<study>_settings.csv, which runner/reproduce.py writes), its figure, and report.md. `render_report(folder)` is a
pure function of those CSVs, so a test can check that the committed report is what the committed CSVs give.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

from runner import results
from runner.errors import UsageError

SUPPORTED = "supported"
NOT_SUPPORTED = "not supported"
INCONCLUSIVE = "inconclusive at this budget"
UNTESTED = "not tested here"
LEVEL = 0.95  # two-sided confidence level of every interval
MIN_SEEDS = 3  # finished seeds per side that a comparison needs (the "at least 3")
MEASURES = {"edge": "upper edge of the good region", "best": "best wd"}  # decoupling's two per-lr measures


@dataclass(frozen=True)
class Estimate:
    """A difference (or a slope) with its two-sided confidence interval."""

    value: float
    low: float
    high: float
    df: float  # degrees of freedom of the t quantile (inf: no spread at all)
    level: float = LEVEL

    def text(self, digits: int = 4, unit: str = "") -> str:
        unit = f" {unit}" if unit else ""
        return (
            f"{self.value:+.{digits}g}{unit} (95% CI {self.low:+.{digits}g} to {self.high:+.{digits}g})"
            if self.level == LEVEL
            else f"{self.value:+.{digits}g}{unit} ({self.level:.0%} CI {self.low:+.{digits}g} to "
            f"{self.high:+.{digits}g})"
        )


@dataclass(frozen=True)
class Verdict:
    outcome: str  # SUPPORTED | NOT_SUPPORTED | INCONCLUSIVE | UNTESTED
    rule: str  # the rule, in words, with the numbers it was applied to


def t_quantile(df: float, level: float = LEVEL) -> float:
    from scipy.stats import t

    return float(t.ppf(0.5 + level / 2, df)) if math.isfinite(df) else float(_normal_quantile(level))


def _normal_quantile(level: float) -> float:
    from scipy.stats import norm

    return float(norm.ppf(0.5 + level / 2))


def welch(a: Sequence[float], b: Sequence[float], level: float = LEVEL) -> Estimate:
    """mean(a) - mean(b) with Welch's t interval; needs 2+ values on each side."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"Welch's interval needs 2+ values per group (got {len(a)} and {len(b)})")
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    return interval(float(a.mean() - b.mean()), [va, vb], [len(a) - 1, len(b) - 1], level)


def welch_rule(
    a: Sequence[float], b: Sequence[float], what: str, rule: Callable[[Estimate], Verdict]
) -> Verdict:
    """rule(welch(a, b)), or inconclusive when a side has fewer than MIN_SEEDS values: every comparison of
    seeds goes through here, so none rests on fewer."""
    if len(a) < MIN_SEEDS or len(b) < MIN_SEEDS:
        return Verdict(
            INCONCLUSIVE,
            f"{what}: fewer than {MIN_SEEDS} seeds with a value on a side ({len(a)} vs {len(b)})",
        )
    return rule(welch(a, b))


def interval(
    value: float, variances: Sequence[float], dfs: Sequence[float], level: float = LEVEL
) -> Estimate:
    """value ± t * sqrt(sum of variances), with Welch-Satterthwaite's degrees of freedom for the sum."""
    se2 = float(sum(variances))
    if se2 == 0:  # every group constant: the difference is exact
        return Estimate(value, value, value, math.inf, level)
    df = se2**2 / sum(v**2 / d for v, d in zip(variances, dfs, strict=True) if v > 0)
    half = t_quantile(df, level) * math.sqrt(se2)
    return Estimate(value, value - half, value + half, df, level)


@dataclass(frozen=True)
class Slope:
    value: float
    variance: float  # of the estimate (se squared)
    df: int  # n - 2

    def estimate(self, level: float = LEVEL) -> Estimate:
        return interval(self.value, [self.variance], [self.df], level)


def slope(x: Sequence[float], y: Sequence[float]) -> Slope:
    """The OLS slope of y on x with its variance; needs 3+ points with 2+ distinct x."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) < 3 or np.ptp(x) == 0:
        raise ValueError(f"a slope with an interval needs 3+ points at 2+ x values (got {len(x)})")
    dx = x - x.mean()
    b = float((dx * (y - y.mean())).sum() / (dx**2).sum())
    residuals = y - y.mean() - b * dx
    variance = float((residuals**2).sum() / (len(x) - 2) / (dx**2).sum())
    return Slope(b, variance, len(x) - 2)


def slope_difference(a: Slope, b: Slope, level: float = LEVEL) -> Estimate:
    """slope a - slope b (independent fits), Welch-Satterthwaite degrees of freedom."""
    return interval(a.value - b.value, [a.variance, b.variance], [a.df, b.df], level)


# ------------------------------------------------------------------------------------------------ rules
def superiority(diff: Estimate, claimed: str, what: str, unit: str = "") -> Verdict:
    """`diff` is A - B for the claim "A is better than B"; claimed: 'higher' or 'lower' (which side is better)."""
    if claimed not in ("higher", "lower"):
        raise ValueError(f"claimed must be 'higher' or 'lower' (got {claimed!r})")
    sign = 1 if claimed == "higher" else -1
    low, high = sorted((sign * diff.low, sign * diff.high))
    outcome = SUPPORTED if low > 0 else NOT_SUPPORTED if high < 0 else INCONCLUSIVE
    side = "above" if claimed == "higher" else "below"
    other = "below" if claimed == "higher" else "above"
    rule = (f"superiority: {what} = {diff.text(unit=unit)}; supported if the 95% CI lies wholly {side} 0, "
            f"not supported if wholly {other} 0, else inconclusive")  # fmt: skip
    return Verdict(outcome, rule)


def no_gain(gain: Estimate, margin: float, what: str, unit: str = "") -> Verdict:
    """`gain` is B - A, signed so that positive is better for B, for the claim "B gives no gain over A"."""
    check_margin(margin)
    outcome = SUPPORTED if gain.high < margin else NOT_SUPPORTED if gain.low > margin else INCONCLUSIVE
    rule = (f"no gain (margin {margin:g}{' ' + unit if unit else ''}): {what} = {gain.text(unit=unit)}; "
            f"supported if the 95% CI lies wholly below +{margin:g}, not supported if wholly above it, "
            "else inconclusive")  # fmt: skip
    return Verdict(outcome, rule)


def equivalence(diff: Estimate, margin: float, what: str, unit: str = "") -> Verdict:
    """`diff` is B - A for the claim "B matches A" within +-margin."""
    check_margin(margin)
    inside = -margin < diff.low and diff.high < margin
    outside = diff.low >= margin or diff.high <= -margin
    outcome = SUPPORTED if inside else NOT_SUPPORTED if outside else INCONCLUSIVE
    rule = (f"equivalence (margin ±{margin:g}{' ' + unit if unit else ''}): {what} = {diff.text(unit=unit)}; "
            f"supported if the 95% CI lies wholly inside ±{margin:g}, not supported if wholly outside it, "
            "else inconclusive")  # fmt: skip
    return Verdict(outcome, rule)


def check_margin(margin: float) -> None:
    if not margin > 0:
        raise ValueError(f"a margin must be > 0 (got {margin!r})")


def combine(verdicts: Sequence[Verdict], joiner: str = "all of") -> Verdict:
    """A claim made of parts holds when every part is supported; one part not supported refutes it."""
    outcomes = {v.outcome for v in verdicts}
    if outcomes == {SUPPORTED}:
        outcome = SUPPORTED
    elif NOT_SUPPORTED in outcomes:
        outcome = NOT_SUPPORTED
    else:
        outcome = INCONCLUSIVE
    rule = f"{joiner}: " + "; ".join(f"({i + 1}) {v.rule} -> {v.outcome}" for i, v in enumerate(verdicts))
    return Verdict(outcome, rule)


# ================================================================================================ the report
# Everything below reads only the CSVs in out_dir (runner/reproduce.py writes them).
def read_settings(path: Path) -> dict:
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    return {k: json.loads(v) for k, v in zip(frame["key"], frame["value"], strict=True)}


ACC_METRICS = ("acc",)


@dataclass
class Section:
    study: str
    title: str
    verdict: Verdict
    ours: str  # our figure, in words, for the verdict table
    body: list[str]  # markdown lines: design, table, rule
    figure: str  # PNG file name in out_dir
    draw: Callable[[Path], None]  # draws the figure
    runs: int = 0  # runs behind it (every role)


def load_study_tables(out_dir: Path, name: str) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    runs = pd.read_csv(
        out_dir / f"{name}_runs.csv", dtype={"seed": str, "variant": str}, keep_default_na=False
    )
    curves = pd.read_csv(out_dir / f"{name}_curves.csv", dtype={"variant": str}, keep_default_na=False)
    for frame, columns in (
        (
            runs,
            (
                "lr",
                "weight_decay",
                "epochs",
                "val_metric",
                "test_metric",
                "epochs_to_target",
                "time_to_target_s",
                "wall_s",
            ),
        ),
        (curves, ("epoch", "val_metric", "train_loss")),
    ):
        for column in columns:
            frame[column] = pd.to_numeric(frame[column], errors="coerce")
    return runs, curves, read_settings(out_dir / f"{name}_settings.csv")


def study_names(out_dir: Path) -> list[str]:
    found = [p.name.removesuffix("_settings.csv") for p in out_dir.glob("*_settings.csv")]
    return sorted(found, key=lambda n: (read_settings(out_dir / f"{n}_settings.csv")["order"], n))


def sections(out_dir: str | Path) -> list[Section]:
    """Every study's analysis, in the order of conf/reproduce.yaml's studies."""
    out_dir, built = Path(out_dir), []
    for name in study_names(out_dir):
        runs, curves, settings = load_study_tables(out_dir, name)
        section = ANALYSES[settings["kind"]](runs, curves, settings)
        section.runs = len(runs)
        built.append(section)
    return built


def write_report(out_dir: str | Path) -> Path:
    """Every study's figure and report.md, from the CSVs in out_dir alone."""
    out_dir = Path(out_dir)
    if not study_names(out_dir):
        raise UsageError(f"no study has written its CSVs in {out_dir} yet; run adamrun reproduce first")
    for section in sections(out_dir):
        section.draw(out_dir / section.figure)
    path = out_dir / "report.md"
    results.write_text(path, render_report(out_dir))
    return path


def render_report(out_dir: str | Path) -> str:
    """report.md's text from the CSVs in out_dir (no file written, nothing measured)."""
    out_dir = Path(out_dir)
    built = sections(out_dir)
    untested = (
        pd.read_csv(out_dir / "untested.csv", keep_default_na=False)
        if (out_dir / "untested.csv").exists()
        else pd.DataFrame(columns=["claim", "source", "why"])
    )
    settings = [read_settings(out_dir / f"{s.study}_settings.csv") for s in built]
    lines = [
        "# Reproduction report: AdamW, super-convergence and their claims",
        "",
        "Generated by `runner/reproduce.py` (`write_report`) from the CSVs beside this file; no number here is "
        "typed by hand. Verdicts: *supported*, *not supported*, *inconclusive at this budget* (the rule of each "
        "is written in its section, on 95% confidence intervals; about ten such intervals are read here, and "
        "several share the AdamW seeds, so one of them may mislead by chance). Settings are chosen on a "
        "validation split (or are the published ones, where a section says so); the runs that are compared are "
        "fresh seeds that each read the test set once, at their end.",
        "",
        "## Verdicts",
        "",
    ]
    rows = [
        [
            s.title,
            sett["source"] + ": " + sett["paper"],
            f"[{s.figure}]({s.figure}): {s.ours}",
            data_budget(sett, s.runs),
            f"**{s.verdict.outcome}**",
        ]
        for s, sett in zip(built, settings, strict=True)
    ]
    rows += [[u.claim, u.source, "", u.why, UNTESTED] for u in untested.itertuples()]
    lines += [
        markdown(["claim", "source (paper's figure)", "our figure", "data and budget", "verdict"], rows),
        "",
    ]
    for section, sett in zip(built, settings, strict=True):
        lines += [
            f"## {section.title}",
            "",
            *section.body,
            "",
            sweeps_line(sett, settings),
            "",
            f"![{section.study}]({section.figure})",
            "",
            f"**Verdict: {section.verdict.outcome}.** Rule: {section.verdict.rule}.",
            "",
        ]
    lines += commands_and_time(settings)
    return "\n".join(lines)


def sweeps_line(study: dict, every: list[dict]) -> str:
    """The study's sweeps (folders under work_dir, named by a digest of their trials), and the other studies that
    read the same folder: those trials ran once and serve each of them."""
    parts = []
    for sweep in dict.fromkeys(study["sweeps"]):
        others = [s["study"] for s in every if s is not study and sweep in s["sweeps"]]
        parts.append(f"`{sweep}`" + (f" (shared with {', '.join(others)})" if others else ""))
    return "Sweeps: " + ", ".join(parts) + "." if parts else "Sweeps: none."


def markdown(header: list[str], rows: list[list]) -> str:
    from runner.report import markdown as md

    return md(header, rows)


def base_trials(settings: dict) -> list[str]:
    """The base overrides every trial of the study starts from (data, subset sizes, widths, epochs)."""
    arms = [settings["arm"]] if "arm" in settings else list(settings["arms"].values())
    return [t for b in sorted({arm["base"] for arm in arms}) for t in settings["bases"][b]["trials"]]


def study_trials(settings: dict) -> list[str]:
    """The overrides every trial of the study starts from: its base's, then the study's own (which win), with
    the epochs of a study that runs several budgets written as that list."""
    own = list(settings.get("trials", []))
    if "budgets" in settings:
        epochs = ",".join(str(b) for b in settings["budgets"])
        own.append(f"trainer.epochs={epochs} (lr chosen at {settings['select_budget']})")
    replaced = {t.split("=", 1)[0] for t in own}
    return [t for t in base_trials(settings) if t.split("=", 1)[0] not in replaced] + own


def data_budget(settings: dict, runs: int) -> str:
    """The trials' data and budget as their overrides, the scale, the runs and the minutes."""
    trials = [t for t in study_trials(settings) if not t.startswith("optimizer.")]
    return (
        " ".join(f"`{t}`" for t in trials) + f"; {runs} runs, {settings['wall_s'] / 60:.1f} min measured "
        f"(expected {settings['minutes_expected']:g}, {settings['scale']} scale)"
    )


def commands_and_time(settings: list[dict]) -> list[str]:
    total = sum(s["wall_s"] for s in settings)
    lines = [
        "## Commands and time",
        "",
        "Each study, as run (`make reproduce` runs `adamrun reproduce`: every study, "
        "then this report; `adamrun reproduce --report-only` rewrites the report from the CSVs):",
        "",
        "```",
    ]
    lines += [s["command"] for s in settings] + ["```", ""]
    rows = [
        [
            s["study"],
            f"{s['wall_s'] / 60:.1f}",
            f"{s['minutes_expected']:g}",
            str(s["segments"]),
            f"{s['load_at_start']:g}",
        ]
        for s in settings
    ]
    rows.append(
        ["**total**", f"**{total / 60:.1f}**", f"{sum(s['minutes_expected'] for s in settings):g}", "", ""]
    )
    lines += [
        markdown(
            [
                "study",
                "minutes measured",
                "minutes expected (2 idle cores)",
                "segments (resumes + 1)",
                "load average at start",
            ],
            rows,
        ),
        "",
    ]
    machines = sorted({s["machine"] for s in settings})
    lines += [
        f"Measured on: {'; '.join(machines)}. Load averages above 0 mean other work shared the cores, so "
        "those minutes run long.",
        "",
    ]
    return lines


# ------------------------------------------------------------------------------------------------ analyses
def finished(runs: pd.DataFrame, **where) -> pd.DataFrame:
    keep = runs["status"] == "finished"
    for column, value in where.items():
        keep &= runs[column] == value
    return runs[keep]


def points(values: pd.Series, metric: str) -> pd.Series:
    """Accuracy as percentage points (what the report's margins are in); any other metric as it is."""
    return values * 100 if metric in ACC_METRICS else values


def mean_std_text(values, digits: int = 2) -> str:
    values = pd.Series(values, dtype=float).dropna()
    if values.empty:
        return ""
    if len(values) == 1:
        return f"{values.iloc[0]:.{digits}f}"
    return f"{values.mean():.{digits}f} ± {values.std(ddof=1):.{digits}f}"


# ---------------------------------------------------------------------------------------- decoupling
@dataclass
class Ridge:
    """Per lr row of a grid: where the good weight decays are (log10 wd), and the slope of each measure."""

    arm: str
    label: str
    rows: pd.DataFrame  # lr, best, best_at_edge, edge, censored, best_val
    fits: dict  # measure -> verdict.Slope, or None with fewer than 3 usable rows

    def fit(self, measure: str):
        return self.fits[measure]


def wd_measures(grid: pd.DataFrame, goal: str, drop: float) -> pd.DataFrame:
    """For each lr row (log10 wd throughout):

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
    for lr, row in grid.groupby("lr", sort=True):
        row = row[row["weight_decay"] > 0].sort_values("weight_decay")
        if row.empty:
            continue
        x = row["weight_decay"].map(math.log10).to_numpy()
        y = sign * points(row["val_metric"], metric).to_numpy()
        i = int(y.argmax())
        out.append(
            {
                "lr": lr,
                "best": refined_best(x, y, i),
                "best_at_edge": i in (0, len(x) - 1),
                **good_edge(x, y, i, drop),
                "best_val": sign * y[i],
            }
        )
    return pd.DataFrame(out, columns=["lr", "best", "best_at_edge", "edge", "censored", "best_val"])


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


def ridges(runs: pd.DataFrame, settings: dict) -> list[Ridge]:
    found = []
    for arm, info in settings["arms"].items():
        grid = finished(runs, arm=arm, role="select")
        goal = grid["goal"].iloc[0] if not grid.empty else "max"
        rows = wd_measures(grid, goal, settings["drop"])
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
    return "fewer than 3 usable lr rows" if fit is None else fit.estimate().text(digits=2)


def analyze_decoupling(runs: pd.DataFrame, curves: pd.DataFrame, settings: dict) -> Section:
    found = {r.arm: r for r in ridges(runs, settings)}
    coupled, decoupled = found[settings["coupled"]], found[settings["decoupled"]]
    shown = list(found.values()) + ([torch_ridge(decoupled)] if settings["torch_view"] else [])
    measure, margin = settings["measure"], settings["margin"]
    if coupled.fit(measure) is None or decoupled.fit(measure) is None:
        verdict = Verdict(INCONCLUSIVE, f"needs 3+ lr rows with a known {MEASURES[measure]} in both grids")
    else:
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
        verdict = combine([moves, flat], "both of")
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
        f"Design: an lr x weight-decay grid per optimizer, seed 0, each trial scored on the validation split "
        f"({n_runs(runs, 'select')} runs). Per lr row, two measures of where the good weight decays are: the best "
        "wd (argmax, refined by a parabola through its neighbours), and the upper edge of the good region (the wd "
        f"at which the accuracy first falls {settings['drop']:.1f} points below the row's best; rows where it never "
        "does are censored and left out of the fit). Then the least-squares slope of log10(wd) on log10(lr) with "
        "its 95% t interval: 0 means the good region stays put when the lr moves (decoupled), -1 that it moves as "
        f"1 / lr (only lr x wd matters). The verdict reads the {MEASURES[settings['measure']]}: at a budget of a "
        "few epochs the accuracy is nearly flat in wd until decay starts to hurt, so the argmax mostly measures "
        "noise; the edge is where the grid has signal."
    )


def per_lr(rows: pd.DataFrame, column: str, flag: str, note: str) -> str:
    return "; ".join(
        f"{r['lr']:g}: {10 ** r[column]:.2g}{f' ({note})' if r[flag] else ''}" for _, r in rows.iterrows()
    )


def torch_check_line(runs: pd.DataFrame, settings: dict) -> str:
    check_ = settings["torch_check"]
    paper = finished(runs, arm=settings["decoupled"], role="select")
    paper = paper[(paper["lr"] == float(check_["lr"])) & (paper["weight_decay"] == float(check_["lambda"]))]
    torch_run = finished(runs, role="torch_check")
    if paper.empty or torch_run.empty:
        return "Torch-convention check: not finished."
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


def values_text(values: list) -> str:
    return ", ".join(f"{v:g}" for v in values)


def n_runs(runs: pd.DataFrame, role: str | None = None) -> int:
    return int((runs["role"] == role).sum()) if role else len(runs)


def arm_text(settings: dict, extra: list[str] = ()) -> str:
    """The optimizer a study runs: its label, overrides (and `extra` ones) and weight decay."""
    overrides = " ".join([*settings["arm"]["overrides"], *extra])
    return f"{settings['arm']['label']} (`{overrides}`, weight decay {settings['weight_decay']:g} {settings['arm']['wd_name']})"


def claim_line(settings: dict) -> str:
    text = f"Claim: {settings['claim']} Source: {settings['source']}: {settings['paper']}."
    return text + (f" Not tested here: {settings['untested']}." if settings["untested"] else "")


def title(settings: dict) -> str:
    return f"{settings['study']}: {settings['claim']}"


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
        grid = runs[(runs["arm"] == arm) & (runs["role"] == "select")]
        wd = grid["weight_decay"] / (grid["lr"] if ridge.arm.endswith("_torch") else 1)
        done = grid["status"] == "finished"
        score = points(grid["val_metric"], first(grid["metric"]))
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
        f"validation {metric_name(first(every['metric']))} ({unit_name(first(every['metric']))}), seed 0"
    )
    fig.suptitle(
        wrapped(
            f"Where is the best weight decay for each learning rate? ({settings['source']})\n"
            + setting_text(settings),
            150,
        ),
        fontsize=10.5,
    )
    save_figure(fig, path)


# ---------------------------------------------------------------------------------------- compare
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
    save_figure(fig, path)


# ---------------------------------------------------------------------------------------- schedules
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
    save_figure(fig, path)


# ---------------------------------------------------------------------------------------- warmup
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
    save_figure(fig, path)


ANALYSES = {
    "decoupling": analyze_decoupling,
    "compare": analyze_compare,
    "schedules": analyze_schedules,
    "warmup": analyze_warmup,
}


# ------------------------------------------------------------------------------------------------ plotting
def new_figure(size: tuple[float, float]):
    from matplotlib.figure import Figure

    return Figure(figsize=size, dpi=110, layout="constrained")


def save_figure(fig, path: Path) -> None:
    with results.replaced_atomically(path) as tmp:
        fig.savefig(tmp, dpi=110, metadata={"Software": None})


def wrapped(text: str, width: int) -> str:
    import textwrap

    return "\n".join(textwrap.fill(line, width) for line in text.splitlines())


def setting_text(settings: dict) -> str:
    """What every run of the study shares, for a figure's title: its scale and its trials' base overrides."""
    trials = " ".join(t for t in study_trials(settings) if not t.startswith(("optimizer.", "~")))
    return f"{settings['scale']} scale: {trials}"


def first(values) -> str:
    return next((str(v) for v in values if str(v).strip() and str(v) != "nan"), "")


def metric_name(metric: str) -> str:
    return {"acc": "accuracy", "ppl": "perplexity"}.get(metric, metric or "metric")


def unit_name(metric: str) -> str:
    return {"acc": "%", "ppl": "per token, lower is better"}.get(metric, "")
