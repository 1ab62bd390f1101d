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
    first_seed_of,
    grid_seeds_of,
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
class Replicate:
    study: str = MISSING  # a study of `studies`, run again ...
    first_seed: int = MISSING  # ... on confirmation seeds from here: disjoint from the study's own


@dataclass
class ReproduceConfig:
    studies: list[str] = MISSING  # `adamrun reproduce` runs these, in this order
    replicate: Replicate = MISSING  # then this one again on other seeds: does its verdict hold?
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
    asked, replica_name = own.get("study", "all"), f"{settings.replicate.study}_replica"
    names = (
        settings.studies if asked == "all" else [settings.replicate.study if asked == replica_name else asked]
    )
    for name in names:
        if name not in group_options("study"):
            raise UsageError(
                f"unknown study '{name}'; valid choices: all, {', '.join(group_options('study'))}, {replica_name}"
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
    if asked == "all":
        studies.append(replica(settings.replicate, scale, shared, studies))
    elif asked == replica_name:  # the replica alone (its grids are the original's: only its seeds are new)
        studies = [replica(settings.replicate, scale, shared, studies)]
    for study in studies:
        check_arms(study, shared)
        check_seeds(study, shared)
    out_dir = Path(own.get("out_dir", settings.out_dir)).expanduser().resolve()
    work_dir = Path(own.get("work_dir", settings.work_dir)).expanduser().resolve()
    return Plan(settings, scale, shared, studies, extra, config_overrides, out_dir, work_dir)


def replica(replicate: Replicate, scale: str, shared: Shared, studies: list[Study]) -> Study:
    """The replicated study: the same config on confirmation seeds from replicate.first_seed, which must not
    meet the study's own."""
    original = next((s for s in studies if s.name == replicate.study), None)
    check(original is not None, "replicate.study", "must be one of studies", replicate.study)
    own = original.scale.first_seed or shared.sequential.first_seed
    cap = (original.scale.stages or shared.sequential.stages)[-1]
    check(abs(replicate.first_seed - own) >= cap, "replicate.first_seed",
          f"must be {cap}+ away from the study's own first seed {own}: the seed sets are disjoint", replicate.first_seed)  # fmt: skip
    copy = load_study(replicate.study, scale, [f"study.first_seed={replicate.first_seed}"])
    return Study(f"{replicate.study}_replica", copy.cfg, copy.scale, replica_of=replicate.study)


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
    where, schema = f"{path.name} {scale}", kinds()[kind].scale
    block = typed(OmegaConf.create(OmegaConf.to_container(scales[scale])), schema, where)  # every schema key
    block = typed(apply_overrides(block, overrides, "study", f" (study {name})"), schema, where)
    meta = OmegaConf.masked_copy(node, [k for k in node if k != "scales"])
    meta.scales = {}
    return Study(name, typed(meta, StudyConfig, path.name), block)


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


def check_seeds(study: Study, shared: Shared) -> None:
    """A study's confirmation seeds are fresh: above every seed its grids ran."""
    grids, first = grid_seeds_of(study, shared), first_seed_of(study, shared)
    check(first > max(grids), f"study {study.name}: first_seed",
          f"must be above every grid seed ({max(grids)}): confirmation seeds are fresh", first)  # fmt: skip


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
    clock = Clock(plan.work_dir / f"{study.name}-{plan.scale}.timing.json")
    ctx = Context(plan, study, echo, tick=clock.tick)
    echo(
        f"study {study.name} ({plan.scale}; about {study.scale.minutes:g} min on 2 idle cores): {study.cfg.claim}"
    )
    rows, curves, details = kinds()[study.cfg.kind].run(ctx)
    if ctx.trained:
        clock.tick()  # the analysis between the sweeps
    timing = clock.timing()
    out = plan.out_dir
    write_table(out / f"{study.name}_runs.csv", rows, RUN_COLUMNS)
    write_table(out / f"{study.name}_curves.csv", curves, CURVE_COLUMNS)
    write_settings(out / f"{study.name}_settings.csv", study_settings(ctx, details, timing))
    echo(f"study {study.name}: done in {timing['wall_s'] / 60:.1f} min ({timing['segments']} segment(s))")


class Clock:
    """A study's wall and CPU time in its timing file, added after every sweep that trained (also one that a
    signal stopped) and at the segment's end: a study killed and resumed loses at most the sweep it was in.
    A segment that finds everything done adds nothing; the load average is the first segment's at its start.
    CPU counts the whole process tree (the sweeps' joblib workers live across studies); a timing file begun by
    a clock that counted only ended children says so (`cpu_tree` false), and the report shows no CPU for it."""

    def __init__(self, path: Path) -> None:
        self.path, self.load, self.segment_counted = path, os.getloadavg()[0], False
        self.mark = (time.perf_counter(), cpu_seconds())

    def tick(self) -> None:
        now = (time.perf_counter(), cpu_seconds())
        timing = self.timing()
        timing |= {
            "wall_s": round(timing["wall_s"] + now[0] - self.mark[0], 1),
            "cpu_s": round(timing.get("cpu_s", 0.0) + now[1] - self.mark[1], 1),
            "segments": timing["segments"] + (0 if self.segment_counted else 1),
            "cpu_tree": timing.get("cpu_tree", False),
        }
        results.write_json(self.path, timing)
        self.mark, self.segment_counted = now, True

    def timing(self) -> dict:
        if not self.path.exists():
            return {"wall_s": 0.0, "cpu_s": 0.0, "segments": 0, "load": self.load, "cpu_tree": True}
        return json.loads(self.path.read_text())


def cpu_seconds() -> float:
    """CPU seconds of this process, of its children that ended, and of its descendants still alive (the
    sweeps' worker processes, which outlive a study): a delta of two readings is what the tree spent between."""
    import resource

    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    ended = own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime
    return ended + sum(living_cpu_seconds(os.getpid()))


def living_cpu_seconds(root: int) -> list[float]:
    """CPU seconds (own and of reaped children) of each live descendant of `root`, read from /proc (Linux;
    elsewhere none are seen, and CPU counts ended children only)."""
    parents: dict[int, int] = {}
    spent: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):  # ended while read
            continue
        pid = int(stat.parent.name)
        parents[pid] = int(fields[1])  # ppid; utime, stime, cutime, cstime are fields 14-17 of stat
        spent[pid] = sum(int(f) for f in fields[11:15]) / tick
    tree, frontier = set(), {root}
    while frontier:
        frontier = {pid for pid, ppid in parents.items() if ppid in frontier} - tree
        tree |= frontier
    return [spent[pid] for pid in tree]


def rules_at(commit: str, settings: dict) -> tuple[dict, dict]:
    """(the study's block, the shared sequential design) as conf/study/ and conf/reproduce.yaml held them at
    `commit`, typed as a run types them: what a study's settings must have been judged by."""
    import subprocess

    def shown(path: str) -> DictConfig:
        done = subprocess.run(["git", "show", f"{commit}:{path}"], cwd=CONF_DIR.parent, capture_output=True,
                              text=True, check=False)  # fmt: skip
        if done.returncode != 0:
            raise UsageError(
                f"{path} at {commit} is not in this checkout's history ({one_line(done.stderr)})"
            )
        return OmegaConf.create(done.stdout)

    name = settings.get("replica_of") or settings["study"]
    node, shared = shown(f"conf/study/{name}.yaml"), shown("conf/reproduce.yaml")
    block = OmegaConf.create(OmegaConf.to_container(node.scales[settings["scale"]]))
    if settings.get("replica_of"):
        block.first_seed = shared.replicate.first_seed
    sequential = OmegaConf.to_container(shared.scales[settings["scale"]].sequential)
    return typed_rules(OmegaConf.to_container(block), node.kind, name), sequential


def typed_rules(block: dict, kind: str, name: str) -> dict:
    """A study's rules typed by today's schema: keys added since they were recorded take their defaults, so
    rules recorded before a key existed compare equal to the same files read today."""
    return OmegaConf.to_container(typed(OmegaConf.create(block), kinds()[kind].scale, name))


def preregistration(name: str) -> str:
    """The commit that last changed this study's rules (conf/study/<name>.yaml, conf/reproduce.yaml), with
    -dirty when they have uncommitted changes: a study's verdict cites the rules it was judged by, which a later
    commit of another study's rules does not change."""
    import subprocess

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", *args], cwd=CONF_DIR.parent, capture_output=True, text=True, check=False
        )
        return done.stdout.strip() if done.returncode == 0 else ""

    files = (f"conf/study/{name}.yaml", "conf/reproduce.yaml")
    sha = git("log", "-1", "--format=%H", "--", *files)
    if not sha:
        return "unknown (not a git checkout)"
    return sha + ("-dirty" if git("status", "--porcelain", "--", *files) else "")


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
        "replica_of": study.replica_of,
        "preregistered": preregistration(study.replica_of or study.name),
        "rules": OmegaConf.to_container(study.scale),
        "wall_s": timing["wall_s"],
        "cpu_s": timing["cpu_s"] if timing.get("cpu_tree") else None,  # None: its workers were not counted
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
