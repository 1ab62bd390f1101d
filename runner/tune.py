"""`adamrun tune`: a search over a space in conf/tune/ with Optuna's own API (a current Optuna; the
hydra-optuna-sweeper plugin pins optuna < 3 and SQLAlchemy < 2, and re-running it schedules new trials and
leaves killed ones RUNNING for ever: facebookresearch/hydra#3328).

Each trial is a normal run in `<sweep_dir>/<its parameters>/` with its row in `<sweep_dir>/runs.csv`; the study
is `<sweep_dir>/study.db` (sqlite). Every evaluation's validation metric goes to Optuna, whose pruner may stop a
hopeless trial early (`pruned`). Dead trials are found by their heartbeat and run again with the same
parameters (from their checkpoint: the folder is named by the parameters), so a killed search, started again,
repeats no finished trial and ends with exactly `tune.trials` finished (completed or pruned) trials. Several
processes, or machines sharing the folder, can work on one study: run the same command in each.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from omegaconf import MISSING, DictConfig

from runner import results, signals
from runner.config import TrainConfig, check, compose, group_options, quote_target
from runner.errors import UsageError
from runner.sweep import SAVED_SWEEP, differences, failed_row, key_of, trial_dirname, value_of


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

    def __post_init__(self) -> None:
        check(self.trials > 0, "tune.trials", "must be > 0", self.trials)
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


@dataclass
class Search:
    name: str
    dir: Path
    overrides: list[str]  # fixed for every trial
    cfg: DictConfig  # composed once, for the settings and a first check of the overrides


def search_config(overrides: list[str]) -> DictConfig:
    """The train config with a search's settings (tune=<name>), both checked."""
    return compose(overrides, schema=TuneConfig)


def plan(arguments: list[str]) -> Search:
    """The search the command line asks for, checked before any trial; a folder holding another search (other
    settings) is refused, the same search is joined (resumed, or worked on by one more process)."""
    own = {key_of(a): value_of(a) for a in arguments if key_of(a) in OWN_KEYS}
    overrides = quote_target([a for a in arguments if key_of(a) not in OWN_KEYS])
    name = own.get("tune")
    if name not in group_options("tune"):
        what = f"unknown search '{name}'" if name else "adamrun tune needs tune=<name>"
        raise UsageError(f"{what}; valid choices: {', '.join(group_options('tune'))}")
    if "trials" in own:
        overrides.append(f"tune.trials={own['trials']}")
    cfg = search_config([f"tune={name}", *overrides])
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
    return Search(name, folder, overrides, cfg)


def study(search: Search):
    """The study in search.dir/study.db, created or loaded; dead trials (no heartbeat) are run again."""
    import optuna

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # each trial gets our own line instead
    from sqlalchemy.exc import SQLAlchemyError

    settings, database = search.cfg.tune, search.dir / "study.db"
    if database.exists() and database.stat().st_size == 0:  # sqlite would take it for a new study
        raise UsageError(f"{database} is empty, not the study of this search; give sweep_dir=<new folder>")
    try:
        storage = optuna.storages.RDBStorage(
            f"sqlite:///{database}",
            heartbeat_interval=settings.heartbeat_s,
            grace_period=settings.grace_s,
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3),
        )
        return optuna.create_study(
            study_name=search.name,
            storage=storage,
            load_if_exists=True,
            direction=str(settings.direction),
            sampler=sampler(settings),
            pruner=pruner(settings),
        )
    except SQLAlchemyError as err:  # truncated, or not a database at all
        reason = str(getattr(err, "orig", None) or err).splitlines()[0]
        raise UsageError(
            f"{database} is not a readable study ({reason}); give sweep_dir=<new folder>"
        ) from err


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


def run(search: Search, echo=print) -> dict[str, int]:
    """Work on the study until it has tune.trials finished trials; returns the count of each state."""
    import optuna
    from optuna.trial import TrialState

    found = study(search)
    settings = search.cfg.tune
    if found.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):  # dead, or another worker's:
        time.sleep(settings.grace_s + settings.heartbeat_s + 1)  # a live one keeps beating meanwhile
        optuna.storages.fail_stale_trials(found)  # the dead ones are queued again, with their parameters
    with signals.handled():
        while finished(trials := found.get_trials(deepcopy=False)) < settings.trials:
            if sum(t.state == TrialState.FAIL for t in trials) > settings.trials:
                raise UsageError(
                    f"more trials failed than the search has ({settings.trials}): see {search.dir}"
                )
            found.optimize(lambda trial: objective(search, trial, echo), n_trials=1, catch=(Exception,))
    counts: dict[str, int] = {}
    for t in found.get_trials(deepcopy=False):
        counts[t.state.name.lower()] = counts.get(t.state.name.lower(), 0) + 1
    return counts


class Surplus(Exception):
    """Another worker took the last trial: this one is not needed."""


def objective(search: Search, trial, echo) -> float:
    """One trial: a normal run with the sampled parameters, reporting each evaluation to the pruner."""
    import optuna

    from runner.run import train

    if finished(trial.study.get_trials(deepcopy=False)) >= search.cfg.tune.trials:
        trial.study.stop()
        raise Surplus
    params = {key: suggest(trial, key, param) for key, param in search.cfg.tune.space.items()}
    chosen = [f"{key}={value}" for key, value in params.items()]
    labels = params | {"trial": trial.number}
    cfg = compose([f"tune={search.name}", *search.overrides, *chosen, "trainer.progress=false"])
    run_dir = search.dir / trial_dirname(",".join(sorted(chosen)))
    cfg.results_dir, cfg.run_dir, cfg.resume = str(search.dir), str(run_dir), results.holds_run(run_dir)
    try:
        row = train(cfg, should_stop=reporter(trial, cfg.trainer.eval_every), labels=labels)
    except Exception as err:
        row = failed_row(cfg, run_dir, labels, err)
        echo(f"trial {trial.number}: failed {' '.join(chosen)}  {row['error']}")
        raise
    echo(f"trial {trial.number}: {row['status']} {' '.join(chosen)}  val {row.get('val_metric', '-')}")
    if row["status"] == "interrupted":
        raise signals.Interrupted(signals.exit_code() - 128)
    if row["status"] != "finished":  # pruned, or diverged: stopped early, no result; it counts as a trial
        trial.set_user_attr("status", row["status"])
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
