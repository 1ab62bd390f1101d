"""Sweeps and searches through `hydra/launcher=submitit_slurm` on a real one-node SLURM cluster (munged,
slurmctld and slurmd started here, tests/services.py): a job cancelled with scancel once its trial has
checkpointed stops that trial cleanly; the sweep resumes it from its checkpoint, and the search runs it again
under its number, each ending with exactly its trials."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.runner.test_sweep import GRID, command, rows, wait_until
from tests.runner.test_tune import (
    LONGER,
    check_search,
    first_checkpointed,
    journal,
    optuna_trials,
    search_arguments,
    worker_of,
)
from tests.services import program, slurm_cluster, squeue, unavailable_slurm, wait_for

pytestmark = pytest.mark.slow
SLURM = ["hydra/launcher=submitit_slurm", "hydra.launcher.cpus_per_task=1"]  # two jobs at once on the node


@pytest.fixture(scope="module")
def cluster():
    why = unavailable_slurm()
    if why is not None:
        pytest.skip(why)
    with slurm_cluster() as env:
        yield env | {"COLUMNS": "250"}


def job_of(pid: int) -> str:
    """The SLURM job a process runs in, as scancel takes it: <array job>_<task> for a task of an array (a
    sweep's trials), else its job id."""
    variables = dict(
        v.split("=", 1) for v in Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in v
    )
    if "SLURM_ARRAY_JOB_ID" in variables:
        return f"{variables['SLURM_ARRAY_JOB_ID']}_{variables['SLURM_ARRAY_TASK_ID']}"
    return variables["SLURM_JOB_ID"]


def cancel_mid_trial(process: subprocess.Popen, folder: Path, env: dict) -> tuple[Path, int | None]:
    """scancel the job whose trial has written its first checkpoint: the trial's folder and number."""
    wait_until(process, lambda: first_checkpointed(folder) is not None)
    run_dir = first_checkpointed(folder)
    cancelled = subprocess.run([program("scancel"), job_of(worker_of(folder, run_dir))], env=env, capture_output=True,
                               text=True, check=True)  # fmt: skip
    assert "error" not in cancelled.stderr, cancelled.stderr  # scancel says a wrong job id, and exits 0
    trial = rows(folder)[run_dir.name].get("trial")
    return run_dir, int(trial) if trial else None


@contextmanager
def launched(verb: str, arguments: list[str], env: dict) -> Iterator[subprocess.Popen]:
    """The command, running; killed (its pid) if the test ends before it does."""
    process = subprocess.Popen(command(verb, *arguments), cwd=REPO, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_a_sweep_on_slurm_resumes_the_trial_whose_job_was_cancelled(cluster, tmp_path):
    folder = tmp_path / "grid"
    arguments = ["sweep=lr_wd_grid", *LONGER, *GRID, f"sweep_dir={folder}", *SLURM]
    with launched("sweep", arguments, cluster) as process:
        cancelled, _ = cancel_mid_trial(process, folder, cluster)
        out, err = process.communicate(timeout=300)
    assert process.returncode == 2 and "the sweep stopped" in err, out + err  # a job of it was cancelled
    wait_for(lambda: not squeue(cluster), [], "the sweep's jobs")  # it waited for them: they are ending
    assert rows(folder)[cancelled.name]["status"] == "interrupted"
    again = subprocess.run(command("sweep", *arguments, "resume=true"), cwd=REPO, env=cluster, capture_output=True,
                           text=True, timeout=300)  # fmt: skip
    assert again.returncode == 0, again.stdout + again.stderr
    found = rows(folder)
    assert len(found) == 4
    assert {(r["optimizer"], r["optimizer.lr"], r["status"]) for r in found.values()} == {
        ("adamw", "0.001", "finished"), ("sgd", "0.001", "finished"), ("adamw", "1e+30", "diverged"),
        ("sgd", "1e+30", "diverged"),
    }  # fmt: skip
    assert json.loads((cancelled / "run.json").read_text())["segments"] == 2  # resumed, from its checkpoint


def test_two_workers_on_slurm_run_a_cancelled_workers_trial_again(cluster, tmp_path):
    folder = tmp_path / "search"
    arguments = search_arguments(folder, 4, "tune.storage=journal", "tune.workers=2", *SLURM)
    with launched("tune", arguments, cluster) as process:
        cancelled, number = cancel_mid_trial(process, folder, cluster)
        out, err = process.communicate(timeout=300)
    assert process.returncode == 0, out + err
    check_search(folder, optuna_trials(folder, journal(folder)), 4, cancelled, number)
