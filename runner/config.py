"""Typed config schemas and composition.

Every value a user can tune lives in YAML under conf/; the dataclasses below only say which keys exist, their
types and their valid ranges, so a typo or a bad value fails at compose time with one line naming the key and
the valid choices (Hydra's structured configs; STYLE.md rule 3). `compose` is the one entry point: the CLI, the
tests and users' own scripts all call it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.errors import HydraException
from omegaconf import MISSING, DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from runner.errors import UsageError

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
SCHEMA_SUFFIX = "_schema"  # ConfigStore names of the dataclass schemas behind each YAML option


def check(ok: bool, key: str, requirement: str, value: Any) -> None:
    """Raise the one-line error a user sees for a value outside its valid range."""
    if not ok:
        raise UsageError(f"{key} {requirement} (got {value!r})")


# ---------------------------------------------------------------------------------------------- optimizer
class Family(StrEnum):
    adam = "adam"
    sgd = "sgd"


class DecayMode(StrEnum):
    torch = "torch"  # per-step shrink lr * wd (torch.optim, fastai): the best wd moves when lr is tuned
    paper = "paper"  # per-step shrink eta_t * wd (Loshchilov & Hutter): wd independent of the base lr


class Impl(StrEnum):
    auto = "auto"
    fused = "fused"
    foreach = "foreach"
    for_loop = "for_loop"


@dataclass
class OptimizerConfig:
    family: Family = MISSING
    decoupled: bool = MISSING  # the one switch: L2 in the gradient (false) or decoupled weight decay (true)
    lr: float = MISSING
    weight_decay: float = MISSING
    betas: list[float] = MISSING
    eps: float = MISSING
    momentum: float = MISSING
    nesterov: bool = MISSING
    amsgrad: bool = MISSING
    decay_mode: DecayMode = MISSING
    normalized_wd: bool = MISSING
    decay_norm_and_bias: bool = MISSING
    impl: Impl = MISSING

    def __post_init__(self) -> None:
        check(self.lr > 0, "optimizer.lr", "must be > 0", self.lr)
        check(self.weight_decay >= 0, "optimizer.weight_decay", "must be >= 0", self.weight_decay)
        check(len(self.betas) == 2, "optimizer.betas", "must be two numbers [beta1, beta2]", self.betas)
        for i, beta in enumerate(self.betas):
            check(0 <= beta < 1, f"optimizer.betas[{i}]", "must be in [0, 1)", beta)
        check(self.eps > 0, "optimizer.eps", "must be > 0", self.eps)
        check(0 <= self.momentum < 1, "optimizer.momentum", "must be in [0, 1)", self.momentum)
        check(
            not (self.amsgrad and self.family is Family.sgd), "optimizer.amsgrad", "needs family=adam", True
        )


# ---------------------------------------------------------------------------------------------- schedule
class Warmup(StrEnum):
    none = "none"
    linear = "linear"
    exponential = "exponential"


@dataclass
class ScheduleConfig:
    name: str = MISSING
    warmup: Warmup = MISSING
    warmup_steps: int | None = MISSING  # null: the untuned 2 / (1 - beta2) of Ma & Yarats

    def __post_init__(self) -> None:
        if self.warmup_steps is not None:
            check(self.warmup_steps > 0, "schedule.warmup_steps", "must be > 0 or null", self.warmup_steps)


@dataclass
class ConstantSchedule(ScheduleConfig):
    pass


@dataclass
class StepSchedule(ScheduleConfig):
    milestones: list[float] = MISSING  # fractions of the run
    gamma: float = MISSING

    def __post_init__(self) -> None:
        super().__post_init__()
        check(
            all(0 < m < 1 for m in self.milestones),
            "schedule.milestones",
            "must be in (0, 1)",
            self.milestones,
        )
        check(0 < self.gamma <= 1, "schedule.gamma", "must be in (0, 1]", self.gamma)


@dataclass
class CosineSchedule(ScheduleConfig):
    final_frac: float = MISSING  # last lr as a fraction of the peak

    def __post_init__(self) -> None:
        super().__post_init__()
        check(0 <= self.final_frac <= 1, "schedule.final_frac", "must be in [0, 1]", self.final_frac)


@dataclass
class LinearSchedule(CosineSchedule):
    pass


class Anneal(StrEnum):
    cos = "cos"
    linear = "linear"


@dataclass
class OneCycleSchedule(ScheduleConfig):
    pct_start: float = MISSING
    div_factor: float = MISSING
    final_div_factor: float = MISSING
    anneal: Anneal = MISSING
    three_phase: bool = MISSING
    cycle_momentum: bool = MISSING
    base_momentum: float = MISSING
    max_momentum: float = MISSING

    def __post_init__(self) -> None:
        super().__post_init__()
        check(0 < self.pct_start < 1, "schedule.pct_start", "must be in (0, 1)", self.pct_start)
        check(self.div_factor >= 1, "schedule.div_factor", "must be >= 1", self.div_factor)
        check(self.final_div_factor >= 1, "schedule.final_div_factor", "must be >= 1", self.final_div_factor)
        check(
            0 <= self.base_momentum <= self.max_momentum < 1,
            "schedule.base_momentum/max_momentum",
            "must satisfy 0 <= base <= max < 1",
            (self.base_momentum, self.max_momentum),
        )


@dataclass
class WarmRestartsSchedule(ScheduleConfig):
    t0_epochs: float = MISSING  # length of the first cycle
    t_mult: int = MISSING
    final_frac: float = MISSING  # eta_min as a fraction of the peak

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.t0_epochs > 0, "schedule.t0_epochs", "must be > 0", self.t0_epochs)
        check(self.t_mult >= 1, "schedule.t_mult", "must be >= 1", self.t_mult)


SCHEDULES = {
    "constant": ConstantSchedule,
    "step": StepSchedule,
    "cosine": CosineSchedule,
    "linear": LinearSchedule,
    "one_cycle": OneCycleSchedule,
    "warm_restarts": WarmRestartsSchedule,
}


# ---------------------------------------------------------------------------------------------- trainer
class Precision(StrEnum):
    auto = "auto"  # bf16 autocast where the hardware runs it fast, else fp32
    fp32 = "fp32"
    bf16 = "bf16"


@dataclass
class TrainerConfig:
    epochs: int = MISSING
    batch_size: int = MISSING
    eval_batch_size: int = MISSING
    device: str = MISSING
    precision: Precision = MISSING
    channels_last: bool = MISSING
    grad_clip: float | None = MISSING
    tta: bool = MISSING
    threads: int | None = MISSING
    log_every: int = MISSING
    progress: bool = MISSING

    def __post_init__(self) -> None:
        check(self.epochs > 0, "trainer.epochs", "must be > 0", self.epochs)
        check(self.batch_size > 0, "trainer.batch_size", "must be > 0", self.batch_size)
        check(self.eval_batch_size > 0, "trainer.eval_batch_size", "must be > 0", self.eval_batch_size)
        check(
            self.device in ("auto", "cpu", "cuda"),
            "trainer.device",
            "must be one of auto, cpu, cuda",
            self.device,
        )
        if self.grad_clip is not None:
            check(self.grad_clip > 0, "trainer.grad_clip", "must be > 0 or null", self.grad_clip)
        if self.threads is not None:
            check(self.threads > 0, "trainer.threads", "must be > 0 or null", self.threads)
        check(self.log_every > 0, "trainer.log_every", "must be > 0", self.log_every)


# ---------------------------------------------------------------------------------------------- data, recipe
@dataclass
class DataConfig:
    name: str = MISSING
    root: str = MISSING
    download: bool = MISSING
    train_limit: int | None = MISSING  # use only the first N training examples (quick runs, tests)
    test_limit: int | None = MISSING

    def __post_init__(self) -> None:
        for key in ("train_limit", "test_limit"):
            limit = getattr(self, key)
            if limit is not None:
                check(limit > 0, f"data.{key}", "must be > 0 or null", limit)


@dataclass
class Cifar10Recipe:
    name: str = MISSING
    widths: list[int] = MISSING  # channels of the stem and the three blocks
    label_smoothing: float = MISSING
    crop_padding: int = MISSING  # pixels of random translation
    flip: bool = MISSING
    bn_momentum: float = MISSING
    scaling: float = MISSING  # logits multiplier (airbench), temperature of the softmax

    def __post_init__(self) -> None:
        check(len(self.widths) == 4, "recipe.widths", "must be four channel counts", self.widths)
        check(
            0 <= self.label_smoothing < 1, "recipe.label_smoothing", "must be in [0, 1)", self.label_smoothing
        )
        check(self.crop_padding >= 0, "recipe.crop_padding", "must be >= 0", self.crop_padding)


RECIPES = {"cifar10": Cifar10Recipe}


# ---------------------------------------------------------------------------------------------- top level
@dataclass
class TrainConfig:
    recipe: Any = MISSING
    data: DataConfig = MISSING
    optimizer: OptimizerConfig = MISSING
    schedule: Any = MISSING
    trainer: TrainerConfig = MISSING
    seed: int = MISSING
    run_dir: str | None = MISSING  # null: a fresh directory under results_dir/runs
    resume: bool = MISSING
    results_dir: str = MISSING


@dataclass
class BenchSettings:
    out_dir: str = MISSING
    train_images: int = MISSING
    repeats: int = MISSING
    optimizer_steps: int = MISSING
    warmup_steps: int = MISSING

    def __post_init__(self) -> None:
        for key in ("train_images", "repeats", "optimizer_steps"):
            check(getattr(self, key) > 0, f"bench.{key}", "must be > 0", getattr(self, key))


@dataclass
class BenchTrainConfig(TrainConfig):
    bench: BenchSettings = MISSING


def register_schemas() -> None:
    cs = ConfigStore.instance()
    cs.store(name="train" + SCHEMA_SUFFIX, node=TrainConfig)
    cs.store(name="bench_train" + SCHEMA_SUFFIX, node=BenchTrainConfig)
    cs.store(group="optimizer", name="optimizer" + SCHEMA_SUFFIX, node=OptimizerConfig)
    cs.store(group="trainer", name="trainer" + SCHEMA_SUFFIX, node=TrainerConfig)
    cs.store(group="data", name="data" + SCHEMA_SUFFIX, node=DataConfig)
    for name, schema in SCHEDULES.items():
        cs.store(group="schedule", name=name + SCHEMA_SUFFIX, node=schema)
    for name, schema in RECIPES.items():
        cs.store(group="recipe", name=name + SCHEMA_SUFFIX, node=schema)
    from runner.sparsify import schema as sparsify_schema  # here: that module imports this one

    sparsify_schema.register(cs)


# ---------------------------------------------------------------------------------------------- compose
def compose(overrides: list[str] | tuple[str, ...] = (), config_name: str = "train") -> DictConfig:
    """Compose conf/<config_name>.yaml with `key=value` overrides, validate it, and return it.

    Raises UsageError with a one-line message for any mistake a user can make in the overrides.
    """
    register_schemas()
    overrides = list(overrides)
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = hydra_compose(config_name, overrides=overrides, return_hydra_config=True)
    except (HydraException, OmegaConfBaseException) as err:
        raise UsageError(explain(err, overrides, config_name)) from err
    choices = {k: v for k, v in cfg.hydra.runtime.choices.items() if not k.startswith("hydra")}
    with open_dict(cfg):
        del cfg["hydra"]
    validate(cfg)
    with open_dict(cfg):
        cfg.choices = choices  # which option of each group was composed: names the run and its row
    return cfg


def validate(cfg: DictConfig) -> None:
    """Instantiate the dataclasses, which runs each schema's range checks (__post_init__)."""
    try:
        OmegaConf.to_object(cfg)
    except OmegaConfBaseException as err:
        raise UsageError(one_line(str(err))) from err
    if "schedule" in cfg and "optimizer" in cfg:
        untuned = cfg.schedule.warmup != Warmup.none and cfg.schedule.warmup_steps is None
        check(
            not (untuned and cfg.optimizer.family == Family.sgd),
            "schedule.warmup_steps",
            "must be set for the SGD family (the untuned 2/(1-beta2) rule needs Adam's beta2)",
            None,
        )


def one_line(message: str) -> str:
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    lines = [line for line in lines if not line.startswith(("object_type=", "reference_type="))]
    return "; ".join(lines)


def explain(err: Exception, overrides: list[str], config_name: str) -> str:
    """Turn Hydra's multi-line message into one line that names the key and the valid choices."""
    message = one_line(str(err))
    missing = re.search(r"Could not find '([^'/]+)/([^']+)'", message)
    if missing:
        group, name = missing.groups()
        return f"unknown {group} '{name}'; valid choices: {', '.join(group_options(group))}"
    unknown = re.match(r"Could not override '([^']+)'", message)
    if unknown:
        key = unknown.group(1)
        valid = valid_keys(
            key, [o for o in overrides if not o.lstrip("+~").startswith(key + "=")], config_name
        )
        if valid:
            return f"unknown config key '{key}'; valid keys here: {', '.join(valid)}"
    if err.__cause__ is not None:  # "Error merging override x=y" hides the reason in its cause
        message = f"{message}: {one_line(str(err.__cause__))}"
    return message


def group_options(group: str) -> list[str]:
    return sorted(path.stem for path in (CONF_DIR / group).glob("*.yaml"))


def valid_keys(key: str, other_overrides: list[str], config_name: str) -> list[str]:
    """The keys that do exist beside `key`, from the config composed without the offending override."""
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = hydra_compose(config_name, overrides=other_overrides)
    except (HydraException, OmegaConfBaseException):
        return []
    parent = OmegaConf.select(cfg, key.rpartition(".")[0]) if "." in key else cfg
    return [k for k in parent if k != "hydra"] if isinstance(parent, DictConfig) else []
