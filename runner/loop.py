"""The one training loop every recipe shares: one short loop, read top to bottom (nanoGPT's train.py).

A recipe hands `fit` a Task (runner/recipe.py); `fit` builds the optimizer and schedule of each phase from the
config, trains with bf16 autocast where it is fast, evaluates (validation every `trainer.eval_every` epochs,
the test set once at the end when there is a validation split), records the time to `trainer.target`,
checkpoints atomically at every epoch end, and resumes. Each epoch draws its data order and augmentation from
a generator seeded by (seed, epoch), and re-seeds torch's global RNG the same way, so an epoch replayed after
a resume sees exactly the same numbers: on the CPU a killed and resumed run ends bitwise equal to an
uninterrupted one.

A run around it (its folder, its row, the resume policy) is runner/run.py's `train`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
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

from runner import checkpoint, optim, results, signals
from runner.config import Logger, parse_target
from runner.device import autocast
from runner.errors import UsageError
from runner.recipe import Phase, Task
from runner.schedule import build_schedule


@dataclass
class Outcome:
    status: str  # finished | diverged | interrupted | pruned
    metrics: list[dict] = field(default_factory=list)  # one row per evaluation, as in metrics.jsonl
    summary: dict = field(default_factory=dict)  # val/test metric, epochs run, time to target
    wall_s: float = 0.0  # over every segment of the run


@dataclass
class Headway:
    """How far the run has come: what a checkpoint holds besides the weights, the optimizer and the RNG."""

    epoch: int = 0  # epochs done
    step: int = 0  # optimizer steps done
    phase_start: int = 0  # the step at which the current phase began (its schedule counts from there)
    seconds: float = 0.0  # training + evaluation seconds of the epochs done (time to target counts these)
    wall_s: float = 0.0  # wall-clock seconds of the run so far, over all its segments
    history: list[dict] = field(default_factory=list)
    reached: dict = field(default_factory=dict)  # time_to_target_s, epochs_to_target, steps_to_target
    first_loss: float | None = (
        None  # the training loss of the run's first step: divergence is measured from it
    )


def diverged(loss: float, first: float, multiple: float | None) -> bool:
    """The one definition of divergence, which every command and study uses: a training loss that is not
    finite, or above `multiple` (trainer.divergence) times the run's first one. Read where the loop
    synchronizes anyway (every log_every steps, each evaluation)."""
    return not math.isfinite(loss) or (multiple is not None and loss > multiple * first)


def epoch_seed(seed: int, epoch: int) -> int:
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


def detached(state):
    """The recipe's carried state (tensors, nested in tuples and lists) cut from the graph of the last step."""
    if isinstance(state, torch.Tensor):
        return state.detach()
    if isinstance(state, tuple | list):
        return type(state)(detached(s) for s in state)
    return state


def progress_bar(enabled: bool, unit: str) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(
            "loss {task.fields[loss]:.4f}  lr {task.fields[lr]:.2e}  {task.fields[speed]:,.0f} " + unit + "/s"
        ),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        disable=not enabled,
    )


def phase_spans(task: Task, epochs: int) -> Iterator[tuple[int, Phase, int]]:
    """(index, phase, the epoch it ends at) of every phase of the run."""
    end = 0
    for index, phase in enumerate(task.run_phases(epochs)):
        end += phase.epochs
        yield index, phase, end


def evaluation_points(steps_per_epoch: int, every: float) -> set[int]:
    """Batch counts within an epoch after which to evaluate mid-epoch (epoch ends: `evaluates`)."""
    n = round(1 / every)
    return {round(k * steps_per_epoch / n) for k in range(1, n)} - {0, steps_per_epoch}


def evaluates(epochs_done: int, cfg: DictConfig) -> bool:
    """Whether the end of this epoch evaluates: every eval_every-th epoch (every epoch when eval_every <= 1),
    and always the run's last."""
    every = max(1, round(cfg.trainer.eval_every))
    return epochs_done % every == 0 or epochs_done == cfg.trainer.epochs


def max_lr(optimizer: torch.optim.Optimizer) -> float:
    """The lr the optimizer really uses this step (its largest group's: the head's, with discriminative lrs)."""
    return max(group["lr"] for group in optimizer.param_groups)


def evaluate(
    task: Task, optimizer, cfg: DictConfig, device: torch.device, splits: list[str], averaged=None
) -> dict:
    """The recipe's metrics on `splits`, of the moving average of the weights when trainer.ema keeps one."""
    model = task.model if averaged is None else averaged.module
    task.model.eval()
    model.eval()
    metrics: dict[str, float] = {}
    with torch.no_grad(), autocast(cfg, device), optim.evaluation_weights(optimizer):
        for split in splits:
            metrics |= task.evaluate(model, split)
    return metrics


def summary(task: Task, headway: Headway) -> dict:
    """The run's numbers for its row: the last validation and test values of the recipe's metric, the weights'
    norm at the end, and whether NT-ASGD ever averaged (empty for other optimizers)."""
    last = {k: v for row in headway.history for k, v in row.items()}  # each key's latest value
    return {
        "val_metric": last.get(f"val_{task.metric.name}", ""),
        "test_metric": last.get(f"test_{task.metric.name}", ""),
        "epochs_run": headway.history[-1]["epoch"] if headway.history else 0,
        "weight_norm": norm if math.isfinite(norm := optim.weight_norm(task.model)) else "",
        "averaged": max((row["averaging"] for row in headway.history if "averaging" in row), default=""),
        **headway.reached,
    }


def fit(
    task: Task,
    cfg: DictConfig,
    run_dir: Path,
    should_stop: Callable[[dict], bool] | None = None,
    prior_wall_s: float = 0.0,
    saved: dict | None = None,
) -> Outcome:
    """Train `task` as cfg says, in run_dir, from the checkpoint `saved` (checkpoint.load) when resuming.

    `should_stop(row)` sees every evaluation and may end the run early as `pruned` (a search's pruner);
    `prior_wall_s` is the wall time of the run's earlier segments, as far as the caller knows.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    model, device = task.model, next(task.model.parameters()).device
    headway = Headway(**saved["headway"]) if saved else Headway()
    if saved:
        model.load_state_dict(saved["model"])
        checkpoint.restore_rng_states(saved["rng"])
    averaged = optim.weight_average(model, cfg.trainer.ema)
    if averaged is not None and saved:
        averaged.load_state_dict(saved["ema"])
    segment_start, wall_before = time.perf_counter(), max(headway.wall_s, prior_wall_s)
    target = parse_target(cfg.trainer.target) if cfg.trainer.target else None
    mid_epoch = evaluation_points(task.steps_per_epoch, cfg.trainer.eval_every)
    board = tensorboard(run_dir, headway.step) if cfg.logger == Logger.tensorboard else None

    def evaluation(position: float, tally: Tally, optimizer) -> tuple[dict, str]:
        """Evaluate, log the row, check the target and the stop rules: (row, status to stop with or '')."""
        train_s, evaluated = tally.training_seconds(), time.perf_counter()
        metrics = evaluate(task, optimizer, cfg, device, [task.splits[0]], averaged)  # val, or test w/o val
        row = {"epoch": round(position, 6), "step": headway.step, "train_loss": tally.train_loss(), **metrics,
               "lr": max_lr(optimizer)}  # fmt: skip
        finite = all(math.isfinite(v) for v in row.values())
        status = (
            "diverged"
            if not finite or diverged(row["train_loss"], headway.first_loss, cfg.trainer.divergence)
            else ""
        )
        if target is not None and not headway.reached and target.reached(row):
            headway.reached = {"time_to_target_s": round(headway.seconds + tally.seconds(), 3),
                               "epochs_to_target": row["epoch"], "steps_to_target": headway.step}  # fmt: skip
            row |= headway.reached
            status = status or ("finished" if cfg.trainer.stop_at_target else "")
        if not status and should_stop is not None and should_stop(row):
            status = "pruned"
        at_end = status == "finished" or (not status and position == cfg.trainer.epochs)
        if at_end and "test" in task.splits and "test" not in row:
            row |= evaluate(task, optimizer, cfg, device, ["test"], averaged)  # read once per run, at its end
        eval_s = time.perf_counter() - evaluated
        tally.evaluating += eval_s
        row |= {"train_s": train_s, "eval_s": eval_s, f"{task.unit}_per_s": tally.counted / train_s}
        row |= optim.observe(optimizer, row)
        headway.history.append(row)
        if board is not None:
            for key, value in row.items():
                board.add_scalar(key, value, row["step"])
        return row, status

    def save(optimizer, phase: int) -> None:
        headway.wall_s = wall_before + time.perf_counter() - segment_start
        with signals.deferred():  # the checkpoint and its metrics, as one
            checkpoint.save(run_dir, checkpoint_state(model, optimizer, phase, headway, cfg, averaged))
            results.write_metrics(run_dir, headway.history)

    def outcome(status: str) -> Outcome:
        if board is not None:
            if status != "interrupted":  # the run has ended: its settings and results, once
                hparams(board, cfg, headway.history, status)
            board.close()
        headway.wall_s = wall_before + time.perf_counter() - segment_start
        return Outcome(status, headway.history, summary(task, headway), headway.wall_s)

    def stop(status: str, optimizer, phase: int) -> Outcome:
        """End early: at the target or pruned, the run's end state and metrics are kept; diverged, nothing."""
        if status != "diverged":
            save(optimizer, phase)
        return outcome(status)

    with progress_bar(cfg.trainer.progress, task.unit) as bar, signals.handled():
        progress = bar.add_task("train", total=cfg.trainer.epochs * task.steps_per_epoch, completed=headway.step,
                                loss=math.nan, lr=0.0, speed=0.0)  # fmt: skip
        try:
            for index, phase, end in phase_spans(task, cfg.trainer.epochs):
                if headway.epoch >= end:
                    continue
                optimizer, schedule = start_phase(task, phase, index, cfg, saved, headway)
                for epoch in range(headway.epoch, end):
                    train_mode(model, phase)
                    tally, state = Tally(torch.zeros((), device=device)), task.init_state()
                    for batch in epoch_batches(task, cfg, epoch):
                        schedule.apply(optimizer, headway.step - headway.phase_start, task.lr_scale(batch))
                        loss, state = train_step(task, optimizer, batch, state, cfg, headway.step)
                        if averaged is not None:
                            averaged.update_parameters(model)
                        headway.step += 1
                        tally.add(loss, task.count(batch))
                        if headway.first_loss is None:  # one synchronization a run
                            headway.first_loss = loss.item()
                        if headway.step % cfg.trainer.log_every == 0:
                            logged = loss.item()  # synchronizes, so only every log_every steps
                            if diverged(logged, headway.first_loss, cfg.trainer.divergence):
                                return outcome("diverged")
                            bar.update(progress, completed=headway.step, loss=logged, lr=max_lr(optimizer),
                                       speed=tally.speed())  # fmt: skip
                        if tally.batches in mid_epoch:
                            row, status = evaluation(
                                epoch + tally.batches / task.steps_per_epoch, tally, optimizer
                            )
                            if status:
                                return stop(status, optimizer, index)
                            train_mode(model, phase)
                    row, status = (
                        evaluation(epoch + 1, tally, optimizer) if evaluates(epoch + 1, cfg) else (None, "")
                    )
                    headway.epoch, headway.seconds = epoch + 1, headway.seconds + tally.seconds()
                    if status:
                        return stop(status, optimizer, index)
                    save(optimizer, index)
                    if row is not None:
                        bar.update(progress, completed=headway.step, loss=row["train_loss"], lr=row["lr"],
                                   speed=row[f"{task.unit}_per_s"])  # fmt: skip
                        if cfg.trainer.progress:
                            bar.console.print(epoch_line(row))
        except KeyboardInterrupt:
            return outcome("interrupted")
    return outcome("finished")


@dataclass
class Tally:
    """One epoch's running totals, for its evaluation rows: batches, counted items (images, tokens), loss."""

    loss_sum: torch.Tensor  # summed on the device: reading it would synchronize every step
    batches: int = 0
    counted: int = 0
    evaluating: float = 0.0  # seconds of the epoch's mid-epoch evaluations so far
    started: float = field(default_factory=time.perf_counter)

    def add(self, loss: torch.Tensor, count: int) -> None:
        self.batches, self.counted = self.batches + 1, self.counted + count
        self.loss_sum = self.loss_sum + loss.detach() * count

    def seconds(self) -> float:
        return time.perf_counter() - self.started

    def train_loss(self) -> float:
        """The mean over counted items (tokens weigh by their number, as windows vary in length)."""
        return (self.loss_sum / self.counted).item()

    def training_seconds(self) -> float:
        return self.seconds() - self.evaluating

    def speed(self) -> float:
        return self.counted / self.training_seconds()


def start_phase(task: Task, phase: Phase, index: int, cfg: DictConfig, saved: dict | None, headway: Headway):
    """The phase's optimizer (with its saved state when the run resumes inside the phase) and schedule."""
    train_mode(task.model, phase)  # the phase (un)freezes its parameters before its optimizer sees them
    optimizer = optim.build_optimizer(task.model, cfg, task.train_size, phase.param_groups)
    if saved and saved["phase"] == index:
        optimizer.load_state_dict(saved["optimizer"])
    else:
        headway.phase_start = headway.step
    return optimizer, build_schedule(optimizer, cfg, task.steps_per_epoch, phase.epochs)


def epoch_batches(task: Task, cfg: DictConfig, epoch: int) -> Iterator:
    """The epoch's batches, every random draw seeded by (seed, epoch): a replayed epoch is the same epoch."""
    torch.manual_seed(epoch_seed(cfg.seed, epoch))  # dropout and any other global-RNG use
    if task.epoch_start is not None:
        task.epoch_start(epoch)
    return task.batches(torch.Generator().manual_seed(epoch_seed(cfg.seed, epoch)))


def train_step(task: Task, optimizer, batch, state, cfg: DictConfig, step: int):
    """One optimizer step on the recipe's loss: (the loss, the carried state detached)."""
    model = task.model
    with autocast(cfg, next(model.parameters()).device):
        loss, state = task.loss(model, batch, state)
    loss.backward()
    if cfg.trainer.grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.trainer.grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if task.after_step is not None:
        task.after_step(step)
    return loss, detached(state)


def tensorboard(run_dir: Path, step: int):
    """An event-file writer in the run's folder; events after `step` (replayed after a resume) are purged."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as err:
        raise UsageError(
            "logger=tensorboard needs the tensorboard package: pip install 'adamrun[tensorboard]'"
        ) from err
    return SummaryWriter(str(run_dir), purge_step=step or None, flush_secs=10)


HPARAM_KEYS = ("optimizer", "optimizer.lr", "optimizer.weight_decay", "schedule", "trainer.epochs", "seed")
HPARAM_TYPES = (bool, int, float, str)  # what TensorBoard's HParams take


def hparams(board, cfg: DictConfig, history: list[dict], status: str) -> None:
    """TensorBoard's HParams summary in the run's folder, so the HParams tab lays a sweep out, a run a row:
    its main settings and every key its command line set (a sweep's axes), its last metrics and status."""
    keys = [*HPARAM_KEYS, *(o.split("=", 1)[0].lstrip("+~") for o in cfg.overrides)]
    choices = cfg.choices or {}
    values = {
        key: choices[key] if key in choices else OmegaConf.select(cfg, key, default=None) for key in keys
    }
    settings = {key: v for key, v in values.items() if isinstance(v, HPARAM_TYPES)} | {"status": status}
    metrics = {
        f"hparams/{k}": v for row in history for k, v in row.items() if k.startswith(("val_", "test_"))
    }
    board.add_hparams(settings, metrics, run_name=".")  # ".": this run's own folder, beside its scalars


def train_mode(model: torch.nn.Module, phase: Phase) -> None:
    model.train()
    if phase.enter is not None:
        phase.enter(model)  # e.g. a frozen body's BatchNorm back in eval mode


def checkpoint_state(model, optimizer, phase: int, headway: Headway, cfg: DictConfig, averaged) -> dict:
    return {
        "model": model.state_dict(),
        "ema": None if averaged is None else averaged.state_dict(),  # the moving average, with its count
        "optimizer": optimizer.state_dict(),  # the current phase's
        "phase": phase,
        "scheduler": {
            "name": cfg.schedule.name,
            "step": headway.step - headway.phase_start,
        },  # a pure function
        "step": headway.step,
        "epoch": headway.epoch,
        "headway": asdict(headway),
        "rng": checkpoint.rng_states(),
        "metrics": headway.history,
        "config": OmegaConf.to_container(cfg, resolve=True),
    }


def epoch_line(row: dict) -> str:
    shown = {k: v for k, v in row.items() if k not in ("epoch", "step", "lr")}
    return f"epoch {row['epoch']:g}: " + "  ".join(f"{k} {v:.4g}" for k, v in shown.items())
