"""`adamrun bench`: its config schema, the machine it runs on, and the sections it runs, one module each whose
`run(cfg, out, env) -> [CSV paths]` times its part and writes its CSVs under bench.out_dir."""

from __future__ import annotations

import importlib
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import MISSING, DictConfig, OmegaConf

from runner.config import CONF_DIR, TrainConfig, check, compose, validate

REPO = Path(__file__).resolve().parents[1]
SECTIONS = {  # bench.sections name: the module that times it
    "training": "bench.cifar10_training",
    "optimizer": "bench.cifar10_optimizer",
    "language_model": "bench.wikitext2_language_model",
    "cars": "bench.cars",
    "sweeps": "bench.sweeps",
    "time_to_accuracy": "bench.time_to_accuracy",
}


@dataclass
class BenchSettings:
    sections: list[str] = MISSING  # which parts of make bench to run (SECTIONS above)
    out_dir: str = MISSING
    train_images: int = MISSING
    repeats: int = MISSING
    optimizer_steps: int = MISSING
    warmup_steps: int = MISSING

    def __post_init__(self) -> None:
        for key in ("train_images", "repeats", "optimizer_steps"):
            check(getattr(self, key) > 0, f"bench.{key}", "must be > 0", getattr(self, key))
        for name in self.sections:
            check(name in SECTIONS, "bench.sections", f"must name sections of {', '.join(SECTIONS)}", name)


@dataclass
class BenchTrainConfig(TrainConfig):
    bench: BenchSettings = MISSING


def bench_config(overrides: list[str]) -> DictConfig:
    """conf/bench_train.yaml: the recipe's train config plus the bench's own settings."""
    return compose(overrides, "bench_train", BenchTrainConfig)


def environment() -> dict:
    """The machine beside every figure: figures are compared only within one run on one machine."""
    cpu_info = Path("/proc/cpuinfo")
    lines = cpu_info.read_text().splitlines() if cpu_info.exists() else []
    cpu = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "")
    return {
        "cpu": cpu or platform.processor(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }


def section_config(name: str, schema: type) -> DictConfig:
    """conf/bench_<name>.yaml, checked against the section's schema (a dataclass with range checks)."""
    cfg = OmegaConf.merge(OmegaConf.structured(schema), OmegaConf.load(CONF_DIR / f"bench_{name}.yaml"))
    validate(cfg)
    return cfg


def adamrun(verb: str, *arguments: str) -> list[str]:
    """The command line of the real command, as a section runs it: a process of its own."""
    return [sys.executable, "-m", "runner.cli", verb, *arguments]


def launched(command: list[str]) -> tuple[float, str]:
    """Run one command to its end: its wall time in seconds (process start included) and its stdout."""
    started = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    wall_s = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(failure(command, done.returncode, done.stdout + done.stderr))
    return wall_s, done.stdout


def timed(command: list[str]) -> float:
    """Run one command to its end; its wall time in seconds (process start included)."""
    return launched(command)[0]


def failure(command: list[str], code: int, output: str) -> str:
    tail = "\n".join(output.strip().splitlines()[-15:])
    return f"bench: `{' '.join(command[2:])}` exited with {code}:\n{tail}"


def main(overrides: list[str]) -> Path:
    cfg = bench_config(overrides)
    out = Path(cfg.bench.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    env = environment()
    for name in cfg.bench.sections:
        importlib.import_module(SECTIONS[name]).run(cfg, out, env)
    return out
