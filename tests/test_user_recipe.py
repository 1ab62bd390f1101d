"""A user's own recipe, in the user's own package outside this repo (the example in docs/examples/my_pkg, as
docs/recipes.md shows it), trains, sweeps on the joblib launcher (its worker processes import it), tunes,
lr-finds and is studied by reproduce through the real command line, with no change to adamrun."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from runner import results
from tests.conftest import REPO

RECIPE = "my_pkg.tabular"


@pytest.fixture(scope="module")
def user(tmp_path_factory) -> Path:
    """The user's folder: the package and a CSV of their own (two informative features, a 3-class label)."""
    home = tmp_path_factory.mktemp("user")
    shutil.copytree(REPO / "docs" / "examples" / "my_pkg", home / "my_pkg")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(900, 4))
    y = (x[:, 0] + x[:, 1] > 0).astype(int) + (x[:, 2] > 1)
    np.savetxt(home / "my.csv", np.c_[x, y], delimiter=",", fmt="%.5f")
    return home


def adamrun(user: Path, *arguments: str) -> subprocess.CompletedProcess:
    """The installed command, run from the user's folder with their package on PYTHONPATH."""
    env = os.environ | {"PYTHONPATH": str(user)}
    command = [str(Path(sys.executable).with_name("adamrun")), *arguments, f"data.path={user / 'my.csv'}"]
    return subprocess.run(command, cwd=user, env=env, capture_output=True, text=True, timeout=600)


def rows(table: Path) -> list[dict]:
    with open(table, newline="") as f:
        return list(csv.DictReader(f))


def test_train_a_recipe_from_the_users_package(user):
    done = adamrun(user, "train", f"recipe={RECIPE}", "results_dir=results", "trainer.progress=false")
    assert done.returncode == 0, done.stdout + done.stderr
    [row] = rows(user / "results" / "runs.csv")
    assert (row["status"], row["recipe"], row["data"], row["metric"]) == ("finished", RECIPE, "my_csv", "acc")
    assert float(row["test_metric"]) > 0.5  # chance is below 0.4 on these three classes


def test_a_joblib_sweep_runs_the_users_recipe_in_its_workers(user):
    done = adamrun(user, "sweep", "sweep=lr_wd_grid", f"recipe={RECIPE}", "optimizer=adamw",
                   "optimizer.lr=1e-3,3e-3", "optimizer.weight_decay=0", "data.val_size=200",
                   "data.train_limit=null", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                   f"sweep_dir={user / 'sweep'}")  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    trials = rows(user / "sweep" / "runs.csv")
    assert sorted(float(r["optimizer.lr"]) for r in trials) == [1e-3, 3e-3]
    assert {(r["status"], r["recipe"]) for r in trials} == {("finished", RECIPE)}


def test_a_search_tunes_the_users_recipe(user):
    done = adamrun(user, "tune", "tune=adamw_lr_wd", "trials=2", f"recipe={RECIPE}", "data.val_size=200",
                   "data.train_limit=null", f"sweep_dir={user / 'search'}")  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    trials = rows(user / "search" / "runs.csv")
    assert len(trials) == 2 and {r["recipe"] for r in trials} == {RECIPE}
    assert all(r["status"] in ("finished", "pruned") for r in trials)


def test_lr_find_on_the_users_recipe(user):
    done = adamrun(user, "lr-find", f"recipe={RECIPE}", f"lr_find.out_dir={user / 'lr_find'}")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "suggested lr" in done.stdout
    assert (user / "lr_find" / "lr_find.png").stat().st_size > 0


@pytest.mark.parametrize(
    "recipe,says",
    [
        ("no_such_pkg.recipe", "unknown recipe 'no_such_pkg.recipe': no module no_such_pkg.recipe"),
        ("my_pkg.no_config", "recipe my_pkg.no_config has no config"),
    ],
)
def test_a_user_recipe_that_cannot_be_found_is_one_line(user, recipe, says):
    (user / "my_pkg" / "no_config.py").write_text("SCHEMAS = {}\n")
    done = adamrun(user, "train", f"recipe={recipe}")
    assert done.returncode == 2 and done.stderr.startswith("error: ") and says in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_reproduce_studies_the_users_recipe(user):
    """A study on the user's recipe (data.path goes to every trial): its shared base names the recipe (the
    built-in base names cifar10's keys), shrunk here to a 2-lr grid per arm and 3 seeds; the report's verdict
    row names the recipe."""
    base = "[recipe=my_pkg.tabular,data.val_size=200,data.train_limit=null,trainer.epochs=2,optimizer.decay_mode=torch]"
    grids = [f"shared.arms.{arm}.{key}={values}" for arm in ("adamw", "amsgrad")
             for key, values in (("lr", "[1e-3,1e-2]"), ("weight_decay", "[1e-4]"))]  # fmt: skip
    done = adamrun(user, "reproduce", "study=amsgrad", f"shared.bases.cnn.trials={base}", "shared.bases.cnn.select=[]",
                   "shared.bases.cnn.confirm=[trainer.eval_every=0.5]", "shared.grid_seeds=[1]", "shared.sequential.stages=[3]", *grids,
                   f"out_dir={user / 'reproduction'}", f"work_dir={user / 'reproduction_runs'}")  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    verdicts = [line for line in (user / "reproduction" / "report.md").read_text().splitlines()
                if line.startswith("| amsgrad:")]  # fmt: skip
    assert len(verdicts) == 1 and "recipe=my_pkg.tabular" in verdicts[0]
    runs = results.read_rows(next((user / "reproduction_runs").rglob("runs.csv")))
    assert {r["recipe"] for r in runs} == {RECIPE}
