"""`adamrun reproduce`: the papers' claims as studies of normal runs, a verdict each, and one report.

A study is a config in conf/study/ (its claim, its source, its kind, and per scale its arms, seeds and rules);
the trials every study shares (data, subset sizes, widths, epochs; the lr x wd grid of each optimizer) live in
conf/reproduce.yaml. `plan(arguments)` composes and checks the configs the command line asks for, and
`run(plan)` composes one trial of each of their sweeps before any trial runs, then runs each study by its kind
(studies/<kind>.py, through the resumable sweeps of studies/trials.py). A study writes <study>_runs.csv,
<study>_curves.csv and <study>_settings.csv into out_dir; `write_report(out_dir)` (studies/report.py) then
draws every PNG and writes report.md from those CSVs alone, verdicts included, so the committed report is what
the committed CSVs give.
"""

from __future__ import annotations

import json
import math
import os
import platform
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from runner import results
from runner.config import CONF_DIR, check, group_options, one_line
from runner.errors import UsageError
from runner.sweep import key_of, value_of
from studies import KINDS, kinds
from studies.report import write_report
from studies.trials import (
    BASE_SWEEP,
    CURVE_COLUMNS,
    RUN_COLUMNS,
    Context,
    Plan,
    Shared,
    Study,
    merged,
    write_settings,
    write_table,
)

OWN_KEYS = (
    "study",
    "scale",
    "out_dir",
    "work_dir",
    "resume",
)  # the command's own keys; study.*, shared.* too


# ------------------------------------------------------------------------------------------------ schemas
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
class StudyConfig:
    name: str = MISSING
    kind: str = MISSING  # how it runs and is judged: one of studies.KINDS
    claim: str = MISSING
    source: str = MISSING  # paper and figure
    paper: str = MISSING  # what the source reports
    untested: str = MISSING  # the part of the claim this study cannot test ("" if none)
    scales: Any = MISSING  # offline / full: the kind's schema


# ------------------------------------------------------------------------------------------------ plan
def plan(arguments: list[str]) -> Plan:
    """The studies the command line asks for, their configs composed and checked before any trial runs."""
    own = {key_of(a): value_of(a) for a in arguments if key_of(a) in OWN_KEYS}
    config_overrides = [a for a in arguments if key_of(a).startswith(("study.", "shared."))]
    extra = [a for a in arguments if key_of(a) not in OWN_KEYS and a not in config_overrides]
    check(own.get("resume", "true") == "true", "resume",
          "can only be true: running the command again continues every study where it stopped", own.get("resume"))  # fmt: skip
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
        name, typed(meta, StudyConfig, path.name), typed(block, kinds()[kind].scale, f"{path.name} {scale}")
    )


BASE_KEYS = ("data.train_limit", "data.val_size", "trainer.epochs", "optimizer.decay_mode")  # the base sweep
# file sets these for its own grid: every base sets them again, so no trial inherits them unawares


def check_bases(shared: Shared) -> None:
    for name, base in shared.bases.items():
        given = {key_of(o) for o in base.trials}
        missing = [k for k in BASE_KEYS if k not in given]
        check(not missing, f"shared.bases.{name}.trials", f"must set {', '.join(missing)}", list(base.trials))


def check_arms(study: Study, shared: Shared) -> None:
    """The study's arms are shared arms on known bases, and meet what more its kind asks of them."""
    kind = kinds()[study.cfg.kind]
    for arm in kind.arms(study.scale):
        check(arm in shared.arms, f"study {study.name}: arm", f"must be one of {', '.join(shared.arms)}", arm)
        check(
            shared.arms[arm].base in shared.bases,
            f"shared.arms.{arm}.base",
            f"must be one of {', '.join(shared.bases)}",
            shared.arms[arm].base,
        )
    kind.check(study, shared)


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
        for label, overrides in kinds()[study.cfg.kind].sweeps(ctx):
            try:
                compose([f"sweep={BASE_SWEEP}", *first_trial(merged([*overrides, *plan.extra]))])
            except UsageError as err:
                raise UsageError(f"study {study.name}, sweep {label}: {err}") from err
            composed += 1
    return composed


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
    rows, curves, details = kinds()[study.cfg.kind].run(ctx)
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
