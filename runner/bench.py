"""make bench: how fast is each part of adamrun, and why, on this machine; every figure against a baseline
timed in the same run. `adamrun bench` runs the sections in bench.sections, each in its own module with its own
settings (conf/bench_<section>.yaml, loaded by `section_config`); this module holds the runner and the first
two sections, about the CIFAR-10 recipe:

1. Training throughput (images/s) of the shared loop running the CIFAR-10 recipe, against the plain loop a user
   would write (DataLoader over a TensorDataset, fp32, default torch.optim.AdamW), on the same net and images;
   plus the loop with each speed-up switched off, to show what gave it.
2. torch.optim step time, fused vs foreach vs for-loop, on the recipe net's parameters.
All variants run in this one process, interleaved, `bench.repeats` times; the CSVs report the median and range.
"""

from __future__ import annotations

import importlib
import platform
import statistics
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from recipes import cifar10
from runner.config import compose
from runner.loop import fit
from runner.optim import build_optimizer
from runner.results import write_text

LOOP_VARIANTS = {  # name: overrides of the recipe's defaults (bf16 autocast + channels_last + fused optimizer)
    "recipe loop (bf16 + channels_last + fused)": [],
    "recipe loop, fp32 + channels_last": ["trainer.precision=fp32"],
    "recipe loop, bf16, no channels_last": ["recipe.channels_last=false"],
    "recipe loop, fp32, no channels_last, for-loop optimizer": [
        "trainer.precision=fp32",
        "recipe.channels_last=false",
        "optimizer.impl=for_loop",
    ],
}
PLAIN = "plain loop (DataLoader, fp32, default AdamW)"


def environment() -> dict:
    cpu_info = Path("/proc/cpuinfo")
    lines = cpu_info.read_text().splitlines() if cpu_info.exists() else []
    cpu = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "")
    return {
        "cpu": cpu or platform.processor(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }


def recipe_loop_speed(cfg: DictConfig, overrides: list[str], out: Path) -> float:
    """Images/s of the second epoch of the real loop (fit), the first having warmed everything up."""
    variant = compose([*overrides_of(cfg), *overrides, "trainer.epochs=2", "recipe.tta=false"], "bench_train")
    task = cifar10.build(variant, torch.device("cpu"))
    outcome = fit(task, variant, out / f"run-{time.monotonic_ns()}")
    return outcome.metrics[-1]["examples_per_s"]


def plain_loop_speed(cfg: DictConfig) -> float:
    """What a user would write first: per-batch DataLoader, fp32, torch.optim.AdamW with its defaults."""
    images = cifar10.load_images(cfg.data)
    x = images.train_x.float() / 255
    x = (x - x.mean()) / x.std()
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x, images.train_y), batch_size=cfg.trainer.batch_size, shuffle=True
    )
    torch.manual_seed(cfg.seed)
    model = cifar10.make_net(x.shape[1], images.classes, cfg.recipe)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=cfg.optimizer.lr, weight_decay=cfg.optimizer.weight_decay
    )
    for _ in range(2):  # time the second pass, as for the recipe loop
        started, seen = time.perf_counter(), 0
        for xb, yb in loader:
            loss = F.cross_entropy(model(xb), yb, label_smoothing=cfg.recipe.label_smoothing)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            seen += len(yb)
    return seen / (time.perf_counter() - started)


def overrides_of(cfg: DictConfig) -> list[str]:
    return [f"data.train_limit={cfg.bench.train_images}", "data.test_limit=1000", "trainer.progress=false"]


def training_throughput(cfg: DictConfig) -> pd.DataFrame:
    speeds: dict[str, list[float]] = {PLAIN: [], **{name: [] for name in LOOP_VARIANTS}}
    subset = compose(overrides_of(cfg), "bench_train")
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(cfg.bench.repeats):
            print(f"training throughput, pass {repeat + 1}/{cfg.bench.repeats}", flush=True)
            speeds[PLAIN].append(plain_loop_speed(subset))
            for name, overrides in LOOP_VARIANTS.items():
                speeds[name].append(recipe_loop_speed(cfg, overrides, Path(tmp)))
    plain = statistics.median(speeds[PLAIN])
    return pd.DataFrame(
        [
            {
                "variant": name,
                "images_per_s": statistics.median(values),
                "min_images_per_s": min(values),
                "max_images_per_s": max(values),
                "ratio_vs_plain": statistics.median(values) / plain,
                "batch_size": cfg.trainer.batch_size,
                "images": cfg.bench.train_images,
                "repeats": len(values),
            }
            for name, values in speeds.items()
        ]
    )


def optimizer_step_times(cfg: DictConfig) -> pd.DataFrame:
    model = cifar10.make_net(1, 10, cfg.recipe)
    params = sum(p.numel() for p in model.parameters())
    rows = []
    for name in ("adamw", "sgdw"):
        times: dict[str, list[float]] = {impl: [] for impl in ("fused", "foreach", "for_loop")}
        for _ in range(cfg.bench.repeats):
            for impl in times:
                times[impl] += step_times(
                    model, compose([f"optimizer={name}", f"optimizer.impl={impl}"], "bench_train"), cfg
                )
        slowest = statistics.median(times["for_loop"])
        for impl, values in times.items():
            rows.append(
                {
                    "optimizer": name,
                    "impl": impl,
                    "ms_per_step": statistics.median(values) * 1e3,
                    "p90_ms": statistics.quantiles(values, n=10)[-1] * 1e3,
                    "speedup_vs_for_loop": slowest / statistics.median(values),
                    "params": params,
                }
            )
    return pd.DataFrame(rows)


def step_times(model: torch.nn.Module, cfg: DictConfig, bench_cfg: DictConfig) -> list[float]:
    optimizer = build_optimizer(model, cfg)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    times = []
    for i in range(bench_cfg.bench.warmup_steps + bench_cfg.bench.optimizer_steps):
        started = time.perf_counter()
        optimizer.step()
        if i >= bench_cfg.bench.warmup_steps:
            times.append(time.perf_counter() - started)
    return times


def run(cfg: DictConfig, out: Path, env: dict) -> list[Path]:
    """The CIFAR-10 recipe's sections: optimizer steps, then the training loop against the plain loop."""
    steps = optimizer_step_times(cfg).assign(**env)
    write_text(out / "optimizer_step.csv", steps.to_csv(index=False))
    print(steps.to_string(index=False), flush=True)
    throughput = training_throughput(cfg).assign(**env)
    write_text(out / "train_throughput.csv", throughput.to_csv(index=False))
    print(throughput.to_string(index=False), flush=True)
    return [out / "optimizer_step.csv", out / "train_throughput.csv"]


SECTIONS = {  # name: the module whose run(cfg, out, env) -> [CSV paths] times it
    "training": "runner.bench",
    "language_model": "runner.bench_lm",
    "cars": "runner.bench_cars",
    "sweeps": "runner.bench_sweep",
}


def section_config(name: str, schema: type) -> DictConfig:
    """conf/bench_<name>.yaml, checked against the section's schema (a dataclass with range checks)."""
    from omegaconf import OmegaConf

    from runner.config import CONF_DIR, validate

    cfg = OmegaConf.merge(OmegaConf.structured(schema), OmegaConf.load(CONF_DIR / f"bench_{name}.yaml"))
    validate(cfg)
    return cfg


def main(overrides: list[str]) -> Path:
    cfg = compose(overrides, "bench_train")
    out = Path(cfg.bench.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    env = environment()
    for name in cfg.bench.sections:
        importlib.import_module(SECTIONS[name]).run(cfg, out, env)
    return out
