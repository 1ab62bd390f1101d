"""`adamrun tune`: a search over a space in conf/tune/ with Optuna's own API (a current Optuna; the
hydra-optuna-sweeper plugin pins optuna < 3 and SQLAlchemy < 2, and re-running it schedules new trials and
leaves killed ones RUNNING for ever: facebookresearch/hydra#3328).

Each trial is a normal run in `<sweep_dir>/<its parameters>/` with its row in `<sweep_dir>/runs.csv`; the study
lives where `tune.storage` says (runner/storage.py: sqlite or a journal file in the sweep folder, or a
database). Every evaluation's validation metric goes to Optuna, whose pruner may stop a hopeless trial early
(`pruned`). A trial whose worker died (no heartbeat, or, in a journal, a trial lock nobody holds) or was
stopped is queued again with its parameters, its number and so its folder and checkpoint, so a killed search,
started again, repeats no finished trial and ends with exactly `tune.trials` finished (completed or pruned)
trials. `tune.workers=N` runs N workers on the study as N jobs of a Hydra launcher (runner/tune_workers.py);
more processes, or machines sharing the folder, can join the study by running the same command.
"""

from __future__ import annotations

import math
import os
import socket
import time
import warnings
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from omegaconf import MISSING, DictConfig

from runner import results, signals, storage
from runner.config import TrainConfig, check, compose, group_options, quote_target
from runner.errors import UsageError
from runner.sweep import SAVED_SWEEP, differences, failed_row, key_of, trial_dirname, trial_lock, value_of


class Direction(StrEnum):
    maximize = "maximize"  # accuracy
    minimize = "minimize"  # perplexity, loss


class Pruner(StrEnum):
    median = (
        "median"  # stop a trial whose validation is worse than the median of earlier trials at that point
    )
    successive_halving = "successive_halving"  # asynchronous successive halving (ASHA's rungs)
    none = "none"


class Sampler(StrEnum):
    tpe = "tpe"  # Optuna's default: random for startup_trials, then a model of the good and bad trials
    random = (
        "random"  # independent of the results (with a seed: the same parameters whatever the pruner does)
    )


@dataclass
class SearchParam:
    low: float | None = None  # a number in [low, high] ...
    high: float | None = None
    log: bool = False  # ... drawn on a log scale
    choices: list[Any] | None = None  # or one of these (a config group's options, or values)


@dataclass
class TuneSettings:
    name: str = MISSING
    trials: int = MISSING  # finished trials the study needs (pruned ones count)
    direction: Direction = MISSING  # of the recipe's validation metric
    space: dict[str, SearchParam] = MISSING  # config key -> its range or choices
    pruner: Pruner = MISSING
    sampler: Sampler = Sampler.tpe
    startup_trials: int = MISSING  # trials that run to the end before the pruner may stop any
    warmup_evals: int = MISSING  # evaluations of a trial before the pruner may stop it
    heartbeat_s: int = MISSING  # a running trial writes a heartbeat this often ...
    grace_s: int = MISSING  # ... and counts as dead (to be retried) after this long without one
    seed: int | None = MISSING  # TPE sampler seed; null: a fresh one per process (a fixed seed would repeat
    # the same parameters after a restart and across parallel workers)
    storage: str = "sqlite"  # sqlite | journal | a database URL without its password (runner/storage.py)
    password_file: str | None = None  # the database password's file (first line); null: $ADAMRUN_DB_PASSWORD
    workers: int = 1  # processes working on the study, each a job of hydra/launcher (joblib when not given)
    worker: int = 0  # this process's index among them (set by adamrun tune)
    fail_fast: bool = False  # stop the search at the first failed trial (no worker takes another)

    def __post_init__(self) -> None:
        check(self.trials > 0, "tune.trials", "must be > 0", self.trials)
        check(self.workers > 0, "tune.workers", "must be > 0", self.workers)
        storage.check_storage(self.storage, self.password_file)
        check(self.heartbeat_s > 0 and self.grace_s > self.heartbeat_s, "tune.heartbeat_s/grace_s",
              "must satisfy 0 < heartbeat_s < grace_s", (self.heartbeat_s, self.grace_s))  # fmt: skip
        for key, param in self.space.items():
            ranged = param.low is not None and param.high is not None and param.low < param.high
            check(ranged != (param.choices is not None), f"tune.space.{key}",
                  "needs low < high, or choices (not both)", param)  # fmt: skip
            check(
                not (param.log and ranged and param.low <= 0),
                f"tune.space.{key}.low",
                "must be > 0 with log",
                param.low,
            )


@dataclass
class TuneConfig(TrainConfig):
    tune: TuneSettings = MISSING  # the search's settings, from conf/tune/<name>.yaml


OWN_KEYS = ("tune", "trials", "sweep_dir", "resume")
# settings of this command, not of the search: a search may be joined with others (or another password file)
RUNTIME = ("tune.workers", "tune.worker", "tune.fail_fast", "tune.password_file")
TRIAL = "number"  # a trial's user attribute: its adamrun number, kept by its retries
WORKER = "worker"  # a trial's user attribute: the host and pid of the process that ran it last
STATUS = "status"  # a trial's user attribute: what became of it (failed, interrupted, surplus, pruned, ...)
NOT_RUN = ("interrupted", "surplus")  # failed trials that say nothing about their parameters
STOPPED = ("interrupted", "running")  # a trial that failed while these: stopped (or died), not its fault


@dataclass
class Search:
    name: str
    dir: Path
    overrides: list[str]  # fixed for every trial (tune.json holds them)
    cfg: DictConfig  # composed once, for the settings and a first check of the overrides
    runtime: list[str] = field(default_factory=list)  # RUNTIME keys given
    launch: list[str] = field(default_factory=list)  # hydra/launcher and hydra.* settings, for the workers


def search_config(overrides: list[str]) -> DictConfig:
    """The train config with a search's settings (tune=<name>), both checked."""
    return compose(overrides, schema=TuneConfig)


def split(arguments: list[str]) -> tuple[list[str], list[str], list[str]]:
    """A search's overrides, its RUNTIME settings and its launcher settings."""
    launch = [a for a in arguments if key_of(a).startswith("hydra")]
    runtime = [a for a in arguments if key_of(a) in RUNTIME]
    return [a for a in arguments if a not in launch and a not in runtime], runtime, launch


def plan(arguments: list[str]) -> Search:
    """The search the command line asks for, checked before any trial; a folder holding another search (other
    settings) is refused, the same search is joined (resumed, or worked on by one more process)."""
    own = {key_of(a): value_of(a) for a in arguments if key_of(a) in OWN_KEYS}
    overrides, runtime, launch = split(quote_target([a for a in arguments if key_of(a) not in OWN_KEYS]))
    name = own.get("tune")
    if name not in group_options("tune"):
        what = f"unknown search '{name}'" if name else "adamrun tune needs tune=<name>"
        raise UsageError(f"{what}; valid choices: {', '.join(group_options('tune'))}")
    if "trials" in own:
        overrides.append(f"tune.trials={own['trials']}")
    cfg = search_config([f"tune={name}", *overrides, *runtime])
    folder = Path(own.get("sweep_dir") or Path(cfg.results_dir) / "sweeps" / name).expanduser().resolve()
    saved = folder / "tune.json"
    settings = {"name": name, "overrides": overrides}
    resume = own.get("resume")  # running the same command again joins the search: resume=true says the same
    check(
        resume in (None, "true"), "resume", "can only be true (a new search: sweep_dir=<new folder>)", resume
    )
    if resume and not saved.exists():
        raise UsageError(f"resume=true: there is no search to resume in {folder} (no tune.json)")
    if (
        saved.exists() and (held := results.read_json(saved, SAVED_SWEEP)) != settings
    ):  # the same one is joined
        what = (f"search {held['name']}, not {name}" if held["name"] != name
                else f"a search with other settings ({differences(held['overrides'], overrides)})")  # fmt: skip
        raise UsageError(f"{folder} holds {what}; give sweep_dir=<new folder>")
    if not saved.exists() and folder.exists() and any(folder.iterdir()):
        raise UsageError(f"{folder} is not empty and holds no search; give sweep_dir=<new folder>")
    results.write_json(saved, settings)
    return Search(name, folder, overrides, cfg, runtime, launch)


def study(search: Search):
    """The study where tune.storage says, created or loaded."""
    import optuna

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # each trial gets our own line instead
    from sqlalchemy.exc import SQLAlchemyError

    settings, where = search.cfg.tune, storage.where(search.cfg.tune, search.dir)
    if settings.storage == "sqlite" and Path(where).exists() and Path(where).stat().st_size == 0:
        raise UsageError(f"{where} is empty, not the study of this search; give sweep_dir=<new folder>")
    try:
        return optuna.create_study(
            study_name=search.name,
            storage=storage.open_storage(settings, search.dir),
            load_if_exists=True,
            direction=str(settings.direction),
            sampler=sampler(settings),
            pruner=pruner(settings),
        )
    except SQLAlchemyError as err:  # truncated, not a database at all, a server that refuses us
        reason = storage.scrub(str(getattr(err, "orig", None) or err).strip().splitlines()[0])
        what = "give sweep_dir=<new folder>" if settings.storage == "sqlite" else "check tune.storage"
        raise UsageError(f"{where} is not a readable study ({reason}); {what}") from None
    except ImportError as err:  # a database whose driver is not installed (psycopg for PostgreSQL is)
        raise UsageError(f"tune.storage: {where} needs its Python driver ({err.__cause__ or err})") from None
    except (ValueError, KeyError) as err:  # a journal file that is not one
        raise UsageError(f"{where} is not a readable study ({err}); give sweep_dir=<new folder>") from None


def sampler(settings: DictConfig):
    import optuna

    if settings.sampler == "random":
        return optuna.samplers.RandomSampler(seed=settings.seed)
    return optuna.samplers.TPESampler(n_startup_trials=settings.startup_trials, seed=settings.seed)


def pruner(settings: DictConfig):
    import optuna

    if settings.pruner == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=settings.startup_trials, n_warmup_steps=settings.warmup_evals + 1
        )  # evaluations are reported from 1: the first warmup_evals are never pruned
    if settings.pruner == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner()
    return optuna.pruners.NopPruner()


def finished(trials) -> int:
    from optuna.trial import TrialState

    return sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)


def failures(trials) -> list:
    """The trials that failed for their own reasons (not a dead worker, a stop, a surplus)."""
    return [t for t in trials if t.user_attrs.get(STATUS) == "failed"]


def counts(found) -> dict[str, int]:
    """Each state's count of trials; one run again (its worker died or stopped) or surplus is not a failure."""
    trials = found.get_trials(deepcopy=False)
    tally: dict[str, int] = {}
    for t in trials:
        state = t.user_attrs.get(STATUS) if t.user_attrs.get(STATUS) in NOT_RUN else t.state.name.lower()
        state = "run again" if t.number in retried(trials) else state
        tally[state] = tally.get(state, 0) + 1
    return tally


def retried(trials) -> set[int]:
    """The numbers (Optuna's) of the trials that were queued again."""
    return {n for t in trials for n in t.system_attrs.get("retry_history", [])}


def stop_reason(found, settings: DictConfig) -> str | None:
    """Why the search is over (None: it is not): its trials are done, or tune.fail_fast saw a failure."""
    trials = found.get_trials(deepcopy=False)
    failed = failures(trials)
    if finished(trials) >= settings.trials:
        return "done"
    if settings.fail_fast and failed:
        first = min(failed, key=lambda t: t.user_attrs[TRIAL])
        return f"trial {first.user_attrs[TRIAL]} failed ({first.user_attrs.get('error', '')}), and tune.fail_fast is set"
    if len(failed) > settings.trials:
        return f"more trials failed than the search has ({settings.trials})"
    return None


def run(search: Search, echo=print) -> str:
    """Work on the study until it has tune.trials finished trials, or fail_fast stops it: why it ended."""
    from optuna.trial import TrialState

    found = study(search)
    settings = search.cfg.tune
    with signals.handled():
        while (reason := stop_reason(found, settings)) is None:
            reclaim(found, search)
            trials = found.get_trials(deepcopy=False)
            taken = finished(trials) + sum(t.state == TrialState.RUNNING for t in trials)
            if taken >= settings.trials:  # the rest are other workers' (a dead one's is found meanwhile)
                time.sleep(settings.heartbeat_s)
                continue
            try:
                found.optimize(lambda trial: objective(search, trial, echo), n_trials=1, catch=(Exception,))
            except KeyboardInterrupt:
                requeue_stopped(found)
                raise
    return reason


def reclaim(found, search: Search) -> None:
    """Queue again, with their parameters and number, the trials whose worker died: found by Optuna's
    heartbeats, or (a journal has none) by their trial lock, free while the trial says RUNNING. A trial just
    created gets grace_s to take its lock."""
    import optuna
    from optuna.trial import TrialState

    optuna.storages.fail_stale_trials(found)  # the storages with heartbeats
    if search.cfg.tune.storage != "journal":
        return
    now = datetime.now()
    for trial in found.get_trials(deepcopy=True, states=(TrialState.RUNNING,)):
        if (now - trial.datetime_start).total_seconds() < search.cfg.tune.grace_s:
            continue
        with trial_lock(trial_dir(search, trial.params), wait=False) as free:
            if not free:
                continue
            try:
                found.tell(trial.number, state=TrialState.FAIL)
            except (ValueError, RuntimeError):  # another worker failed it first, and queued it
                continue
        storage.retry()(found, trial)


def requeue_stopped(found) -> None:
    """This process's trial that a stop signal interrupted (its row says interrupted, its checkpoint stays):
    queued again."""
    from optuna.trial import TrialState

    done = retried(found.get_trials(deepcopy=False))
    for trial in found.get_trials(deepcopy=True, states=(TrialState.FAIL,)):
        mine = trial.user_attrs.get(WORKER) == this_worker()
        if mine and trial.user_attrs.get(STATUS) in STOPPED and trial.number not in done:
            storage.retry()(found, trial)


def this_worker() -> str:
    return f"{socket.gethostname()} {os.getpid()}"


class Surplus(Exception):
    """Other workers hold the trials left: this one is not needed."""


def number_of(trial) -> int:
    """adamrun's number of a trial: kept by its retries (a user attribute, which they inherit); new trials are
    numbered on from 0, past Optuna's numbers of retries and surplus trials."""
    if TRIAL in trial.user_attrs:
        return trial.user_attrs[TRIAL]
    earlier = [t for t in trial.study.get_trials(deepcopy=False) if t.number < trial.number]
    return trial.number - sum(is_copy(t) for t in earlier)


def is_copy(trial) -> bool:
    """A retry of another trial, or a surplus trial: no number of its own."""
    return "retry_history" in trial.system_attrs or trial.user_attrs.get(STATUS) == "surplus"


def surplus(trial, trials: int) -> bool:
    """The trials finished and those that started before this one already make the search: it is not needed
    (two workers that each took the last trial: the later one yields)."""
    from optuna.trial import TrialState

    others = trial.study.get_trials(deepcopy=False)
    before = [t for t in others if t.state == TrialState.RUNNING and t.number < trial.number]
    return finished(others) + len(before) >= trials


def trial_dir(search: Search, params: dict) -> Path:
    """A trial's folder, named by its parameters: a retry finds its checkpoint there."""
    return search.dir / trial_dirname(",".join(sorted(f"{key}={value}" for key, value in params.items())))


def objective(search: Search, trial, echo) -> float:
    """One trial: a normal run with the sampled parameters, reporting each evaluation to the pruner."""
    import optuna

    from runner.run import train

    if surplus(trial, search.cfg.tune.trials):
        trial.set_user_attr(STATUS, "surplus")
        raise Surplus
    number = number_of(trial)
    trial.set_user_attr(TRIAL, number)
    trial.set_user_attr(STATUS, "running")
    trial.set_user_attr(WORKER, this_worker())
    params = {key: suggest(trial, key, param) for key, param in search.cfg.tune.space.items()}
    chosen = [f"{key}={value}" for key, value in params.items()]
    labels = params | {"trial": number}
    cfg = search_config([f"tune={search.name}", *search.overrides, *chosen, "trainer.progress=false"])
    run_dir = trial_dir(search, params)
    with trial_lock(run_dir):  # its worker's liveness, where the storage has no heartbeats
        cfg.results_dir, cfg.run_dir, cfg.resume = str(search.dir), str(run_dir), results.holds_run(run_dir)
        try:
            row = train(cfg, should_stop=reporter(trial, cfg.trainer.eval_every), labels=labels)
        except Exception as err:
            row = failed_row(cfg, run_dir, labels, storage.scrubbed(err))
            trial.set_user_attr(STATUS, "failed")
            trial.set_user_attr("error", row["error"])
            echo(f"trial {number}: failed {' '.join(chosen)}  {row['error']}")
            raise
    echo(f"trial {number}: {row['status']} {' '.join(chosen)}  val {row.get('val_metric', '-')}")
    trial.set_user_attr(STATUS, row["status"])
    if row["status"] == "interrupted":
        raise signals.Interrupted(signals.exit_code() - 128)
    if row["status"] != "finished":  # pruned, or diverged: stopped early, no result; it counts as a trial
        raise optuna.TrialPruned(row["status"])
    return float(row["val_metric"])


def reporter(trial, eval_every: float):
    """should_stop for the loop: each evaluation's validation metric to Optuna, and its pruner's verdict.
    Evaluations are numbered from their epoch, so a resumed trial reports the same numbers again."""
    metric_key = None

    def should_stop(row: dict) -> bool:
        nonlocal metric_key
        metric_key = metric_key or next(k for k in row if k.startswith("val_") and k != "val_loss")
        evaluation = math.ceil(
            round(row["epoch"] / eval_every, 6)
        )  # 1, 2, ...: the pruner counts evaluations, not steps
        trial.report(row[metric_key], step=evaluation)
        return trial.should_prune()

    return should_stop


def suggest(trial, key: str, param: DictConfig):
    if param.choices is not None:
        return trial.suggest_categorical(key, list(param.choices))
    return trial.suggest_float(key, param.low, param.high, log=param.log)
