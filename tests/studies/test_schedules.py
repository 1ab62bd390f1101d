"""Schedules studies: the claim's schedule at the short budget against every other at the long one, in looks."""

from __future__ import annotations

from studies import report, stats
from tests.studies.synthetic import schedules_study


def test_one_cycle_as_good_in_an_eighth_of_the_epochs_is_supported(tmp_path):
    schedules_study(tmp_path, short_acc=0.885, long_acc=0.885)
    text = report.render_report(tmp_path)
    assert "`trainer.epochs=1 (one_cycle), 8 (the others)`" in text  # the study's own budgets ...
    assert "`trainer.epochs=3`" not in text  # ... not its base's
    (section,) = report.sections(tmp_path)
    assert section.verdict.outcome == stats.SUPPORTED, section.verdict.rule
    assert "one_cycle at 1 epochs - constant at 8" in section.verdict.rule
    assert "non-inferiority (margin 0.5 points)" in section.verdict.rule


def test_one_cycle_clearly_worse_at_its_short_budget_is_not_supported(tmp_path):
    schedules_study(tmp_path, short_acc=0.85, long_acc=0.88)  # 3 points worse: far past the 0.5 margin
    (section,) = report.sections(tmp_path)
    assert section.verdict.outcome == stats.NOT_SUPPORTED
