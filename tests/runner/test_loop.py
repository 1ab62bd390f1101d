"""The shared loop end to end on the real configs, shrunk: run directory, rows, resume, divergence."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from recipes import cifar10
from runner import checkpoint, results
from runner.config import compose
from runner.run import train
from tests.conftest import assert_same_run, read_metrics, tiny_overrides, write_fashion_mnist


def test_a_run_writes_its_directory_and_row(tmp_path):
    # 1,536 training images (144 steps): on the shared 192 (18 steps) the accuracy after 3 epochs ranged from
    # 0.20 to 0.53 over seeds and CPUs (bf16 on AMX gave exactly 0.25); at 144 steps 12 runs (6 seeds, bf16 and
    # fp32, AMD EPYC) gave 0.66 to 1.0. Whitening off: the fixture's classes differ only in brightness, which
    # whitening scales down to the variance of the pixel noise (tests/recipes/test_cifar10.py tests it on
    # correlated images).
    root = tmp_path / "fashion-mnist"
    root.mkdir()
    write_fashion_mnist(root, n_train=1536, n_test=64)
    row = train(compose([*tiny_overrides(tmp_path, root), "recipe.whiten=false"]))
    run_dir = Path(row["run_dir"])
    assert row["status"] == "finished"
    assert {p.name for p in run_dir.iterdir()} >= {"config.yaml", "metrics.jsonl", "checkpoint.pt"}
    metrics = read_metrics(run_dir)
    assert [m["epoch"] for m in metrics] == [1, 2, 3]
    assert {"train_loss", "test_loss", "test_acc", "lr", "train_s", "eval_s"} <= set(metrics[0])
    # the fixture's classes differ in brightness: 144 steps take it well above chance (0.1)
    assert metrics[-1]["test_acc"] > 0.25 and metrics[-1]["test_loss"] < metrics[0]["test_loss"]
    state = torch.load(run_dir / "checkpoint.pt", weights_only=False)
    assert {"model", "optimizer", "scheduler", "step", "rng", "config"} <= set(state)
    assert (
        state["config"]["optimizer"]["lr"] == 6e-3
    )  # the recipe's AdamW (conf/optimizer/adamw_cifar10.yaml)
    [saved] = results.read_rows(tmp_path / "results" / "runs.csv")
    assert (
        saved["status"] == "finished"
        and saved["optimizer"] == "adamw_cifar10"
        and saved["data"] == "fashion_mnist"
    )
    assert saved["metric"] == "acc" and saved["goal"] == "max"  # the recipe's metric, read as test_metric
    assert float(saved["test_metric"]) == pytest.approx(metrics[-1]["test_acc"])


def test_interrupted_and_resumed_run_is_bitwise_the_straight_run(tiny_cfg, tmp_path, monkeypatch):
    straight = train(tiny_cfg(f"run_dir={tmp_path / 'straight'}"))
    build = cifar10.build

    def build_interrupted(cfg, device):  # Ctrl-C in the middle of epoch 2
        task = build(cfg, device)
        batches = task.batches

        def interrupting(gen):
            for i, batch in enumerate(batches(gen)):
                state = checkpoint.load(Path(cfg.run_dir))
                if state is not None and state["epoch"] == 1 and i == 2:
                    raise KeyboardInterrupt
                yield batch

        task.batches = interrupting
        return task

    monkeypatch.setattr(cifar10, "build", build_interrupted)
    resumed_dir = tmp_path / "resumed"
    interrupted = train(tiny_cfg(f"run_dir={resumed_dir}"))
    assert interrupted["status"] == "interrupted"
    assert results.read_rows(tmp_path / "results" / "runs.csv")[-1]["status"] == "interrupted"
    monkeypatch.setattr(cifar10, "build", build)
    resumed = train(tiny_cfg(f"run_dir={resumed_dir}", "resume=true"))
    assert resumed["status"] == "finished"
    assert_same_run(Path(straight["run_dir"]), resumed_dir)
    rows = results.read_rows(tmp_path / "results" / "runs.csv")
    # the row was updated, not added to (the run's id: its folder, absolute here as it lies outside results/)
    assert [r["status"] for r in rows if r["run_id"] == str(resumed_dir.resolve())] == ["finished"]


def test_sigkill_at_any_moment_then_resume_equals_the_straight_run(tmp_path, fmnist_root):
    overrides = tiny_overrides(tmp_path, fmnist_root) + ["trainer.epochs=4"]
    straight = train(compose([*overrides, f"run_dir={tmp_path / 'straight'}"]))
    killed_dir = tmp_path / "killed"
    command = [sys.executable, "-m", "runner.cli", "train", *overrides, f"run_dir={killed_dir}"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (killed_dir / checkpoint.CHECKPOINT).exists() and time.time() < deadline:
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)  # no handler runs: whatever is on disk is what a crash leaves
    process.wait()
    assert checkpoint.load(killed_dir)["epoch"] < 4, "the run finished before it could be killed"
    resumed = subprocess.run([*command, "resume=true"], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert_same_run(Path(straight["run_dir"]), killed_dir)


def test_a_non_finite_loss_stops_the_run_as_diverged(tiny_cfg):
    row = train(tiny_cfg("optimizer=sgd", "optimizer.lr=1e30", "schedule=constant"))
    assert row["status"] == "diverged"
    assert row["test_metric"] == ""  # no epoch finished


def test_divergence_is_a_non_finite_loss_or_one_above_the_multiple_of_the_first():
    from runner.loop import diverged

    assert not diverged(19.9, 2.0, 10.0) and diverged(20.1, 2.0, 10.0)
    assert diverged(math.nan, 2.0, None) and diverged(math.inf, 2.0, 10.0)
    assert not diverged(1e12, 2.0, None)  # null: only a non-finite loss counts


def test_a_run_that_collapses_with_a_finite_loss_is_diverged(tiny_cfg, tmp_path):
    """lr=30: the loss rises to hundreds, then the net settles at chance (ln 10) with a finite loss; judged
    by a non-finite loss alone it would be `finished`; against its first loss it is `diverged`."""
    collapsed = ["optimizer.lr=30", "schedule=constant"]
    row = train(tiny_cfg(*collapsed, f"run_dir={tmp_path / 'a'}"))
    assert row["status"] == "diverged"
    unjudged = train(tiny_cfg(*collapsed, "trainer.divergence=null", f"run_dir={tmp_path / 'b'}"))
    history = read_metrics(Path(unjudged["run_dir"]))
    assert unjudged["status"] == "finished" and all(math.isfinite(h["train_loss"]) for h in history)
    assert max(h["train_loss"] for h in history) > 10 * math.log(10)  # 10x the first loss, at chance
