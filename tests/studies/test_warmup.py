"""Warmup studies: diverged runs count at chance and as unstable, and the verdict reads the largest lr."""

from __future__ import annotations

import math

from studies import report, stats, warmup
from tests.studies.synthetic import arm_info, run, settings, write_study


def test_warmup_counts_diverged_runs_at_chance_and_as_unstable(tmp_path):
    rows = []
    for seed in (1, 2, 3):
        rows += [run("adamw", "confirm", seed, 0.85, 0.85, lr=1e-3, variant=w) for w in ("none", "linear")]
        rows.append(
            run("adamw", "confirm", seed, math.nan, math.nan, lr=1e-1, variant="none", status="diverged")
        )
        rows.append(run("adamw", "confirm", seed, 0.80 + 0.01 * seed, 0.8, lr=1e-1, variant="linear"))
    details = settings(
        "warmup",
        "warmup",
        arm=arm_info("AdamW", [1e-3], [1e-3]),
        weight_decay=1e-3,
        warmups=["none", "linear"],
        lr=[1e-3, 1e-1],
        chance=0.1,
        unstable_below=0.5,
        trials=[],
    )
    write_study(tmp_path, "warmup", rows, details)
    runs, _, loaded = report.load_study_tables(tmp_path, "warmup")
    table = warmup.warmup_table(runs, loaded).set_index(["warmup", "lr"])
    assert table.loc[("none", 1e-1), "unstable"] == 3 and table.loc[("none", 1e-1), "test"] == [10.0] * 3
    assert table.loc[("linear", 1e-1), "unstable"] == 0
    (section,) = report.sections(tmp_path)
    assert section.verdict.outcome == stats.SUPPORTED
