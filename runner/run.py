"""A run: `train` wraps the loop's `fit` in a run directory (config.yaml, run.json, metrics.jsonl,
checkpoint.pt) and a row in results_dir/runs.csv, refusing to reuse a folder that holds another run, handling
SIGTERM/SIGHUP as Ctrl-C, and resuming only under the config the run was started with.
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Callable
from pathlib import Path

import torch
import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from runner import checkpoint, results, signals
from runner.config import parse_target, recipe_module, settled, typed
from runner.device import resolve_device
from runner.errors import UsageError
from runner.loop import Outcome, fit
from runner.recipe import Task

RUNTIME_KEYS = ("resume", "run_dir", "trainer.progress", "trainer.threads", "trainer.log_every")  # no effect
# on the numbers: a resume may set them anew


def train(
    cfg: DictConfig, should_stop: Callable[[dict], bool] | None = None, labels: dict | None = None
) -> dict:
    """One run of cfg.recipe: builds the task, fits it, and records the run's row (run.json, runs.csv).

    A new run refuses a run_dir that holds anything; resume=true continues the run in run_dir under the
    config it saved (re-validated), refuses overrides that would change it, and leaves a run that has ended
    (finished, diverged, pruned) untouched. Nothing is written before the recipe has loaded its data, so a bad
    input leaves no row and no folder. `labels` are extra columns of the row (a sweep trial's overrides).
    """
    started = time.perf_counter()
    cfg = resumed_config(cfg) if cfg.resume else with_absolute_paths(cfg)
    run_dir, table = Path(cfg.run_dir), Path(cfg.results_dir) / "runs.csv"
    record = results.read_run(run_dir) if cfg.resume else {}
    if record.get("status") in results.TERMINAL:  # nothing left to do: the row stays as it is
        return {k: v for k, v in record.items() if k != "segments"}
    if not cfg.resume:
        results.check_new_run_dir(run_dir)
    if cfg.trainer.threads is not None:
        torch.set_num_threads(cfg.trainer.threads)
    saved = None
    if cfg.resume:
        results.remove_orphaned_temporaries(run_dir)  # a run killed mid-write (SIGKILL) left one behind
        saved = checkpoint.load(run_dir)  # a corrupt one stops here, changing nothing
    task = recipe_module(cfg.recipe.name).build(cfg, resolve_device(cfg.trainer.device))
    cfg = settled(cfg, task.settled)  # what the recipe measured on this machine: config.yaml records it
    check_target(cfg, task)
    prior_wall_s, segments = float(record.get("wall_s") or 0.0), record.get("segments", 0) + 1

    def recorded(status: str, summary: dict | None = None, wall_s: float | None = None) -> dict:
        """The row, in the run's own run.json and in results_dir's runs.csv."""
        wall_s = wall_s or prior_wall_s + time.perf_counter() - started
        row = results.run_row(cfg, run_dir, status, summary or {}, wall_s, task.metric) | (labels or {})
        with signals.deferred():
            results.write_run(run_dir, row | {"segments": segments})
            results.upsert_row(table, row)
        return row

    outcome, fault = Outcome("failed"), None
    with signals.handled():
        try:
            with signals.deferred():
                run_dir.mkdir(parents=True, exist_ok=True)
                if not cfg.resume:
                    results.write_config(run_dir, cfg)
                recorded("running")
            outcome = fit(
                task, cfg, run_dir, should_stop, prior_wall_s + time.perf_counter() - started, saved
            )
        except KeyboardInterrupt:  # before fit's own handling began
            outcome = Outcome("interrupted")
        except OSError as err:  # a full disk, a folder gone read-only: the last checkpoint is intact
            fault = err
        finally:  # the row says failed, not running, wherever it can still be written
            with contextlib.suppress(OSError) if fault else contextlib.nullcontext():
                row = recorded(outcome.status, outcome.summary, outcome.wall_s)
    if fault is not None:
        raise fault  # the first cause, for the one line the CLI prints
    return row


def with_absolute_paths(cfg: DictConfig) -> DictConfig:
    """results_dir and run_dir as absolute paths, so the saved config finds the same runs.csv from any folder."""
    cfg = copy.deepcopy(cfg)
    cfg.results_dir = str(Path(cfg.results_dir).expanduser().resolve())
    run_dir = Path(cfg.run_dir).expanduser() if cfg.run_dir else results.new_run_dir(cfg)
    cfg.run_dir = str(run_dir.resolve())
    return cfg


def check_target(cfg: DictConfig, task: Task) -> None:
    if cfg.trainer.target is None:
        return
    key = parse_target(cfg.trainer.target).key
    logged = [f"{split}_{name}" for split in task.splits for name in ("loss", task.metric.name)]
    if key not in logged:
        raise UsageError(
            f"trainer.target names {key}, which this run does not log (it logs {', '.join(logged)}"
            f"{'; set data.val_size to get a validation split' if 'val' not in task.splits else ''})"
        )


def resumed_config(cfg: DictConfig) -> DictConfig:
    """resume=true continues the run in run_dir under the config it was started with (saved in the run),
    re-validated as a new config is; an override that would change it is refused, not silently ignored."""
    if cfg.run_dir is None:
        raise UsageError("resume=true needs run_dir=<the folder of the run to continue>")
    run_dir = Path(cfg.run_dir).expanduser()
    path = run_dir / "config.yaml"
    if not path.is_file():
        what = "does not exist" if not run_dir.exists() else "holds no run (no config.yaml)"
        raise UsageError(f"resume=true needs run_dir=<a run's folder>; {run_dir} {what}")
    try:
        saved = typed(OmegaConf.load(path))
    except (OmegaConfBaseException, yaml.YAMLError, ValueError, UnicodeDecodeError) as err:
        raise UsageError(
            f"{path} is not a readable config ({type(err).__name__}); the run cannot resume"
        ) from err
    except UsageError as err:
        raise UsageError(f"{path}: {err}") from err
    for key in overridden(cfg):
        if key in RUNTIME_KEYS:  # given again on the resume's command line: they may change
            OmegaConf.update(saved, key, OmegaConf.select(cfg, key))
        else:
            refuse_change(cfg, saved, key, run_dir)
    saved.resume, saved.run_dir = True, str(run_dir.resolve())
    return saved


def overridden(cfg: DictConfig) -> list[str]:
    """The keys (or groups) the command line set."""
    return [o.key_or_group for o in OverridesParser.create().parse_overrides(list(cfg.overrides))]


def refuse_change(cfg: DictConfig, saved: DictConfig, key: str, run_dir: Path) -> None:
    new, old = OmegaConf.select(cfg, key), OmegaConf.select(saved, key)
    if key in saved.measured and new in (None, "auto"):  # left open again: the run keeps what it measured
        return
    if new != old:
        was = (saved.choices or {}).get(key, "another option") if isinstance(old, DictConfig) else repr(old)
        raise UsageError(
            f"resume=true continues {run_dir} under its saved config, where {key} is {was}; "
            "start a new run to change it"
        )
