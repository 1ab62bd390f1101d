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
from omegaconf import MISSING, DictConfig

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
class Shared:
    bases: dict[str, Base] = MISSING
    seeds: list[int] = MISSING  # confirmation seeds (the grids run seed 0)
    arms: dict[str, Arm] = MISSING

    def __post_init__(self) -> None:
        check(len(set(self.seeds)) >= 3, "shared.seeds", "must name at least 3 distinct seeds", self.seeds)
        check(
            0 not in self.seeds, "shared.seeds", "must not hold 0, the seed the grids select with", self.seeds
        )


@dataclass
class ScaleBase:
    """What a study's block per scale holds, whatever its kind; each kind's schema adds its own keys."""

    minutes: float = MISSING  # expected: offline on 2 idle cores; full on one GPU
    seeds: list[int] | None = None  # confirmation seeds; null: shared.seeds

    def __post_init__(self) -> None:
        if self.seeds is not None:
            check(
                len(set(self.seeds)) >= 3 and 0 not in self.seeds,
                "study.seeds",
                "must name at least 3 distinct seeds, none of them 0",
                self.seeds,
            )


# ------------------------------------------------------------------------------------------------ plan
@dataclass
class Study:
    name: str
    cfg: DictConfig  # StudyConfig without scales
    scale: DictConfig  # the chosen scale's block, typed


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


# ------------------------------------------------------------------------------------------------ sweeps
@dataclass
class Context:
    """What a study's run needs: the plan, its own config, where to echo, and the sweeps it used."""

    plan: Plan
    study: Study
    echo: Callable[[str], None]
    sweeps: list[str] = field(default_factory=list)
    trained: bool = False  # did any trial run in this segment (a study found done adds no time)

    @property
    def shared(self) -> Shared:
        return self.plan.shared

    @property
    def seeds(self) -> list[int]:
        """The confirmation seeds: the study's own, or the shared ones."""
        return list(self.study.scale.seeds or self.plan.shared.seeds)

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
    sweeps.run(planned, echo=ctx.echo)
    return folder


def ended(folder: Path) -> int:
    return sum(r["status"] in results.TERMINAL for r in results.read_rows(folder / "runs.csv"))


def arm_overrides(ctx: Context, arm: Arm, role: str) -> list[str]:
    base = ctx.base(arm)
    return [*base.trials, *(base.select if role == "select" else base.confirm), *arm.overrides]


def grid_args(ctx: Context, name: str) -> list[str]:
    """The arm's lr x wd grid, seed 0, read on validation only."""
    arm = ctx.arm(name)
    return [
        *arm_overrides(ctx, arm, "select"),
        axis("optimizer.lr", arm.lr),
        axis("optimizer.weight_decay", arm.weight_decay),
    ]


def grid_sweep(ctx: Context, name: str) -> Path:
    return run_sweep(ctx, f"grid-{name}", grid_args(ctx, name))


@dataclass
class Choice:
    lr: str  # as written in the grid's runs.csv (the override's value)
    weight_decay: str
    cells: int  # settings searched (1: a fixed setting)


def choose(ctx: Context, name: str) -> tuple[Choice, Path | None]:
    """The arm's setting and its grid's folder: the best validation metric of the grid (ties: the smallest lr,
    then the smallest wd), or the arm's one setting when it has no grid."""
    arm = ctx.arm(name)
    if not arm.searched:
        return Choice(number_text(arm.lr[0]), number_text(arm.weight_decay[0]), 1), None
    folder = grid_sweep(ctx, name)
    best = best_row(folder, ("optimizer.lr", "optimizer.weight_decay"))
    cells = len(results.read_rows(folder / "runs.csv"))
    return Choice(best["optimizer.lr"], best["optimizer.weight_decay"], cells), folder


def best_row(folder: Path, keys: tuple[str, ...]) -> dict:
    """The finished trial with the best validation metric (never the test one); ties go to the smallest keys."""
    rows = [
        r for r in results.read_rows(folder / "runs.csv") if r["status"] == "finished" and r.get("val_metric")
    ]
    if not rows:
        raise UsageError(f"no finished trial with a validation metric in {folder}; see its runs.csv")
    sign = -1 if rows[0].get("goal") == "min" else 1
    ordered = sorted(rows, key=lambda r: tuple(float(r[k]) for k in keys))
    return max(ordered, key=lambda r: sign * float(r["val_metric"]))


def confirm_args(ctx: Context, name: str, choice: Choice) -> list[str]:
    """Fresh seeds at the chosen setting: each run reads the test set once, at its end."""
    arm = ctx.arm(name)
    return [
        *arm_overrides(ctx, arm, "confirm"),
        f"optimizer.lr={choice.lr}",
        f"optimizer.weight_decay={choice.weight_decay}",
        axis("seed", ctx.seeds),
    ]


def confirm_sweep(ctx: Context, name: str, choice: Choice) -> Path:
    return run_sweep(ctx, f"seeds-{name}", confirm_args(ctx, name, choice))


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
