"""Schedules studies: the claim's schedule at the short budget against every other at the long one."""

from __future__ import annotations

from studies import report, stats
from tests.studies.synthetic import schedules_study


def test_schedules_one_cycle_at_half_the_epochs_against_the_others(tmp_path):
    schedules_study(tmp_path)
    text = report.render_report(tmp_path)
    assert "`trainer.epochs=1,2,4 (lr chosen at 2)`" in text  # the study's own budgets ...
    assert "`trainer.epochs=3`" not in text  # ... not its base's
    (section,) = report.sections(tmp_path)
    assert section.verdict.outcome == stats.SUPPORTED  # 88% at 2 epochs vs 85% at 4
    assert "constant at 4 epochs - one_cycle at 2" in section.verdict.rule
