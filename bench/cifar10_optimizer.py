"""make bench, section `optimizer`: torch.optim's step time, fused vs foreach vs for-loop, for AdamW and SGDW on
the CIFAR-10 recipe net's parameters (random gradients), `bench.repeats` interleaved rounds.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import pandas as pd
import torch
from omegaconf import DictConfig

from bench.harness import bench_config
from recipes import cifar10
from runner.optim import build_optimizer
from runner.results import write_text


def optimizer_step_times(cfg: DictConfig) -> pd.DataFrame:
    model = cifar10.make_net(1, 10, cfg.recipe)
    params = sum(p.numel() for p in model.parameters())
    rows = []
    for name in ("adamw", "sgdw"):
        times: dict[str, list[float]] = {impl: [] for impl in ("fused", "foreach", "for_loop")}
        for _ in range(cfg.bench.repeats):
            for impl in times:
                times[impl] += step_times(
                    model, bench_config([f"optimizer={name}", f"optimizer.impl={impl}"]), cfg
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
    """The optimizer step implementations: optimizer_step.csv."""
    steps = optimizer_step_times(cfg).assign(**env)
    write_text(out / "optimizer_step.csv", steps.to_csv(index=False))
    print(steps.to_string(index=False), flush=True)
    return [out / "optimizer_step.csv"]
