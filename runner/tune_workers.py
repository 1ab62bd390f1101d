"""`adamrun tune ... tune.workers=N`: N workers on one study, as N jobs of a Hydra launcher (joblib when the
command line names none; `hydra/launcher=submitit_slurm` or `ray` on a cluster). We write no launcher: a
multirun over `tune.worker=0..N-1` whose task function, `worker`, runs the search loop (runner/tune.py) on the
shared study. Each worker takes the next trial as soon as it is free, so no trial waits for another's end.

A worker that dies (SIGKILL, a scheduler's scancel, a lost node) leaves its trial RUNNING; the others queue it
again once its heartbeat (or, in a journal, its trial lock) says so. Some launchers end the whole multirun
when one job dies (joblib's loky kills its other workers, submitit stops waiting): the command then starts
the workers again (at most MAX_RETRIES launches in a row that finish no trial), so the search still ends with
`tune.trials`.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from runner import signals, skip_final_collections, storage, tune
from runner.config import CONF_DIR, SCHEMA_SUFFIX
from runner.errors import UsageError
from runner.sweep import SWEEP_PID, key_of, launcher_settings, leave_with_the_sweep, threads_per_trial

WORKER_DIR = ".workers"  # in the sweep folder: each worker's Hydra output folder (submitit's logs beside it)


def work(search: tune.Search, echo=print) -> str:
    """The search, in this process (tune.workers=1) or as tune.workers jobs of a launcher: why it ended."""
    return tune.run(search, echo) if search.cfg.tune.workers == 1 else launch(search, echo)


def worker(cfg: DictConfig) -> str:
    """Hydra's task function: one worker, the search loop on the shared study until it is done."""
    skip_final_collections()
    leave_with_the_sweep()
    hydra = HydraConfig.get()
    name = str(cfg.tune.name)
    given = [o for o in hydra.overrides.task if key_of(o) not in ("tune", "tune.worker")]
    overrides, runtime, _ = tune.split(given)
    if not any(key_of(o) == "trainer.threads" for o in overrides):  # N workers share the cores
        overrides.append(f"trainer.threads={threads_per_trial(hydra)}")
    settings = tune.search_config([f"tune={name}", *overrides, *runtime])
    search = tune.Search(name, Path(hydra.sweep.dir), overrides, settings, runtime)
    with signals.stops_as_job_errors():
        return tune.run(search, echo=lambda line: print(line, flush=True))


def hydra_settings(search: tune.Search) -> list[str]:
    """Where the workers' Hydra folders go, what Hydra must leave alone, and the launcher (joblib, one
    process per worker, when none is given)."""
    given = {key_of(o) for o in search.launch}
    launcher = [] if "hydra/launcher" in given else ["hydra/launcher=joblib"]
    if "hydra/launcher=joblib" in [*search.launch, *launcher] and "hydra.launcher.n_jobs" not in given:
        launcher.append(f"hydra.launcher.n_jobs={search.cfg.tune.workers}")
    return [
        *launcher,
        f"hydra.sweep.dir={search.dir}",
        f"hydra.sweep.subdir={WORKER_DIR}/${{hydra.job.num}}",
        "hydra/job_logging=none",
        "hydra/hydra_logging=none",
        "hydra.output_subdir=null",
        "hydra.job.chdir=False",
        *launcher_settings(search.launch),
    ]


def launch(search: tune.Search, echo=print) -> str:
    """Run tune.workers workers through Hydra's multirun until the search ends: why it ended."""
    import hydra

    logging.getLogger("hydra").setLevel(logging.WARNING)
    logging.getLogger("hydra_plugins").setLevel(logging.WARNING)
    workers = ",".join(str(i) for i in range(search.cfg.tune.workers))
    argv = ["adamrun-tune", "--multirun", f"tune={search.name}", *search.overrides, *search.runtime,
            *search.launch, f"tune.worker={workers}", *hydra_settings(search)]  # fmt: skip
    entry = hydra.main(config_path=str(CONF_DIR), config_name="train", version_base="1.3")(worker)
    found, before, idle = tune.study(search), None, 0
    while (reason := tune.stop_reason(found, search.cfg.tune)) is None:
        done = tune.finished(found.get_trials(deepcopy=False))
        idle = idle + 1 if done == before else 0
        if idle > storage.MAX_RETRIES:  # launch after launch ended with no trial finished: it will not change
            raise UsageError(f"the workers stopped {idle} times and finished no trial (see above): {done} of "
                             f"{search.cfg.tune.trials} trials are done; run the same command again to resume")  # fmt: skip
        if before is not None:
            echo(
                f"a worker stopped: starting the workers again ({done} of {search.cfg.tune.trials} trials done)"
            )
        before = done
        multirun(entry, argv)
    return reason


def multirun(entry, argv: list[str]) -> None:
    """One launch of the workers; a worker's death, which ends some launchers' multirun, is not an error here."""
    # the workers compose the search's config typed, tune.worker among its keys: the launcher sends them this
    ConfigStore.instance().store(name="train" + SCHEMA_SUFFIX, node=tune.TuneConfig)
    saved_argv, sys.argv = sys.argv, argv
    os.environ[SWEEP_PID] = str(os.getpid())  # the launcher's local workers leave with this process
    try:
        entry()
    except SystemExit as exit_info:  # Hydra's way of saying a job failed: it printed why
        if exit_info.code not in (0, None):
            logging.getLogger(__name__).debug("the workers' multirun exited with %s", exit_info.code)
    finally:
        sys.argv = saved_argv
        os.environ.pop(SWEEP_PID, None)
