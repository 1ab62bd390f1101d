"""`adamrun sweep`: a grid of normal runs on Hydra's multirun, so Hydra's own launchers run the trials (basic,
joblib, submitit_local here; submitit_slurm or a Ray cluster for users). We write no launcher.

A sweep is a config in conf/sweep/ (`# @package _global_`): its grid in `hydra.sweeper.params`, its fixed
budget (epochs, subset sizes, validation split) as ordinary keys. The command line may replace any axis
(`'optimizer.lr=1e-3,3e-3'`) and its other overrides apply to every trial.

Every trial is a normal run in `<sweep_dir>/<its overrides>/` with its row in `<sweep_dir>/runs.csv` (the run
columns plus one column per override). A trial is identified by its resolved overrides, not its position, so
`resume=true` skips the trials that ended, resumes interrupted ones from their checkpoints and runs the rest.
Hydra has no resume of its own (facebookresearch/hydra#1407) and its callbacks cannot skip a job, so the
check lives in the trial itself; a trial never raises (a failure is its row), else Hydra would stop the sweep.
"""

from __future__ import annotations

import copy
import fcntl
import hashlib
import itertools
import logging
import os
import socket
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from runner import import_frozen, results, signals, skip_final_collections
from runner.config import (
    CONF_DIR,
    compose,
    group_options,
    one_line,
    quote_target,
    recipe_module,
    register_schemas,
    typed,
    validate,
)
from runner.errors import UsageError

register_schemas()  # launcher workers compose their trial's config: they need the schemas too

SWEEP_KEYS = ("sweep", "resume", "sweep_dir")  # the sweep's own arguments, not the trials'
NOT_IDENTITY = ("sweep", "results_dir", "trainer.progress", "trainer.threads", "trainer.log_every")  # runtime
# settings: the same trial whatever they are
SAVED_SWEEP = {"name": str, "overrides": list}  # sweep.json (and tune.json): what a resume continues
SWEEP_PID = "ADAMRUN_SWEEP_PID"  # the sweep's process, for its workers to leave with it
MAX_DIRNAME = 120  # characters of a trial folder's name; longer override lists are shortened with a hash


def trial_dirname(override_dirname: str) -> str:
    """A trial's folder: its sorted overrides (Hydra's override_dirname), made a safe, short file name."""
    safe = override_dirname.replace("/", "_") or "defaults"
    if len(safe) <= MAX_DIRNAME:
        return safe
    return f"{safe[: MAX_DIRNAME - 13]}-{hashlib.sha1(override_dirname.encode()).hexdigest()[:12]}"


if not OmegaConf.has_resolver("trial_dir"):
    OmegaConf.register_new_resolver("trial_dir", trial_dirname)


def leave_with_the_sweep() -> None:
    """In a launcher's worker (a trial's process, or one warmed up for trials): exit once the sweep is gone."""
    signals.leave_with(int(os.environ.get(SWEEP_PID, os.getpid())))


# ------------------------------------------------------------------------------------------ one trial
def trial(cfg: DictConfig) -> dict:
    """Hydra's task function: one trial, a normal run. Ended trials are skipped; it never raises but for a
    stop signal (which ends the sweep, as Ctrl-C does)."""
    with signals.stops_as_job_errors():
        return run_job(cfg)


def run_job(cfg: DictConfig) -> dict:
    skip_final_collections()  # in a launcher's worker too
    leave_with_the_sweep()
    hydra = HydraConfig.get()
    run_dir = Path(hydra.runtime.output_dir)
    overrides = [o for o in hydra.overrides.task if key_of(o) not in SWEEP_KEYS]
    labels = {key_of(o): value_of(o) for o in overrides if key_of(o) not in NOT_IDENTITY}
    try:
        with trial_lock(run_dir):  # an orphaned worker may still run this trial: wait for it, then look
            record = results.read_run(run_dir)
            if record.get("status") in results.TERMINAL:
                return record
            row = run_trial(cfg, hydra, run_dir, overrides, labels)
    except Exception as err:  # noqa: BLE001 - a trial that raises is a row, and the sweep goes on
        row = failed_row(cfg, run_dir, labels, err)
    signals.exit_if_orphaned()  # its row is written: the sweep that would read it is gone
    if row["status"] == "interrupted":
        raise signals.Interrupted(signals.exit_code() - 128)  # stop the sweep, as Ctrl-C stops a run
    return row


def run_trial(cfg: DictConfig, hydra, run_dir: Path, overrides: list[str], labels: dict) -> dict:
    from runner.run import train

    plain = OmegaConf.to_container(cfg, resolve=False)
    plain.pop("hydra", None)
    plain |= {
        "choices": {k: v for k, v in hydra.runtime.choices.items() if not k.startswith("hydra")},
        "overrides": overrides,
        "run_dir": str(run_dir),
        "resume": results.holds_run(run_dir),  # killed earlier: continue from its checkpoint
    }
    trial_cfg = typed(OmegaConf.create(plain))
    if trial_cfg.trainer.threads is None:
        trial_cfg.trainer.threads = threads_per_trial(hydra)
    return train(trial_cfg, labels=labels)


def failed_row(cfg: DictConfig, run_dir: Path, labels: dict, err: Exception) -> dict:
    """The row of a trial that raised before or while training, with the error's last line."""
    sweep_dir = run_dir.parent
    row = {
        "run_id": results.run_id(run_dir, sweep_dir),
        "status": "failed",
        "seed": OmegaConf.select(cfg, "seed", default=""),
        "git_sha": results.git_sha(),
        "run_dir": str(run_dir),
        "error": f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}",
        **labels,
    }
    logging.getLogger(__name__).debug("trial %s failed:\n%s", run_dir.name, traceback.format_exc())
    results.write_run(run_dir, row)
    results.upsert_row(sweep_dir / "runs.csv", row)
    return row


@contextmanager
def trial_lock(run_dir: Path, wait: bool = True) -> Iterator[bool]:
    """One process at a time per trial (a lock beside the sweep's folders, released if its holder dies; it
    holds the holder's host and pid, to find the process that runs a trial). Yields whether this process
    holds it (always, when it waits for it)."""
    lock_dir = run_dir.parent / ".locks"
    lock_dir.mkdir(exist_ok=True)
    with open(lock_dir / f"{run_dir.name}.lock", "a+") as lock:  # "w" would wipe the holder's pid
        try:
            fcntl.flock(lock, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        lock.truncate(0)
        lock.write(f"{socket.gethostname()} {os.getpid()}\n")
        lock.flush()
        yield True


def settle(folder: Path) -> None:
    """Trials whose row still says running but whom no process runs (a killed worker left its lock free)
    were interrupted: their rows say so, and resume=true continues them. A worker killed while it wrote a
    checkpoint or a row leaves a temporary file, removed here."""
    for run_dir in (d for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".")):
        results.remove_orphaned_temporaries(run_dir)
    for row in results.read_rows(folder / "runs.csv"):
        run_dir = Path(row["run_dir"])
        if row["status"] != "running" or not run_dir.is_dir():
            continue
        with trial_lock(run_dir, wait=False) as free:
            if free:
                row = results.read_run(run_dir) | {"status": "interrupted"}
                results.write_run(run_dir, row)
                results.upsert_row(folder / "runs.csv", {k: v for k, v in row.items() if k != "segments"})


def threads_per_trial(hydra) -> int:
    """Parallel trials split the cores: two 2-thread processes on 2 cores run 5 to 10 times slower than one."""
    target, cores = str(hydra.launcher._target_), os.cpu_count() or 1
    if target.endswith("JoblibLauncher"):
        n_jobs = hydra.launcher.n_jobs  # -1: all cores, -2: all but one, ...
        parallel = cores + 1 + n_jobs if n_jobs < 0 else n_jobs
    elif target.endswith("LocalLauncher"):  # submitit_local starts a whole batch at once
        parallel = hydra.sweeper.max_batch_size or cores
    elif target.endswith("RayLauncher"):
        return int(hydra.launcher.ray.remote.get("num_cpus", 1))
    else:
        parallel = 1
    return max(cores // max(parallel, 1), 1)


def key_of(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def value_of(override: str) -> str:
    return override.split("=", 1)[1] if "=" in override else ""


# ------------------------------------------------------------------------------------------ warm workers
class WarmWorkers(Callback):
    """Hydra callback: under the joblib launcher, start its worker processes and their imports (torch, the
    loop, the recipe: about 3 s each) while this process still composes and checks every trial's config (0.1 s
    a trial), rather than after. The warm-up runs on the loky executor that the launcher's Parallel then
    reuses, since joblib reuses an executor created with the same settings: they come from the launcher's
    own config, passed as the launcher passes them. As many workers as trials are left, at most the
    launcher's. Holds only that count: Hydra sends it to every job.

    With psutil installed, loky takes a worker's memory after its first task (here the warm-up) as the base of
    its leak check: a first trial that keeps over 300 MB (a large dataset, read once per process) gets that
    worker replaced once, by a cold one."""

    def __init__(self, trials: int):
        self.trials = trials  # left to run

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        launcher = config.hydra.launcher
        if str(launcher._target_).endswith("JoblibLauncher"):
            settings = {
                k: v for k, v in OmegaConf.to_container(launcher, resolve=True).items() if k != "_target_"
            }
            warming = threading.Thread(
                target=warm_workers, args=(settings, str(config.recipe.name), self.trials), daemon=True
            )
            WARMING.append(warming)
            warming.start()

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        while WARMING:
            WARMING.pop().join()


WARMING: list[threading.Thread] = []  # this process's warm-up, joined when the sweep ends


def warm_workers(settings: dict, recipe: str, trials: int) -> set[int]:
    """One warm-up on each of the launcher's loky workers: their pids. Each worker then watches the sweep (an
    idle worker that never got a task would outlive a SIGKILLed sweep by loky's 300 s idle timeout); those that
    will get a trial (as many as trials are left) also import what trials need. None when the trials would run
    in this process (one job) or none is left."""
    import tempfile

    from hydra_plugins.hydra_joblib_launcher._core import process_joblib_cfg
    from joblib import Parallel, delayed, effective_n_jobs

    settings = settings | {"backend": "loky"}  # as the launcher sets it
    process_joblib_cfg(settings)
    workers = effective_n_jobs(settings["n_jobs"])
    if workers < 2 or not trials:
        return set()
    with tempfile.TemporaryDirectory(prefix="adamrun-warm-") as arrived:
        return set(Parallel(**settings)(
            delayed(warm_up)(recipe if i < trials else None, arrived, workers) for i in range(workers)
        ))  # fmt: skip


WARM_BARRIER_S = (
    60.0  # seconds a warm-up waits for the others to arrive (a worker slower to start is not waited for)
)


def warm_up(recipe: str | None, arrived: str, workers: int) -> int:
    """A worker's first task: watch the sweep, import what a trial of `recipe` needs (None: no trial will come
    here), then wait until `workers` warm-ups have arrived, so that no worker takes two and each gets one. It
    never raises: a failed task would make joblib kill the executor's workers, trials included; the trials meet
    the same error and record it."""
    leave_with_the_sweep()
    try:
        Path(arrived, str(os.getpid())).touch()
        if recipe is not None:
            recipe_module(recipe)  # torch
            import_frozen("torch._dynamo")  # torch.optim's, when it builds its first optimizer
            import_frozen("runner.run")
        deadline = time.monotonic() + WARM_BARRIER_S
        while len(os.listdir(arrived)) < workers and time.monotonic() < deadline:
            time.sleep(0.05)
    except Exception:  # noqa: BLE001
        logging.getLogger(__name__).debug("warming a worker failed:\n%s", traceback.format_exc())
    return os.getpid()


# ------------------------------------------------------------------------------------------ the sweep
@dataclass
class Sweep:
    name: str
    dir: Path
    overrides: list[str]  # the trials' overrides, as typed (axes and fixed values)
    resume: bool
    axes: dict[str, list[str]] = field(default_factory=dict)
    statuses: dict = field(default_factory=dict)

    @property
    def trials(self) -> int:
        return len(list(itertools.product(*self.axes.values())))

    @property
    def fixed_keys(self) -> list[str]:
        """Keys set for every trial alike: they do not name a trial's folder (sweep.json pins them)."""
        return [
            key_of(o)
            for o in self.overrides
            if key_of(o) not in self.axes and not key_of(o).startswith("hydra")
        ]


RUNTIME = ("hydra", "trainer.threads", "trainer.progress", "trainer.log_every")  # may change on resume


def plan(arguments: list[str]) -> Sweep:
    """The sweep the command line asks for, checked: a bad name, axis or value is one line before any trial.
    resume=true continues the sweep in its folder under the overrides it was started with (sweep.json);
    only the launcher and the threads may be set anew."""
    own = {key_of(a): value_of(a) for a in arguments if key_of(a) in SWEEP_KEYS}
    given = quote_target([a for a in arguments if key_of(a) not in SWEEP_KEYS])
    name = own.get("sweep")
    if not name:
        raise UsageError(
            f"adamrun sweep needs sweep=<name>; valid choices: {', '.join(group_options('sweep'))}"
        )
    if name not in group_options("sweep"):
        raise UsageError(f"unknown sweep '{name}'; valid choices: {', '.join(group_options('sweep'))}")
    resume = own.get("resume", "false").lower() == "true"
    results_dir = next((value_of(a) for a in given if key_of(a) == "results_dir"), "results")
    folder = Path(own.get("sweep_dir") or Path(results_dir) / "sweeps" / name).expanduser().resolve()
    overrides = resumed_overrides(folder, name, given) if resume else given
    if not resume and folder.exists() and any(folder.iterdir()):
        raise UsageError(
            f"{folder} already holds a sweep; finish it with resume=true, or give sweep_dir=<new folder>"
        )
    sweep = Sweep(name, folder, overrides, resume, grid(name, overrides))
    check_axes(sweep)
    return sweep


def resumed_overrides(folder: Path, name: str, given: list[str]) -> list[str]:
    """The saved overrides, plus the launcher settings given again; any other change is refused."""
    saved_file = folder / "sweep.json"
    if not saved_file.exists():
        raise UsageError(f"resume=true: there is no sweep to resume in {folder} (no sweep.json)")
    saved = results.read_json(saved_file, SAVED_SWEEP)
    if saved["name"] != name:
        raise UsageError(f"{folder} holds sweep {saved['name']}, not {name}")
    kept = {key_of(o): o for o in saved["overrides"]}
    changed = [o for o in given if not key_of(o).startswith(RUNTIME) and kept.get(key_of(o)) != o]
    if changed:
        raise UsageError(
            f"resume=true continues the sweep in {folder} under its saved overrides, and "
            f"{differences(saved['overrides'], changed, only_given=True)}: start a new sweep (sweep_dir=<new folder>)"
        )
    return [*saved["overrides"], *(o for o in given if key_of(o).startswith(RUNTIME))]


def differences(saved: list[str], given: list[str], only_given: bool = False) -> str:
    """The keys whose values differ between two override lists, each with both values (and nothing else)."""
    old, new = ({key_of(o): value_of(o) for o in overrides} for overrides in (saved, given))
    keys = sorted(new if only_given else old.keys() | new.keys())
    return "; ".join(
        f"{key} is {old.get(key, 'unset')} there, {new.get(key, 'unset')} here"
        for key in keys
        if old.get(key) != new.get(key)
    )


def grid(name: str, overrides: list[str]) -> dict[str, list[str]]:
    """Every axis of the grid and its values: the sweep file's, each replaced by the command line's."""
    sweep_file = OmegaConf.load(CONF_DIR / "sweep" / f"{name}.yaml")
    params = OmegaConf.select(sweep_file, "hydra.sweeper.params") or {}
    lines = [f"{key}={value}" for key, value in params.items()] + overrides
    axes = {}
    for override in OverridesParser.create().parse_overrides(lines):
        values = (
            override.sweep_string_iterator()
            if override.is_sweep_override()
            else [override.get_value_element_as_str()]
        )
        axes[override.get_key_element()] = list(values)
    return {key: values for key, values in axes.items() if len(values) > 1 or key in params}


def check_axes(sweep: Sweep) -> None:
    """Compose the first trial, then check one trial per other value of each axis: a key that does not exist,
    or a value a trial would refuse, stops the sweep now instead of failing trial after trial."""
    fixed = [o for o in sweep.overrides if key_of(o) not in sweep.axes]  # the launcher's settings too
    first = {key: values[0] for key, values in sweep.axes.items()}

    def composes(chosen: dict[str, str], blame: str) -> DictConfig:
        try:
            return compose([f"sweep={sweep.name}", *fixed, *(f"{k}={v}" for k, v in chosen.items())])
        except UsageError as err:
            raise UsageError(f"{blame}: {err}") from err

    try:
        base = composes(first, f"sweep {sweep.name}")
    except UsageError as err:  # the error names the axis (a key that does not exist), or a fixed override
        culprit = next((key for key in sweep.axes if f"'{key}'" in str(err) or f" {key} " in str(err)), None)
        if culprit is None:
            raise
        raise UsageError(f"grid axis {culprit}: {str(err).split(': ', 1)[1]}") from err
    for key, values in sweep.axes.items():
        for value in values[1:]:
            blame = f"grid axis {key}={value}"
            if chooses_configs(key):
                composes(first | {key: value}, blame)
            else:
                takes_value(base, key, value, blame)


def chooses_configs(key: str) -> bool:
    """A group (optimizer=adamw), an added or deleted key, or Hydra's own: only a composition tells."""
    return (CONF_DIR / key).is_dir() or key.startswith(("+", "~", "hydra"))


def takes_value(cfg: DictConfig, key: str, value: str, blame: str) -> None:
    """`key=value` set on an already composed trial and validated as compose would (types, ranges): a tenth of
    a composition's half second, which a 32-trial grid paid eight times before its first trial."""
    trial = copy.deepcopy(cfg)
    try:
        parsed = OverridesParser.create().parse_override(quote_target([f"{key}={value}"])[0])
        OmegaConf.update(trial, key, parsed.value(), merge=False)
        validate(trial)
    except (HydraException, OmegaConfBaseException) as err:
        raise UsageError(f"{blame}: {one_line(str(err))}") from err
    except UsageError as err:
        raise UsageError(f"{blame}: {err}") from err


def hydra_settings(sweep: Sweep) -> list[str]:
    """Where Hydra puts the trials, and what it must leave alone (logging, working folder)."""
    settings = [
        f"hydra.sweep.dir={sweep.dir}",
        "hydra.sweep.subdir='${trial_dir:${hydra.job.override_dirname}}'",
        f"hydra.job.config.override_dirname.exclude_keys=[{','.join([*NOT_IDENTITY, *sweep.fixed_keys])}]",
        "hydra/job_logging=none",  # `disabled` would silence our own loggers too
        "hydra/hydra_logging=none",
        "hydra.output_subdir=null",  # no .hydra/ folder per trial: the run saves its own config
        "hydra.job.chdir=False",
        f"results_dir={sweep.dir}",
        "trainer.progress=false",  # parallel trials share a terminal: the sweep prints a line per trial
        "+hydra.callbacks.warm_workers._target_=runner.sweep.WarmWorkers",  # joblib: workers start early
        f"+hydra.callbacks.warm_workers.trials={trials_left(sweep)}",
    ]
    return settings + launcher_settings(sweep.overrides)


def launcher_settings(overrides: list[str]) -> list[str]:
    """The launcher's settings that adamrun's jobs need and the command line left out."""
    settings = []
    launcher = next((value_of(o) for o in overrides if key_of(o) == "hydra/launcher"), "")
    given = {key_of(o) for o in overrides}
    if launcher == "submitit_local":  # it starts a whole batch at once: no more trials than cores
        settings += (
            []
            if "hydra.sweeper.max_batch_size" in given
            else [f"hydra.sweeper.max_batch_size={os.cpu_count()}"]
        )
        settings += (
            [] if "hydra.launcher.timeout_min" in given else ["hydra.launcher.timeout_min=10080"]
        )  # a week
    if launcher == "ray" and "hydra.launcher.ray.init.address" not in given:  # join the running cluster
        settings += [
            "hydra.launcher.ray.init.address=auto",
            "+hydra.launcher.ray.init.object_store_memory=null",  # refused when joining a cluster
            "+hydra.launcher.ray.init.logging_level=40",
        ]
    return settings


def trials_left(sweep: Sweep) -> int:
    """Trials that will run: those whose row says they ended are skipped."""
    rows = results.read_rows(sweep.dir / "runs.csv")
    return sweep.trials - sum(row["status"] in results.TERMINAL for row in rows)


def run(sweep: Sweep, echo=print) -> Sweep:
    """Launch the trials through Hydra's multirun, printing a line per trial that ends; returns the counts."""
    import hydra

    if not sweep.resume:
        results.write_json(sweep.dir / "sweep.json", {"name": sweep.name, "overrides": sweep.overrides})
    logging.getLogger("hydra").setLevel(logging.WARNING)
    logging.getLogger("hydra_plugins").setLevel(logging.WARNING)
    entry = hydra.main(config_path=str(CONF_DIR), config_name="train", version_base="1.3")(trial)
    argv = ["adamrun-sweep", "--multirun", f"sweep={sweep.name}", *sweep.overrides, *hydra_settings(sweep)]
    watcher = Watcher(sweep, echo)
    saved_argv, sys.argv = sys.argv, argv
    os.environ[SWEEP_PID] = str(os.getpid())  # the launcher's workers inherit it
    settle(sweep.dir)  # a sweep killed earlier may have left rows that say running
    try:
        with signals.handled(), watcher:
            entry()
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the launcher stopped its workers; their rows say so
        settle(sweep.dir)
        raise
    except SystemExit as exit_info:  # Hydra's way of saying a job or an override failed: it printed why
        if exit_info.code not in (0, None):
            raise UsageError(
                f"the sweep stopped: Hydra exited with code {exit_info.code} (see above)"
            ) from None
    finally:
        sys.argv = saved_argv
        os.environ.pop(SWEEP_PID, None)
    sweep.statuses = watcher.statuses()
    refuse_common_failure(sweep, watcher.rows())
    return sweep


def refuse_common_failure(sweep: Sweep, rows: list[dict]) -> None:
    """Every trial failed with the same error: a mistake they share (a path, a size that no trial's data
    has), not one that depends on a trial's values; one line and exit 2 rather than a table of failures."""
    errors = {row.get("error", "") for row in rows}
    if rows and len(rows) == sweep.trials and all(r["status"] == "failed" for r in rows) and len(errors) == 1:
        raise UsageError(f"every trial of the sweep failed with: {errors.pop()}")


class Watcher:
    """Prints one line per trial that ends, and a summary line, from the sweep's runs.csv (launcher-agnostic:
    trials may run in this process, in worker processes or on other machines)."""

    POLL_S = 1.0  # seconds between looks at runs.csv

    def __init__(self, sweep: Sweep, echo):
        self.sweep, self.echo, self.seen = sweep, echo, {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.watch, daemon=True)

    def __enter__(self):
        self.seen = {r["run_id"]: r["status"] for r in self.rows() if r["status"] != "running"}
        if self.seen:
            self.echo(f"resuming {self.sweep.dir}: {self.summary(self.rows())}")
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        self.report(self.rows())

    def rows(self) -> list[dict]:
        try:
            return results.read_rows(self.sweep.dir / "runs.csv")
        except UsageError:  # being replaced right now: look again next time
            return []

    def watch(self) -> None:
        while not self.stop.wait(self.POLL_S):
            self.report(self.rows())

    def report(self, rows: list[dict]) -> None:
        ended = [r for r in rows if r["status"] != "running" and self.seen.get(r["run_id"]) != r["status"]]
        for row in ended:
            self.seen[row["run_id"]] = row["status"]
            self.echo(trial_line(row, len(self.seen), self.sweep.trials))
        if ended:
            self.echo(self.summary(rows))

    def statuses(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for status in self.seen.values():
            counts[status] = counts.get(status, 0) + 1
        return counts

    def summary(self, rows: list[dict]) -> str:
        counts = self.statuses()
        left = self.sweep.trials - sum(n for s, n in counts.items() if s in results.TERMINAL or s == "failed")
        parts = [
            f"{status} {counts.get(status, 0)}" for status in ("finished", "failed", "diverged", "pruned")
        ]
        return " · ".join([*parts, f"left {max(left, 0)}", best_so_far(rows)])


def trial_line(row: dict, done: int, total: int) -> str:
    metric = row.get("metric") or "metric"
    score = row.get("val_metric") or row.get("test_metric")
    which = "val" if row.get("val_metric") else "test"
    shown = f"{which}_{metric} {float(score):.4g}" if score not in ("", None) else row.get("error", "")
    return f"[{done}/{total}] {row['status']:<11} {row['run_id']}  {shown}  {row.get('wall_s') or '-'} s"


def best_so_far(rows: list[dict]) -> str:
    """The best finished trial on validation (test only when there is no validation split)."""
    scored = [r for r in rows if r["status"] == "finished" and (r.get("val_metric") or r.get("test_metric"))]
    if not scored:
        return "best: none yet"
    which = "val_metric" if all(r.get("val_metric") for r in scored) else "test_metric"
    sign = -1 if scored[0].get("goal") == "min" else 1
    best = max(scored, key=lambda r: sign * float(r[which]))
    return f"best {which.replace('_metric', '')}_{best['metric']} {float(best[which]):.4g} ({best['run_id']})"
