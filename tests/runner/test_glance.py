"""A sweep at a glance, checked against its rows: a seeded synthetic grid of three axes where the learning rate
alone decides the metric. Parallel coordinates put every trial where its values are, diverged and failed ones
at their marks; the importance ranks the learning rate first and the idle axes after it; a search also gets
its optimisation history."""

from __future__ import annotations

import csv
import itertools
import math
from pathlib import Path

import numpy as np
import pytest

from runner import glance, report
from runner.results import RUN_COLUMNS

LRS = [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2]  # decides the metric
WDS = [0.0, 1e-4, 1e-2, 1e-1]  # idle
AUGMENT = ["crop", "flip", "none"]  # idle, and a word: a categorical axis
AXES = ["optimizer.lr", "optimizer.weight_decay", "data.augment"]


def accuracy(lr: float, rng) -> float:
    """Best at lr 1e-3, worse on either side on a log scale; the idle axes add nothing but noise."""
    return 0.9 - 0.05 * (math.log10(lr) + 3) ** 2 + rng.normal(0, 0.002)


def write_grid(folder: Path, with_trials: bool = False) -> list[dict]:
    rng = np.random.default_rng(0)
    rows = []
    for number, (lr, wd, augment) in enumerate(itertools.product(LRS, WDS, AUGMENT)):
        rows.append({"run_id": f"t{number}", "status": "finished", "recipe": "cifar10", "data": "fashion_mnist",
                     "optimizer": "adamw", "schedule": "one_cycle", "epochs": 1, "seed": 0, "metric": "acc",
                     "goal": "max", "val_metric": accuracy(lr, rng), "test_metric": 0.5, "optimizer.lr": lr,
                     "optimizer.weight_decay": wd, "data.augment": augment} | ({"trial": number} if with_trials else {}))  # fmt: skip
    rows[-1] |= {"status": "diverged", "val_metric": "", "test_metric": ""}
    rows[-2] |= {"status": "failed", "val_metric": "", "test_metric": ""}
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "runs.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, [*RUN_COLUMNS, *AXES, *(["trial"] if with_trials else [])], restval="")
        writer.writeheader()
        writer.writerows(rows)
    return rows


@pytest.fixture
def grid(tmp_path) -> tuple[Path, list[dict]]:
    return tmp_path / "grid", write_grid(tmp_path / "grid")


def test_the_axis_that_decides_the_metric_ranks_first_and_the_idle_ones_after(grid):
    folder, _ = grid
    written = report.write_report(folder)
    ranked = list(written.importance)
    assert set(ranked) == set(AXES) and ranked[0] == "optimizer.lr"
    assert written.importance["optimizer.lr"] > 0.5 > max(written.importance[a] for a in AXES[1:])
    assert sum(written.importance.values()) == pytest.approx(1.0)
    md = (folder / "report.md").read_text()
    assert (
        "![Parameter importance](importance.png)" in md
        and f"| optimizer.lr | {written.importance['optimizer.lr']:.3f} |" in md
    )


def test_parallel_coordinates_put_every_trial_at_its_values_and_its_metric(grid):
    folder, rows = grid
    _, runs, _ = report.load_runs(folder)
    placed = glance.coordinates(runs, AXES, "val").set_index(runs["run_id"])
    assert len(placed) == len(rows)  # one line per trial
    for row in rows:
        at = placed.loc[row["run_id"]]
        assert at["optimizer.lr"] == pytest.approx(
            math.log10(row["optimizer.lr"] / LRS[0]) / math.log10(LRS[-1] / LRS[0])
        )
        assert at["data.augment"] == pytest.approx(AUGMENT.index(row["data.augment"]) / (len(AUGMENT) - 1))
        if row["status"] in glance.MARKS:
            assert at["metric"] == glance.MARKS[row["status"]] and math.isnan(at["value"])
    scored = [r["val_metric"] for r in rows if r["status"] == "finished"]
    low, high = min(scored), max(scored)
    for row in (r for r in rows if r["status"] == "finished"):  # the worst at 0, the best at 1
        assert placed.loc[row["run_id"], "metric"] == pytest.approx((row["val_metric"] - low) / (high - low))
    written = report.write_report(folder)
    assert folder / "parallel.png" in written.written and folder / "importance.png" in written.written
    assert "history" not in written.skipped and not (folder / "history.png").exists()  # a grid: no history


def test_a_search_also_gets_its_optimisation_history(tmp_path):
    write_grid(tmp_path / "search", with_trials=True)
    written = report.write_report(tmp_path / "search")
    assert tmp_path / "search" / "history.png" in written.written
    assert "![Optimisation history](history.png)" in (tmp_path / "search" / "report.md").read_text()


def test_too_few_results_for_an_importance_are_said(tmp_path):
    rows = write_grid(tmp_path / "g")
    with open(tmp_path / "g" / "runs.csv", newline="") as f:
        kept = list(csv.DictReader(f))[: glance.MIN_TRIALS - 1]
    with open(tmp_path / "g" / "runs.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, list(kept[0]))
        writer.writeheader()
        writer.writerows(kept)
    written = report.write_report(tmp_path / "g")
    assert (
        written.skipped["importance"]
        == f"{glance.MIN_TRIALS - 1} trials have a val result; importance needs {glance.MIN_TRIALS}"
    )
    assert len(rows) > glance.MIN_TRIALS and (tmp_path / "g" / "parallel.png").is_file()
