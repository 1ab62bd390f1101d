"""`adamrun report <dir>`: the tables and plots of a sweep or a results folder.

Reads the folder's runs.csv (one row per run, runner/results.py RUN_COLUMNS plus one column per sweep override)
and each run's metrics.jsonl, and writes, atomically, into the folder:

- summary.csv / summary.md: one row per setting (every column that defines a run except the seed), over its
  finished runs: seeds, validation and test mean ± std (std from 2 seeds on), time to target and how many runs
  reached it, mean wall time, and the count of every status;
- best.csv / best.md: per group (default: per optimizer) the setting with the best MEAN VALIDATION metric, and
  that setting's test mean ± std: tuned on validation, the test set read only for the chosen setting. Without a
  validation split the choice falls back to test, and the `selected_on` column says it is biased;
- curves.png: the learning curve of each group's chosen setting, mean ± std over its seeds;
- heatmap.png: lr x weight-decay panels per optimizer (Loshchilov & Hutter, arXiv:1711.05101, Figure 2: the good
  region of Adam-L2 is a diagonal, that of AdamW closer to axis-aligned), when the runs vary both;
- time_to_target.png: time (seconds and epochs) to the run's trainer.target, when any run reached one;
- parallel.png, importance.png and, for a search, history.png: every trial at a glance, whatever the number of
  axes (runner/glance.py);
- report.md: the tables, the plots, the status counts and the runs that have no results.

A plot without data is skipped, and Report.skipped says why. Everything is deterministic: settings are sorted
by their columns and nothing depends on time or on the order of the rows in runs.csv.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from runner import glance
from runner.errors import UsageError
from runner.render import METRIC_NAMES, markdown, metric_name, new_figure, save, wrapped
from runner.results import RUN_COLUMNS, replaced_atomically, runs_table, write_text

if TYPE_CHECKING:
    from rich.table import Table

SETTING = [
    "recipe",
    "data",
    "model",
    "optimizer",
    "schedule",
    "lr",
    "weight_decay",
    "epochs",
]  # a run, less seed
STATUSES = ("finished", "diverged", "failed", "interrupted", "pruned", "running")  # a count column each
NUMBERS = ("val_metric", "test_metric", "epochs_run", "time_to_target_s", "epochs_to_target", "steps_to_target",
           "wall_s")  # fmt: skip
# extra columns that do not change what a run computes: runtime keys, a sweep's own keys, a failed trial's error
NOT_SETTING = ("seed", "run_dir", "results_dir", "resume", "trainer.progress", "trainer.threads",
               "trainer.log_every", "sweep", "sweep_dir", "trial", "error")  # fmt: skip
LR_COLUMNS = ("optimizer.lr", "lr")  # the sweep's override first: it is the value the user swept
WD_COLUMNS = ("optimizer.weight_decay", "weight_decay")
ALIASES = {"optimizer.lr": "lr", "optimizer.weight_decay": "weight_decay", "trainer.epochs": "epochs"}
CONTEXT = ("recipe", "data", "model")  # "best per optimizer" never compares across data sets
METRIC_UNITS = {"acc": "fraction correct", "accuracy": "fraction correct"}
LOWER_IS_BETTER = ("ppl", "loss", "perplexity", "error", "err")  # the goal when runs.csv lacks one
BIASED = "test (no validation split: biased)"

FILES = {
    "summary_csv": "summary.csv",
    "summary_md": "summary.md",
    "best_csv": "best.csv",
    "best_md": "best.md",
    "curves": "curves.png",
    "heatmap": "heatmap.png",
    "time_to_target": "time_to_target.png",
    "parallel": "parallel.png",
    "importance": "importance.png",
    "history": "history.png",
    "report": "report.md",
}
PLOTS = ("curves", "heatmap", "time_to_target", "parallel", "importance")  # history: a search's only
CURVES_FIGSIZE = (12.0, 5.2)  # inches: the whole run, and its second half zoomed
HEATMAP_COLUMNS = 4  # panels per row
BEST_EDGE = "red"  # outline of each heatmap panel's best cell


@dataclass
class Report:
    folder: Path
    group_by: str
    written: list[Path] = field(default_factory=list)  # every file written, in the folder
    skipped: dict[str, str] = field(default_factory=dict)  # plot name -> why it was not drawn
    summary: pd.DataFrame = field(default_factory=pd.DataFrame)  # one row per setting
    best: pd.DataFrame = field(default_factory=pd.DataFrame)  # one row per group
    status_counts: dict[str, int] = field(default_factory=dict)  # over every run in runs.csv
    # the runs without results (run_id, status, missing: why), e.g. failed, or no metrics.jsonl
    missing: pd.DataFrame = field(default_factory=pd.DataFrame)
    setting: list[str] = field(default_factory=list)  # the columns that define a setting
    malformed: list[str] = field(default_factory=list)  # rows of runs.csv, lines of metrics.jsonl left out
    importance: dict[str, float] = field(default_factory=dict)  # swept axis -> its importance, largest first

    @property
    def swept(self) -> list[str]:
        """The setting columns that vary between settings (group_by first): what the tables show."""
        return display_columns(self.summary, self.setting, self.group_by)

    def path(self, name: str) -> Path:
        return self.folder / FILES[name]


# ------------------------------------------------------------------------------------------ reading
def canonical(column: pd.Series) -> pd.Series:
    """A setting column as numbers when every non-empty value is one (so "1e-3" and "0.001" are the same lr;
    int when all are whole and none is empty), else as stripped strings ("" for empty)."""
    text = column.fillna("").astype(str).str.strip()
    filled = text != ""
    numbers = pd.to_numeric(text.where(filled), errors="coerce")
    if not filled.any() or numbers[filled].isna().any():
        return text.astype(object)
    if filled.all() and (numbers % 1 == 0).all():
        return numbers.astype("int64")
    return numbers.astype("float64")


def load_runs(where: str | Path) -> tuple[Path, pd.DataFrame, list[str]]:
    """The folder and its runs.csv as a DataFrame: setting columns canonical, numbers as floats (NaN where a
    failed run left them empty), status and metric as strings; and the malformed rows it left out, each named
    by its line (a summary skips them rather than print shifted columns)."""
    path = Path(where).expanduser()
    table, rows, problems = runs_table(path)  # a wrong path, or a table that is not one: one line
    folder, malformed = table.parent, [f"{table}, {problem}" for problem in problems]
    extra = sorted({key for row in rows for key in row} - set(RUN_COLUMNS))
    runs = pd.DataFrame(rows, columns=[*RUN_COLUMNS, *extra], dtype=object).fillna("")
    runs = runs.map(lambda v: str(v).strip())
    fill_label_only_rows(runs)
    if "test_acc" in runs.columns:  # a table written before test_metric existed: its metric was test_acc
        old = runs["test_metric"] == ""
        runs.loc[old, "test_metric"] = runs.loc[old, "test_acc"]
        runs.loc[old & (runs["metric"] == ""), ["metric", "goal"]] = ["acc", "max"]
    for column in runs.columns:
        if column in NUMBERS:
            runs[column] = pd.to_numeric(runs[column], errors="coerce")
        elif column in setting_columns(runs.columns) and column != "seed":
            runs[column] = canonical(runs[column])
    # sorted, so sums over seeds (and so every number written) do not depend on the order of runs.csv
    return folder, runs.sort_values(["run_id", "seed"], kind="stable").reset_index(drop=True), malformed


def fill_label_only_rows(runs: pd.DataFrame) -> None:
    """A sweep trial that raised before training has a row of its overrides only (no recipe, lr, ...): fill
    its lr, weight_decay and epochs from its optimizer.lr, optimizer.weight_decay and trainer.epochs, and the
    columns that every other run shares from them, so it counts as a failed run of its setting."""
    bare = runs["recipe"] == ""
    if not bare.any():
        return
    for alias, column in ALIASES.items():
        if alias in runs.columns:
            runs.loc[bare & (runs[column] == ""), column] = runs.loc[bare, alias]
    for column in [*SETTING, "metric", "goal"]:
        shared = set(runs.loc[~bare, column]) - {""}
        if len(shared) == 1:
            runs.loc[bare & (runs[column] == ""), column] = shared.pop()


def setting_columns(columns: Iterable[str]) -> list[str]:
    """What defines a run except the seed: SETTING, then every sweep override column (sorted). A
    metric column of an older table (test_acc) is a result, not a setting."""
    extra = sorted(set(columns) - set(RUN_COLUMNS) - set(NOT_SETTING))
    return [*SETTING, *(c for c in extra if not c.startswith(("val_", "test_", "train_")))]


def guess_goal(metric: str) -> str:
    return "min" if metric.lower() in LOWER_IS_BETTER else "max"


def first_filled(values: Iterable[Any]) -> str:
    return next((str(v) for v in values if str(v).strip()), "")


def run_folder(folder: Path, run: pd.Series) -> Path | None:
    """The run's folder: run_dir when absolute, else relative to the results folder; or the run_id there."""
    candidates = []
    if run["run_dir"]:
        given = Path(run["run_dir"]).expanduser()
        candidates.append(given if given.is_absolute() else folder / given)
    if run["run_id"]:
        candidates.append(folder / run["run_id"])
    return next((c for c in candidates if (c / "metrics.jsonl").is_file()), None)


def read_metrics(run_dir: Path) -> list[dict]:
    """metrics.jsonl's rows; a line that is not a JSON object is skipped (metric_problems names it)."""
    return parse_metrics(run_dir)[0]


def metric_problems(run_dir: Path) -> list[str]:
    """The lines of a run's metrics.jsonl that are left out: not a JSON object, or a word for a number."""
    return [f"{run_dir / 'metrics.jsonl'}, {problem}" for problem in parse_metrics(run_dir)[1]]


def parse_metrics(run_dir: Path) -> tuple[list[dict], list[str]]:
    rows, problems = [], []
    for number, line in enumerate((run_dir / "metrics.jsonl").read_text(errors="replace").splitlines(), 1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        words = [k for k, v in row.items() if isinstance(v, str)] if isinstance(row, dict) else []
        if not isinstance(row, dict) or words:
            problems.append(
                f"line {number}: {f'{words[0]} is not a number' if words else 'not a JSON object'}"
            )
        else:
            rows.append(row)
    return rows, problems


# ------------------------------------------------------------------------------------------ the tables
def summarize_settings(runs: pd.DataFrame, setting: list[str]) -> pd.DataFrame:
    """One row per setting, sorted by the setting's columns, over its finished runs."""
    columns = [*setting, "metric", "goal", "runs", "seeds", "val_mean", "val_std", "test_mean", "test_std",
               "reached", "time_to_target_s", "time_to_target_std", "epochs_to_target", "epochs_to_target_std",
               "wall_s", *STATUSES]  # fmt: skip
    if runs.empty:
        return pd.DataFrame(columns=columns)
    statuses = [*STATUSES, *sorted(set(runs["status"]) - set(STATUSES))]
    ids = runs.groupby(setting, dropna=False, sort=True).ngroup()
    rows = []
    for _, part in runs.groupby(ids, sort=True):
        done = part[part["status"] == "finished"]
        metric = first_filled(part["metric"])
        row: dict[str, Any] = {c: part[c].iloc[0] for c in setting}
        row |= {"metric": metric, "goal": first_filled(part["goal"]) or guess_goal(metric)}
        row |= {"runs": len(part), "seeds": len(done)}
        for split in ("val", "test"):
            row |= mean_std(done[f"{split}_metric"], split)
        reached = done["time_to_target_s"].notna()
        row["reached"] = int(reached.sum())
        row |= mean_std(done.loc[reached, "time_to_target_s"], "time_to_target", mean_suffix="_s")
        row |= mean_std(done.loc[reached, "epochs_to_target"], "epochs_to_target", mean_suffix="")
        row["wall_s"] = done["wall_s"].mean() if done["wall_s"].notna().any() else math.nan
        row |= {status: int((part["status"] == status).sum()) for status in statuses}
        rows.append(row)
    return pd.DataFrame(rows, columns=[*columns, *statuses[len(STATUSES) :]])


def mean_std(values: pd.Series, name: str, mean_suffix: str = "_mean") -> dict[str, float]:
    """Mean, and the sample std (ddof 1) when there are 2+ values: one seed says nothing about the spread."""
    values = values.dropna().astype(float)
    mean = float(values.mean()) if len(values) else math.nan
    std = float(values.std(ddof=1)) if len(values) >= 2 else math.nan
    return {f"{name}{mean_suffix}": mean, f"{name}_std": std}


def pick_best(summary: pd.DataFrame, group_by: str) -> pd.DataFrame:
    """Per group (and per recipe, data, model), the setting with the best mean validation metric; its test
    numbers are reported but never looked at for the choice. Without validation numbers, select on test and
    say so. Ties go to the first setting in sorted order."""
    context = [c for c in CONTEXT if c != group_by and c in summary.columns]
    columns = [group_by, *[c for c in summary.columns if c != group_by], "selected_on", "candidates"]
    rows = []
    for _, part in summary.groupby([*context, group_by], dropna=False, sort=True):
        on = "val" if part["val_mean"].notna().any() else "test"
        candidates = part[part[f"{on}_mean"].notna()]
        if candidates.empty:
            continue  # no finished run with a number: nothing to choose from
        goal = first_filled(candidates["goal"]) or guess_goal(first_filled(candidates["metric"]))
        scores = candidates[f"{on}_mean"]
        chosen = scores.idxmin() if goal == "min" else scores.idxmax()
        rows.append({
            **candidates.loc[chosen].to_dict(),
            "selected_on": "val" if on == "val" else BIASED,
            "candidates": len(candidates),
        })  # fmt: skip
    return pd.DataFrame(rows, columns=columns)


def missing_results(runs: pd.DataFrame, folder: Path) -> pd.DataFrame:
    """The runs that add nothing to the tables or the curves, and why."""
    rows = []
    for _, run in runs.sort_values("run_id", kind="stable").iterrows():
        reasons = []
        if run["status"] != "finished":
            error = run.get("error", "")
            reasons.append(f"status {run['status'] or 'empty'}" + (f" ({error})" if error else ""))
        elif math.isnan(run["val_metric"]) and math.isnan(run["test_metric"]):
            reasons.append("no val or test metric in runs.csv")
        if run_folder(folder, run) is None:
            reasons.append("no metrics.jsonl")
        if reasons:
            rows.append({"run_id": run["run_id"], "status": run["status"], "missing": "; ".join(reasons)})
    return pd.DataFrame(rows, columns=["run_id", "status", "missing"])


# ------------------------------------------------------------------------------------------ formatting
def number(value: Any) -> str:
    """A number for people: 4 decimals below 1 (accuracies), 4 significant digits above; empty for NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1 else f"{value:.4g}"
    return str(value)


def key_text(value: Any) -> str:
    """A setting value as written in a config: 0.003, 1e-05, 6, adamw; empty for a missing one."""
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:g}"
    return str(value)


def amount(value: float) -> str:
    """Seconds or epochs: 4 significant digits (0.236, 19.23, 330); empty for NaN."""
    return "" if math.isnan(value) else f"{value:.4g}"


def plus_minus(mean: float, std: float, show=number) -> str:
    if math.isnan(mean):
        return ""
    return show(mean) if math.isnan(std) else f"{show(mean)} ± {show(std)}"


def display_columns(table: pd.DataFrame, setting: list[str], first: str | None = None) -> list[str]:
    """The setting columns worth showing: those that vary, without an override column that repeats another
    column (optimizer.lr next to lr), `first` leading."""
    shown: list[str] = []
    texts = {c: [key_text(v) for v in table[c]] for c in setting if c in table.columns}
    for column in sorted(texts, key=lambda c: c != first):
        if len(set(texts[column])) < 2 and column != first:
            continue
        if ALIASES.get(column) in shown and texts[column] == texts[ALIASES[column]]:
            continue  # an override column that repeats its runs.csv column
        shown.append(column)
    return shown


def fixed_text(table: pd.DataFrame, setting: list[str]) -> str:
    """The setting columns every row shares: 'recipe cifar10, data fashion_mnist, epochs 6' (an override
    column that repeats another, optimizer.lr next to lr, once)."""
    parts, seen = [], {}
    for column in setting:
        if column not in table.columns or table.empty:
            continue
        texts = {key_text(v) for v in table[column]}
        if len(texts) == 1 and (text := texts.pop()) and seen.get(ALIASES.get(column)) != text:
            parts.append(f"{column} {text}")
            seen[column] = text
    return ", ".join(parts)


def readable(table: pd.DataFrame, keys: list[str], setting: list[str]) -> tuple[list[str], list[list]]:
    """The header and the cells of a table for people (markdown, rich): the setting columns `keys`, then the
    numbers."""
    extra = [c for c in ("selected_on",) if c in table.columns]
    targets = bool(table["reached"].sum()) if "reached" in table.columns and not table.empty else False
    known = {*setting, *SUMMARY_NUMBERS, *STATUSES, "selected_on", "candidates"}
    statuses = [*STATUSES[1:], *(c for c in table.columns if c not in known)]  # unknown ones: a status too
    statuses = [c for c in statuses if c in table.columns and table[c].sum() > 0]
    metric = first_filled(table["metric"]) if "metric" in table.columns else ""
    header = [*keys, *extra, "seeds", f"val {metric}".strip(), f"test {metric}".strip()]
    header += ["time_to_target_s (reached)", "epochs_to_target"] if targets else []
    header += ["wall_s", *statuses]
    rows = []
    for _, r in table.iterrows():
        cells = [key_text(r[c]) for c in keys] + [str(r[c]) for c in extra]
        cells += [
            str(r["seeds"]),
            plus_minus(r["val_mean"], r["val_std"]),
            plus_minus(r["test_mean"], r["test_std"]),
        ]
        if targets:
            time = plus_minus(r["time_to_target_s"], r["time_to_target_std"], amount)
            reached = f"{time or 'none'} ({r['reached']}/{r['seeds']})" if r["seeds"] else ""
            cells += [reached, plus_minus(r["epochs_to_target"], r["epochs_to_target_std"], amount)]
        cells += [amount(r["wall_s"]), *(str(r[c]) for c in statuses)]
        rows.append(cells)
    return header, rows


SUMMARY_NUMBERS = ("metric", "goal", "runs", "seeds", "val_mean", "val_std", "test_mean", "test_std", "reached",
                   "time_to_target_s", "time_to_target_std", "epochs_to_target", "epochs_to_target_std",
                   "wall_s", "finished")  # fmt: skip


def rich_table(header: list[str], rows: list[list], title: str, caption: str) -> Table:
    from rich.table import Table

    table = Table(title=title, caption=caption or None)
    for column in header:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*row)
    return table


def summary_table(report: Report) -> Table:
    """Every setting, mean ± std over its finished seeds (what summary.md holds), for the CLI to print."""
    header, rows = readable(report.summary, report.swept, report.setting)
    caption = fixed_text(report.summary, report.setting)
    return rich_table(header, rows, "settings (mean ± std over seeds)", caption)


def best_table(report: Report) -> Table:
    """The best setting per group, chosen on mean validation (what best.md holds), for the CLI to print."""
    header, rows = readable(report.best, report.swept, report.setting)
    title = f"best setting per {report.group_by} (chosen on validation; test read only for the chosen one)"
    return rich_table(header, rows, title, fixed_text(report.summary, report.setting))


# ------------------------------------------------------------------------------------------ plots
def metric_label(metric: str, split: str, goal: str) -> str:
    name = metric_name(metric)
    unit = METRIC_UNITS.get(metric)
    better = "higher is better" if goal == "max" else "lower is better"
    split_name = {"val": "validation", "test": "test"}[split]
    return f"{split_name} {name} ({split}_{metric}{', ' + unit if unit else ''}; {better})"


def curve(folder: Path, runs: pd.DataFrame, key: str) -> pd.DataFrame:
    """epoch, mean, std, n: `key` at each evaluation, over the runs that logged it (std from 2 runs on)."""
    points = []
    for _, run in runs.iterrows():
        where = run_folder(folder, run)
        if where is None:
            continue  # no metrics.jsonl: nothing to draw for this run
        for row in read_metrics(where):
            value = row.get(key)
            if isinstance(row.get("epoch"), int | float) and isinstance(value, int | float):
                points.append((float(row["epoch"]), float(value)))
    if not points:
        return pd.DataFrame(columns=["epoch", "mean", "std", "n"])
    frame = pd.DataFrame(points, columns=["epoch", "value"])
    grouped = frame.groupby("epoch", sort=True)["value"]
    return pd.DataFrame(
        {"mean": grouped.mean(), "std": grouped.std(ddof=1), "n": grouped.count()}
    ).reset_index()


def matches(table: pd.DataFrame, row: pd.Series, columns: list[str]) -> pd.Series:
    """Which rows of `table` have `row`'s values in `columns` (NaN matching NaN)."""
    same = pd.Series(True, index=table.index)
    for column in columns:
        value = row[column]
        if isinstance(value, float) and math.isnan(value):
            same &= table[column].isna()
        else:
            same &= table[column] == value
    return same


def setting_rows(runs: pd.DataFrame, row: pd.Series, setting: list[str]) -> pd.DataFrame:
    """The finished runs of the setting `row` (a summary or best row)."""
    return runs[matches(runs, row, setting) & (runs["status"] == "finished")]


def setting_label(row: pd.Series, columns: list[str], group_by: str) -> str:
    """'adamw (lr 0.001, weight_decay 0.01)': the group, then the swept columns of its setting."""
    rest = ", ".join(f"{c} {key_text(row[c])}" for c in columns if c != group_by)
    return key_text(row[group_by]) + (f" ({rest})" if rest else "")


def plot_curves(path: Path, folder: Path, runs: pd.DataFrame, summary: pd.DataFrame, best: pd.DataFrame,
                setting: list[str], group_by: str) -> str | None:  # fmt: skip
    """Each group's chosen setting: its metric per epoch, mean over seeds, a band for ± std. None when drawn,
    else why not."""
    from matplotlib.ticker import MaxNLocator

    if best.empty:
        return "no finished run has a validation or test metric"
    shown = display_columns(summary, setting, group_by)
    lines = []
    for _, row in best.iterrows():
        split = "val" if row["selected_on"] == "val" else "test"
        points = curve(folder, setting_rows(runs, row, setting), f"{split}_{row['metric']}")
        if not points.empty:
            lines.append((row, split, points))
    if not lines:
        return "no metrics.jsonl with the metric for any group's chosen setting"
    if all(len(points) < 2 for _, _, points in lines):
        return "one evaluation per run: no curve to draw (trainer.eval_every < 1 or more epochs give one)"
    splits = {split for _, split, _ in lines}
    metric, goal = first_filled(best["metric"]), first_filled(best["goal"]) or "max"
    label = metric_label(metric, "val" if splits == {"val"} else "test", goal)
    label = label if len(splits) == 1 else label.replace("validation", "validation (or test)")
    last = max(p["epoch"].max() for _, _, p in lines)
    fig = new_figure(CURVES_FIGSIZE)
    whole, zoom = fig.subplots(1, 2, width_ratios=[3, 2])
    for ax, start in ((whole, -math.inf), (zoom, last / 2)):
        for index, (row, _, points) in enumerate(lines):
            points = points[points["epoch"] >= start]
            colour, seeds = f"C{index % 10}", row["seeds"]
            label_ = setting_label(row, shown, group_by) + f", {seeds} seed{'s' if seeds != 1 else ''}"
            marker = "o" if len(points) <= 40 else None
            ax.plot(points["epoch"], points["mean"], color=colour, lw=2, marker=marker, ms=3.5, label=label_)
            band = points[points["n"] >= 2]
            if not band.empty:
                ax.fill_between(band["epoch"], band["mean"] - band["std"], band["mean"] + band["std"],
                                color=colour, alpha=0.2, lw=0)  # fmt: skip
        ax.set_xlabel("epoch")
        if all(float(e).is_integer() for _, _, p in lines for e in p["epoch"]):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    values = pd.concat([p["mean"] for _, _, p in lines])
    if goal == "min" and values.min() > 0 and values.max() / values.min() > 10:
        whole.set_yscale("log")  # perplexity falls by orders of magnitude early on
    whole.set_ylabel(label)
    whole.set_title("the whole run", fontsize=10)
    zoom.set_title(f"zoom: epochs {last / 2:g} to {last:g}", fontsize=10)
    whole.legend(title=f"{group_by}: chosen setting", fontsize=8.5, title_fontsize=9)
    fixed = fixed_text(summary, setting)
    chosen_on = "validation" if "val" in splits else "test: no validation split, biased"
    title = (
        f"Learning curves of the best setting per {group_by} (chosen on {chosen_on}), mean ± std over seeds"
    )
    title += f"\n{fixed}" if fixed else ""
    fig.suptitle(wrapped(title, 130), fontsize=10)
    save(fig, path)
    return None


def lr_wd(table: pd.DataFrame) -> tuple[pd.Series, pd.Series, str, str]:
    """The lr and weight-decay of each row: the sweep's override column where it has a value, else the
    runs.csv column; and the names of the columns read."""

    def pick(names: tuple[str, ...]) -> tuple[pd.Series, str]:
        values = pd.Series(math.nan, index=table.index, dtype=float)
        used = []
        for name in names:
            if name in table.columns:
                numbers = pd.to_numeric(table[name].map(key_text).replace("", math.nan), errors="coerce")
                if numbers.notna().any():
                    used.append(name)
                values = values.fillna(numbers)
        return values, "/".join(used[:1]) or names[-1]

    lr, lr_name = pick(LR_COLUMNS)
    wd, wd_name = pick(WD_COLUMNS)
    return lr, wd, lr_name, wd_name


def colour_limits(values, goal: str) -> tuple[float, float, bool]:
    """The colour scale's (low, high, clipped): every cell's value, except that a few very bad cells (a run at
    chance level) would squeeze the good region into one colour; from 8 cells on, the bad end stops at the
    median minus 3 robust stds (1.4826 MAD), and the clipped cells take the worst colour (their numbers stay
    written)."""
    import numpy as np

    low, high = float(values.min()), float(values.max())
    median = float(np.median(values))
    spread = 3 * 1.4826 * float(np.median(np.abs(values - median)))
    if spread == 0 or len(values) < 8:  # too few cells to call one an outlier
        return low, high, False
    if goal == "max" and low < median - spread:
        return median - spread, high, True
    if goal == "min" and high > median + spread:
        return low, median + spread, True
    return low, high, False


def heatmap_figsize(panels: int, n_lr: int, n_wd: int) -> tuple[float, float]:
    """Inches: about 0.85 in per cell, at least 3.4 x 3.2 per panel, HEATMAP_COLUMNS panels per row, plus the
    colorbar and the title."""
    columns, rows = min(panels, HEATMAP_COLUMNS), math.ceil(panels / HEATMAP_COLUMNS)
    width, height = max(3.4, 0.85 * n_wd + 1.4), max(3.2, 0.6 * n_lr + 1.5)
    return round(columns * width + 1.3, 2), round(rows * height + 0.9, 2)


NOTES = (("diverged", "div"), ("failed", "failed"), ("pruned", "pruned"), ("interrupted", "interrupted"),
         ("running", "running"))  # what a cell without a number says, first match  # fmt: skip


def cell_note(row: pd.Series) -> str:
    """Why a setting has no number ('div', 'pruned', ...), or how many of its runs diverged ('+1 div')."""
    if math.isnan(row["_value"]):
        return next((label for status, label in NOTES if row.get(status, 0)), "no result")
    return f"+{row['diverged']} div" if row.get("diverged", 0) else ""


def tick(value: float) -> str:
    return f"{value:.3g}"


def text_colour(cmap, norm, value: float) -> str:
    r, g, b, _ = cmap(norm(value))
    return "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white"


def value_text(value: float) -> str:
    return f"{value:.3f}" if abs(value) < 1 else f"{value:.3g}"


def best_index(panel: pd.DataFrame, goal: str):
    scores = panel["_value"].dropna()
    if scores.empty:
        return None
    return scores.idxmin() if goal == "min" else scores.idxmax()


def grid_panel(ax, panel: pd.DataFrame, lrs: list, wds: list, cmap, norm, goal: str):
    """One optimizer's lr x wd grid: a cell per setting, its number written, the best outlined."""
    import numpy as np
    from matplotlib.patches import Rectangle

    cells = np.full((len(lrs), len(wds)), np.nan)
    for _, r in panel.iterrows():
        cells[lrs.index(r["_lr"]), wds.index(r["_wd"])] = r["_value"]
    image = ax.imshow(cells, cmap=cmap, norm=norm, origin="lower", aspect="auto")
    best = best_index(panel, goal)
    for index, r in panel.iterrows():
        i, j, value, note = lrs.index(r["_lr"]), wds.index(r["_wd"]), r["_value"], cell_note(r)
        if math.isnan(value):
            ax.add_patch(
                Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="//", lw=0, edgecolor="#9a9a9a")
            )
            ax.text(j, i, note, ha="center", va="center", fontsize=9, color="#5a0000", fontweight="bold")
            continue
        colour = text_colour(cmap, norm, value)
        ax.text(j, i - (0.12 if note else 0), value_text(value), ha="center", va="center", fontsize=9,
                color=colour, fontweight="bold" if index == best else "normal")  # fmt: skip
        if note:
            ax.text(j, i + 0.22, note, ha="center", va="center", fontsize=7, color=colour)
        if index == best:
            ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor=BEST_EDGE, lw=3))
    ax.set_xticks(range(len(wds)), [tick(w) for w in wds], rotation=30 if len(wds) > 6 else 0)
    ax.set_yticks(range(len(lrs)), [tick(v) for v in lrs])
    return image


def scatter_panel(ax, panel: pd.DataFrame, cmap, norm, goal: str):
    """One optimizer's settings when they are no grid (a random search): a point per setting on log axes."""
    done = panel[panel["_value"].notna()]
    image = ax.scatter(done["_wd"], done["_lr"], c=done["_value"], cmap=cmap, norm=norm, s=90,
                       edgecolors="black", linewidths=0.5, zorder=3)  # fmt: skip
    for _, r in panel.iterrows():
        if math.isnan(r["_value"]):
            ax.scatter(r["_wd"], r["_lr"], marker="x", color="#7a7a7a", s=50, zorder=3)
        text = value_text(r["_value"]) if not math.isnan(r["_value"]) else ""
        note = cell_note(r)
        ax.annotate(" ".join(t for t in (text, note) if t), (r["_wd"], r["_lr"]), xytext=(7, 4),
                    textcoords="offset points", fontsize=8)  # fmt: skip
    best = best_index(panel, goal)
    if best is not None:
        ax.scatter(panel.at[best, "_wd"], panel.at[best, "_lr"], s=260, facecolors="none", edgecolors=BEST_EDGE,
                   linewidths=2.5, zorder=4)  # fmt: skip
    positive = panel.loc[panel["_wd"] > 0, "_wd"]
    if (panel["_wd"] <= 0).any():
        ax.set_xscale("symlog", linthresh=float(positive.min()) if len(positive) else 1e-8)
    else:
        ax.set_xscale("log")
    ax.set_yscale("log")
    ax.margins(0.15)
    ax.grid(alpha=0.3, which="both")
    return image


def plot_heatmap(path: Path, summary: pd.DataFrame, setting: list[str], group_by: str) -> str | None:
    """lr x weight decay, one panel per optimizer (and per value of any other swept key), colour shared and
    direction-aware, the best setting of each panel outlined, diverged ones marked. A grid sweep gives a
    heatmap; settings that fill less than half of their grid (a random search) give a scatter on log axes.
    None when drawn, else why not."""
    import matplotlib
    from matplotlib.colors import Normalize

    if summary.empty:
        return "no runs"
    lr, wd, lr_name, wd_name = lr_wd(summary)
    table = summary.assign(_lr=lr, _wd=wd)[lr.notna() & wd.notna()]
    aliases = {*LR_COLUMNS, *WD_COLUMNS}
    panel_keys = [c for c in display_columns(table, setting, group_by) if c not in aliases]
    panels = list(table.groupby(panel_keys, dropna=False, sort=True)) if panel_keys else [((), table)]
    if not any(p["_lr"].nunique() >= 2 and p["_wd"].nunique() >= 2 for _, p in panels):
        return "the runs do not vary both the learning rate and the weight decay"
    split = "val" if table["val_mean"].notna().any() else "test"
    table = table.assign(_value=table[f"{split}_mean"])
    panels = [(key, table.loc[panel.index]) for key, panel in panels]
    goal = first_filled(table["goal"]) or guess_goal(first_filled(table["metric"]))
    metric = first_filled(table["metric"])
    values = table["_value"].dropna()
    if values.empty:
        return "no finished run in the lr x weight-decay grid"
    lrs, wds = sorted(table["_lr"].unique()), sorted(table["_wd"].unique())
    grid_like = all(
        p[["_lr", "_wd"]].drop_duplicates().shape[0] >= 0.5 * p["_lr"].nunique() * p["_wd"].nunique()
        for _, p in panels
    )
    shape = (len(lrs), len(wds)) if grid_like else (5, 5)
    fig = new_figure(heatmap_figsize(len(panels), *shape))
    rows, columns = math.ceil(len(panels) / HEATMAP_COLUMNS), min(len(panels), HEATMAP_COLUMNS)
    grid = fig.subplots(rows, columns, squeeze=False)
    cmap = matplotlib.colormaps["viridis" if goal == "max" else "viridis_r"].with_extremes(bad="#d9d9d9")
    low, high, clipped = colour_limits(values.to_numpy(dtype=float), goal)
    norm = Normalize(low, high if high > low else low + 1e-12)  # shared by every panel
    image = None
    for ax, (key, panel) in zip(grid.flat, panels, strict=False):
        if grid_like:
            image = grid_panel(ax, panel, lrs, wds, cmap, norm, goal)
        else:
            image = scatter_panel(ax, panel, cmap, norm, goal)
        ax.set_xlabel(f"weight decay ({wd_name})")
        ax.set_ylabel(f"learning rate ({lr_name})")
        key = key if isinstance(key, tuple) else (key,)
        ax.set_title(", ".join(f"{c} {key_text(v)}" if c != group_by else key_text(v)
                               for c, v in zip(panel_keys, key, strict=True)) or "all runs", fontsize=10)  # fmt: skip
    for ax in list(grid.flat)[len(panels) :]:
        ax.set_visible(False)
    extend = "neither" if not clipped else ("min" if goal == "max" else "max")
    bar = fig.colorbar(image, ax=grid.ravel().tolist(), shrink=0.9, extend=extend)
    name = METRIC_NAMES.get(metric, metric)
    bar.set_label(f"mean {split} {name} ({'higher' if goal == 'max' else 'lower'} is better)")
    fixed = fixed_text(table, [c for c in setting if c not in aliases])
    what = "" if grid_like else " (not a grid: a point per setting)"
    notes = [f"{BEST_EDGE} outline: the best of each panel"]
    if table["diverged"].any():
        notes.append("div: every run diverged; +n div: n runs diverged, the number is the mean of the others")
    if clipped:
        notes.append("colour scale clipped at the bad end (arrow)")
    title = (f"Mean {'validation' if split == 'val' else 'test'} {name} ({split}_{metric}) over seeds, by "
             f"learning rate and weight decay{what}" + (f"\n{fixed}" if fixed else "") + "\n" + "; ".join(notes))  # fmt: skip
    fig.suptitle(wrapped(title, int(12 * fig.get_figwidth())), fontsize=9.5)
    save(fig, path)
    return None


def time_figsize(groups: int) -> tuple[float, float]:
    return 10.0, round(max(3.4, 0.8 * groups + 2.0), 2)


def target_text(folder: Path, runs: pd.DataFrame) -> str:
    """The trainer.target of the runs that reached one (from their config.yaml), e.g. val_acc>=0.93; empty when
    none says."""
    import yaml

    targets = set()
    for _, run in runs[runs["time_to_target_s"].notna()].iterrows():
        for where in (run_folder(folder, run), Path(run["run_dir"]) if run["run_dir"] else None):
            if where is not None and (where / "config.yaml").is_file():
                try:
                    config = yaml.safe_load((where / "config.yaml").read_text()) or {}
                except (yaml.YAMLError, UnicodeDecodeError):
                    continue
                target = (config.get("trainer") or {}).get("target") if isinstance(config, dict) else None
                if target:
                    targets.add(str(target))
                break
    return " or ".join(sorted(targets))


def plot_time_to_target(path: Path, folder: Path, runs: pd.DataFrame, summary: pd.DataFrame, best: pd.DataFrame,
                        setting: list[str], group_by: str) -> str | None:  # fmt: skip
    """Per group, bars: the chosen setting's mean time (s) and epochs to target over the seeds that reached it
    (± std), with how many did; circles: the group's other settings that reached it. None when drawn."""
    if summary.empty or not summary["reached"].sum():
        return "no run reached a target (trainer.target unset or never met)"
    if best.empty:
        return "no group has a chosen setting"
    fig = new_figure(time_figsize(len(best)))
    axes = fig.subplots(1, 2, sharey=True)
    swept = display_columns(summary, setting, group_by)
    panels = (("time_to_target_s", "time_to_target_std", " s", "time to target (seconds of training + evaluation)"),
              ("epochs_to_target", "epochs_to_target_std", "", "epochs to target"))  # fmt: skip
    for ax, (column, std, unit, label) in zip(axes, panels, strict=True):
        for y, (_, row) in enumerate(best.iterrows()):
            value, error = row[column], row[std]
            if math.isnan(value):
                ax.text(0, y, f" not reached (0/{row['seeds']} seeds)", va="center", fontsize=9)
            else:
                ax.barh(y, value, xerr=None if math.isnan(error) else error, color=f"C{y % 10}", alpha=0.85,
                        height=0.5, capsize=4, error_kw={"lw": 1.2})  # fmt: skip
                ax.text(0, y - 0.28, f"{value:.3g}{unit} ({row['reached']}/{row['seeds']} seeds reached it)",
                        va="bottom", fontsize=8.5)  # fmt: skip
            group = summary[(summary[group_by] == row[group_by]) & (summary["reached"] > 0)]
            for other in CONTEXT:
                if other != group_by and other in summary.columns:
                    group = group[group[other] == row[other]]
            group = group[~matches(group, row, setting)]  # the chosen setting is the bar
            ax.scatter(group[column], [y] * len(group), s=22, zorder=3, facecolors="none", edgecolors="black",
                       lw=1)  # fmt: skip
        ax.set_xlabel(label)
        ax.set_xlim(left=0)
        ax.margins(x=0.1)
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(range(len(best)), [wrapped(setting_label(r, swept, group_by), 28)
                                          for _, r in best.iterrows()])  # fmt: skip
    axes[0].set_ylim(len(best) - 0.5, -0.75)  # the first group on top, room for its label
    axes[0].set_ylabel(f"{group_by}: best setting")
    target = target_text(folder, runs)
    fixed = fixed_text(summary, setting)
    title = (f"Time to target{' ' + target if target else ''}: bars, each {group_by}'s best setting (mean ± std "
             "over the seeds that reached it); circles, the other settings of the group that reached it"
             + (f"\n{fixed}" if fixed else ""))  # fmt: skip
    fig.suptitle(wrapped(title, 120), fontsize=10)
    save(fig, path)
    return None


# ------------------------------------------------------------------------------------------ the report
def write_csv(path: Path, table: pd.DataFrame) -> None:
    with replaced_atomically(path) as tmp:
        table.to_csv(tmp, index=False)


def status_line(counts: dict[str, int]) -> str:
    total = sum(counts.values())
    return f"{total} run{'s' if total != 1 else ''}: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n)


def write_report(folder: str | Path, group_by: str = "optimizer") -> Report:
    """summary.csv/.md, best.csv/.md, the plots and report.md in `folder` (a results folder or sweep folder
    with runs.csv; a runs.csv path works too). A plot without data is skipped, and Report.skipped says why."""
    folder, runs, malformed = load_runs(folder)
    malformed += [
        line
        for _, run in runs.iterrows()
        if (where := run_folder(folder, run))
        for line in metric_problems(where)
    ]
    setting = setting_columns(runs.columns)
    if group_by not in runs.columns:
        raise UsageError(f"cannot group by {group_by!r}: runs.csv has no such column (columns: "
                         f"{', '.join(c for c in runs.columns if c in setting)})")  # fmt: skip
    if group_by not in setting:
        raise UsageError(f"cannot group by {group_by!r}: it does not define a setting ({', '.join(setting)})")
    statuses = [*STATUSES, *sorted(set(runs["status"]) - set(STATUSES))]
    counts = {s: int((runs["status"] == s).sum()) for s in statuses}
    summary = summarize_settings(runs, setting)
    best = pick_best(summary, group_by) if not summary.empty else pd.DataFrame()
    report = Report(folder, group_by, summary=summary, best=best, status_counts=counts,
                    missing=missing_results(runs, folder), setting=setting, malformed=malformed)  # fmt: skip

    drawn = {
        "curves": lambda p: plot_curves(p, folder, runs, summary, best, setting, group_by),
        "heatmap": lambda p: plot_heatmap(p, summary, setting, group_by),
        "time_to_target": lambda p: plot_time_to_target(p, folder, runs, summary, best, setting, group_by),
    } | at_a_glance(report, runs)
    for name, draw in drawn.items():
        why = draw(report.path(name))
        if why is None:
            report.written.append(report.path(name))
        else:
            report.skipped[name] = why
            report.path(name).unlink(missing_ok=True)  # an earlier report's plot would no longer be true

    write_csv(report.path("summary_csv"), summary)
    write_text(report.path("summary_md"), tables_md(report, "summary"))
    write_csv(report.path("best_csv"), best)
    write_text(report.path("best_md"), tables_md(report, "best"))
    report.written += [report.path(n) for n in ("summary_csv", "summary_md", "best_csv", "best_md")]
    write_text(report.path("report"), report_md(report))
    report.written.append(report.path("report"))
    return report


def at_a_glance(report: Report, runs: pd.DataFrame) -> dict:
    """The plots of every trial across every swept axis (runner/glance.py); a search's history too."""
    axes = display_columns(runs, report.setting)
    split = "val" if runs["val_metric"].notna().any() else "test"
    goal = first_filled(runs["goal"]) or guess_goal(first_filled(runs["metric"]))
    label, title = metric_label(first_filled(runs["metric"]), split, goal), report.folder.name

    def importance(path: Path) -> str | None:
        why, report.importance = glance.plot_importance(path, runs, axes, split, goal, label, title)
        return why

    plots = {
        "parallel": lambda p: glance.plot_parallel(p, runs, axes, split, label, title),
        "importance": importance,
    }
    if "trial" in runs.columns and (runs["trial"] != "").any():
        plots["history"] = lambda p: glance.plot_history(p, runs, split, goal, label, title)
    return plots


def tables_md(report: Report, which: str) -> str:
    table = report.summary if which == "summary" else report.best
    if table.empty:
        return "No finished runs.\n" if which == "best" else "No runs.\n"
    header, rows = readable(table, report.swept, report.setting)
    fixed = fixed_text(report.summary, report.setting)
    return (f"Every row: {fixed}.\n\n" if fixed else "") + markdown(header, rows) + "\n"


def report_md(report: Report) -> str:
    metric = first_filled(report.summary["metric"]) if not report.summary.empty else ""
    selected = set(report.best["selected_on"]) if not report.best.empty else set()
    text = [
        f"# Report: {report.folder.name}",
        "",
        f"{status_line(report.status_counts)}; {len(report.summary)} setting"
        f"{'s' if len(report.summary) != 1 else ''} (the columns {', '.join(report.setting)}; seeds pooled).",
        "Means and stds are over each setting's finished runs (std from 2 seeds on).",
        "",
        f"## Best setting per {report.group_by} ([best.csv](best.csv))",
        "",
    ]
    if selected == {"val"}:
        text.append(
            f"Chosen on the mean validation {metric}; the test set is read only for the chosen setting."
        )
    elif selected:
        text.append(f"Chosen on the mean validation {metric} where the runs have a validation split; otherwise "
                    "on test, which is biased: the test set both picks and scores the setting.")  # fmt: skip
    text += ["", tables_md(report, "best"), ""]
    for name, title in (("curves", "Learning curves"), ("heatmap", "Learning rate x weight decay"),
                        ("time_to_target", "Time to target"), ("parallel", "Every trial at a glance"),
                        ("importance", "Parameter importance"), ("history", "Optimisation history")):  # fmt: skip
        if name not in report.skipped and report.path(name) not in report.written:
            continue  # not a plot of this kind of folder (a history: searches only)
        text += [f"## {title}", ""]
        if name in report.skipped:
            text += [f"Not drawn: {report.skipped[name]}.", ""]
        else:
            text += [f"![{title}]({FILES[name]})", ""]
        if name == "importance" and report.importance:
            text += [
                markdown(["axis", "importance"], [[k, f"{v:.3f}"] for k, v in report.importance.items()]),
                "",
            ]
    text += ["## Every setting ([summary.csv](summary.csv))", "", tables_md(report, "summary"), ""]
    if report.malformed:
        text += [f"## Malformed entries, left out ({len(report.malformed)})", "",
                 *(f"- {line}" for line in report.malformed), ""]  # fmt: skip
    text += ["## Runs without results", ""]
    if report.missing.empty:
        text += ["None: every run finished with its metrics.", ""]
    else:
        rows = [[r.run_id, r.status, r.missing] for r in report.missing.itertuples()]
        text += [markdown(["run_id", "status", "missing"], rows), ""]
    return "\n".join(text)
