"""The report is a function of its CSVs alone, and the committed report is what the committed CSVs give."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest

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


def test_the_committed_report_was_judged_by_the_rules_committed_before_it():
    """Each study's settings name the commit of its rules (conf/study/, conf/reproduce.yaml): at that commit the
    files held exactly the rules, margins, seeds and design the study recorded, and nothing uncommitted."""
    import subprocess

    from studies.reproduce import rules_at, typed_rules

    unknown = []
    for name in report.study_names(COMMITTED):
        settings = report.read_settings(COMMITTED / f"{name}_settings.csv")
        commit = settings["preregistered"]
        assert not commit.endswith("-dirty"), f"{name} ran with uncommitted rules"
        known = subprocess.run(["git", "cat-file", "-e", f"{commit}^{{commit}}"], cwd=REPO, check=False)
        if known.returncode != 0:
            unknown.append(f"{name} ({commit[:7]})")
            continue
        block, sequential = rules_at(commit, settings)
        assert typed_rules(settings["rules"], settings["kind"], name) == block, name
        if "sequencing" not in settings:  # a study judged without seeds in looks (decoupling's grids)
            continue
        assert {k: v for k, v in settings["sequencing"].items() if k != "first_seed"} == {
            k: v for k, v in sequential.items() if k != "first_seed"
        }, name
        first = block["first_seed"] if block.get("first_seed") is not None else sequential["first_seed"]
        assert settings["sequencing"]["first_seed"] == first, name
    if unknown:  # every other study's rules were checked above
        pytest.skip(
            "the cited commit is not in this checkout (a shallow clone, or a commit that never landed: "
            f"docs/studies.md) for {', '.join(unknown)}: their rules cannot be read"
        )
