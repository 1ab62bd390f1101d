"""Searches on any Optuna storage and with N workers: the storage a user names (and never its password), N
workers as jobs of Hydra's joblib launcher on one journal study, a worker killed mid-trial whose trial runs
again under its number and in its folder, and tune.fail_fast."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO, adamrun, assert_one_line
from tests.runner.test_sweep import TINY, command, rows, wait_until

SECRET = "pa55-Not-In-Any-File"  # a password the tests give and then look for
# TINY, 3 epochs: a trial outlasts its first checkpoint by two epochs, when a test kills or cancels its worker
LONGER = [*(a for a in TINY if not a.startswith("trainer.epochs=")), "trainer.epochs=3"]


def optuna_trials(folder: Path, storage):
    import optuna

    return optuna.load_study(study_name="adamw_lr_wd", storage=storage).trials


def journal(folder: Path):
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    return JournalStorage(JournalFileBackend(str(folder / "study.journal")))


def finished_numbers(trials) -> list[int]:
    """adamrun's numbers of the completed and pruned trials, sorted."""
    return sorted(t.user_attrs["number"] for t in trials if t.state.name in ("COMPLETE", "PRUNED"))


def worker_of(folder: Path, run_dir: Path) -> int:
    """The pid of the process that holds a trial's lock (it runs the trial)."""
    return int((folder / ".locks" / f"{run_dir.name}.lock").read_text().split()[1])


def first_checkpointed(folder: Path) -> Path | None:
    """A trial folder whose first checkpoint is written while the trial still runs."""
    if not folder.is_dir():
        return None
    for run_dir in (d for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".")):
        run = run_dir / "run.json"
        if (run_dir / "checkpoint.pt").exists() and run.exists() and '"running"' in run.read_text():
            return run_dir
    return None


def kill_a_worker_mid_trial(process: subprocess.Popen, folder: Path) -> tuple[Path, int]:
    """SIGKILL the worker that runs a trial once that trial has written its first checkpoint: the trial's
    folder and its number."""
    wait_until(process, lambda: first_checkpointed(folder) is not None)
    run_dir = first_checkpointed(folder)
    number = int(rows(folder)[run_dir.name]["trial"])
    os.kill(worker_of(folder, run_dir), signal.SIGKILL)
    return run_dir, number


# ------------------------------------------------------------------------------------------ storage settings
def test_a_storage_url_with_a_password_is_refused_without_repeating_it(monkeypatch, capsys, tmp_path):
    url = f"tune.storage=postgresql://adamrun:{SECRET}@127.0.0.1:5432/adamrun"
    code, out, err = adamrun(
        monkeypatch, capsys, "tune", "tune=adamw_lr_wd", url, f"sweep_dir={tmp_path / 's'}"
    )
    assert code == 2
    assert_one_line(err, "tune.storage holds a password", "ADAMRUN_DB_PASSWORD or tune.password_file")
    assert SECRET not in out + err and not (tmp_path / "s").exists()


@pytest.mark.parametrize(
    ("settings", "fragment"),
    [
        (["tune.storage=nonsense"], "tune.storage must be sqlite, journal or a database URL"),
        (["tune.password_file=/some/file"], "tune.password_file is for a database URL"),
        (["tune.workers=0"], "tune.workers must be > 0"),
        (
            ["tune.storage=postgresql://me@127.0.0.1:9/db", "tune.password_file=/nowhere/pw"],
            "tune.password_file /nowhere/pw",
        ),
    ],
)
def test_storage_mistakes_are_one_line(monkeypatch, capsys, tmp_path, settings, fragment):
    code, _, err = adamrun(
        monkeypatch, capsys, "tune", "tune=adamw_lr_wd", *settings, f"sweep_dir={tmp_path / 's'}"
    )
    assert code == 2
    assert_one_line(err, fragment)


def test_the_dashboard_command_names_the_study_and_never_a_password(tmp_path):
    from omegaconf import OmegaConf

    from runner import storage

    def command_for(**settings) -> str:
        return storage.dashboard_command(OmegaConf.create({"password_file": None} | settings), tmp_path)

    assert command_for(storage="sqlite") == f"optuna-dashboard sqlite:///{tmp_path}/study.db"
    assert command_for(storage="journal") == f"optuna-dashboard {tmp_path}/study.journal"
    url = "postgresql://adamrun@db.example:5432/adamrun"
    assert command_for(storage=url) == f'PGPASSWORD="$ADAMRUN_DB_PASSWORD" optuna-dashboard {url}'
    assert (
        command_for(storage=url, password_file="/s/pw")
        == f'PGPASSWORD="$(head -1 /s/pw)" optuna-dashboard {url}'
    )


def test_a_password_read_is_scrubbed_from_errors(monkeypatch, tmp_path):
    from runner import storage

    monkeypatch.setenv(storage.PASSWORD_ENV, SECRET)
    assert storage.password(None) == SECRET
    err = storage.scrubbed(RuntimeError(f"could not connect to postgresql://adamrun:{SECRET}@db/x"))
    assert str(err) == "could not connect to postgresql://adamrun:***@db/x"
    (tmp_path / "pw").write_text(f"{SECRET}-file\nignored\n")
    assert storage.password(str(tmp_path / "pw")) == f"{SECRET}-file"


# ------------------------------------------------------------------------------------------ N workers
def search_arguments(folder: Path, trials: int, *extra: str) -> list[str]:
    return [
        "tune=adamw_lr_wd", f"trials={trials}", *LONGER, f"sweep_dir={folder}", "tune.startup_trials=1",
        "tune.heartbeat_s=1", "tune.grace_s=3", *extra,
    ]  # fmt: skip


def check_search(folder: Path, trials, expected: int, killed: Path, killed_number: int) -> None:
    """Exactly `expected` finished trials numbered 0..expected-1, each with its row; the killed trial ran
    again in its folder (a second segment, from its checkpoint) under its number."""
    assert finished_numbers(trials) == list(range(expected))
    found = rows(folder)
    assert sorted(int(r["trial"]) for r in found.values()) == list(range(expected))
    assert all(r["status"] in ("finished", "pruned", "diverged") for r in found.values())
    assert int(found[killed.name]["trial"]) == killed_number
    assert json.loads((killed / "run.json").read_text())["segments"] == 2


@pytest.mark.slow
def test_two_workers_on_a_journal_survive_a_worker_killed_mid_trial(tmp_path):
    """tune.workers=2 on the journal storage: two joblib workers. One is killed with SIGKILL once its trial
    has checkpointed (loky then kills the other one too): the command starts the workers again, the killed
    trials run again from their checkpoints under their numbers, and the search ends with exactly 4."""
    folder = tmp_path / "search"
    arguments = search_arguments(folder, 4, "tune.storage=journal", "tune.workers=2")
    process = subprocess.Popen(
        command("tune", *arguments), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    killed, number = kill_a_worker_mid_trial(process, folder)
    out, err = process.communicate(timeout=600)
    assert process.returncode == 0, out + err
    assert "a worker stopped: starting the workers again" in out
    check_search(folder, optuna_trials(folder, journal(folder)), 4, killed, number)
    assert (
        len({pid for pid in (worker_of(folder, d) for d in folder.iterdir() if (d / "run.json").exists())})
        >= 2
    )


def test_fail_fast_stops_the_search_at_its_first_failed_trial(monkeypatch, capsys, tmp_path):
    folder = tmp_path / "s"
    arguments = search_arguments(
        folder, 3, "data.root=/nowhere", "tune.storage=journal", "tune.fail_fast=true"
    )
    code, out, err = adamrun(monkeypatch, capsys, "tune", *arguments)
    assert code == 1, out + err
    assert "the search stopped: trial 0 failed (UsageError: Fashion-MNIST not found in /nowhere" in err
    trials = optuna_trials(folder, journal(folder))
    assert [t.state.name for t in trials] == ["FAIL"]
    assert [r["status"] for r in rows(folder).values()] == ["failed"]


def test_without_fail_fast_a_search_of_failing_trials_ends_when_more_failed_than_it_has(
    monkeypatch, capsys, tmp_path
):
    folder = tmp_path / "s"
    code, out, err = adamrun(monkeypatch, capsys, "tune", *search_arguments(folder, 2, "data.root=/nowhere"))
    assert code == 1, out + err
    assert "the search stopped: more trials failed than the search has (2)" in err
    assert "trials: fail 3" in out


# ------------------------------------------------------------------------------------------ PostgreSQL
@pytest.fixture(scope="module")
def postgres_server():
    from tests import services

    why = services.unavailable_postgres()
    if why is not None:
        pytest.skip(why)
    with services.postgres(SECRET) as url:
        yield url


@pytest.fixture
def database(postgres_server, request) -> str:
    """A database of its own for each test (a study is found by its name): its URL, without the password."""
    from tests import services

    return services.create_database(postgres_server, SECRET, request.node.name.lower().replace("-", "_")[:60])


def rdb(url: str):
    import optuna

    return optuna.storages.RDBStorage(url.replace("adamrun@", f"adamrun:{SECRET}@"))


def files_holding(folder: Path, secret: str) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]


@pytest.mark.slow
def test_two_workers_on_postgresql_survive_a_killed_worker_and_never_write_the_password(tmp_path, database):
    """6 trials, 2 workers on a real PostgreSQL server; one worker SIGKILLed mid-trial. The search ends with
    exactly 6 trials numbered 0..5, the killed one run again in its folder under its number; a fresh process
    finds the study done; and the password is in no file of the search (rows, logs, tune.json, config.yaml,
    multirun.yaml, checkpoints) and in none of its output."""
    folder = tmp_path / "search"
    env = os.environ | {"ADAMRUN_DB_PASSWORD": SECRET, "COLUMNS": "250"}  # one line per message
    arguments = search_arguments(folder, 6, f"tune.storage={database}", "tune.workers=2")
    process = subprocess.Popen(command("tune", *arguments), cwd=REPO, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)  # fmt: skip
    killed, number = kill_a_worker_mid_trial(process, folder)
    out, err = process.communicate(timeout=600)
    assert process.returncode == 0, out + err
    assert (
        f"study in {database}" in out
        and f'PGPASSWORD="$ADAMRUN_DB_PASSWORD" optuna-dashboard {database}' in out
    )
    check_search(folder, optuna_trials(folder, rdb(database)), 6, killed, number)
    before = rows(folder)
    again = subprocess.run(
        command("tune", *arguments), cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    assert again.returncode == 0, again.stdout + again.stderr
    assert "trial " not in again.stdout.replace("trials", "") and rows(folder) == before  # nothing run again
    for name in ("runs.csv", "tune.json", "multirun.yaml"):
        assert (folder / name).is_file()
    assert files_holding(folder, SECRET) == []
    assert SECRET not in out + err + again.stdout + again.stderr


def test_a_wrong_database_password_is_one_line_without_it(monkeypatch, capsys, tmp_path, database):
    wrong = "not-the-" + SECRET
    monkeypatch.setenv("ADAMRUN_DB_PASSWORD", wrong)
    code, out, err = adamrun(monkeypatch, capsys, "tune", "tune=adamw_lr_wd", f"tune.storage={database}",
                             f"sweep_dir={tmp_path / 's'}")  # fmt: skip
    assert code == 2
    assert_one_line(
        err, f"{database} is not a readable study", "password authentication failed", "check tune.storage"
    )
    assert wrong not in out + err and files_holding(tmp_path / "s", wrong) == []
