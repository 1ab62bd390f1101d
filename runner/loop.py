"""The one training loop every recipe shares: one short loop, read top to bottom (nanoGPT's train.py).

A recipe hands `fit` a Task (model, batches, loss, evaluation); `fit` builds the optimizer and schedule from the
config, trains with bf16 autocast where it is fast, evaluates every epoch, checkpoints atomically, and resumes.
Each epoch draws its data order and augmentation from a generator seeded by (seed, epoch), and re-seeds torch's
global RNG the same way, so an epoch replayed after a resume sees exactly the same numbers: on the CPU a killed
and resumed run ends bitwise equal to an uninterrupted one.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from runner import checkpoint, results
from runner.config import Precision
from runner.errors import UsageError
from runner.optim import build_optimizer
from runner.schedule import build_schedule

Batch = tuple[torch.Tensor, ...]


@dataclass
class Task:
    """What a recipe gives the loop."""

    model: torch.nn.Module
    train_size: int  # training examples per epoch
    steps_per_epoch: int
    batches: Callable[
        [torch.Generator], Iterator[Batch]
    ]  # one epoch of training batches, order from the generator
    loss: Callable[[torch.nn.Module, Batch], torch.Tensor]  # training loss of one batch
    evaluate: Callable[[torch.nn.Module], dict[str, float]]  # test metrics, e.g. test_loss and test_acc
    after_step: Callable[[int], None] | None = None  # called after every optimizer step (pruning masks)


@dataclass
class Outcome:
    status: str  # finished | diverged | interrupted | failed
    metrics: list[dict] = field(default_factory=list)  # one row per epoch, as in metrics.jsonl


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("trainer.device=cuda but no CUDA device is visible; use trainer.device=auto or cpu")
    return torch.device(name)


def use_bf16(precision: str, device: torch.device) -> bool:
    """bf16 autocast where the hardware has bf16 arithmetic (CUDA, or CPUs with AVX512-BF16/AMX)."""
    if precision != Precision.auto:
        return precision == Precision.bf16
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return (
        torch.ops.mkldnn._is_mkldnn_bf16_supported()
    )  # without native bf16 the emulation is slower than fp32


def autocast(cfg: DictConfig, device: torch.device):
    if use_bf16(cfg.trainer.precision, device):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def epoch_seed(seed: int, epoch: int) -> int:
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


def progress_bar(enabled: bool) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}  lr {task.fields[lr]:.2e}  {task.fields[speed]:,.0f} ex/s"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        disable=not enabled,
    )


def resume_state(
    task: Task, optimizer: torch.optim.Optimizer, cfg: DictConfig, run_dir: Path
) -> tuple[int, list]:
    """Load the last checkpoint into the model and optimizer: (epochs done, their metrics)."""
    state = checkpoint.load(run_dir) if cfg.resume else None
    if state is None:
        return 0, []
    task.model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    checkpoint.restore_rng_states(state["rng"])
    return state["epoch"], state["metrics"]


def fit(task: Task, cfg: DictConfig, run_dir: Path) -> Outcome:
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    device = next(task.model.parameters()).device
    model = task.model
    optimizer = build_optimizer(model, cfg, task.train_size)
    schedule = build_schedule(optimizer, cfg, task.steps_per_epoch)
    first_epoch, history = resume_state(task, optimizer, cfg, run_dir)
    results.write_config(run_dir, cfg)
    results.write_metrics(run_dir, history)
    step = first_epoch * task.steps_per_epoch
    with progress_bar(cfg.trainer.progress) as bar:
        bar_task = bar.add_task(
            "train", total=schedule.total_steps, completed=step, loss=math.nan, lr=0.0, speed=0.0
        )
        try:
            for epoch in range(first_epoch, cfg.trainer.epochs):
                torch.manual_seed(epoch_seed(cfg.seed, epoch))  # dropout and any other global-RNG use
                generator = torch.Generator().manual_seed(epoch_seed(cfg.seed, epoch))
                model.train()
                started, examples, loss_sum = time.perf_counter(), 0, torch.zeros((), device=device)
                for batch in task.batches(generator):
                    eta = schedule.apply(optimizer, step)
                    with autocast(cfg, device):
                        loss = task.loss(model, batch)
                    loss.backward()
                    if cfg.trainer.grad_clip is not None:
                        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.trainer.grad_clip)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                    if task.after_step is not None:
                        task.after_step(step)
                    step, examples, loss_sum = step + 1, examples + len(batch[0]), loss_sum + loss.detach()
                    if step % cfg.trainer.log_every == 0:
                        if not torch.isfinite(loss):  # synchronizes, so only every log_every steps
                            return Outcome("diverged", history)
                        speed = examples / (time.perf_counter() - started)
                        bar.update(
                            bar_task, completed=step, loss=loss.item(), lr=eta * cfg.optimizer.lr, speed=speed
                        )
                train_s = time.perf_counter() - started
                train_loss = (loss_sum / task.steps_per_epoch).item()
                if not math.isfinite(train_loss):
                    return Outcome("diverged", history)
                model.eval()
                evaluated = time.perf_counter()
                with torch.no_grad(), autocast(cfg, device):
                    metrics = task.evaluate(model)
                row = {"epoch": epoch + 1, "train_loss": train_loss, **metrics, "lr": eta * cfg.optimizer.lr}
                row |= {
                    "train_s": train_s,
                    "eval_s": time.perf_counter() - evaluated,
                    "examples_per_s": examples / train_s,
                }
                history.append(row)
                checkpoint.save(run_dir, checkpoint_state(model, optimizer, step, epoch + 1, history, cfg))
                results.append_metrics(run_dir, row)
                bar.update(bar_task, completed=step)
                bar.console.print(epoch_line(row))
        except KeyboardInterrupt:
            return Outcome("interrupted", history)
    return Outcome("finished", history)


def checkpoint_state(model, optimizer, step: int, epoch: int, history: list, cfg: DictConfig) -> dict:
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": {"name": cfg.schedule.name, "step": step},  # the schedule is a pure function of the step
        "step": step,
        "epoch": epoch,
        "rng": checkpoint.rng_states(),
        "metrics": history,
        "config": OmegaConf.to_container(cfg, resolve=True),
    }


def epoch_line(row: dict) -> str:
    shown = {k: v for k, v in row.items() if k not in ("epoch", "lr")}
    return f"epoch {row['epoch']}: " + "  ".join(f"{k} {v:.4g}" for k, v in shown.items())


def resumed_config(cfg: DictConfig) -> DictConfig:
    """resume=true continues the run in run_dir under the config it was started with (saved in the run)."""
    if cfg.run_dir is None or not (Path(cfg.run_dir) / "config.yaml").exists():
        raise UsageError("resume=true needs run_dir=<a run directory holding config.yaml>")
    saved = OmegaConf.load(Path(cfg.run_dir) / "config.yaml")
    overrides = {"resume": True, "run_dir": cfg.run_dir, "trainer": {"progress": cfg.trainer.progress}}
    return OmegaConf.merge(saved, overrides)


def train(cfg: DictConfig) -> dict:
    """One run of cfg.recipe: builds the task, fits it, and records the run's row in results_dir/runs.csv."""
    import importlib

    if cfg.resume:
        cfg = resumed_config(cfg)
    run_dir = Path(cfg.run_dir) if cfg.run_dir else results.new_run_dir(cfg)
    if cfg.trainer.threads is not None:
        torch.set_num_threads(cfg.trainer.threads)
    table = Path(cfg.results_dir) / "runs.csv"
    started, outcome = time.perf_counter(), Outcome("failed")
    try:
        recipe = importlib.import_module(f"recipes.{cfg.recipe.name}")
        task = recipe.build(cfg, resolve_device(cfg.trainer.device))
        results.upsert_row(table, results.run_row(cfg, run_dir, "running", [], 0.0))
        outcome = fit(task, cfg, run_dir)
    finally:
        row = results.run_row(cfg, run_dir, outcome.status, outcome.metrics, time.perf_counter() - started)
        if run_dir.exists():
            results.upsert_row(table, row)
    return row
