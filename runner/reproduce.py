"""`adamrun reproduce`: the papers' claims as studies of normal runs, a verdict each, and one report.

A study is a config in conf/study/ (its claim, its source, and per scale its arms, seeds and rules); the
trials every study shares (data, subset sizes, widths, epochs; the lr x wd grid of each optimizer) live in
conf/reproduce.yaml. Each set of trials is a sweep of runner.sweep, run in this process through Hydra's
launcher (joblib, 2 jobs x 1 thread by default), in its own folder under work_dir named by a digest of its
trials' overrides: a study killed at any point resumes where it was, and two studies that need the same trials
(the AdamW grid of decoupling, adamw_vs_adam and amsgrad) run them once.

A comparison selects, then confirms: each arm's lr x wd grid runs one seed (seed 0) and is read on the
validation split only; the setting with the best validation metric then runs with fresh seeds, each of which
reads the test set once, at its end. A study writes <study>_runs.csv, <study>_curves.csv and
<study>_settings.csv into out_dir; runner/verdict.py's `write_report(out_dir)` then draws every PNG and writes
report.md from those CSVs alone, verdicts included, so the committed report is what the committed CSVs give.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from runner import results
from runner.config import CONF_DIR, check, group_options, one_line
from runner.errors import UsageError
from runner.sweep import key_of, value_of
from runner.verdict import MEASURES, write_report

OWN_KEYS = ("study", "scale", "out_dir", "work_dir")  # the command's own keys; study.* and shared.* too
BASE_SWEEP = "lr_wd_grid"  # conf/sweep/ file every sweep starts from: each of its keys is set here explicitly
RUNTIME = ("hydra", "trainer.threads", "trainer.progress", "trainer.log_every")  # not part of a sweep's name
KINDS = ("decoupling", "compare", "schedules", "warmup")  # the analyses a study can ask for
RULES = ("superiority", "no_gain", "equivalence")
TEST_METRICS = ("test_metric", "test_error", "epochs_to_target", "time_to_target_s")


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
class Untested:
    claim: str = MISSING
    source: str = MISSING
    why: str = MISSING


@dataclass
class ReproduceConfig:
    studies: list[str] = MISSING  # `adamrun reproduce` runs these, in this order
    scale: str = MISSING
    out_dir: str = MISSING
    work_dir: str = MISSING
    untested: list[Untested] = MISSING
    scales: dict[str, Shared] = MISSING


@dataclass
class Test:
    """One comparison of a study: contender - baseline on `metric`, judged by `rule`."""

    metric: str = MISSING  # test_metric | epochs_to_target | time_to_target_s
    better: str = MISSING  # higher | lower: which values of the metric are better
    rule: str = MISSING  # superiority (contender better) | no_gain (contender no better) | equivalence
    margin: float | None = None  # no_gain, equivalence: in the metric's units as shown (points, epochs)

    def __post_init__(self) -> None:
        check(
            self.metric in TEST_METRICS,
            "test.metric",
            f"must be one of {', '.join(TEST_METRICS)}",
            self.metric,
        )
        check(self.rule in RULES, "test.rule", f"must be one of {', '.join(RULES)}", self.rule)
        check(self.better in ("higher", "lower"), "test.better", "must be higher or lower", self.better)
        check(self.rule == "superiority" or (self.margin or 0) > 0, "test.margin", "must be > 0", self.margin)


@dataclass
class ScaleBase:
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


@dataclass
class DecouplingScale(ScaleBase):
    arms: list[str] = MISSING  # shared.arms, each with an lr x wd grid
    coupled: str = MISSING  # the L2 arm of the verdict
    decoupled: str = MISSING  # the decoupled arm (paper convention) of the verdict
    torch_view: bool = MISSING  # redraw the decoupled arm in torch's convention (wd = lambda / lr)
    torch_check: bool = MISSING  # run the decoupled arm's best cell once in torch's convention
    measure: str = MISSING  # what the verdict reads: edge (of the good region) | best (argmax wd)
    drop: float = MISSING  # accuracy points below a row's best where its good region ends
    margin: float = MISSING  # decades of wd per decade of lr

    def __post_init__(self) -> None:
        super().__post_init__()
        check(
            self.measure in MEASURES, "study.measure", f"must be one of {', '.join(MEASURES)}", self.measure
        )
        check(self.drop > 0, "study.drop", "must be > 0", self.drop)
        check(self.margin > 0, "study.margin", "must be > 0", self.margin)


@dataclass
class CompareScale(ScaleBase):
    baseline: str = MISSING  # shared.arms
    contender: str = MISSING
    tests: list[Test] = MISSING
    relative: bool = MISSING  # also show the relative difference of the test error (L&H's "15% lower")

    def __post_init__(self) -> None:
        super().__post_init__()
        check(
            self.baseline != self.contender,
            "study.contender",
            "must differ from study.baseline",
            self.contender,
        )


@dataclass
class SchedulesScale(ScaleBase):
    arm: str = MISSING  # shared.arms: the optimizer of every run
    weight_decay: float = MISSING  # fixed for every run, in the arm's convention
    trials: list[str] = MISSING  # extra overrides of every run of the study
    schedules: list[str] = MISSING  # conf/schedule options; the first is the claim's (one_cycle)
    lr: list[float] = MISSING  # peak lr grid, searched per schedule on validation at select_budget
    select_budget: int = MISSING  # epochs of the selection runs
    budgets: list[int] = MISSING  # epochs of the confirmation runs (one run per budget and seed)
    short: int = MISSING  # the claim's schedule at `short` epochs ...
    long: int = MISSING  # ... against every other at `long` epochs
    margin: float = MISSING  # accuracy points

    def __post_init__(self) -> None:
        super().__post_init__()
        check(
            self.short in self.budgets and self.long in self.budgets,
            "study.short/long",
            "must both be in study.budgets",
            (self.short, self.long),
        )
        check(self.short < self.long, "study.short", "must be < study.long", (self.short, self.long))
        check(self.margin > 0, "study.margin", "must be > 0", self.margin)


@dataclass
class WarmupScale(ScaleBase):
    arm: str = MISSING  # shared.arms: the optimizer of every run
    weight_decay: float = MISSING  # fixed for every run, in the arm's convention
    trials: list[str] = MISSING  # extra overrides of every run (schedule, batch size, epochs)
    warmups: list[str] = MISSING  # schedule.warmup values; the first is the baseline (none)
    lr: list[float] = MISSING  # peak lrs, each run with every warmup and seed
    chance: float = MISSING  # accuracy counted for a diverged run (a useless model: 1 / classes)
    unstable_below: float = MISSING  # a run is unstable when it diverged or ends below this val accuracy


SCALES = {
    "decoupling": DecouplingScale,
    "compare": CompareScale,
    "schedules": SchedulesScale,
    "warmup": WarmupScale,
}


@dataclass
class StudyConfig:
    name: str = MISSING
    kind: str = MISSING  # which analysis: decoupling | compare | schedules | warmup
    claim: str = MISSING
    source: str = MISSING  # paper and figure
    paper: str = MISSING  # what the source reports
    untested: str = MISSING  # the part of the claim this study cannot test ("" if none)
    scales: Any = MISSING  # offline / full: the kind's schema


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


def plan(arguments: list[str]) -> Plan:
    """The studies the command line asks for, their configs composed and checked before any trial runs."""
    own = {key_of(a): value_of(a) for a in arguments if key_of(a) in OWN_KEYS}
    config_overrides = [a for a in arguments if key_of(a).startswith(("study.", "shared."))]
    extra = [a for a in arguments if key_of(a) not in OWN_KEYS and a not in config_overrides]
    settings = load_settings()
    scale = own.get("scale", settings.scale)
    check(scale in settings.scales, "scale", f"must be one of {', '.join(settings.scales)}", scale)
    names = settings.studies if own.get("study", "all") == "all" else [own["study"]]
    for name in names:
        if name not in group_options("study"):
            raise UsageError(
                f"unknown study '{name}'; valid choices: all, {', '.join(group_options('study'))}"
            )
    shared_node = apply_overrides(
        OmegaConf.create(OmegaConf.to_container(settings.scales[scale])),
        [a for a in config_overrides if key_of(a).startswith("shared.")],
        "shared",
    )
    shared = OmegaConf.to_object(typed(shared_node, Shared, "shared"))
    check_bases(shared)
    studies = [
        load_study(name, scale, [a for a in config_overrides if key_of(a).startswith("study.")])
        for name in names
    ]
    for study in studies:
        check_arms(study, shared)
    out_dir = Path(own.get("out_dir", settings.out_dir)).expanduser().resolve()
    work_dir = Path(own.get("work_dir", settings.work_dir)).expanduser().resolve()
    return Plan(settings, scale, shared, studies, extra, config_overrides, out_dir, work_dir)


def load_yaml(path: Path) -> DictConfig:
    try:
        return OmegaConf.load(path)
    except (OSError, yaml.YAMLError, OmegaConfBaseException) as err:
        raise UsageError(f"{path} is not a readable config ({one_line(str(err))})") from err


def typed(node: DictConfig, schema: type, where: str) -> DictConfig:
    """node merged onto its schema, with every range check run: a mistake is one line naming the key."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), node)
        OmegaConf.to_object(merged)  # runs __post_init__ checks
    except OmegaConfBaseException as err:
        raise UsageError(f"{where}: {one_line(str(err))}") from err
    return merged


def load_settings() -> DictConfig:
    return typed(load_yaml(CONF_DIR / "reproduce.yaml"), ReproduceConfig, "conf/reproduce.yaml")


def apply_overrides(node: DictConfig, overrides: list[str], prefix: str, where: str = "") -> DictConfig:
    """`study.budgets=[1,2]`-style overrides of a config block; an unknown key is refused."""
    for override in overrides:
        key, value = key_of(override)[len(prefix) + 1 :], value_of(override)
        if OmegaConf.select(node, key, default=MISSING_KEY) is MISSING_KEY:
            raise UsageError(
                f"unknown config key '{prefix}.{key}'{where}; valid keys here: {', '.join(map(str, node))}"
            )
        try:
            OmegaConf.update(node, key, yaml.safe_load(value) if value else None, merge=False)
        except (yaml.YAMLError, OmegaConfBaseException) as err:
            raise UsageError(f"{override}: {one_line(str(err))}") from err
    return node


MISSING_KEY = object()


def load_study(name: str, scale: str, overrides: list[str]) -> Study:
    path = CONF_DIR / "study" / f"{name}.yaml"
    node = load_yaml(path)
    kind = node.get("kind")
    check(kind in KINDS, f"{path.name}: kind", f"must be one of {', '.join(KINDS)}", kind)
    scales = node.get("scales") or {}
    check(scale in scales, f"{path.name}: scales", f"must have a '{scale}' block", list(scales))
    block = OmegaConf.create(OmegaConf.to_container(scales[scale]))
    block = apply_overrides(block, overrides, "study", f" (study {name})")
    meta = OmegaConf.masked_copy(node, [k for k in node if k != "scales"])
    meta.scales = {}
    return Study(
        name, typed(meta, StudyConfig, path.name), typed(block, SCALES[kind], f"{path.name} {scale}")
    )


def study_arms(study: Study) -> list[str]:
    scale = study.scale
    if study.cfg.kind == "decoupling":
        return list(scale.arms)
    if study.cfg.kind == "compare":
        return [scale.baseline, scale.contender]
    return [scale.arm]


BASE_KEYS = ("data.train_limit", "data.val_size", "trainer.epochs", "optimizer.decay_mode")  # the base sweep
# file sets these for its own grid: every base sets them again, so no trial inherits them unawares


def check_bases(shared: Shared) -> None:
    for name, base in shared.bases.items():
        given = {key_of(o) for o in base.trials}
        missing = [k for k in BASE_KEYS if k not in given]
        check(not missing, f"shared.bases.{name}.trials", f"must set {', '.join(missing)}", list(base.trials))


def check_arms(study: Study, shared: Shared) -> None:
    for arm in study_arms(study):
        check(arm in shared.arms, f"study {study.name}: arm", f"must be one of {', '.join(shared.arms)}", arm)
        check(
            shared.arms[arm].base in shared.bases,
            f"shared.arms.{arm}.base",
            f"must be one of {', '.join(shared.bases)}",
            shared.arms[arm].base,
        )
    if study.cfg.kind == "decoupling":
        for arm in (study.scale.coupled, study.scale.decoupled):
            check(
                arm in study.scale.arms,
                f"study {study.name}: coupled/decoupled",
                "must be in study.arms",
                arm,
            )
            check(shared.arms[arm].searched, f"shared.arms.{arm}", "needs an lr x wd grid", arm)


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


# ------------------------------------------------------------------------------------------------ studies
def run_decoupling(ctx: Context) -> tuple[list[dict], list[dict], dict]:
    scale, rows = ctx.study.scale, []
    for name in scale.arms:
        rows += run_rows(grid_sweep(ctx, name), ctx.study.name, name, "select")
    extra = {}
    if scale.torch_check:
        extra = torch_check(ctx, scale.decoupled)
        rows += extra.pop("rows")
    arms = {name: arm_info(ctx.arm(name)) for name in scale.arms}
    return (
        rows,
        [],
        {
            "arms": arms,
            "coupled": scale.coupled,
            "decoupled": scale.decoupled,
            "torch_view": scale.torch_view,
            "margin": scale.margin,
            "measure": scale.measure,
            "drop": scale.drop,
            **extra,
        },
    )


def torch_check(ctx: Context, name: str) -> dict:
    """The decoupled arm's best cell once more in torch's convention (wd = lambda / lr): the same training."""
    arm, (choice, _) = ctx.arm(name), choose(ctx, name)
    wd = float(choice.weight_decay) / float(choice.lr)
    overrides = [o for o in arm_overrides(ctx, arm, "select") if key_of(o) != "optimizer.decay_mode"]
    folder = run_sweep(
        ctx,
        f"torch-check-{name}",
        [
            *overrides,
            "optimizer.decay_mode=torch",
            f"optimizer.lr={choice.lr}",
            f"optimizer.weight_decay={wd!r}",
        ],
    )
    rows = run_rows(folder, ctx.study.name, name, "torch_check")
    return {"rows": rows, "torch_check": {"lr": choice.lr, "lambda": choice.weight_decay, "wd": repr(wd)}}


def arm_info(arm: Arm) -> dict:
    return {
        "label": arm.label,
        "wd_name": arm.wd_name,
        "overrides": list(arm.overrides),
        "base": arm.base,
        "lr": list(arm.lr),
        "weight_decay": list(arm.weight_decay),
    }


def run_compare(ctx: Context) -> tuple[list[dict], list[dict], dict]:
    scale, rows, curves, chosen = ctx.study.scale, [], [], {}
    for name in (scale.baseline, scale.contender):
        choice, grid = choose(ctx, name)
        if grid is not None:
            rows += run_rows(grid, ctx.study.name, name, "select")
        folder = confirm_sweep(ctx, name, choice)
        rows += run_rows(folder, ctx.study.name, name, "confirm")
        curves += curve_rows(folder, ctx.study.name, name)
        chosen[name] = {"lr": choice.lr, "weight_decay": choice.weight_decay, "cells": choice.cells}
    tests = [OmegaConf.to_container(t) for t in scale.tests]
    arms = {name: arm_info(ctx.arm(name)) for name in (scale.baseline, scale.contender)}
    return (
        rows,
        curves,
        {
            "arms": arms,
            "baseline": scale.baseline,
            "contender": scale.contender,
            "chosen": chosen,
            "tests": tests,
            "relative": scale.relative,
        },
    )


def run_schedules(ctx: Context) -> tuple[list[dict], list[dict], dict]:
    scale, rows, curves, chosen = ctx.study.scale, [], [], {}
    arm = ctx.arm(scale.arm)
    for schedule in scale.schedules:
        select = run_sweep(ctx, f"schedule-{schedule}-lr", schedule_select_args(ctx, schedule))
        rows += run_rows(select, ctx.study.name, schedule, "select")
        lr = best_row(select, ("optimizer.lr",))["optimizer.lr"]
        chosen[schedule] = lr
        confirm = run_sweep(ctx, f"schedule-{schedule}-budgets", schedule_budget_args(ctx, schedule, lr))
        rows += run_rows(confirm, ctx.study.name, schedule, "confirm")
        curves += curve_rows(confirm, ctx.study.name, schedule, "trainer.epochs")
    return (
        rows,
        curves,
        {
            "arm": arm_info(arm),
            "weight_decay": scale.weight_decay,
            "schedules": list(scale.schedules),
            "chosen": chosen,
            "budgets": list(scale.budgets),
            "short": scale.short,
            "long": scale.long,
            "margin": scale.margin,
            "select_budget": scale.select_budget,
            "lr": list(scale.lr),
            "target": target_of(ctx, arm),
        },
    )


def schedule_common(ctx: Context, schedule: str) -> list[str]:
    scale = ctx.study.scale
    arm = ctx.arm(scale.arm)
    return [
        *ctx.base(arm).trials,
        *arm.overrides,
        *scale.trials,
        f"schedule={schedule}",
        f"optimizer.weight_decay={number_text(scale.weight_decay)}",
    ]


def schedule_select_args(ctx: Context, schedule: str) -> list[str]:
    """The schedule's peak lr, searched on validation at the selection budget (seed 0)."""
    scale = ctx.study.scale
    return [
        *schedule_common(ctx, schedule),
        *ctx.base(ctx.arm(scale.arm)).select,
        f"trainer.epochs={scale.select_budget}",
        axis("optimizer.lr", scale.lr),
    ]


def schedule_budget_args(ctx: Context, schedule: str, lr: str) -> list[str]:
    """The schedule at its chosen lr, one run per budget and seed (each to the end of its own schedule)."""
    scale = ctx.study.scale
    return [
        *schedule_common(ctx, schedule),
        *ctx.base(ctx.arm(scale.arm)).confirm,
        f"optimizer.lr={lr}",
        axis("trainer.epochs", list(scale.budgets)),
        axis("seed", ctx.seeds),
    ]


def target_of(ctx: Context, arm: Arm) -> str:
    found = [
        value_of(o)
        for o in merged([*ctx.base(arm).confirm, *ctx.plan.extra])
        if key_of(o) == "trainer.target"
    ]
    return found[-1] if found else ""


def run_warmup(ctx: Context) -> tuple[list[dict], list[dict], dict]:
    scale = ctx.study.scale
    arm = ctx.arm(scale.arm)
    folder = run_sweep(ctx, "warmup", warmup_args(ctx))
    rows = run_rows(folder, ctx.study.name, scale.arm, "confirm", "schedule.warmup")
    return (
        rows,
        [],
        {
            "arm": arm_info(arm),
            "weight_decay": scale.weight_decay,
            "warmups": list(scale.warmups),
            "lr": list(scale.lr),
            "chance": scale.chance,
            "unstable_below": scale.unstable_below,
            "trials": list(scale.trials),
        },
    )


def warmup_args(ctx: Context) -> list[str]:
    """Every warmup x peak lr x seed, at the fixed weight decay."""
    scale = ctx.study.scale
    arm = ctx.arm(scale.arm)
    return [
        *ctx.base(arm).trials,
        *ctx.base(arm).confirm,
        *arm.overrides,
        *scale.trials,
        f"optimizer.weight_decay={number_text(scale.weight_decay)}",
        axis("schedule.warmup", list(scale.warmups)),
        axis("optimizer.lr", scale.lr),
        axis("seed", ctx.seeds),
    ]


def planned_sweeps(ctx: Context) -> list[tuple[str, list[str]]]:
    """The study's sweeps as (label, overrides), with each selection-dependent value at its first candidate:
    enough to compose one trial of each before anything runs."""
    scale, kind = ctx.study.scale, ctx.study.cfg.kind
    if kind == "decoupling":
        return [(f"grid-{name}", grid_args(ctx, name)) for name in scale.arms]
    if kind == "compare":
        sweeps = []
        for name in (scale.baseline, scale.contender):
            arm = ctx.arm(name)
            first = Choice(number_text(arm.lr[0]), number_text(arm.weight_decay[0]), 1)
            sweeps += [(f"grid-{name}", grid_args(ctx, name))] if arm.searched else []
            sweeps.append((f"seeds-{name}", confirm_args(ctx, name, first)))
        return sweeps
    if kind == "schedules":
        return [
            sweep
            for schedule in scale.schedules
            for sweep in (
                (f"schedule-{schedule}-lr", schedule_select_args(ctx, schedule)),
                (
                    f"schedule-{schedule}-budgets",
                    schedule_budget_args(ctx, schedule, number_text(scale.lr[0])),
                ),
            )
        ]
    return [("warmup", warmup_args(ctx))]


def first_trial(overrides: list[str]) -> list[str]:
    """The overrides of a sweep's first trial: each axis (a,b,c) at its first value."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from runner.config import quote_target

    quoted = quote_target(overrides)
    out = []
    for text, parsed in zip(quoted, OverridesParser.create().parse_overrides(quoted), strict=True):
        if parsed.is_sweep_override():
            text = f"{parsed.get_key_element()}={next(iter(parsed.sweep_string_iterator()))}"
        out.append(text)
    return out


def check_trials(plan: Plan) -> int:
    """Compose one trial of every sweep of every planned study (the command line's overrides included), so a bad
    key or value stops everything before the first run; returns how many were composed."""
    from runner.config import compose

    composed = 0
    for study in plan.studies:
        ctx = Context(plan, study, echo=lambda line: None)
        for label, overrides in planned_sweeps(ctx):
            try:
                compose([f"sweep={BASE_SWEEP}", *first_trial(merged([*overrides, *plan.extra]))])
            except UsageError as err:
                raise UsageError(f"study {study.name}, sweep {label}: {err}") from err
            composed += 1
    return composed


RUNNERS = {
    "decoupling": run_decoupling,
    "compare": run_compare,
    "schedules": run_schedules,
    "warmup": run_warmup,
}


# ------------------------------------------------------------------------------------------------ run
def run(plan: Plan, echo: Callable[[str], None] = print, report: bool = True) -> Path | None:
    """Every planned study (each resumes what it has), then the report; returns report.md's path."""
    check_trials(plan)
    plan.out_dir.mkdir(parents=True, exist_ok=True)
    write_untested(plan)
    for study in plan.studies:
        run_study(plan, study, echo)
    return write_report(plan.out_dir) if report else None


def run_study(plan: Plan, study: Study, echo: Callable[[str], None]) -> None:
    started, load = time.perf_counter(), os.getloadavg()[0]
    ctx = Context(plan, study, echo)
    echo(
        f"study {study.name} ({plan.scale}; about {study.scale.minutes:g} min on 2 idle cores): {study.cfg.claim}"
    )
    rows, curves, details = RUNNERS[study.cfg.kind](ctx)
    timing = add_time(
        plan.work_dir / f"{study.name}-{plan.scale}.timing.json",
        time.perf_counter() - started if ctx.trained else 0.0,
        load,
    )
    out = plan.out_dir
    write_table(out / f"{study.name}_runs.csv", rows, RUN_COLUMNS)
    write_table(out / f"{study.name}_curves.csv", curves, CURVE_COLUMNS)
    write_settings(out / f"{study.name}_settings.csv", study_settings(ctx, details, timing))
    echo(f"study {study.name}: done in {timing['wall_s'] / 60:.1f} min ({timing['segments']} segment(s))")


def add_time(path: Path, seconds: float, load: float) -> dict:
    """The study's wall time over the segments that trained (a resumed study adds to it; a study found done
    adds nothing), with the load average at the start of the first."""
    timing = json.loads(path.read_text()) if path.exists() else {"wall_s": 0.0, "segments": 0, "load": load}
    if seconds or not path.exists():
        timing |= {"wall_s": round(timing["wall_s"] + seconds, 1), "segments": timing["segments"] + 1}
        results.write_json(path, timing)
    return timing


def study_settings(ctx: Context, details: dict, timing: dict) -> dict:
    plan, study = ctx.plan, ctx.study
    return {
        "study": study.name,
        "order": list(plan.settings.studies).index(study.name)
        if study.name in plan.settings.studies
        else len(plan.settings.studies),
        "kind": study.cfg.kind,
        "claim": study.cfg.claim,
        "source": study.cfg.source,
        "paper": study.cfg.paper,
        "untested": study.cfg.untested,
        "scale": plan.scale,
        "minutes_expected": study.scale.minutes,
        "wall_s": timing["wall_s"],
        "segments": timing["segments"],
        "load_at_start": round(timing.get("load", math.nan), 2),
        "command": shlex.join(
            [
                "adamrun",
                "reproduce",
                f"study={study.name}",
                *([f"scale={plan.scale}"] if plan.scale != plan.settings.scale else []),
                *plan.config_overrides,
                *plan.extra,
            ]
        ),
        "bases": {
            name: OmegaConf.to_container(OmegaConf.structured(base))
            for name, base in plan.shared.bases.items()
        },
        "seeds": ctx.seeds,
        "extra": list(plan.extra),
        "sweeps": ctx.sweeps,
        "machine": machine(),
        **details,
    }


def machine() -> str:
    import torch

    model = (
        next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            platform.processor(),
        )
        if Path("/proc/cpuinfo").exists()
        else platform.processor()
    )
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{model}, {os.cpu_count()} cores, {device}, torch {torch.__version__}"


def write_untested(plan: Plan) -> None:
    rows = [{"claim": u.claim, "source": u.source, "why": u.why} for u in plan.settings.untested]
    write_table(plan.out_dir / "untested.csv", rows, ["claim", "source", "why"])
