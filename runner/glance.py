"""A sweep or a search at a glance, for any number of axes (`adamrun report` draws these beside its tables):

- parallel.png: parallel coordinates, one line per trial across every swept axis to its metric, coloured by the
  metric; pruned trials dashed, diverged and failed ones drawn to their own marks under the metric's axis;
- importance.png: each axis's importance for the metric, from Optuna's PED-ANOVA evaluator (no scikit-learn,
  which fANOVA needs) on an in-memory study holding the rows: a grid sweep's rows as much as a search's trials;
- history.png (a search only): each trial's metric by trial number, and the best so far.

Every function takes the runs (runner/report.py's table) and the axes; the numbers they draw are returned by
`coordinates` and `importances`, which the tests check against the rows.
"""

from __future__ import annotations

import math

import pandas as pd

from runner.render import new_figure, save, wrapped

SCORED = ("finished", "pruned")  # trials whose metric is a result (a pruned one: its last evaluation)
MARKS = {
    "diverged": -0.12,
    "failed": -0.24,
}  # where the metric axis puts trials without a metric (axis: 0..1)
LOG_SPAN = 20  # an all-positive axis spanning more than this factor is drawn on a log scale
MIN_TRIALS = 4  # scored trials before an importance means anything (PED-ANOVA compares its top ones)
TICKS = 5  # labels per numeric axis
CMAP = "viridis"
PARALLEL_FIGSIZE = (11.0, 5.0)  # inches
BAR_HEIGHT = 0.45  # inches per axis of the importance chart
HISTORY_FIGSIZE = (9.0, 4.5)


def metric_values(runs: pd.DataFrame, split: str) -> pd.Series:
    """Each trial's metric where it is a result, else NaN."""
    return runs[f"{split}_metric"].where(runs["status"].isin(SCORED))


def is_log(values: pd.Series) -> bool:
    return bool((values > 0).all()) and values.max() / values.min() > LOG_SPAN


def scale(column: pd.Series) -> tuple[pd.Series, list[float], list[str]]:
    """An axis's values on [0, 1] (numbers linear or log, words by their sorted order), with its ticks and
    their labels."""
    numbers = pd.to_numeric(column, errors="coerce")
    if numbers.notna().all() and numbers.nunique() > 1:
        shown = numbers.map(math.log10) if is_log(numbers) else numbers
        low, high = shown.min(), shown.max()
        ticks = [i / (TICKS - 1) for i in range(TICKS)]
        values = [low + t * (high - low) for t in ticks]
        labels = [f"{10**v if is_log(numbers) else v:.3g}" for v in values]
        return (shown - low) / (high - low), ticks, labels
    words = sorted({str(v) for v in column})
    step = 1 / max(len(words) - 1, 1)
    return column.map(lambda v: words.index(str(v)) * step), [i * step for i in range(len(words))], words


def coordinates(runs: pd.DataFrame, axes: list[str], split: str) -> pd.DataFrame:
    """One row per trial: its place on each axis (0..1), then on the metric's (0..1 between the worst and the
    best result; a diverged or failed trial at its MARKS), its metric and status."""
    placed = pd.DataFrame({axis: scale(runs[axis])[0] for axis in axes}, index=runs.index)
    metric = metric_values(runs, split)
    low, high = metric.min(), metric.max()
    spread = (high - low) or 1.0
    placed["metric"] = ((metric - low) / spread).where(metric.notna(), runs["status"].map(MARKS))
    return placed.assign(value=metric, status=runs["status"])


def plot_parallel(
    path, runs: pd.DataFrame, axes: list[str], split: str, label: str, title: str
) -> str | None:
    """parallel.png; None when drawn, else why not."""
    import matplotlib
    from matplotlib.colors import Normalize

    if not axes:
        return "the runs vary no setting"
    placed = coordinates(runs, axes, split)
    scored = placed["value"].dropna()
    if scored.empty:
        return f"no trial has a {split} result"
    cmap, norm = matplotlib.colormaps[CMAP], Normalize(scored.min(), scored.max())
    fig = new_figure(PARALLEL_FIGSIZE)
    ax = fig.add_subplot()
    xs = list(range(len(axes) + 1))
    for _, trial in placed.sort_values("value", na_position="first").iterrows():  # the best drawn on top
        ys = [*trial[axes], trial["metric"]]
        if pd.isna(trial["metric"]):
            continue  # interrupted or running: no place on the metric's axis yet
        if pd.isna(trial["value"]):
            ax.plot(xs, ys, color="tab:red" if trial["status"] == "diverged" else "grey", lw=0.9, ls=":")
            ax.plot(xs[-1], ys[-1], "x", color="tab:red" if trial["status"] == "diverged" else "grey")
        else:
            ax.plot(
                xs,
                ys,
                color=cmap(norm(trial["value"])),
                lw=1.4,
                ls="--" if trial["status"] == "pruned" else "-",
            )
    for x, axis in enumerate(axes):
        _, ticks, labels = scale(runs[axis])
        ax.axvline(x, color="black", lw=0.8)
        for tick, text in zip(ticks, labels, strict=True):
            ax.text(x + 0.02, tick, text, fontsize=7, va="center")
    ax.axvline(xs[-1], color="black", lw=0.8)
    low, high = scored.min(), scored.max()
    for tick in (0.0, 0.5, 1.0):
        ax.text(xs[-1] + 0.02, tick, f"{low + tick * (high - low):.4g}", fontsize=7, va="center")
    for status, y in MARKS.items():
        ax.text(
            xs[-1] + 0.02,
            y,
            status,
            fontsize=7,
            va="center",
            color="tab:red" if status == "diverged" else "grey",
        )
    ax.set_xticks(xs, [*axes, f"{split}_{runs['metric'].iloc[0]}"], rotation=15)
    ax.set_yticks([])
    ax.set_ylim(min(MARKS.values()) - 0.08, 1.05)
    ax.set_xlim(-0.1, xs[-1] + 0.45)
    fig.colorbar(matplotlib.cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, label=label, pad=0.01)
    fig.suptitle(wrapped(f"{title}: one line per trial (dashed: pruned; dotted to a mark: diverged or failed)", 120),
                 fontsize=10)  # fmt: skip
    save(fig, path)
    return None


def distribution(column: pd.Series, trials: int):
    """The Optuna distribution of an axis's values: a grid's few values (each shared by two trials or more) as
    choices, which PED-ANOVA compares by their share among the best trials; a search's values, all but
    unique, as a float range (log when wide)."""
    import optuna

    numbers = pd.to_numeric(column, errors="coerce")
    if numbers.notna().all() and column.nunique() > trials / 2:
        return optuna.distributions.FloatDistribution(numbers.min(), numbers.max(), log=is_log(numbers))
    return optuna.distributions.CategoricalDistribution(sorted({str(v) for v in column}))


def importances(runs: pd.DataFrame, axes: list[str], split: str, goal: str) -> dict[str, float]:
    """Each axis's importance for the metric (PED-ANOVA, summing to 1), most important first; the scored
    rows are the trials of an in-memory study."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    metric = metric_values(runs, split)
    scored = runs[metric.notna()]
    distributions = {axis: distribution(runs[axis], len(scored)) for axis in axes}
    study = optuna.create_study(direction="maximize" if goal == "max" else "minimize")
    for index, run in scored.iterrows():
        params = {
            axis: float(run[axis])
            if isinstance(d, optuna.distributions.FloatDistribution)
            else str(run[axis])
            for axis, d in distributions.items()
        }
        study.add_trial(
            optuna.trial.create_trial(params=params, distributions=distributions, value=float(metric[index]))
        )
    evaluator = optuna.importance.PedAnovaImportanceEvaluator()
    return dict(optuna.importance.get_param_importances(study, evaluator=evaluator))


def plot_importance(path, runs: pd.DataFrame, axes: list[str], split: str, goal: str, label: str,
                    title: str) -> tuple[str | None, dict[str, float]]:  # fmt: skip
    """importance.png: (None when drawn, else why not; the importances)."""
    varied = [a for a in axes if runs[a].nunique() > 1]
    scored = int(metric_values(runs, split).notna().sum())
    if not varied:
        return "the runs vary no setting", {}
    if scored < MIN_TRIALS:
        return f"{scored} trials have a {split} result; importance needs {MIN_TRIALS}", {}
    found = importances(runs, varied, split, goal)
    fig = new_figure((7.0, 1.2 + BAR_HEIGHT * len(found)))
    ax = fig.add_subplot()
    names = list(found)[::-1]  # the most important at the top
    ax.barh(names, [found[n] for n in names], color="tab:blue")
    for y, name in enumerate(names):
        ax.text(found[name], y, f" {found[name]:.2f}", va="center", fontsize=8)
    ax.set_xlim(0, 1.1)
    ax.set_xlabel(f"importance for {label} (Optuna's PED-ANOVA, summing to 1; {scored} trials)")
    fig.suptitle(wrapped(f"{title}: parameter importance", 100), fontsize=10)
    save(fig, path)
    return None, found


def plot_history(path, runs: pd.DataFrame, split: str, goal: str, label: str, title: str) -> str | None:
    """history.png for a search (its rows have a trial number); None when drawn, else why not."""
    trials = runs.assign(number=pd.to_numeric(runs["trial"], errors="coerce")).dropna(subset=["number"])
    trials = trials.sort_values("number")
    metric = metric_values(trials, split)
    if metric.notna().sum() == 0:
        return f"no trial has a {split} result"
    fig = new_figure(HISTORY_FIGSIZE)
    ax = fig.add_subplot()
    for status, style in (("finished", "o"), ("pruned", "^")):
        chosen = trials["status"] == status
        ax.plot(trials["number"][chosen], metric[chosen], style, label=status, color="tab:blue", alpha=0.8)
    best = metric.cummax() if goal == "max" else metric.cummin()
    ax.step(trials["number"], best.ffill(), where="post", color="tab:orange", label="best so far")
    bottom = metric.min() - 0.05 * ((metric.max() - metric.min()) or 1.0)
    for status in MARKS:
        lost = trials["number"][trials["status"] == status]
        if len(lost):
            ax.plot(
                lost,
                [bottom] * len(lost),
                "x",
                color="tab:red" if status == "diverged" else "grey",
                label=status,
            )
    ax.set_xlabel("trial")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_ylabel(label)
    ax.legend(fontsize=8)
    fig.suptitle(wrapped(f"{title}: optimisation history", 100), fontsize=10)
    save(fig, path)
    return None
