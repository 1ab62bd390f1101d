"""make bench, section `sweeps`: what a sweep or a search costs besides the training of its trials, on this
machine (issue "Sweeps and searches", section Performance: ratios measured in one run). Every figure comes from
the real commands, run as a user runs them: `python -m runner.cli sweep|tune|train ...` subprocesses, timed
from outside, with each run's own training seconds read back from its metrics.jsonl.

1. Overhead per trial: `adamrun sweep sweep=lr_wd_grid` at two sizes, under each layout. A trial's training
   is the loop's train_s + eval_s over its evaluations; the sweep's overhead is its wall time x parallel trials
   less the trials' training, per trial, against a `reference_trial_s` (30 s) trial. Part of it is paid once
   per sweep (process start, imports, Hydra's start and its check of every trial's config, the launcher's
   workers, the report at the end), part once per trial (Hydra's job, data, model, checkpoints, the row), so
   the figure depends on the grid's size: `default_grid` is lr_wd_grid as it ships (32 trials, the sweep a user
   runs first, where the goal is read), with trials shortened to fit the bench (`default_trial`: the same
   epochs and evaluations on fewer images; the overhead is seconds outside training, whatever a trial's
   length); `grid` is a 4-trial grid of full-length trials (`trial`: about 25 s of training on one core), the
   smallest sweep worth running, where the per-sweep part weighs most. Each row also splits its overhead into
   what its runs spend outside their loop (row's wall_s - training) and the rest. One `adamrun train` of the
   same trial does the same for a single run, for context.
2. Throughput: both grids under each `layouts` entry (1 job x 2 threads on Hydra's basic launcher, 2 jobs x
   1 thread on joblib), in trials per hour: which one should conf/sweep/lr_wd_grid.yaml default to here?
3. Early stopping: the same search (conf/tune/<pruning.tune>) run twice through `adamrun tune`, with its pruner
   and with tune.pruner=none, both studies fed the same trials in the same order (drawn once from the search
   space with `pruning.seed` and enqueued in each study: the sampler never chooses). The two searches run at
   the same time, one thread each. Reported: epochs and training seconds spent by each, the saving
   (1 - pruned / unpruned), and each search's best validation result (equal when the unpruned search's best
   trial was not pruned: the pruned row says whether it was).

CSVs: sweep_overhead.csv, sweep_throughput.csv, pruning.csv under `out`, each with the environment columns.
"""

from __future__ import annotations

import json
import math
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import MISSING, DictConfig, OmegaConf

from bench.harness import REPO, adamrun, failure, section_config, timed
from runner import results
from runner.config import check
from runner.results import write_text
from runner.tune import Pruner

SWEEP = "lr_wd_grid"  # conf/sweep/: the built-in grid, its axes replaced by `grid`


# ------------------------------------------------------------------------------------------------ settings
class Launcher(StrEnum):
    basic = "basic"  # Hydra's own: one trial after the other, in the sweep's process
    joblib = "joblib"  # loky worker processes, `jobs` trials at a time


@dataclass
class Layout:
    """How a sweep runs its trials on this machine's cores."""

    launcher: Launcher = MISSING
    jobs: int = MISSING  # trials at a time
    threads: int = MISSING  # torch threads per trial

    def __post_init__(self) -> None:
        check(
            self.jobs > 0 and self.threads > 0,
            "layouts[].jobs/threads",
            "must be > 0",
            (self.jobs, self.threads),
        )
        check(
            self.launcher == Launcher.joblib or self.jobs == 1,
            "layouts[].jobs",
            "must be 1 on the basic launcher (it runs one trial at a time)",
            self.jobs,
        )

    @property
    def name(self) -> str:
        return f"{self.jobs} job{'s' * (self.jobs > 1)} x {self.threads} thread{'s' * (self.threads > 1)}"

    def overrides(self) -> list[str]:
        jobs = [f"hydra.launcher.n_jobs={self.jobs}"] if self.launcher == Launcher.joblib else []
        return [f"hydra/launcher={self.launcher}", *jobs, f"trainer.threads={self.threads}"]


@dataclass
class PruningSettings:
    tune: str = MISSING  # conf/tune/<name>: the search (space, budget, pruner settings, data, epochs)
    trials: int = MISSING  # trials of each search
    seed: int = MISSING  # of the parameter draws, the same trials for both searches
    pruner: Pruner = MISSING  # compared against tune.pruner=none
    threads: int = MISSING  # torch threads per search (both searches run at the same time)
    overrides: list[str] = MISSING  # for both searches

    def __post_init__(self) -> None:
        check(self.trials > 0, "pruning.trials", "must be > 0", self.trials)
        check(self.threads > 0, "pruning.threads", "must be > 0", self.threads)
        check(
            self.pruner != Pruner.none,
            "pruning.pruner",
            "must be a pruner, to compare with none",
            self.pruner,
        )


@dataclass
class SweepsBench:
    reference_trial_s: float = MISSING  # s: the trial length the overhead goal is stated for
    overhead_goal: float = MISSING  # overhead per trial below this fraction of reference_trial_s
    trial: list[str] = MISSING  # overrides of every trial of the small grid (and of the single adamrun train)
    grid: list[str] = MISSING  # the small grid's axes, replacing lr_wd_grid's
    default_trial: list[str] = MISSING  # overrides of every trial of the default-size grid
    default_grid: list[str] = MISSING  # its axes: empty for lr_wd_grid's own (tests shrink it)
    layouts: list[Layout] = MISSING  # each runs both grids; the first is the throughput baseline
    pruning: PruningSettings = MISSING
    work_dir: str | None = MISSING  # where the sweeps and searches run; null: a temporary folder, removed

    def __post_init__(self) -> None:
        check(self.reference_trial_s > 0, "reference_trial_s", "must be > 0", self.reference_trial_s)
        check(0 < self.overhead_goal < 1, "overhead_goal", "must be in (0, 1)", self.overhead_goal)
        check(len(self.layouts) > 0, "layouts", "must name at least one layout", self.layouts)


def settings() -> DictConfig:
    return section_config("sweeps", SweepsBench)


# ------------------------------------------------------------------------------------------------ trials
@dataclass(frozen=True)
class Trial:
    """One run of a sweep or a search, as its row and metrics.jsonl tell it."""

    run_id: str
    status: str
    wall_s: float  # the run's own wall time (train(): data, model, loop, checkpoints, row)
    training_s: float  # the loop's training and evaluation seconds
    epochs: float  # epochs trained (fewer when pruned)
    val: float | None  # the validation metric at its last evaluation


def training_seconds(history: list[dict]) -> float:
    """The loop's seconds: an epoch's training (its last row's train_s, counted from the epoch's start
    without evaluations) plus every evaluation's eval_s."""
    last = {math.ceil(row["epoch"] - 1e-9): row for row in history}  # 0.5 and 1 are epoch 1
    return sum(row["train_s"] for row in last.values()) + sum(row["eval_s"] for row in history)


def read_trials(folder: Path) -> list[Trial]:
    trials = []
    for row in results.read_rows(Path(folder) / "runs.csv"):
        metrics = Path(row["run_dir"]) / "metrics.jsonl"
        lines = metrics.read_text().splitlines() if metrics.exists() else []
        history = [json.loads(line) for line in lines]
        trials.append(
            Trial(
                run_id=row["run_id"],
                status=row["status"],
                wall_s=float(row["wall_s"] or 0),
                training_s=training_seconds(history),
                epochs=history[-1]["epoch"] if history else 0.0,
                val=float(row["val_metric"]) if row.get("val_metric") not in ("", None) else None,
            )
        )
    return trials


def overhead_per_trial(wall_s: float, training_s: list[float], parallel: int = 1) -> float:
    """Seconds per trial outside training: the sweep's wall time on `parallel` slots, less the training."""
    return (wall_s * parallel - sum(training_s)) / len(training_s)


def trials_per_hour(trials: int, wall_s: float) -> float:
    return 3600 * trials / wall_s


def saving(spent: float, baseline: float) -> float:
    """The fraction of the baseline's cost not spent."""
    return 1 - spent / baseline


# ------------------------------------------------------------------------------------------------ commands
def all_finished(trials: list[Trial], what: str) -> list[Trial]:
    """Timings of a grid mean something only when every trial ran to its end."""
    ended = [t for t in trials if t.status != "finished"]
    if ended or not trials:
        raise RuntimeError(
            f"bench sweeps: {what}: {len(ended)} trials did not finish ({ended or 'none ran'})"
        )
    return trials


def sweep_command(s: DictConfig, layout: Layout, folder: Path, size: str = "small") -> list[str]:
    """The small grid (`grid` of `trial`s) or the default-size one (`default_grid` of `default_trial`s) under
    one layout."""
    axes, trial = (s.grid, s.trial) if size == "small" else (s.default_grid, s.default_trial)
    return adamrun("sweep", f"sweep={SWEEP}", *axes, *trial, *layout.overrides(), f"sweep_dir={folder}")


def train_command(s: DictConfig, threads: int, folder: Path) -> list[str]:
    """One adamrun train of the grid's first trial (the sweep file's budget, then the same overrides)."""
    from runner.sweep import grid

    first = [f"{key}={values[0]}" for key, values in grid(SWEEP, list(s.grid)).items()]
    return adamrun(
        "train", f"sweep={SWEEP}", *first, *s.trial, f"trainer.threads={threads}", "trainer.progress=false",
        f"results_dir={folder}", f"run_dir={folder / 'run'}",
    )  # fmt: skip


# ------------------------------------------------------------------------------------------------ 1 and 2
def overhead_row(
    what: str, wall_s: float, trials: list[Trial], parallel: int, s: DictConfig, grid: str = ""
) -> dict:
    """`grid`: small or default (a sweep's), blank for a single run."""
    training = [t.training_s for t in trials]
    per_trial = overhead_per_trial(wall_s, training, parallel)
    in_runs = statistics.mean(t.wall_s - t.training_s for t in trials)
    return {
        "what": what,
        "grid": grid,
        "trials": len(trials),
        "parallel": parallel,
        "wall_s": round(wall_s, 2),
        "trial_training_s": round(statistics.mean(training), 2),  # mean over trials: train_s + eval_s
        "overhead_per_trial_s": round(per_trial, 3),  # at this many trials: the per-sweep part shared
        "in_run_s": round(in_runs, 3),  # per trial: data loading, model build, checkpoints, the row
        "outside_runs_s": round(per_trial - in_runs, 3),  # per trial: process, imports, Hydra, report
        "reference_trial_s": s.reference_trial_s,
        "overhead_vs_reference": round(per_trial / s.reference_trial_s, 4),
        "goal": s.overhead_goal,
        "goal_met": per_trial / s.reference_trial_s < s.overhead_goal,
    }


def throughput_rows(runs: list[tuple[Layout, float, list[Trial]]], grid: str) -> list[dict]:
    """Trials per hour of each layout on one grid; the first is the baseline of the ratios."""
    speeds = [trials_per_hour(len(trials), wall_s) for _, wall_s, trials in runs]
    return [
        {
            "grid": grid,
            "layout": layout.name,
            "launcher": str(layout.launcher),
            "jobs": layout.jobs,
            "threads_per_trial": layout.threads,
            "trials": len(trials),
            "wall_s": round(wall_s, 2),
            "trials_per_hour": round(speed, 1),
            "vs_baseline": round(speed / speeds[0], 3),
            "baseline": runs[0][0].name,
            "trial_training_s": round(statistics.mean(t.training_s for t in trials), 2),
            "fastest": speed == max(speeds),
        }
        for (layout, wall_s, trials), speed in zip(runs, speeds, strict=True)
    ]


def sweeps(s: DictConfig, work: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    layouts = [OmegaConf.to_object(layout) for layout in s.layouts]
    print(f"sweeps: one adamrun train ({layouts[0].threads} threads)", flush=True)
    single = work / "train"
    wall_s = timed(train_command(s, layouts[0].threads, single))
    overheads = [
        overhead_row("adamrun train (one run)", wall_s, all_finished(read_trials(single), "train"), 1, s)
    ]
    runs = {"small": [], "default": []}
    for layout in layouts:
        what = f"adamrun sweep, {layout.name} ({layout.launcher})"
        for size in ("small", "default"):
            folder = work / f"sweep-{layout.launcher}-{layout.jobs}x{layout.threads}-{size}"
            print(f"sweeps: {what}, {size} grid", flush=True)
            wall_s = timed(sweep_command(s, layout, folder, size))
            trials = all_finished(read_trials(folder), f"sweep {layout.name}, {size} grid")
            overheads.append(overhead_row(what, wall_s, trials, layout.jobs, s, grid=size))
            runs[size].append((layout, wall_s, trials))
    speeds = [row for size, timed_runs in runs.items() for row in throughput_rows(timed_runs, size)]
    return pd.DataFrame(overheads), pd.DataFrame(speeds)


# ------------------------------------------------------------------------------------------------ 3
def draw(space: DictConfig, n: int, seed: int) -> list[dict]:
    """n points of the search space, independent of any result: ranges uniform (log-uniform with log),
    rounded to 3 significant digits (readable folder names), choices uniform."""
    rng = np.random.default_rng(seed)
    points = []
    for _ in range(n):
        point = {}
        for key, param in space.items():
            if param.choices is not None:
                point[key] = list(param.choices)[rng.integers(len(param.choices))]
                continue
            low, high = (math.log(param.low), math.log(param.high)) if param.log else (param.low, param.high)
            value = rng.uniform(low, high)
            point[key] = min(
                max(float(f"{math.exp(value) if param.log else value:.3g}"), param.low), param.high
            )
        points.append(point)
    return points


def search_arguments(p: DictConfig, pruner: str, folder: Path) -> list[str]:
    return [
        f"tune={p.tune}", f"trials={p.trials}", f"tune.pruner={pruner}", f"trainer.threads={p.threads}",
        *p.overrides, f"sweep_dir={folder}",
    ]  # fmt: skip


def enqueue(arguments: list[str], points: list[dict]) -> DictConfig:
    """Create the search's study (as `adamrun tune` would) holding `points` as its next trials, in order."""
    from runner import tune

    search = tune.plan(arguments)
    study = tune.study(search)
    for point in points:
        study.enqueue_trial(point)
    return search.cfg


def best(trials: list[Trial], direction: str) -> Trial | None:
    scored = [t for t in trials if t.status == "finished" and t.val is not None]
    sign = 1 if direction == "maximize" else -1
    return max(scored, key=lambda t: sign * t.val, default=None)


def pruning_rows(searched: dict[str, tuple[float, list[Trial]]], baseline: str, direction: str) -> list[dict]:
    """One row per search; savings and the best trial against the `baseline` search (tune.pruner=none)."""
    base_trials = searched[baseline][1]
    base_epochs = sum(t.epochs for t in base_trials)
    base_s = sum(t.training_s for t in base_trials)
    base_best = best(base_trials, direction)
    rows = []
    for pruner, (wall_s, trials) in searched.items():
        found = best(trials, direction)
        status = {t.run_id: t.status for t in trials}
        epochs, seconds = sum(t.epochs for t in trials), sum(t.training_s for t in trials)
        rows.append(
            {
                "pruner": pruner,
                "trials": len(trials),
                "finished": sum(t.status == "finished" for t in trials),
                "pruned": sum(t.status == "pruned" for t in trials),
                "diverged": sum(t.status == "diverged" for t in trials),
                "epochs": round(epochs, 3),
                "training_s": round(seconds, 2),
                "wall_s": round(wall_s, 2),
                "epochs_saving": round(saving(epochs, base_epochs), 4),
                "seconds_saving": round(saving(seconds, base_s), 4),
                "best_val": found.val if found else None,
                "best_trial": found.run_id if found else "",
                "unpruned_best_trial": base_best.run_id if base_best else "",
                "unpruned_best_status_here": status.get(base_best.run_id, "") if base_best else "",
                "same_best": bool(found and base_best and found.run_id == base_best.run_id),
            }
        )
    return rows


def pruning(s: DictConfig, work: Path) -> pd.DataFrame:
    """Both searches over the same enqueued trials, side by side (one core each on this machine)."""
    from runner.tune import search_config

    p = s.pruning
    cfg = search_config([f"tune={p.tune}", *p.overrides])
    points = draw(cfg.tune.space, p.trials, p.seed)
    folders = {str(p.pruner): work / f"tune-{p.pruner}", "none": work / "tune-none"}
    for pruner, folder in folders.items():
        enqueue(search_arguments(p, pruner, folder), points)
    print(
        f"sweeps: adamrun tune tune={p.tune}, {p.trials} trials, pruner {p.pruner} and none side by side",
        flush=True,
    )
    running = {}
    for pruner, folder in folders.items():  # output to a file: a full pipe would stall a search
        command, log = adamrun("tune", *search_arguments(p, pruner, folder)), work / f"tune-{pruner}.log"
        with open(log, "w") as output:
            process = subprocess.Popen(command, cwd=REPO, stdout=output, stderr=subprocess.STDOUT)
        running[pruner] = (command, log, time.perf_counter(), process)
    searched = {}
    for pruner, (command, log, started, process) in running.items():
        process.wait()
        wall_s = time.perf_counter() - started
        if process.returncode != 0:
            raise RuntimeError(failure(command, process.returncode, log.read_text()))
        searched[pruner] = (wall_s, read_trials(folders[pruner]))
    return pd.DataFrame(pruning_rows(searched, "none", str(cfg.tune.direction)))


# ------------------------------------------------------------------------------------------------ section
def run(cfg: DictConfig, out: Path, env: dict, section: DictConfig | None = None) -> list[Path]:
    """The section: overhead and throughput of sweeps, then the pruner's saving; `section` replaces
    conf/bench_sweeps.yaml (tests). cfg (the bench_train config) is not read."""
    s = section if section is not None else settings()
    written = []
    with tempfile.TemporaryDirectory(prefix="bench-sweeps-") as tmp:
        work = Path(s.work_dir).expanduser().resolve() if s.work_dir else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        overhead, throughput = sweeps(s, work)
        searches = pruning(s, work)
    for name, table in (
        ("sweep_overhead", overhead),
        ("sweep_throughput", throughput),
        ("pruning", searches),
    ):
        table = table.assign(**env)
        write_text(Path(out) / f"{name}.csv", table.to_csv(index=False))
        print(table.to_string(index=False), flush=True)
        written.append(Path(out) / f"{name}.csv")
    print(verdict(throughput), flush=True)
    return written


def verdict(throughput: pd.DataFrame) -> str:
    """Which layout conf/sweep/lr_wd_grid.yaml should default to, on this machine: the fastest on each grid."""
    lines = []
    for grid, rows in throughput.groupby("grid", sort=False):
        fastest = rows.loc[rows["trials_per_hour"].idxmax()]
        others = rows.drop(index=fastest.name)
        margin = ", ".join(
            f"{fastest.trials_per_hour / r.trials_per_hour:.2f}x {r.layout}" for r in others.itertuples()
        )
        lines.append(
            f"sweep throughput, {grid} grid: fastest here is {fastest.layout} ({fastest.launcher}), "
            f"{margin or 'alone'}"
        )
    return "\n".join(lines)
