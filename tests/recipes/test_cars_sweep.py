"""The study `sweep=cars_optimizers` (AdamW vs Adam-L2 vs SGD on the cars recipe): the sweep file picks the
recipe itself, its grid gives every optimizer the same lrs and seeds, and it runs end to end on a tiny
class-per-folder fixture through the real command and Hydra's basic launcher."""

from __future__ import annotations

import csv
import subprocess
import sys

import pytest

from runner.config import compose
from runner.sweep import grid
from tests.conftest import REPO
from tests.recipes.test_cars import write_image_folders

OPTIMIZERS = ["adamw", "adam_l2_cars", "sgd"]


def test_the_sweep_picks_the_cars_recipe_and_selects_on_validation():
    cfg = compose(["sweep=cars_optimizers"])
    assert cfg.choices["recipe"] == "cars" and cfg.recipe.name == "cars"
    assert (cfg.data.name, cfg.model.arch) == ("stanford_cars", "resnet50")  # the recipe's own defaults
    assert cfg.data.val_size > 0 and cfg.trainer.epochs == 60


def test_every_optimizer_gets_the_same_lrs_and_seeds_and_composes():
    axes = grid("cars_optimizers", [])
    assert axes["optimizer"] == OPTIMIZERS
    lrs = [float(lr) for lr in axes["optimizer.lr"]]
    assert min(lrs) <= 3e-3 <= max(lrs) and min(lrs) <= 3e-2 <= max(lrs)  # both families' good regions
    assert len(axes["seed"]) >= 2
    families = set()
    for name in OPTIMIZERS:
        cfg = compose(["sweep=cars_optimizers", f"optimizer={name}", f"optimizer.lr={lrs[0]}"])
        assert cfg.optimizer.lr == lrs[0] and cfg.trainer.epochs == 60  # the same budget for each
        families.add((cfg.optimizer.family, cfg.optimizer.decoupled))
    assert families == {("adam", True), ("adam", False), ("sgd", False)}


@pytest.mark.slow
def test_the_sweep_runs_end_to_end_on_a_tiny_fixture(tmp_path):
    write_image_folders(tmp_path / "cars", n_per_class=6)  # 3 classes of 40x30 JPEGs, train/ and test/
    folder = tmp_path / "sweep"
    arguments = [
        "sweep=cars_optimizers", "data=cars_folder", f"data.root={tmp_path / 'cars'}", "data.val_size=6",
        "model=resnet18", "model.weights=none", "recipe.frozen_fraction=0", "recipe.image_size=32",
        "recipe.eval_crop=0.875", "recipe.workers=0", "trainer.batch_size=6", "trainer.eval_batch_size=18",
        "trainer.epochs=1", "optimizer.lr=1e-3,1e-2", "seed=0", f"sweep_dir={folder}", "hydra/launcher=basic",
        "trainer.threads=1",
    ]  # fmt: skip
    done = subprocess.run([sys.executable, "-m", "runner.cli", "sweep", *arguments], cwd=REPO,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    with open(folder / "runs.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6
    assert sorted((r["optimizer"], float(r["optimizer.lr"])) for r in rows) == sorted(
        (name, lr) for name in OPTIMIZERS for lr in (1e-3, 1e-2)
    )
    for row in rows:
        assert row["status"] == "finished" and row["recipe"] == "cars", row
        assert 0 <= float(row["val_metric"]) <= 1 and 0 <= float(row["test_metric"]) <= 1
