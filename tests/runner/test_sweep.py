"""Sweeps and searches on the real Fashion-MNIST files (tiny limits): Hydra's launchers run the trials, a killed
sweep or search finishes what is missing and nothing else, a failing trial is a row, the cores are shared."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from recipes.cifar10 import load_images
from runner import results
from runner.sweep import SWEEP_PID, threads_per_trial, trial_dirname, warm_workers
from tests.conftest import REPO, adamrun, assert_one_line

FMNIST = Path("/usr/share/datasets/fashion-mnist")  # the Debian package (make data)
TINY = [
    "data=fashion_mnist", "data.train_limit=320", "data.val_size=64", "data.test_limit=128",
    "recipe.widths=[8,8,16,16]", "recipe.channels_last=false", "trainer.precision=bf16", "trainer.batch_size=32", "trainer.eval_batch_size=128", "trainer.epochs=2",
    "trainer.log_every=2",
]  # fmt: skip
GRID = ["optimizer=adamw,sgd", "optimizer.lr=1e-3,1e30", "optimizer.weight_decay=0"]  # 1e30 diverges


def command(verb: str, *arguments: str) -> list[str]:
    return [sys.executable, "-m", "runner.cli", verb, *arguments]


def started(verb: str, *arguments: str) -> subprocess.Popen:
    return subprocess.Popen(
        command(verb, *arguments), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )


def wait_until(process: subprocess.Popen, ready, limit_s: float = 300) -> None:
    """Poll until ready() holds, the process still running meanwhile (else its stderr says why)."""
    deadline = time.time() + limit_s
    while not ready():
        assert process.poll() is None and time.time() < deadline, process.stderr.read()
        time.sleep(0.05)


def sweep(tmp_path: Path, *extra: str, name: str = "grid", check: bool = True) -> subprocess.CompletedProcess:
    arguments = ["sweep=lr_wd_grid", *TINY, *GRID, f"sweep_dir={tmp_path / name}", *extra]
    done = subprocess.run(command("sweep", *arguments), cwd=REPO, capture_output=True, text=True, timeout=600)
    assert not check or done.returncode == 0, done.stdout + done.stderr
    return done


def rows(folder: Path) -> dict[str, dict]:
    with open(folder / "runs.csv", newline="") as f:
        return {row["run_id"]: row for row in csv.DictReader(f)}


def outcome(row: dict) -> tuple:
    """What a trial found: its status and numbers (not its timings or paths)."""
    return row["status"], row["optimizer"], row["optimizer.lr"], row["val_metric"], row["test_metric"]


@pytest.fixture(scope="module")
def basic_grid(tmp_path_factory) -> Path:
    """The 2x2 grid through Hydra's basic launcher, one trial after the other, one thread each."""
    tmp = tmp_path_factory.mktemp("basic")
    sweep(tmp, "hydra/launcher=basic", "trainer.threads=1")
    return tmp / "grid"


@pytest.mark.slow
def test_a_grid_runs_every_trial_and_records_each_status(basic_grid):
    found = rows(basic_grid)
    assert len(found) == 4
    statuses = {(r["optimizer"], r["optimizer.lr"]): r["status"] for r in found.values()}
    assert statuses == {("adamw", "0.001"): "finished", ("sgd", "0.001"): "finished",
                        ("adamw", "1e+30"): "diverged", ("sgd", "1e+30"): "diverged"}  # fmt: skip
    for run_id, row in found.items():
        assert (basic_grid / run_id / "run.json").exists() and row["run_dir"] == str(basic_grid / run_id)
        assert row["metric"] == "acc" and row["optimizer.weight_decay"] == "0"
        if row["status"] == "finished":
            assert 0 <= float(row["val_metric"]) <= 1 and 0 <= float(row["test_metric"]) <= 1
    assert json.loads((basic_grid / "sweep.json").read_text())["name"] == "lr_wd_grid"


@pytest.mark.slow
def test_joblib_with_two_jobs_gives_the_same_rows(tmp_path, basic_grid):
    sweep(tmp_path, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "trainer.threads=1")
    parallel, serial = rows(tmp_path / "grid"), rows(basic_grid)
    assert parallel.keys() == serial.keys()
    for run_id in serial:
        assert outcome(parallel[run_id]) == outcome(serial[run_id]), run_id


@pytest.mark.slow
def test_a_sweep_killed_with_sigkill_resumes_only_the_missing_trials(tmp_path, basic_grid):
    folder = tmp_path / "grid"
    arguments = [
        "sweep=lr_wd_grid",
        *TINY,
        *GRID,
        f"sweep_dir={folder}",
        "hydra/launcher=basic",
        "trainer.threads=1",
    ]
    process = started("sweep", *arguments)
    wait_until(
        process, lambda: (folder / "runs.csv").exists() and "finished" in (folder / "runs.csv").read_text()
    )
    process.kill()  # SIGKILL: no handler runs, the trial in hand is left as it was
    process.wait()
    before = {run_id: (folder / run_id / "run.json").read_text() for run_id, r in rows(folder).items()
              if r["status"] in results.TERMINAL}  # fmt: skip
    assert 1 <= len(before) < 4
    resumed = subprocess.run(command("sweep", "sweep=lr_wd_grid", f"sweep_dir={folder}", "resume=true"),
                             cwd=REPO, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    after = rows(folder)
    assert {run_id: outcome(r) for run_id, r in after.items()} == {
        k: outcome(r) for k, r in rows(basic_grid).items()
    }
    for run_id, record in before.items():  # the trials that had ended were not run again
        assert (folder / run_id / "run.json").read_text() == record
    assert f"resuming {folder}" in resumed.stdout


def descendants(pid: int) -> set[int]:
    """Every process below `pid`, from /proc (a worker's own helpers included)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # ended meanwhile
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has exited; only its parent has not collected it


@pytest.mark.slow
def test_a_joblib_sweep_killed_with_sigkill_leaves_no_worker_and_resumes_the_rest(tmp_path, basic_grid):
    """SIGKILL (the OOM killer, a scheduler's hard limit) runs no handler in the sweep: its workers notice on
    their own, stop their trials as SIGTERM would and exit; resume=true then runs exactly the missing trials."""
    folder = tmp_path / "grid"
    process = started("sweep", "sweep=lr_wd_grid", *TINY, *GRID, f"sweep_dir={folder}", "hydra/launcher=joblib",
                      "hydra.launcher.n_jobs=2", "trainer.threads=1")  # fmt: skip
    wait_until(
        process, lambda: (folder / "runs.csv").exists() and "finished" in (folder / "runs.csv").read_text()
    )
    workers = descendants(process.pid)
    assert workers, "the joblib launcher started no worker process"
    process.kill()
    process.wait()
    deadline = time.time() + 10
    while any(alive(pid) for pid in workers) and time.time() < deadline:
        time.sleep(0.2)
    assert not [pid for pid in workers if alive(pid)], "workers outlived their sweep by 10 s"
    before = {run_id: (folder / run_id / "run.json").read_text() for run_id, r in rows(folder).items()
              if r["status"] in results.TERMINAL}  # fmt: skip
    resumed = subprocess.run(command("sweep", "sweep=lr_wd_grid", f"sweep_dir={folder}", "resume=true"),
                             cwd=REPO, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert {run_id: outcome(r) for run_id, r in rows(folder).items()} == {
        k: outcome(r) for k, r in rows(basic_grid).items()
    }
    for run_id, record in before.items():  # the trials that had ended were not run again
        assert (folder / run_id / "run.json").read_text() == record


@pytest.mark.slow
def test_a_parallel_sweep_stopped_by_sigterm_keeps_its_rows_and_resumes(tmp_path, basic_grid):
    """SIGTERM (SLURM, Ray) while two joblib workers train: finished rows stay, the trials in hand say
    interrupted, no file is left half-written, and resume=true finishes the grid as the serial sweep did."""
    folder = tmp_path / "grid"
    arguments = ["sweep=lr_wd_grid", *TINY, *GRID, f"sweep_dir={folder}", "hydra/launcher=joblib",
                 "hydra.launcher.n_jobs=2", "trainer.threads=1"]  # fmt: skip
    process = started("sweep", *arguments)
    wait_until(
        process, lambda: (folder / "runs.csv").exists() and "finished" in (folder / "runs.csv").read_text()
    )
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == 143
    stopped = rows(folder)
    assert "running" not in {r["status"] for r in stopped.values()}
    assert not list(folder.rglob("*.tmp*")), "a half-written file was left behind"
    resumed = subprocess.run(command("sweep", "sweep=lr_wd_grid", f"sweep_dir={folder}", "resume=true"),
                             cwd=REPO, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert {k: outcome(r) for k, r in rows(folder).items()} == {
        k: outcome(r) for k, r in rows(basic_grid).items()
    }


@pytest.mark.slow
def test_the_grid_through_submitit_local(tmp_path, basic_grid):
    sweep(tmp_path, "hydra/launcher=submitit_local", "trainer.threads=1")
    found = rows(tmp_path / "grid")
    assert {k: outcome(r) for k, r in found.items()} == {k: outcome(r) for k, r in rows(basic_grid).items()}
    assert (tmp_path / "grid" / ".submitit").is_dir()  # its job folders stay inside the sweep


@pytest.mark.slow
def test_the_grid_through_a_ray_head_started_here(tmp_path, basic_grid):
    ray = Path(sys.executable).with_name("ray")
    ray_tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths must fit in 107 bytes
    env = os.environ | {"RAY_TMPDIR": ray_tmp}
    head = ["--head", "--num-cpus=2", "--include-dashboard=false", "--disable-usage-stats"]
    started = subprocess.run([str(ray), "start", *head], capture_output=True, text=True, env=env, timeout=180)
    assert started.returncode == 0, started.stdout + started.stderr
    try:
        arguments = ["sweep=lr_wd_grid", *TINY, *GRID, f"sweep_dir={tmp_path / 'grid'}", "hydra/launcher=ray"]
        done = subprocess.run(command("sweep", *arguments), cwd=REPO, capture_output=True, text=True, env=env,
                              timeout=600)  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
    finally:
        subprocess.run([str(ray), "stop", "--force"], capture_output=True, env=env, timeout=180)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    found = rows(tmp_path / "grid")
    assert {k: r["status"] for k, r in found.items()} == {k: r["status"] for k, r in rows(basic_grid).items()}


# ------------------------------------------------------------------------------------------ mistakes
@pytest.mark.parametrize(
    "arguments,says",
    [
        (["sweep=no_such_grid"], "unknown sweep 'no_such_grid'; valid choices: cars_optimizers, lr_wd_grid"),
        ([], "adamrun sweep needs sweep=<name>"),
        (
            ["sweep=lr_wd_grid", "optimizer.lrr=1e-3,3e-3"],
            "grid axis optimizer.lrr: unknown config key 'optimizer.lrr'",
        ),
        (
            ["sweep=lr_wd_grid", "optimizer=adamw,adamx"],
            "grid axis optimizer=adamx: unknown optimizer 'adamx'",
        ),
        (["sweep=lr_wd_grid", "resume=true"], "there is no sweep to resume"),
        (  # the grid holds out 2,000 validation images: a mistake every trial shares, known before any data
            ["sweep=lr_wd_grid", "data.train_limit=1000"],
            "data.val_size must be below data.train_limit (1000)",
        ),
    ],
)
def test_sweep_mistakes_are_one_line(monkeypatch, capsys, tmp_path, arguments, says):
    code, _, err = adamrun(
        monkeypatch, capsys, "sweep", *arguments, f"sweep_dir={tmp_path / 's'}", "data=fashion_mnist"
    )
    assert code == 2
    assert_one_line(err, says)
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize(
    "axis,bad",
    [("optimizer.lr", "-1"), ("trainer.epochs", "two"), ("optimizer.betas", "[0.9,1.5]"), ("seed", "1.5")],
)
def test_a_value_a_trial_would_refuse_stops_the_grid_with_what_compose_says(tmp_path, axis, bad):
    """Other values of a plain axis are checked on the first trial's config, not composed again: the reason
    given must be the one a full composition of that trial gives."""
    from runner.config import compose
    from runner.errors import UsageError
    from runner.sweep import plan

    fixed = ["data=fashion_mnist", "optimizer=adamw"]
    with pytest.raises(UsageError) as composed:
        compose(["sweep=lr_wd_grid", *fixed, f"{axis}={bad}"])
    good = {"optimizer.lr": "1e-3", "trainer.epochs": "2", "optimizer.betas": "[0.9,0.99]", "seed": "0"}[axis]
    axis_value = f"{axis}={good},{bad}" if not bad.startswith("[") else f"{axis}=[0.9,0.99],[0.9,1.5]"
    with pytest.raises(UsageError) as checked:
        plan(["sweep=lr_wd_grid", f"sweep_dir={tmp_path / 's'}", *fixed, axis_value])
    prefix = f"grid axis {axis}={bad}: "
    assert str(checked.value).startswith(prefix)
    assert str(checked.value).removeprefix(prefix) in str(composed.value)  # Hydra's may add "Error merging"


def test_a_sweep_folder_in_use_is_refused_and_a_resume_cannot_change_the_grid(monkeypatch, capsys, tmp_path):
    folder = tmp_path / "s"
    folder.mkdir()
    (folder / "sweep.json").write_text(
        json.dumps({"name": "lr_wd_grid", "overrides": ["data=fashion_mnist"]})
    )
    code, _, err = adamrun(monkeypatch, capsys, "sweep", "sweep=lr_wd_grid", f"sweep_dir={folder}")
    assert code == 2
    assert_one_line(err, "already holds a sweep", "resume=true")
    code, _, err = adamrun(monkeypatch, capsys, "sweep", "sweep=lr_wd_grid", f"sweep_dir={folder}", "resume=true",
                           "trainer.epochs=5")  # fmt: skip
    assert code == 2
    assert_one_line(
        err, "trainer.epochs is unset there, 5 here: start a new sweep"
    )  # only the key that differs
    assert "data=fashion_mnist" not in err


# ------------------------------------------------------------------------------------------ pieces
def test_long_override_lists_give_short_distinct_folder_names():
    short = "optimizer=adamw,seed=1"
    assert trial_dirname(short) == short
    long_a, long_b = "x" * 300 + "=1", "x" * 300 + "=2"
    assert len(trial_dirname(long_a)) <= 120 and trial_dirname(long_a) != trial_dirname(long_b)
    assert "/" not in trial_dirname("data.root=/tmp/a")


@pytest.mark.parametrize(
    "launcher,expected",
    [
        ({"_target_": "hydra._internal.core_plugins.basic_launcher.BasicLauncher"}, 8),
        ({"_target_": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher", "n_jobs": 2}, 4),
        ({"_target_": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher", "n_jobs": -1}, 1),
        ({"_target_": "hydra_plugins.hydra_ray_launcher.ray_launcher.RayLauncher", "ray": {"remote": {}}}, 1),
        ({"_target_": "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher"}, 2),
    ],
)
def test_parallel_trials_split_the_cores(monkeypatch, launcher, expected):
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    hydra = OmegaConf.create({"launcher": launcher, "sweeper": {"max_batch_size": 4}})
    assert threads_per_trial(hydra) == expected


def pid_after(seconds: float) -> int:
    time.sleep(seconds)  # long enough that every worker takes a task
    return os.getpid()


def launcher_settings(n_jobs: int, **changed) -> dict:
    """hydra.launcher for joblib as Hydra composes it, less its _target_: what WarmWorkers receives."""
    from hydra_plugins.hydra_joblib_launcher.config import JobLibLauncherConf

    launcher = OmegaConf.merge(OmegaConf.structured(JobLibLauncherConf), {"n_jobs": n_jobs, **changed})
    return {k: v for k, v in OmegaConf.to_container(launcher).items() if k != "_target_"}


def launched(settings: dict, task, tasks: int) -> set:
    """What `tasks` calls of task(0.5) return, on a Parallel made as hydra_joblib_launcher's launch() makes it."""
    from hydra_plugins.hydra_joblib_launcher._core import process_joblib_cfg
    from joblib import Parallel, delayed

    parallel = settings | {"backend": "loky"}
    process_joblib_cfg(parallel)
    return set(Parallel(**parallel)(delayed(task)(0.5) for _ in range(tasks)))


def launched_pids(settings: dict, tasks: int) -> set[int]:
    """The processes that run `tasks` tasks of the launcher's Parallel."""
    return launched(settings, pid_after, tasks)


def test_the_joblib_launcher_runs_its_trials_in_the_warmed_workers():
    """WarmWorkers' premise: joblib reuses the loky executor created with the launcher's own settings, so the
    launcher's trials run in the processes that already imported torch and the recipe, not in new ones."""
    settings = launcher_settings(n_jobs=2, max_nbytes="3M")  # settings of its own: a new executor, cold
    warmed = warm_workers(settings, "cifar10", trials=4)
    assert len(warmed) == 2 and launched_pids(settings, 4) == warmed


def test_a_failed_warm_up_leaves_the_workers_to_the_trials():
    """A task that raised would make joblib kill the executor's workers, the trials' among them."""
    settings = launcher_settings(n_jobs=2)
    workers = launched_pids(settings, 4)
    warmed = warm_workers(settings, "no_such_recipe", trials=4)
    assert warmed and warmed <= workers and launched_pids(settings, 4) == workers


def worker_state(seconds: float) -> tuple[int, bool, bool]:
    """(pid, whether it imported what a trial runs, whether it watches its sweep), after `seconds`."""
    time.sleep(seconds)  # long enough that every worker takes a task
    watching = any(t.name == "leave-with-parent" for t in threading.enumerate())
    return os.getpid(), "runner.run" in sys.modules, watching  # this module imports torch already


def test_every_worker_watches_the_sweep_and_only_those_with_a_trial_import_its_code(monkeypatch):
    """One trial left on two workers: both get a warm-up (one each, never two on one), so both leave with a
    SIGKILLed sweep, even the one that never gets a trial; only one pays a trial's imports."""
    monkeypatch.setenv(SWEEP_PID, str(os.getpid()))  # the workers' parent is the sweep: this process
    settings = launcher_settings(n_jobs=2, max_nbytes="5M")  # settings of its own: a new executor, cold
    warmed = warm_workers(settings, "cifar10", trials=1)
    states = launched(settings, worker_state, 2)
    assert {pid for pid, _, _ in states} == warmed and len(warmed) == 2
    assert all(watching for _, _, watching in states)
    assert sorted(imported for _, imported, _ in states) == [False, True]


def test_no_worker_is_warmed_where_trials_run_in_this_process_or_none_is_left():
    assert warm_workers(launcher_settings(n_jobs=1), "cifar10", trials=4) == set()  # in this process
    assert warm_workers(launcher_settings(n_jobs=2), "cifar10", trials=0) == set()


def test_the_validation_split_is_disjoint_stratified_and_the_same_for_every_run():
    base = {"name": "fashion_mnist", "root": str(FMNIST), "download": False, "train_limit": 3000,
            "test_limit": 10, "val_seed": 0}  # fmt: skip
    split = load_images(OmegaConf.create(base | {"val_size": 600}))
    whole = load_images(OmegaConf.create(base | {"val_size": 0}))
    train_rows = {bytes(x.numpy()) for x in split.train_x}
    val_rows = [bytes(x.numpy()) for x in split.val_x]
    assert len(split.train_y) + len(split.val_y) == 3000 and not train_rows & set(val_rows)
    assert train_rows | set(val_rows) == {bytes(x.numpy()) for x in whole.train_x}
    counts = np.bincount(split.val_y.numpy(), minlength=10) / len(split.val_y)
    np.testing.assert_allclose(counts, np.bincount(whole.train_y.numpy(), minlength=10) / 3000, atol=0.01)
    again = load_images(OmegaConf.create(base | {"val_size": 600}))
    assert torch_equal(again.val_x, split.val_x)  # another run (any seed) holds out the same images
    other = load_images(OmegaConf.create(base | {"val_size": 600, "val_seed": 1}))
    assert not torch_equal(other.val_x, split.val_x)


def torch_equal(a, b) -> bool:
    return a.shape == b.shape and bool((a == b).all())


# ------------------------------------------------------------------------------------------ time to target
def test_time_to_target_is_recorded_at_the_first_evaluation_that_reaches_it(monkeypatch, capsys, tmp_path):
    overrides = [*TINY, "trainer.threads=1", "trainer.epochs=3", "trainer.eval_every=0.5", f"results_dir={tmp_path}",
                 f"run_dir={tmp_path / 'run'}", "trainer.target=val_acc>=0.3"]  # fmt: skip
    code, _, err = adamrun(monkeypatch, capsys, "train", *overrides)
    assert code == 0, err
    history = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [0.5, 1, 1.5, 2, 2.5, 3]
    first = next(h for h in history if h["val_acc"] >= 0.3)
    assert first["epochs_to_target"] == first["epoch"] and first["steps_to_target"] == first["step"]
    assert all("time_to_target_s" not in h for h in history if h is not first)
    [row] = results.read_rows(tmp_path / "runs.csv")
    assert float(row["epochs_to_target"]) == first["epoch"] and float(row["time_to_target_s"]) > 0
    assert "test_acc" in history[-1] and all(
        "test_acc" not in h for h in history[:-1]
    )  # read once, at the end


def test_stop_at_target_ends_the_run_there_with_its_test_score(monkeypatch, capsys, tmp_path):
    overrides = [*TINY, "trainer.threads=1", "trainer.epochs=6", f"results_dir={tmp_path}", f"run_dir={tmp_path / 'r'}",
                 "trainer.target=val_loss<=2.5", "trainer.stop_at_target=true"]  # fmt: skip
    code, _, err = adamrun(monkeypatch, capsys, "train", *overrides)
    assert code == 0, err
    [row] = results.read_rows(tmp_path / "runs.csv")
    assert row["status"] == "finished" and row["epochs_run"] == "1" and row["epochs_to_target"] == "1"
    assert row["test_metric"] != ""


# ------------------------------------------------------------------------------------------ searches
def study_states(folder: Path) -> list[str]:
    import optuna

    study = optuna.load_study(study_name="adamw_lr_wd", storage=f"sqlite:///{folder / 'study.db'}")
    return [t.state.name for t in study.trials]


@pytest.mark.slow
def test_a_search_killed_mid_trial_and_resumed_runs_exactly_its_trials(tmp_path):
    folder = tmp_path / "search"
    arguments = ["tune=adamw_lr_wd", "trials=4", *TINY, f"sweep_dir={folder}", "trainer.threads=1",
                 "tune.heartbeat_s=1", "tune.grace_s=2", "tune.startup_trials=2"]  # fmt: skip
    process = started("tune", *arguments)
    wait_until(process, lambda: (folder / "runs.csv").exists() and len(rows(folder)) >= 2)
    process.kill()  # mid-trial: its row says running, its study trial stays RUNNING
    process.wait()
    killed = [r["run_id"] for r in rows(folder).values() if r["status"] == "running"]
    done = subprocess.run(command("tune", *arguments), cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    states = study_states(folder)
    assert states.count("COMPLETE") + states.count("PRUNED") == 4  # exactly the trials asked for
    final = rows(folder)
    assert all(r["status"] in ("finished", "pruned", "diverged") for r in final.values())
    for run_id in killed:  # the killed trial ran again, from its folder, with its own parameters
        assert json.loads((folder / run_id / "run.json").read_text())["segments"] == 2


def test_a_search_with_other_settings_in_the_same_folder_is_refused(monkeypatch, capsys, tmp_path):
    folder = tmp_path / "search"
    folder.mkdir()
    (folder / "tune.json").write_text(json.dumps({"name": "adamw_lr_wd", "overrides": ["tune.trials=3"]}))
    code, _, err = adamrun(monkeypatch, capsys, "tune", "tune=adamw_lr_wd", "trials=5", f"sweep_dir={folder}")
    assert code == 2
    assert_one_line(err, "holds a search with other settings (tune.trials is 3 there, 5 here)")


def test_resume_true_continues_a_search_as_running_it_again_does(monkeypatch, capsys, tmp_path):
    """One meaning of resume: `resume=true` is accepted by tune as by train and sweep, and continues the
    search in the folder; with no search there it is one line."""
    from runner import tune

    folder = tmp_path / "search"
    first = tune.plan(["tune=adamw_lr_wd", "trials=2", f"sweep_dir={folder}"])
    again = tune.plan(["tune=adamw_lr_wd", "trials=2", f"sweep_dir={folder}", "resume=true"])
    assert (again.dir, again.overrides) == (first.dir, first.overrides)
    code, _, err = adamrun(
        monkeypatch, capsys, "tune", "tune=adamw_lr_wd", "resume=true", f"sweep_dir={tmp_path / 'no'}"
    )
    assert code == 2
    assert_one_line(err, "resume=true: there is no search to resume")


@pytest.mark.slow
def test_report_reads_a_sweep_again(monkeypatch, capsys, basic_grid):
    code, out, err = adamrun(monkeypatch, capsys, "report", str(basic_grid))
    assert code == 0, err
    assert "adamw" in out and "sgd" in out


def test_a_failure_every_trial_shares_stops_the_sweep_with_one_line(monkeypatch, capsys, tmp_path):
    """Data that no trial can read: each trial fails alike, so the sweep ends with exit 2 and the one line,
    not a table of failures and exit 0 (their rows stay, naming the error)."""
    code, _, err = adamrun(monkeypatch, capsys, "sweep", "sweep=lr_wd_grid", *TINY, "optimizer=adamw",
                           "optimizer.lr=1e-3,3e-3", "optimizer.weight_decay=0", "data.root=/nowhere",
                           "hydra/launcher=basic", f"sweep_dir={tmp_path / 's'}")  # fmt: skip
    assert code == 2
    assert_one_line(
        err, "every trial of the sweep failed with: UsageError: Fashion-MNIST not found in /nowhere"
    )
    assert [r["status"] for r in rows(tmp_path / "s").values()] == ["failed", "failed"]
