"""A study's part of the report, as every kind's analysis builds it from the study's CSVs: the Section it
returns, and what the kinds' tables, texts and figures share (finished runs, report units, claim lines).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from studies.stats import Verdict

ACC_METRICS = ("acc",)  # metrics the report shows in percentage points


@dataclass
class Section:
    """A study's part of the report: its verdict, what the report shows of it, and how to draw its figure."""

    study: str
    title: str
    verdict: Verdict
    ours: str  # our figure, in words, for the verdict table
    body: list[str]  # markdown lines: design, table, rule
    figure: str  # PNG file name in out_dir
    draw: Callable[[Path], None]  # draws the figure
    runs: int = 0  # runs behind it (every role)
    p_value: float | None = None  # one-sided p-value of support (Holm's input); None: not judged on seeds


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


def base_trials(settings: dict) -> list[str]:
    """The base overrides every trial of the study starts from (data, subset sizes, widths, epochs)."""
    arms = [settings["arm"]] if "arm" in settings else list(settings["arms"].values())
    return [t for b in sorted({arm["base"] for arm in arms}) for t in settings["bases"][b]["trials"]]


def study_trials(settings: dict) -> list[str]:
    """The overrides every trial of the study starts from: its base's, then the study's own (which win), with
    the epochs of a study that runs several budgets written as that list."""
    own = list(settings.get("trials", []))
    if "short" in settings:  # the schedules kind: the claim's schedule short, the others long
        own.append(
            f"trainer.epochs={settings['short']} ({settings['schedules'][0]}), {settings['long']} (the others)"
        )
    replaced = {t.split("=", 1)[0] for t in own}
    return [t for t in base_trials(settings) if t.split("=", 1)[0] not in replaced] + own


def setting_text(settings: dict) -> str:
    """What every run of the study shares, for a figure's title: its scale and its trials' base overrides."""
    trials = " ".join(t for t in study_trials(settings) if not t.startswith(("optimizer.", "~")))
    return f"{settings['scale']} scale: {trials}"


def claim_line(settings: dict) -> str:
    text = f"Claim: {settings['claim']} Source: {settings['source']}: {settings['paper']}."
    return text + (f" Not tested here: {settings['untested']}." if settings["untested"] else "")


def title(settings: dict) -> str:
    return f"{settings['study']}: {settings['claim']}"


def arm_text(settings: dict, extra: list[str] = ()) -> str:
    """The optimizer a study runs: its label, overrides (and `extra` ones) and weight decay."""
    overrides = " ".join([*settings["arm"]["overrides"], *extra])
    return f"{settings['arm']['label']} (`{overrides}`, weight decay {settings['weight_decay']:g} {settings['arm']['wd_name']})"


def values_text(values: list) -> str:
    return ", ".join(f"{v:g}" for v in values)


def first(values) -> str:
    """The first value of a column that is not empty (a study's metric name, which every run shares)."""
    return next((str(v) for v in values if str(v).strip() and str(v) != "nan"), "")


def unit_name(metric: str) -> str:
    return {"acc": "%", "ppl": "per token, lower is better"}.get(metric, "")
