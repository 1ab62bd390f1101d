"""What a study of `adamrun reproduce` runs with: the shared config schemas (arms, bases, seeds), the Context
a kind's run gets, its sweeps, the choice of a setting on validation, and the rows of its CSVs.

Each set of trials is a sweep of runner.sweep, run in this process through Hydra's launcher (joblib, 2 jobs x
1 thread by default), in its own folder under work_dir named by a digest of its trials' overrides: a study
killed at any point resumes where it was, and two studies that need the same trials (the AdamW grid of
decoupling, adamw_vs_adam and amsgrad) run them once.

A comparison selects, then confirms: each arm's lr x wd grid runs one seed (seed 0) and is read on the
validation split only; the setting with the best validation metric then runs with fresh seeds, each of which
reads the test set once, at its end.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from omegaconf import MISSING, DictConfig, OmegaConf

from runner import results
from runner.config import check
from runner.errors import UsageError
from runner.sweep import key_of

BASE_SWEEP = "lr_wd_grid"  # conf/sweep/ file every sweep starts from: each of its keys is set here explicitly
RUNTIME = ("hydra", "trainer.threads", "trainer.progress", "trainer.log_every")  # not part of a sweep's name


# ------------------------------------------------------------------------------------------------ schemas
@dataclass
class Arm:
    """An optimizer setting: fixed overrides, and its lr and weight decay (one value each, or a grid)."""

    label: str = MISSING  # its name in tables and plots
    base: str = MISSING  # which trial base it runs on (shared.bases: cnn, lm)
    overrides: list[str] = MISSING  # what makes it (optimizer=..., optimizer.decay_mode=..., schedule=...)
    lr: list[float] = MISSING  # peak lr per step: one value, or the grid searched on validation
    weight_decay: list[float] = MISSING  # in the arm's convention (wd_name): one value, or the grid
    wd_name: str = MISSING  # what weight_decay means, for tables and plots

    def __post_init__(self) -> None:
        check(
            len(self.lr) > 0 and all(v > 0 for v in self.lr), f"arm {self.label}.lr", "must be > 0", self.lr
        )
        check(
            len(self.weight_decay) > 0 and all(v >= 0 for v in self.weight_decay),
            f"arm {self.label}.weight_decay",
            "must be >= 0",
            self.weight_decay,
        )

    @property
    def searched(self) -> bool:
        return len(self.lr) * len(self.weight_decay) > 1


@dataclass
class Base:
    """What every trial on this base gets: its recipe and budget, plus the selection and confirmation extras."""

    trials: list[str] = MISSING
    select: list[str] = MISSING  # selection (grid) trials only
    confirm: list[str] = MISSING  # confirmation (seed) trials only


@dataclass
class Sequencing:
    """How a comparison adds seeds: looks after `stages` seeds per arm, stopping when decided, futile or at the
    cap, each look's CI level from Lan-DeMets O'Brien-Fleming-like spending of `alpha` (studies/sequential.py)."""

    stages: list[int] = MISSING  # seeds per arm at each look, increasing; the last is the cap
    alpha: float = MISSING  # two-sided false-decision rate of each comparison over all its looks
    primary: str = MISSING  # paired | welch: the interval that decides (the other is shown beside it)
    futility: float = MISSING  # conditional power of support below which a look stops as futile
    first_seed: int = MISSING  # confirmation seeds are first_seed, first_seed + 1, ...: never a grid's seed

    def __post_init__(self) -> None:
        check(
            len(self.stages) > 0
            and self.stages[0] >= 3
            and all(b > a for a, b in zip(self.stages, self.stages[1:], strict=False)),
            "sequential.stages",
            "must increase from at least 3 seeds per arm",
            self.stages,
        )
        check(0 < self.alpha < 1, "sequential.alpha", "must be in (0, 1)", self.alpha)
        check(
            self.primary in ("paired", "welch"), "sequential.primary", "must be paired or welch", self.primary
        )
        check(0 <= self.futility < 1, "sequential.futility", "must be in [0, 1)", self.futility)


@dataclass
class Shared:
    bases: dict[str, Base] = MISSING
    grid_seeds: list[int] = (
        MISSING  # every grid cell runs each of these (replicates); selection reads their mean
    )
    sequential: Sequencing = MISSING
    arms: dict[str, Arm] = MISSING

    def __post_init__(self) -> None:
        check(len(set(self.grid_seeds)) >= 1, "shared.grid_seeds", "must name a seed", self.grid_seeds)
        check(
            self.sequential.first_seed > max(self.grid_seeds),
            "shared.sequential.first_seed",
            f"must be above every grid seed ({max(self.grid_seeds)}): confirmation seeds are fresh",
            self.sequential.first_seed,
        )


@dataclass
class ScaleBase:
    """What a study's block per scale holds, whatever its kind; each kind's schema adds its own keys."""

    minutes: float = MISSING  # expected: offline on 2 idle cores; full on one GPU
    stages: list[int] | None = None  # seeds per arm at each look; null: shared.sequential.stages
    first_seed: int | None = (
        None  # confirmation seeds from here; null: shared.sequential.first_seed (a re-run on
    )
    # other seeds is this one override: study.first_seed=201)
    grid_seeds: list[int] | None = None  # the grids' replicate seeds; null: shared.grid_seeds (a re-run on
    # other grids: study.grid_seeds=[3,4])

    def __post_init__(self) -> None:
        if self.stages is not None:
            check(
                len(self.stages) > 0 and self.stages[0] >= 3 and self.stages == sorted(set(self.stages)),
                "study.stages",
                "must increase from at least 3 seeds per arm",
                self.stages,
            )
        if self.grid_seeds is not None:
            check(len(set(self.grid_seeds)) >= 1, "study.grid_seeds", "must name a seed", self.grid_seeds)


# ------------------------------------------------------------------------------------------------ plan
@dataclass
class Study:
    name: str
    cfg: DictConfig  # StudyConfig without scales
    scale: DictConfig  # the chosen scale's block, typed
    replica_of: str = ""  # a replication on a disjoint seed set: the study it repeats


@dataclass
class Plan:
    settings: DictConfig  # conf/reproduce.yaml, typed
    scale: str
    shared: Shared
    studies: list[Study]
    extra: list[str]  # the command line's overrides for every trial
    config_overrides: list[str]  # the command line's study.* and shared.* overrides
    out_dir: Path
    work_dir: Path


def merged(overrides: list[str]) -> list[str]:
    """One override per key, the later one winning (a user's data=cifar10 replaces the study's data)."""
    by_key: dict[str, str] = {}
    for override in overrides:
        by_key.pop(key_of(override), None)
        by_key[key_of(override)] = override
    return list(by_key.values())


def first_seed_of(study: Study, shared: Shared) -> int:
    """The study's first confirmation seed: its own, or the shared one."""
    own = study.scale.first_seed
    return shared.sequential.first_seed if own is None else own


def grid_seeds_of(study: Study, shared: Shared) -> list[int]:
    """The seeds every grid cell of the study runs: its own, or the shared ones."""
    return list(study.scale.grid_seeds or shared.grid_seeds)


# ------------------------------------------------------------------------------------------------ sweeps
@dataclass
class Context:
    """What a study's run needs: the plan, its own config, where to echo, and the sweeps it used."""

    plan: Plan
    study: Study
    echo: Callable[[str], None]
    sweeps: list[str] = field(default_factory=list)
    trained: bool = False  # did any trial run in this segment (a study found done adds no time)
    tick: Callable[[], None] = lambda: None  # adds the time since the last tick to the study's timing file

    @property
    def shared(self) -> Shared:
        return self.plan.shared

    @property
    def stages(self) -> list[int]:
        """Seeds per arm at each look: the study's own, or the shared ones."""
        return list(self.study.scale.stages or self.plan.shared.sequential.stages)

    @property
    def first_seed(self) -> int:
        return first_seed_of(self.study, self.plan.shared)

    @property
    def grid_seeds(self) -> list[int]:
        return grid_seeds_of(self.study, self.plan.shared)

    @property
    def sequencing(self) -> dict:
        """The shared sequential design with this study's first seed: what its settings record."""
        shared = OmegaConf.to_container(OmegaConf.structured(self.plan.shared.sequential))
        return shared | {"first_seed": self.first_seed}

    @property
    def seeds(self) -> list[int]:
        """Every confirmation seed up to the cap, in the order the looks add them."""
        return list(range(self.first_seed, self.first_seed + self.stages[-1]))

    def stage_seeds(self, k: int) -> list[int]:
        """The seeds look k (0-based) adds to the ones before it."""
        return self.seeds[(self.stages[k - 1] if k else 0) : self.stages[k]]

    def arm(self, name: str) -> Arm:
        return self.plan.shared.arms[name]

    def base(self, arm: Arm) -> Base:
        return self.plan.shared.bases[arm.base]


def digest(overrides: list[str]) -> str:
    identity = sorted(o for o in overrides if not key_of(o).startswith(RUNTIME))
    return hashlib.sha1("\n".join(identity).encode()).hexdigest()[:10]


def number_text(value: float) -> str:
    return f"{value:g}"


def axis(key: str, values: list) -> str:
    return f"{key}={','.join(number_text(v) if isinstance(v, float) else str(v) for v in values)}"


def run_sweep(ctx: Context, label: str, overrides: list[str]) -> Path:
    """Run (or resume, or find done) the sweep of these trials; returns its folder."""
    from runner import sweep as sweeps

    arguments = merged([*overrides, *ctx.plan.extra])
    folder = ctx.plan.work_dir / f"{label}-{digest(arguments)}"
    if folder.name not in ctx.sweeps:
        ctx.sweeps.append(folder.name)
    resume = (folder / "sweep.json").exists()
    planned = sweeps.plan(
        [f"sweep={BASE_SWEEP}", *arguments, f"sweep_dir={folder}", *(["resume=true"] if resume else [])]
    )
    done = ended(folder)
    if done >= planned.trials:
        ctx.echo(f"{ctx.study.name}: {label}: {done} trials done in {folder.name}")
        return folder
    ctx.echo(
        f"{ctx.study.name}: {label}: {planned.trials - done} of {planned.trials} trials to run in {folder}"
    )
    ctx.trained = True
    try:
        sweeps.run(planned, echo=ctx.echo)
    finally:
        ctx.tick()
    return folder


def ended(folder: Path) -> int:
    return sum(r["status"] in results.TERMINAL for r in results.read_rows(folder / "runs.csv"))


def arm_overrides(ctx: Context, arm: Arm, role: str) -> list[str]:
    base = ctx.base(arm)
    return [*base.trials, *(base.select if role == "select" else base.confirm), *arm.overrides]


def grid_args(ctx: Context, name: str) -> list[str]:
    """The arm's lr x wd grid, each cell with every grid seed, read on validation only."""
    arm = ctx.arm(name)
    return [
        *arm_overrides(ctx, arm, "select"),
        axis("optimizer.lr", arm.lr),
        axis("optimizer.weight_decay", arm.weight_decay),
        axis("seed", ctx.grid_seeds),
    ]


def grid_sweep(ctx: Context, name: str) -> Path:
    return run_sweep(ctx, f"grid-{name}", grid_args(ctx, name))


@dataclass
class Choice:
    lr: str  # as written in the grid's runs.csv (the override's value)
    weight_decay: str
    cells: int  # settings searched (1: a fixed setting)


def choose(ctx: Context, name: str) -> tuple[Choice, Path | None]:
    """The arm's setting and its grid's folder: the grid cell with the best mean validation metric over the
    grid seeds (ties: the smallest lr, then the smallest wd), or the arm's one setting when it has no grid."""
    arm = ctx.arm(name)
    if not arm.searched:
        return Choice(number_text(arm.lr[0]), number_text(arm.weight_decay[0]), 1), None
    folder = grid_sweep(ctx, name)
    best = best_row(folder, ("optimizer.lr", "optimizer.weight_decay"))
    return Choice(
        best["optimizer.lr"], best["optimizer.weight_decay"], len(arm.lr) * len(arm.weight_decay)
    ), folder


def best_row(folder: Path, keys: tuple[str, ...]) -> dict:
    """The setting (values of `keys`) with the best validation metric (never the test one), averaged over its
    seeds; a setting with a seed that did not finish (diverged) is not a candidate. Ties go to the smallest."""
    cells: dict[tuple, list[dict]] = {}
    for r in results.read_rows(folder / "runs.csv"):
        cells.setdefault(tuple(r[k] for k in keys), []).append(r)
    usable = {
        cell: rows
        for cell, rows in cells.items()
        if all(r["status"] == "finished" and r.get("val_metric") for r in rows)
    }
    if not usable:
        raise UsageError(
            f"no setting whose every seed finished with a validation metric in {folder}; see its runs.csv"
        )
    sign = -1 if next(iter(usable.values()))[0].get("goal") == "min" else 1
    ordered = sorted(usable, key=lambda cell: tuple(float(v) for v in cell))
    best = max(
        ordered, key=lambda cell: sign * sum(float(r["val_metric"]) for r in usable[cell]) / len(usable[cell])
    )
    return dict(zip(keys, best, strict=True))


def confirm_args(ctx: Context, name: str, choice: Choice, seeds: list[int]) -> list[str]:
    """Fresh seeds at the chosen setting: each run reads the test set once, at its end."""
    arm = ctx.arm(name)
    return [
        *arm_overrides(ctx, arm, "confirm"),
        f"optimizer.lr={choice.lr}",
        f"optimizer.weight_decay={choice.weight_decay}",
        axis("seed", seeds),
    ]


def confirm_sweep(ctx: Context, name: str, choice: Choice, k: int) -> Path:
    """Look k's new seeds at the chosen setting (a sweep per look: studies that share an arm share its looks)."""
    return run_sweep(ctx, f"seeds-{name}-look{k + 1}", confirm_args(ctx, name, choice, ctx.stage_seeds(k)))


def arm_info(arm: Arm) -> dict:
    """The arm as a study's settings record it: what its analysis and the report read back."""
    return {
        "label": arm.label,
        "wd_name": arm.wd_name,
        "overrides": list(arm.overrides),
        "base": arm.base,
        "lr": list(arm.lr),
        "weight_decay": list(arm.weight_decay),
    }


# ------------------------------------------------------------------------------------------------ collect
RUN_COLUMNS = [
    "study",
    "arm",
    "role",
    "variant",
    "optimizer",
    "schedule",
    "lr",
    "weight_decay",
    "epochs",
    "seed",
    "status",
    "metric",
    "goal",
    "val_metric",
    "test_metric",
    "epochs_to_target",
    "time_to_target_s",
    "weight_norm",
    "averaged",
    "wall_s",
    "sweep",
    "run_id",
]
CURVE_COLUMNS = ["study", "arm", "variant", "seed", "epoch", "val_metric", "train_loss"]


def run_rows(folder: Path, study: str, arm: str, role: str, variant_key: str | None = None) -> list[dict]:
    """The sweep's runs as rows of <study>_runs.csv; `variant_key` names the override that varies inside it."""
    rows = []
    for r in results.read_rows(folder / "runs.csv"):
        row = {c: r.get(c, "") for c in RUN_COLUMNS}
        row |= {
            "study": study,
            "arm": arm,
            "role": role,
            "sweep": folder.name,
            "variant": r.get(variant_key, "") if variant_key else "",
        }
        if role == "select":  # selection reads validation only: its logged test figure is not the study's
            row["test_metric"] = ""
        rows.append(row)
    return rows


def curve_rows(folder: Path, study: str, arm: str, variant_key: str | None = None) -> list[dict]:
    """Every evaluation of the sweep's finished runs: the learning curves, from their metrics.jsonl."""
    from runner.report import read_metrics

    rows = []
    for r in results.read_rows(folder / "runs.csv"):
        run_dir = Path(r["run_dir"])
        if r["status"] != "finished" or not (run_dir / "metrics.jsonl").is_file():
            continue
        key = f"val_{r['metric']}"
        for m in read_metrics(run_dir):
            if key in m:
                rows.append(
                    {
                        "study": study,
                        "arm": arm,
                        "variant": r.get(variant_key, "") if variant_key else "",
                        "seed": r["seed"],
                        "epoch": m["epoch"],
                        "val_metric": m[key],
                        "train_loss": m.get("train_loss", ""),
                    }
                )
    return rows


RUN_NUMBERS = ("lr", "weight_decay", "epochs", "val_metric", "test_metric", "epochs_to_target", "time_to_target_s",
               "weight_norm", "averaged", "wall_s")  # the numbers of <study>_runs.csv  # fmt: skip


def frame(rows: list[dict], numbers: tuple[str, ...] = RUN_NUMBERS) -> pd.DataFrame:
    """Rows as the report reads them back from the CSV (numbers parsed, the rest text): what a study judges
    between its looks is what its report re-derives."""
    table = pd.DataFrame(rows, columns=RUN_COLUMNS if numbers is RUN_NUMBERS else None).astype(str)
    for column in numbers:
        table[column] = pd.to_numeric(table[column], errors="coerce")
    return table


def write_table(path: Path, rows: list[dict], columns: list[str]) -> None:
    frame = pd.DataFrame(rows, columns=columns)
    sort = [
        c for c in ("arm", "role", "variant", "lr", "weight_decay", "epochs", "seed", "epoch") if c in columns
    ]
    frame = frame.sort_values(sort, kind="stable", key=sort_key) if not frame.empty else frame
    with results.replaced_atomically(path) as tmp:
        frame.to_csv(tmp, index=False)


def sort_key(column: pd.Series) -> pd.Series:
    numbers = pd.to_numeric(column, errors="coerce")
    return numbers if numbers.notna().all() else column.astype(str)


def write_settings(path: Path, settings: dict) -> None:
    rows = [{"key": k, "value": json.dumps(v, sort_keys=True)} for k, v in settings.items()]
    with results.replaced_atomically(path) as tmp:
        pd.DataFrame(rows, columns=["key", "value"]).to_csv(tmp, index=False)
