"""Typed config schemas and composition.

Every value a user can tune lives in YAML under conf/; the dataclasses below only say which keys exist, their
types and their valid ranges, so a typo or a bad value fails at compose time with one line naming the key and
the valid choices (Hydra's structured configs; STYLE.md rule 3). `compose` is the one entry point: the CLI, the
tests and users' own scripts all call it.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import math
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from types import ModuleType
from typing import Any

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.singleton import Singleton
from hydra.errors import HydraException
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf, open_dict
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from runner import import_frozen
from runner.errors import UsageError

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
SCHEMA_SUFFIX = "_schema"  # ConfigStore names of the dataclass schemas behind each YAML option


def check(ok: bool, key: str, requirement: str, value: Any) -> None:
    """Raise the one-line error a user sees for a value outside its valid range."""
    if not ok:
        raise UsageError(f"{key} {requirement} (got {value!r})")


def check_finite(cfg: DictConfig | ListConfig, prefix: str = "") -> None:
    """Every number a user can set must be finite: inf or nan in any key trains nonsense, or crashes later."""
    items = cfg.items() if isinstance(cfg, DictConfig) else enumerate(cfg)
    for key, value in items:
        name = f"{prefix}[{key}]" if isinstance(cfg, ListConfig) else f"{prefix}{'.' if prefix else ''}{key}"
        if isinstance(value, DictConfig | ListConfig):
            check_finite(value, name)
        elif isinstance(value, float):
            check(math.isfinite(value), name, "must be a finite number", value)


# ---------------------------------------------------------------------------------------------- optimizer
class Family(StrEnum):
    adam = "adam"
    sgd = "sgd"
    nt_asgd = "nt_asgd"  # SGD, switched to averaged SGD when validation stops improving (Merity et al.)


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
    nonmono: int = MISSING  # NT-ASGD: validation checks without improvement before averaging starts

    def __post_init__(self) -> None:
        check(self.lr > 0, "optimizer.lr", "must be > 0", self.lr)
        check(self.nonmono >= 1, "optimizer.nonmono", "must be >= 1", self.nonmono)
        check(self.weight_decay >= 0, "optimizer.weight_decay", "must be >= 0", self.weight_decay)
        check(len(self.betas) == 2, "optimizer.betas", "must be two numbers [beta1, beta2]", self.betas)
        for i, beta in enumerate(self.betas):
            check(0 <= beta < 1, f"optimizer.betas[{i}]", "must be in [0, 1)", beta)
        check(self.eps > 0, "optimizer.eps", "must be > 0", self.eps)
        check(0 <= self.momentum < 1, "optimizer.momentum", "must be in [0, 1)", self.momentum)
        check(
            not (self.amsgrad and self.family is not Family.adam),
            "optimizer.amsgrad",
            "needs family=adam",
            True,
        )
        check(
            not (self.decoupled and self.family is Family.nt_asgd),
            "optimizer.decoupled",
            "is not available for family=nt_asgd (torch.optim.ASGD adds the decay to the gradient)",
            True,
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


TARGET = re.compile(r"^\s*((?:val|test)_\w+)\s*(>=|<=|>|<)\s*([-+.\w]+)\s*$")


@dataclass(frozen=True)
class Target:
    """A metric threshold such as val_acc>=0.93: the run records when it first holds (time to target)."""

    key: str
    op: str
    value: float

    def reached(self, row: dict) -> bool:
        value = row.get(self.key)
        if value is None:
            return False
        return {">=": value >= self.value, "<=": value <= self.value, ">": value > self.value,
                "<": value < self.value}[self.op]  # fmt: skip


def settled(cfg: DictConfig, values: dict[str, Any]) -> DictConfig:
    """cfg with the settings a recipe measured on this machine (Task.settled) in place of the open ones."""
    if not values:
        return cfg
    cfg = copy.deepcopy(cfg)
    for key, value in values.items():
        OmegaConf.update(cfg, key, value, merge=False)
    cfg.measured = dict(values)
    return cfg


def parse_target(text: str) -> Target:
    match = TARGET.match(text)
    number = match and re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)(e[-+]?\d+)?", match.group(3), re.IGNORECASE)
    check(
        bool(number),
        "trainer.target",
        "must look like val_acc>=0.93 (val_ or test_ metric, >= <= > <, number)",
        text,
    )
    return Target(match.group(1), match.group(2), float(match.group(3)))


@dataclass
class TrainerConfig:
    epochs: int = MISSING
    batch_size: int = MISSING
    eval_batch_size: int = MISSING
    device: str = MISSING
    precision: Precision = MISSING
    grad_clip: float | None = MISSING
    threads: int | None = MISSING
    log_every: int = MISSING
    progress: bool = MISSING
    eval_every: float = MISSING  # epochs between evaluations: 1 each epoch end, 0.25 four times per epoch, 3
    # every third epoch (the last one always evaluates)
    target: str | None = MISSING  # e.g. val_acc>=0.93: record the time, epochs and steps to reach it
    stop_at_target: bool = MISSING  # end the run once the target holds
    divergence: float | None = MISSING  # diverged above this multiple of the first logged training loss
    ema: float | None = (
        MISSING  # decay per step of an exponential moving average of the weights (and BatchNorm
    )
    # statistics) that evaluation uses; null: evaluate the weights as trained

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
        check(
            (0 < self.eval_every <= 1 and (1 / self.eval_every).is_integer())
            or (self.eval_every > 1 and float(self.eval_every).is_integer()),
            "trainer.eval_every",
            "must be 1/n of an epoch (0.5, 0.25, ...) or a whole number of epochs",
            self.eval_every,
        )
        if self.ema is not None:
            check(0 < self.ema < 1, "trainer.ema", "must be in (0, 1) or null", self.ema)
        if self.divergence is not None:
            check(self.divergence > 1, "trainer.divergence", "must be > 1 or null", self.divergence)
        if self.target is not None:
            parse_target(self.target)
        check(
            not (self.stop_at_target and self.target is None),
            "trainer.stop_at_target",
            "needs trainer.target",
            True,
        )


# ---------------------------------------------------------------------------------------------- top level
class Logger(StrEnum):
    none = "none"
    tensorboard = "tensorboard"  # event files in each run's folder: tensorboard --logdir <results or sweep>


@dataclass
class TrainConfig:
    recipe: Any = MISSING  # the recipe's own schema (recipes/<name>.py SCHEMAS)
    data: Any = MISSING
    model: Any = None
    optimizer: OptimizerConfig = MISSING
    schedule: Any = MISSING
    trainer: TrainerConfig = MISSING
    seed: int = MISSING
    run_dir: str | None = MISSING  # null: a fresh directory under results_dir/runs
    resume: bool = MISSING
    results_dir: str = MISSING
    logger: Logger = Logger.none
    tune: Any = None  # a search's settings (adamrun tune: conf/tune/, checked by runner/tune.py's schema)
    choices: Any = None  # which option of each group was composed (filled by compose)
    overrides: list[str] = field(default_factory=list)  # the command line's overrides (filled by compose)
    measured: dict[str, Any] = field(
        default_factory=dict
    )  # what the recipe measured on this machine where the
    # config left a setting open (filled by `settled`): an override of the open value resumes under it


def register_schemas() -> None:
    """The shared groups' schemas and the train config's, where Hydra's defaults lists find them."""
    cs = ConfigStore.instance()
    cs.store(name="train" + SCHEMA_SUFFIX, node=TrainConfig)
    cs.store(group="optimizer", name="optimizer" + SCHEMA_SUFFIX, node=OptimizerConfig)
    cs.store(group="trainer", name="trainer" + SCHEMA_SUFFIX, node=TrainerConfig)
    for name, schema in SCHEDULES.items():
        cs.store(group="schedule", name=name + SCHEMA_SUFFIX, node=schema)


# ---------------------------------------------------------------------------------------------- compose
def compose(
    overrides: list[str] | tuple[str, ...] = (), config_name: str = "train", schema: type | None = TrainConfig
) -> DictConfig:
    """Compose conf/<config_name>.yaml with `key=value` overrides, validate it, and return it.

    `schema` is the config's dataclass, stored as `<config_name>_schema` for its defaults list: a TrainConfig
    (or one extending it with a feature's settings) is a recipe run, typed with the recipe's own schemas too;
    None: a feature's own config, whose schemas the feature registered (sparsify-bert). Raises UsageError with
    a one-line message for any mistake a user can make in the overrides.
    """
    register_schemas()
    register_user_recipes(overrides)
    if schema is not None:
        ConfigStore.instance().store(name=config_name + SCHEMA_SUFFIX, node=schema)
    overrides = quote_target(list(overrides))
    refuse_group_lists(overrides)
    try:
        with outside_hydra_job(), initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = hydra_compose(config_name, overrides=overrides, return_hydra_config=True)
    except (HydraException, OmegaConfBaseException) as err:
        raise UsageError(explain(err, overrides, config_name)) from err
    except ValueError as err:  # Hydra's own check of a malformed override (`=3`: a group with no name)
        raise UsageError(f"{' '.join(overrides)}: {one_line(str(err))}") from err
    choices = {k: v for k, v in cfg.hydra.runtime.choices.items() if not k.startswith("hydra")}
    with open_dict(cfg):
        del cfg["hydra"]
    if schema is not None and issubclass(schema, TrainConfig):
        cfg.choices, cfg.overrides = choices, overrides
        return typed(cfg, schema)
    validate(cfg)
    with open_dict(cfg):
        cfg.choices = choices  # which option of each group was composed: names the run and its row
    return cfg


@contextmanager
def outside_hydra_job() -> Iterator[None]:
    """compose() inside a Hydra job too (a search's worker composes each trial): the job's own Hydra instance,
    which refuses a second initialization, is set aside meanwhile and put back after."""
    outer = Singleton._instances.pop(GlobalHydra, None)
    try:
        yield
    finally:
        if outer is not None:
            GlobalHydra.set_instance(outer)


def quote_target(overrides: list[str]) -> list[str]:
    """trainer.target=val_acc>=0.93 as written: Hydra's override grammar needs the comparison quoted."""
    key = "trainer.target="
    return [
        f"{key}'{o[len(key) :]}'"
        if o.startswith(key) and re.search(r"[<>=]", o[len(key) :]) and "'" not in o
        else o
        for o in overrides
    ]


def refuse_group_lists(overrides: list[str]) -> None:
    """`optimizer=[adamw,sgd]` would merge both options into one config: a run takes one option per group."""
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException as err:
        raise UsageError(one_line(str(err))) from err
    for override in parsed:
        group = override.key_or_group
        if (CONF_DIR / group).is_dir() and isinstance(override.value(), list):
            raise UsageError(
                f"{group} takes one option (got {override.input_line}); to compare several, "
                f"sweep them: adamrun sweep '{group}={','.join(map(str, override.value()))}'"
            )


def recipe_module(name: str) -> ModuleType:
    """A recipe's module: its SCHEMAS and build(cfg, device) (the contract in runner/recipe.py). A name with
    a dot is a module path (a user's own recipe, `recipe=my_pkg.my_recipe`); any other is a built-in,
    recipes/<name>.py with conf/recipe/<name>.yaml."""
    if "." in name:
        user_recipe_config(name)  # the module exists and has its config
        return import_frozen(name)  # torch, the first time
    if not (CONF_DIR / "recipe" / f"{name}.yaml").exists():
        raise UsageError(f"unknown recipe '{name}'; valid choices: {', '.join(group_options('recipe'))}")
    return import_frozen(f"recipes.{name}")


def user_recipe_config(name: str) -> Path:
    """A user's recipe `pkg.module` keeps its config beside it, `pkg/module.yaml` (written as a file of
    conf/recipe/ is). Found without importing the module: composing a config needs no torch."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        spec = None
    if spec is None or spec.origin is None:
        raise UsageError(
            f"unknown recipe '{name}': no module {name} on the Python path (install its package or add it to "
            f"PYTHONPATH); built-in choices: {', '.join(group_options('recipe'))}"
        )
    path = Path(spec.origin).with_suffix(".yaml")
    if not path.is_file():
        raise UsageError(f"recipe {name} has no config: {path} (a recipe module keeps its YAML beside it)")
    return path


def register_user_recipes(overrides: list[str] | tuple[str, ...]) -> None:
    """Each `recipe=pkg.module` of the command line (a sweep's `recipe=a.x,b.y` too) becomes an option of the
    recipe group in Hydra's ConfigStore, so composition, sweeps and every launcher's workers (which receive
    the ConfigStore) find it as they find conf/recipe/<name>.yaml."""
    for override in overrides:
        key, _, value = override.partition("=")
        if key.lstrip("+") != "recipe":
            continue
        for name in (v.strip() for v in value.split(",")):
            if "." in name:
                config = OmegaConf.load(user_recipe_config(name))
                ConfigStore.instance().store(group="recipe", name=name, node=config, package="_global_")


def typed(plain: DictConfig, top: type = TrainConfig) -> DictConfig:
    """The config merged onto its schemas (runner's and the recipe's), range-checked and finite.

    The one validation of a train config: compose() runs it on the composed config and a resumed run on the
    config.yaml it saved, so a hand-edited file fails the same way a bad override does.
    """
    base = OmegaConf.structured(top)
    try:
        schemas = recipe_module(str(plain.recipe.name)).SCHEMAS
        base.schedule = OmegaConf.structured(SCHEDULES[str(plain.schedule.name)])
        base.optimizer, base.trainer = (
            OmegaConf.structured(OptimizerConfig),
            OmegaConf.structured(TrainerConfig),
        )
    except (OmegaConfBaseException, KeyError) as err:
        raise UsageError(f"the config names no valid recipe or schedule ({one_line(str(err))})") from err
    for key in ("data", "model"):
        check(
            key in schemas or plain.get(key) is None,
            key,
            f"is not read by recipe {plain.recipe.name}; leave it out",
            plain.get(key, {}).get("name") if isinstance(plain.get(key), DictConfig) else plain.get(key),
        )
    for key, schema in schemas.items():
        setattr(base, key, OmegaConf.structured(schema))
    check(
        "name" in {f.name for f in dataclasses.fields(schemas.get("data", TrainConfig))},
        f"recipe {plain.recipe.name}'s SCHEMAS",
        "needs a data schema with a `name` field (a run's folder and row name its data)",
        sorted(schemas),
    )
    try:  # a plain container: Hydra's `+key` additions would otherwise bring their own, open, nodes along
        cfg = OmegaConf.merge(base, OmegaConf.to_container(plain))
    except ConfigKeyError as err:
        raise UsageError(unknown_key(err, base)) from err
    except OmegaConfBaseException as err:
        raise UsageError(one_line(str(err))) from err
    validate(cfg)
    return cfg


def validate(cfg: DictConfig) -> None:
    """Every number finite, then the dataclasses instantiated, which runs each schema's range checks."""
    try:
        check_finite(cfg)
        OmegaConf.to_object(cfg)
    except OmegaConfBaseException as err:
        raise UsageError(one_line(str(err))) from err
    if "schedule" in cfg and "optimizer" in cfg:
        untuned = cfg.schedule.warmup != Warmup.none and cfg.schedule.warmup_steps is None
        check(
            not (untuned and cfg.optimizer.family != Family.adam),
            "schedule.warmup_steps",
            "must be set for the SGD family (the untuned 2/(1-beta2) rule needs Adam's beta2)",
            None,
        )


def unknown_key(err: ConfigKeyError, base: DictConfig) -> str:
    """ "Key 'lrr' not in 'OptimizerConfig'" as the same line a plain typo gets, with the valid keys."""
    key = str(err.full_key)
    parent = OmegaConf.select(base, key.rpartition(".")[0]) if "." in key else base
    valid = [k for k in parent if k not in ("choices", "overrides")] if isinstance(parent, DictConfig) else []
    return f"unknown config key '{key}'; valid keys here: {', '.join(valid)}"


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
        with outside_hydra_job(), initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = hydra_compose(config_name, overrides=other_overrides)
    except (HydraException, OmegaConfBaseException):
        return []
    parent = OmegaConf.select(cfg, key.rpartition(".")[0]) if "." in key else cfg
    return [k for k in parent if k != "hydra"] if isinstance(parent, DictConfig) else []
