"""Warmup studies: instability by the one definition of divergence, diverged runs at chance, the mechanism
check (no instability without warmup: not tested), and the verdict at the pre-registered lr."""

from __future__ import annotations

import math

from studies import report, stats, warmup
from tests.studies.synthetic import SEEDS, arm_info, run, settings, write_study

TEST = {"metric": "test_metric", "better": "higher", "rule": "superiority", "diverged": 10.0}


def warmup_study(folder, unstable_seeds: int) -> None:
    """At lr 1e-3 both arms are fine; at lr 1e-1 the first `unstable_seeds` seeds without warmup diverge."""
    rows = []
    for i, seed in enumerate(SEEDS[:10]):
        rows += [run("adamw", "confirm", seed, 0.85, 0.85, lr=1e-3, variant=w) for w in ("none", "linear")]
        if i < unstable_seeds:
            rows.append(
                run("adamw", "confirm", seed, math.nan, math.nan, lr=1e-1, variant="none", status="diverged")
            )
        else:
            rows.append(run("adamw", "confirm", seed, 0.80 - 0.001 * i, 0.8, lr=1e-1, variant="none"))
        rows.append(run("adamw", "confirm", seed, 0.80 + 0.001 * i, 0.8, lr=1e-1, variant="linear"))
    details = settings(
        "warmup",
        "warmup",
        arm=arm_info("AdamW", [1e-3], [1e-3]),
        weight_decay=1e-3,
        warmups=["none", "linear"],
        lr=[1e-3, 1e-1],
        judge_lr=1e-1,
        test=TEST,
        trials=[],
        stages=[10],
        divergence=1.5,
    )
    write_study(folder, "warmup", rows, details)


def test_diverged_runs_are_unstable_count_at_chance_and_fewer_with_warmup_is_supported(tmp_path):
    warmup_study(tmp_path, unstable_seeds=8)
    runs, _, loaded = report.load_study_tables(tmp_path, "warmup")
    table = warmup.warmup_table(runs, loaded).set_index(["warmup", "lr"])
    assert table.loc[("none", 1e-1), "unstable"] == 8 and table.loc[("none", 1e-1), "test"][:8] == [10.0] * 8
    assert table.loc[("linear", 1e-1), "unstable"] == 0
    (section,) = report.sections(tmp_path)
    assert section.verdict.outcome == stats.SUPPORTED, section.verdict.rule
    assert "1.5x the run's first" in "\n".join(section.body)  # the one definition, printed


def test_too_few_unstable_runs_leave_stability_undecided(tmp_path):
    warmup_study(tmp_path, unstable_seeds=2)  # 2 of 10 against 0 of 10: Fisher's p = 0.24
    (section,) = report.sections(tmp_path)
    assert section.verdict.outcome == stats.INCONCLUSIVE, section.verdict.rule


def test_without_instability_the_claim_is_not_tested(tmp_path):
    warmup_study(tmp_path, unstable_seeds=0)
    (section,) = report.sections(tmp_path)
    assert section.verdict.outcome == stats.UNTESTED and "needed some" in section.verdict.rule
