"""make bench's `sweeps` section: its arithmetic on hand-computed numbers, its real settings as valid commands,
and one tiny end-to-end run of the section through the real adamrun sweep/tune/train commands."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from bench import sweeps as bench_sweep
from bench.sweeps import (
    Layout,
    Trial,
    draw,
    overhead_per_trial,
    overhead_row,
    pruning_rows,
    saving,
    throughput_rows,
    training_seconds,
    trials_per_hour,
    verdict,
)
from runner.config import compose, validate
from runner.errors import UsageError

TINY = [
    "data=fashion_mnist", "data.train_limit=320", "data.val_size=64", "data.test_limit=128",
    "recipe.widths=[8,8,16,16]", "recipe.channels_last=false", "trainer.precision=bf16", "trainer.batch_size=32", "trainer.eval_batch_size=128", "trainer.epochs=2",
]  # fmt: skip


def trial(name: str, status: str = "finished", wall_s=0.0, training_s=0.0, epochs=1.0, val=None) -> Trial:
    return Trial(name, status, wall_s, training_s, epochs, val)


# ------------------------------------------------------------------------------------------ arithmetic
def test_training_seconds_count_each_epoch_once():
    """train_s runs from the epoch's start without its evaluations, so the epoch-end row's train_s holds the
    whole epoch's training and every row adds its own evaluation."""
    halves = [
        {"epoch": 0.5, "train_s": 2.0, "eval_s": 1.0},
        {"epoch": 1, "train_s": 4.0, "eval_s": 1.0},  # 2 s training, 1 s evaluating, 2 s training, 1 s
        {"epoch": 1.5, "train_s": 2.5, "eval_s": 0.5},
        {"epoch": 2, "train_s": 5.5, "eval_s": 0.5},
    ]
    assert training_seconds(halves) == pytest.approx(6 + 6.5)
    assert training_seconds(halves[:3]) == pytest.approx(6 + 3)  # pruned mid-epoch 2
    assert training_seconds([{"epoch": e, "train_s": 10.0, "eval_s": 1.0} for e in (1, 2, 3)]) == 33
    assert training_seconds([]) == 0


def test_overhead_per_trial_on_one_slot_and_on_two():
    assert overhead_per_trial(100, [30, 30, 30]) == pytest.approx(10 / 3)
    assert overhead_per_trial(50, [20, 20, 20, 20], parallel=2) == pytest.approx((100 - 80) / 4)


def test_trials_per_hour_and_saving():
    assert trials_per_hour(4, 90) == 160
    assert saving(30, 40) == 0.25 and saving(40, 40) == 0


def test_overhead_row_splits_the_overhead_into_in_run_and_outside():
    section = OmegaConf.create({"reference_trial_s": 30, "overhead_goal": 0.05})
    trials = [trial(f"t{i}", wall_s=31, training_s=30) for i in range(3)]
    row = overhead_row("sweep", 100, trials, 1, section)
    assert row["overhead_per_trial_s"] == pytest.approx(3.333, abs=1e-3)
    assert row["in_run_s"] == 1 and row["outside_runs_s"] == pytest.approx(2.333, abs=1e-3)
    assert row["overhead_vs_reference"] == pytest.approx(0.1111, abs=1e-4) and not row["goal_met"]
    assert overhead_row("sweep", 91, trials, 1, section)["goal_met"]  # 1/3 s a trial: 1.1% of 30 s


def test_throughput_rows_compare_with_the_first_layout_of_each_grid():
    import pandas as pd

    serial, parallel = Layout("basic", 1, 2), Layout("joblib", 2, 1)
    four = [trial(f"t{i}", training_s=20) for i in range(4)]
    rows = throughput_rows([(serial, 120, four), (parallel, 90, four)], "small")
    assert [r["layout"] for r in rows] == ["1 job x 2 threads", "2 jobs x 1 thread"]
    assert [r["trials_per_hour"] for r in rows] == [120, 160] and {r["grid"] for r in rows} == {"small"}
    assert [r["vs_baseline"] for r in rows] == [1, 1.333] and [r["fastest"] for r in rows] == [False, True]
    eight = [trial(f"t{i}", training_s=5) for i in range(8)]
    rows += throughput_rows([(serial, 48, eight), (parallel, 60, eight)], "default")  # 600 and 480 an hour
    assert [r["vs_baseline"] for r in rows[2:]] == [1, 0.8] and [r["fastest"] for r in rows[2:]] == [
        True,
        False,
    ]
    assert verdict(pd.DataFrame(rows)).splitlines() == [
        "sweep throughput, small grid: fastest here is 2 jobs x 1 thread (joblib), 1.33x 1 job x 2 threads",
        "sweep throughput, default grid: fastest here is 1 job x 2 threads (basic), 1.25x 2 jobs x 1 thread",
    ]


def test_pruning_rows_count_the_saving_and_whether_the_best_trial_survived():
    unpruned = [trial(f"t{i}", epochs=4, training_s=10, val=v) for i, v in enumerate([0.8, 0.7, 0.9, 0.6])]
    pruned = [unpruned[0], trial("t1", "pruned", epochs=1, training_s=2.5, val=0.5), unpruned[2],
              trial("t3", "pruned", epochs=2, training_s=5, val=0.55)]  # fmt: skip
    rows = {
        r["pruner"]: r
        for r in pruning_rows({"median": (30, pruned), "none": (45, unpruned)}, "none", "maximize")
    }
    assert rows["median"]["epochs"] == 11 and rows["none"]["epochs"] == 16
    assert rows["median"]["epochs_saving"] == pytest.approx(1 - 11 / 16)
    assert rows["median"]["seconds_saving"] == pytest.approx(1 - 27.5 / 40)
    assert (
        rows["median"]["pruned"] == 2
        and rows["median"]["finished"] == 2
        and rows["none"]["epochs_saving"] == 0
    )
    assert rows["median"]["best_val"] == rows["none"]["best_val"] == 0.9
    assert rows["median"]["same_best"] and rows["median"]["unpruned_best_status_here"] == "finished"
    lost = [*pruned[:2], trial("t2", "pruned", epochs=1, val=0.4), pruned[3]]  # the best one stopped early
    row = pruning_rows({"median": (20, lost), "none": (45, unpruned)}, "none", "maximize")[0]
    assert row["best_val"] == 0.8 and not row["same_best"] and row["unpruned_best_status_here"] == "pruned"
    assert pruning_rows({"none": (45, unpruned)}, "none", "minimize")[0]["best_val"] == 0.6


def test_draws_are_fixed_by_the_seed_and_inside_the_space():
    space = OmegaConf.create({
        "optimizer.lr": {"low": 1e-4, "high": 3e-2, "log": True, "choices": None},
        "optimizer.eps": {"low": 0.0, "high": 1.0, "log": False, "choices": None},
        "optimizer": {"low": None, "high": None, "log": False, "choices": ["adamw", "adam_l2"]},
    })  # fmt: skip
    points = draw(space, 50, seed=0)
    assert points == draw(space, 50, seed=0) and points != draw(space, 50, seed=1)
    assert all(1e-4 <= p["optimizer.lr"] <= 3e-2 and 0 <= p["optimizer.eps"] <= 1 for p in points)
    assert all(float(f"{p['optimizer.lr']:.3g}") == p["optimizer.lr"] for p in points)  # readable names
    assert {p["optimizer"] for p in points} == {"adamw", "adam_l2"}
    assert min(p["optimizer.lr"] for p in points) < 1e-3 < max(p["optimizer.lr"] for p in points)  # log scale


def test_layouts_build_the_launcher_overrides_and_refuse_jobs_on_basic():
    assert Layout("joblib", 2, 1).overrides() == [
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "trainer.threads=1",
    ]
    assert Layout("basic", 1, 2).overrides() == ["hydra/launcher=basic", "trainer.threads=2"]
    with pytest.raises(UsageError, match="must be 1 on the basic launcher"):
        validate(
            OmegaConf.merge(OmegaConf.structured(Layout), {"launcher": "basic", "jobs": 2, "threads": 1})
        )


# ------------------------------------------------------------------------------------------ the real settings
def test_the_section_settings_are_valid_commands(tmp_path):
    """conf/bench_sweeps.yaml's train, sweeps and searches compose: a typo fails here, not after minutes."""
    from runner import sweep, tune

    section = bench_sweep.settings()
    command = bench_sweep.train_command(section, 2, tmp_path / "train")
    cfg = compose(command[4:])
    assert cfg.optimizer.lr == 1e-3 and cfg.optimizer.decay_mode == "paper" and cfg.data.train_limit == 12000
    for layout in section.layouts:
        planned = sweep.plan(
            bench_sweep.sweep_command(section, OmegaConf.to_object(layout), tmp_path / "s")[4:]
        )
        assert planned.trials == 4
        default = sweep.plan(
            bench_sweep.sweep_command(section, OmegaConf.to_object(layout), tmp_path / "s", "default")[4:]
        )
        assert default.trials == 32 and default.axes == sweep.grid("lr_wd_grid", [])  # the grid as shipped
    search = tune.plan(bench_sweep.search_arguments(section.pruning, "none", tmp_path / "t"))
    assert search.cfg.tune.pruner == "none" and search.cfg.data.name == "fashion_mnist"
    assert len(draw(search.cfg.tune.space, section.pruning.trials, section.pruning.seed)) == 10


# ------------------------------------------------------------------------------------------ end to end
@pytest.mark.slow
def test_the_section_runs_end_to_end_on_tiny_trials(tmp_path):
    section = bench_sweep.settings()
    section.trial = TINY
    section.grid = ["optimizer=adamw", "optimizer.lr=1e-3", "optimizer.weight_decay=0,1e-2"]
    section.default_trial = TINY
    section.default_grid = ["optimizer=adamw", "optimizer.lr=1e-3,3e-3", "optimizer.weight_decay=0,1e-2"]
    section.layouts = [Layout("basic", 1, 1), Layout("joblib", 2, 1)]
    section.pruning.trials = 3
    section.pruning.overrides = [*TINY[1:], "tune.startup_trials=1"]
    section.work_dir = str(tmp_path / "work")
    env = {"cpu": "test cpu", "torch": "0", "threads": 1}
    written = bench_sweep.run(None, tmp_path / "out", env, section=section)
    assert [p.name for p in written] == ["sweep_overhead.csv", "sweep_throughput.csv", "pruning.csv"]
    tables = {p.stem: list(csv.DictReader(p.open())) for p in written}
    assert all(row["cpu"] == "test cpu" for rows in tables.values() for row in rows)
    overhead = tables["sweep_overhead"]
    assert [(r["grid"], r["trials"]) for r in overhead] == [
        ("", "1"),
        *[("small", "2"), ("default", "4")] * 2,
    ]
    assert all(float(r["trial_training_s"]) > 0 and r["goal_met"] in ("True", "False") for r in overhead)
    assert [(r["grid"], r["layout"]) for r in tables["sweep_throughput"]] == [
        (grid, layout)
        for grid in ("small", "default")
        for layout in ("1 job x 1 thread", "2 jobs x 1 thread")
    ]
    pruned, unpruned = tables["pruning"]
    assert (pruned["pruner"], unpruned["pruner"]) == ("median", "none")
    assert unpruned["finished"] == "3" and float(unpruned["epochs"]) == 6  # 3 trials x 2 epochs, none stopped
    assert int(pruned["finished"]) + int(pruned["pruned"]) + int(pruned["diverged"]) == 3
    assert float(pruned["epochs_saving"]) == pytest.approx(1 - float(pruned["epochs"]) / 6, abs=1e-4)
    names = lambda folder: sorted(p.name for p in folder.iterdir() if p.name.startswith("optimizer"))  # noqa: E731
    work = Path(section.work_dir)
    assert names(work / "tune-median") == names(work / "tune-none")  # the same trials in both searches
    if pruned["same_best"] == "True":
        assert pruned["best_val"] == unpruned["best_val"]
