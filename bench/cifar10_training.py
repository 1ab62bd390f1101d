"""make bench, section `training`: images/s of the shared loop running the CIFAR-10 recipe against the plain
loop a user would write (DataLoader over a TensorDataset, fp32, default torch.optim.AdamW), on the same net and
images; plus the loop with each speed-up switched off, to show what gave it. All variants run in this one
process, interleaved, `bench.repeats` times; the CSV reports the median and range.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from bench.harness import bench_config
from recipes import cifar10
from runner.config import settled
from runner.loop import fit
from runner.results import write_text

LOOP_VARIANTS = {  # name: overrides of the recipe's defaults (layout and precision measured, fused optimizer)
    "recipe loop (layout + precision measured, fused)": [],
    "recipe loop, fp32 + channels_last": ["trainer.precision=fp32", "recipe.channels_last=true"],
    "recipe loop, bf16, no channels_last": ["trainer.precision=bf16", "recipe.channels_last=false"],
    "recipe loop, fp32, no channels_last, for-loop optimizer": [
        "trainer.precision=fp32",
        "recipe.channels_last=false",
        "optimizer.impl=for_loop",
    ],
}
PLAIN = "plain loop (DataLoader, fp32, default AdamW)"


def recipe_loop_speed(cfg: DictConfig, overrides: list[str], out: Path) -> float:
    """Images/s of the second epoch of the real loop (fit), the first having warmed everything up."""
    variant = bench_config([*overrides_of(cfg), *overrides, "trainer.epochs=2", "recipe.tta=none"])
    task = cifar10.build(variant, torch.device("cpu"))
    outcome = fit(task, settled(variant, task.settled), out / f"run-{time.monotonic_ns()}")
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
    subset = bench_config(overrides_of(cfg))
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


def run(cfg: DictConfig, out: Path, env: dict) -> list[Path]:
    """The training loop against the plain loop: train_throughput.csv."""
    throughput = training_throughput(cfg).assign(**env)
    write_text(out / "train_throughput.csv", throughput.to_csv(index=False))
    print(throughput.to_string(index=False), flush=True)
    return [out / "train_throughput.csv"]
