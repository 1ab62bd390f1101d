"""The report is a function of its CSVs alone, and the committed report is what the committed CSVs give."""

from __future__ import annotations

import shutil

import pandas as pd

from studies import report, trials
from tests.conftest import REPO
from tests.studies.synthetic import compare_study, decoupling_study, schedules_study

COMMITTED = REPO / "results" / "reproduction"


def test_report_is_a_function_of_its_csvs(tmp_path):
    compare_study(tmp_path, 0.02, 0.001)
    decoupling_study(tmp_path)
    schedules_study(tmp_path)
    trials.write_table(
        tmp_path / "untested.csv", [{"claim": "c", "source": "s", "why": "w"}], ["claim", "source", "why"]
    )
    path = report.write_report(tmp_path)
    text = path.read_text()
    assert text == report.render_report(tmp_path)
    for png in ("decoupling.png", "adamw_vs_adam.png", "schedules.png"):
        assert (tmp_path / png).stat().st_size > 10_000
    assert text.index("## Verdicts") < text.index("## decoupling") < text.index("## Commands and time")
    assert "not tested here" in text and "**supported**" in text
    copy = tmp_path / "copy"
    copy.mkdir()
    for csv in tmp_path.glob("*.csv"):
        shutil.copy(csv, copy)
    assert report.render_report(copy) == text  # the CSVs alone give the same report
    runs = pd.read_csv(copy / "adamw_vs_adam_runs.csv")
    runs.loc[(runs["arm"] == "adamw") & (runs["role"] == "confirm"), "test_metric"] -= 0.04
    runs.to_csv(copy / "adamw_vs_adam_runs.csv", index=False)
    changed = report.render_report(copy)  # a number changed in a CSV changes the table and the verdict
    assert changed != text and "| **not supported** |" in changed.split("## adamw_vs_adam")[0]


def test_committed_report_equals_what_its_committed_csvs_give():
    assert (COMMITTED / "report.md").read_text() == report.render_report(COMMITTED)
    for section in report.sections(COMMITTED):  # every study ran, and drew its figure
        assert (COMMITTED / section.figure).stat().st_size > 10_000
