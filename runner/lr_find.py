"""Smith's LR range test on a real recipe: `adamrun lr-find` and `adamrun train optimizer.lr=find`.

The test (Smith, "Cyclical Learning Rates for Training Neural Networks", arXiv:1506.01186, sec. 3.3; fastai's
`LRFinder`, fastai/callback/schedule.py): train the recipe's model from its initial weights for
`lr_find.steps` optimizer steps while the lr grows exponentially from `lr_find.start_lr` to `lr_find.end_lr`,

    lr_i = start_lr * (end_lr / start_lr) ** (i / (steps - 1)),   i = 0 .. steps - 1,

record each batch's loss and its bias-corrected exponential moving average (fastai's `AvgSmoothLoss`, beta =
`lr_find.smoothing`: a_i = beta a_{i-1} + (1 - beta) loss_i, a_0 = 0, smoothed_i = a_i / (1 - beta^(i+1)), so
the first smoothed value is the first loss), and stop once the smoothed loss exceeds `lr_find.diverge` times its
minimum so far (fastai: 4x) or is not finite. The optimizer is the one the config describes (betas, momentum,
weight decay, parameter groups), with no schedule: the ramp value plays the part of `optimizer.lr`, so every
group's lr is ramp * its lr_mult (the ratios between groups are kept) * the recipe's `lr_scale(batch)`, as the
shared loop sets it; under `optimizer.decay_mode=paper` the decoupled decay per step stays what training at
`optimizer.lr = ramp` would apply (eta_t * lambda with eta_t = 1). Batches, augmentation and the global RNG
come from the generators the loop seeds by (seed, epoch), so the test sees the first batches of a real run;
the recipe's carried state is detached between steps as in the loop; bf16 autocast and `trainer.grad_clip` as
in the loop. The weights it leaves are thrown away.

Suggestions (all three are computed; `lr_find.rule` picks the one printed and used). Like fastai's `lr_find`,
they read the smoothed loss only, over a window that skips the first steps // 10 points (the flat, noisy
start) and the last 5 recorded (the diverged tail), cut before any non-finite value:

- `valley` (the default): fastai >= 2.4's `valley` (fastai/callback/schedule.py, PR fastai/fastai#3377 "New
  and Improved LR Suggestion Paradigm", 2021; the default of `Learner.lr_find` since, docs fixed in #3408). The
  "longest valley" is the longest strictly decreasing subsequence of the smoothed loss (not necessarily
  contiguous: lds[i] = 1 + max lds[j] over j < i with loss[j] > loss[i]); it ends at the first index `end` of
  the largest lds and is taken to start at `start = end - lds[end]`; the suggestion is the lr at index
  start + int(L/3) + int(L/6), L = end - start = lds[end]. It is often described as "about 2/3 of the way
  down the valley"; fastai's index is about halfway along it (in log lr), and that is what is implemented
  here, exactly, with one deviation. fastai's index is never past `end` and is negative in exactly one case:
  L = 2 with end = 1 (the window's first two points fall, and no three of its points fall in order: lds
  never reaches 3), where start = -1 and the index is -1, so fastai suggests lrs[-1], the window's last and
  most diverged point; ours clamps the index to 0, the window's first. Everywhere else the two give the same
  lr, including a loss that never falls (L = 1): fastai's start then stays at its initial 0 and ours is
  clamped from -1 to 0, the window's first point in both.
- `steepest`: fastai < 2.4's `lr_steep` (now `SuggestionMethod.Steep`): the lr where the smoothed loss falls
  fastest, argmin over i of (s[i+1] - s[i]) / (log lr[i+1] - log lr[i]), reported at lr[i].
- `minimum`: Smith's and fastai's `lr_min` rule of thumb: the lr of the lowest smoothed loss, divided by 10
  (the minimum is already at the edge of stability).

Why `valley` is the default: it is fastai's default since 2.4, chosen there because `steepest` reads the
argmin of a derivative of a noisy curve, which lands on any local dip, while the longest valley is a property
of the whole curve. tests/test_lr_find.py shows both on least squares with SGD, where the stability edge is
2/L: valley 0.15/L and minimum/10 0.27/L, while steepest lands either just under the edge (1.2-1.9/L) or at
the start of the window (0.003/L), depending on the seed. On the real Fashion-MNIST (cifar10 recipe, AdamW,
8,192 images, 200 steps, 1 thread: 106 s) it gave valley 1.3e-3, steepest 4.6e-3 and minimum/10 1.3e-1, the
recipe's tuned 3e-3 between the first two.

Caveats, fastai's as well: the moving average lags the raw loss by about beta / (1 - beta) = 49 steps, which
is 2 decades of lr at the default ramp (1e-7 to 10 in 200 steps), so the smoothed minimum sits well to the
right of the raw one and minimum/10 reads high (Fashion-MNIST: an 11-step median of the raw loss is lowest
at 1e-2 to 3e-2, the smoothed loss at 1.3); and a loss that cannot blow up far (bounded logits, label smoothing, BN) may never
reach 4x its minimum, so the ramp then runs to end_lr (it did on Fashion-MNIST). The PNG shows both curves.

`find(cfg)` runs the test on `cfg.recipe` (a `lr_find_config(overrides)` config) and writes
`<lr_find.out_dir>/lr_find.png` (the curves and the suggestions, for people) and `lr_find.csv` (step, lr, loss,
smoothed: one row per step, floats as Python's repr, so they read back exactly), each atomically.
"""

from __future__ import annotations

import csv
import io
import math
import time
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from omegaconf import MISSING, DictConfig

from runner import results
from runner.config import DecayMode, TrainConfig, check, compose, recipe_module, settled
from runner.device import resolve_device
from runner.errors import UsageError
from runner.loop import epoch_batches, progress_bar, train_mode, train_step
from runner.optim import SGDW, build_optimizer
from runner.recipe import Phase, Task


class SuggestRule(StrEnum):
    valley = "valley"  # fastai's default since 2.4: the middle of the longest stretch where the loss falls
    steepest = "steepest"  # fastai's first rule: where the smoothed loss falls fastest (minimum gradient)
    minimum = "minimum"  # Smith's rule of thumb: the lr of the lowest smoothed loss, divided by 10


@dataclass
class LRFindSettings:
    start_lr: float = MISSING  # first lr of the exponential ramp
    end_lr: float = MISSING  # last lr of the ramp (the test stops earlier when the loss diverges)
    steps: int = MISSING  # optimizer steps of the ramp
    smoothing: float = MISSING  # beta of the bias-corrected exponential moving average of the loss
    diverge: float = MISSING  # stop once the smoothed loss exceeds this multiple of its minimum
    rule: SuggestRule = MISSING  # which suggestion is printed and used by optimizer.lr=find
    out_dir: str = MISSING  # lr_find.png and lr_find.csv land here

    def __post_init__(self) -> None:
        check(0 < self.start_lr < self.end_lr, "lr_find.start_lr/end_lr", "must satisfy 0 < start < end",
              (self.start_lr, self.end_lr))  # fmt: skip
        check(self.steps >= 10, "lr_find.steps", "must be >= 10", self.steps)
        check(0 <= self.smoothing < 1, "lr_find.smoothing", "must be in [0, 1)", self.smoothing)
        check(self.diverge > 1, "lr_find.diverge", "must be > 1", self.diverge)


@dataclass
class LRFindConfig(TrainConfig):
    lr_find: LRFindSettings = MISSING


def lr_find_config(overrides: list[str]) -> DictConfig:
    """conf/lr_find.yaml: the recipe's train config plus the range test's settings."""
    return compose(overrides, "lr_find", LRFindConfig)


SKIP_END = 5  # recorded points left out at the end (fastai's lr_find: losses[num_it // 10 : -5])
MIN_POINTS = 3  # fewest points in the window for a suggestion
LABELS = {SuggestRule.valley: "valley", SuggestRule.steepest: "steepest", SuggestRule.minimum: "minimum/10"}
CSV_COLUMNS = ["step", "lr", "loss", "smoothed"]


@dataclass
class Finding:
    """The outcome of a range test: the curves, the three suggestions, and where they were written."""

    lrs: list[float]  # the ramp's lr at each step taken (optimizer.lr's value: before lr_mult and lr_scale)
    losses: list[float]  # each step's raw batch loss
    smoothed: list[float]  # the bias-corrected moving average of the losses
    suggestions: dict[SuggestRule, float]  # every rule's lr
    rule: SuggestRule  # the rule that chose `lr`
    lr: float  # the suggested lr: suggestions[rule]
    stopped_early: bool  # the divergence rule (diverge x the minimum, or not finite) ended the ramp
    window: tuple[int, int]  # [start, stop) of the points the suggestions read
    wall_s: float = 0.0  # seconds the ramp took (building the task and writing the files excluded)
    png: Path | None = None
    csv: Path | None = None

    def describe(self) -> str:
        """One line for the CLI: the chosen lr, the other suggestions, and how the ramp ended."""
        others = ", ".join(f"{LABELS[r]} {lr:.1e}" for r, lr in self.suggestions.items() if r != self.rule)
        ended = (
            f"diverged at lr {self.lrs[-1]:.1e} after {len(self.lrs)} steps"
            if self.stopped_early
            else f"no divergence up to lr {self.lrs[-1]:.1e}"
        )
        return f"suggested lr {self.lr:.1e} ({self.rule}); {others}; {ended}"


# ------------------------------------------------------------------------------------------- the curve
def ramp(start_lr: float, end_lr: float, steps: int) -> np.ndarray:
    """The exponential ramp: start_lr at step 0, end_lr at the last step, a constant ratio between steps."""
    return start_lr * (end_lr / start_lr) ** (np.arange(steps) / (steps - 1))


# ------------------------------------------------------------------------------------------ suggestions
def window(smoothed: list[float], steps: int) -> tuple[int, int]:
    """[start, stop) of the points the suggestions read: past the first steps // 10, before the last 5 recorded,
    and before the first non-finite value."""
    stop = len(smoothed) - SKIP_END
    finite = np.isfinite(np.asarray(smoothed, dtype=float))
    if not finite.all():
        stop = min(stop, int(np.argmin(finite)))
    return steps // 10, stop


def valley(lrs: np.ndarray, smoothed: np.ndarray) -> float:
    """fastai's `valley`: about halfway down the longest decreasing subsequence of the smoothed loss (the
    window's first point in the one case where fastai's index is -1: see the module's docstring)."""
    n = len(smoothed)
    lds = np.ones(n, dtype=int)  # the longest strictly decreasing subsequence ending at each point
    for i in range(1, n):
        higher = smoothed[:i] > smoothed[i]
        if higher.any():
            lds[i] = lds[:i][higher].max() + 1
    end = int(np.argmax(lds))  # the first index of the longest
    start = end - int(lds[end])
    third = (end - start) / 3
    index = start + int(third) + int(third / 2)
    return float(lrs[min(max(index, 0), n - 1)])


def steepest(lrs: np.ndarray, smoothed: np.ndarray) -> float:
    """fastai's `steep`: the lr where the smoothed loss falls fastest per unit of log lr."""
    slope = np.diff(smoothed) / np.diff(np.log(lrs))
    return float(lrs[int(np.argmin(slope))])


def minimum(lrs: np.ndarray, smoothed: np.ndarray) -> float:
    """Smith's rule of thumb (fastai's `minimum`): the lr of the lowest smoothed loss, divided by 10."""
    return float(lrs[int(np.argmin(smoothed))]) / 10


RULES = {SuggestRule.valley: valley, SuggestRule.steepest: steepest, SuggestRule.minimum: minimum}


def suggest(
    lrs: list[float], smoothed: list[float], steps: int
) -> tuple[dict[SuggestRule, float], tuple[int, int]]:
    """Every rule's lr from the points in the window, and the window."""
    start, stop = window(smoothed, steps)
    if stop - start < MIN_POINTS:
        raise UsageError(
            f"the loss diverged after {len(lrs)} of {steps} steps of the lr ramp (at lr {lrs[-1]:.2e}), too soon "
            "to suggest an lr; start lower (lr_find.start_lr) or ramp more slowly (lr_find.steps)"
        )
    x, y = np.asarray(lrs[start:stop], dtype=float), np.asarray(smoothed[start:stop], dtype=float)
    return {rule: fn(x, y) for rule, fn in RULES.items()}, (start, stop)


# ------------------------------------------------------------------------------------------- the test
def range_test(
    task: Task, optimizer: torch.optim.Optimizer, cfg: DictConfig, phase: Phase | None = None
) -> Finding:
    """Ramp the lr of `optimizer` (built from cfg.optimizer over the task's parameters) as cfg.lr_find says,
    training task.model on task.batches, and return the curves and the suggestions. `phase` (default: the
    run's first) sets the model's training mode, as the loop does at every epoch start."""
    settings, model = cfg.lr_find, task.model
    train_mode(model, phase or task.run_phases(cfg.trainer.epochs)[0])
    base_lr = cfg.optimizer.lr
    paper = cfg.optimizer.decoupled and cfg.optimizer.decay_mode == DecayMode.paper
    groups = []  # (torch group, its lr multiplier, its decay key, its decay at optimizer.lr)
    for group in optimizer.param_groups:
        key = "decoupled_weight_decay" if isinstance(optimizer, SGDW) else "weight_decay"  # SGDW's own decay
        groups.append((group, group["lr"] / base_lr, key, group.get(key, 0.0)))
    beta, started = settings.smoothing, time.perf_counter()
    lrs, losses, smoothed = [], [], []
    average, best, stopped_early = 0.0, math.inf, False
    epoch, batches, state, counted = 0, iter(()), None, 0
    with progress_bar(cfg.trainer.progress, task.unit) as bar:
        bar_task = bar.add_task("lr find", total=settings.steps, loss=math.nan, lr=0.0, speed=0.0)
        for step, lr in enumerate(ramp(settings.start_lr, settings.end_lr, settings.steps).tolist()):
            batch = next(batches, None)
            if batch is None:  # a new epoch, seeded as the loop seeds it
                batches = iter(epoch_batches(task, cfg, epoch))
                epoch, state = epoch + 1, task.init_state()
                batch = next(batches, None)
                if batch is None:
                    raise UsageError("the recipe yields no training batches: no lr range test is possible")
            scale = task.lr_scale(batch)
            for group, mult, key, decay in groups:
                group["lr"] = lr * mult * scale
                if paper:  # keep lr * wd what training at optimizer.lr = lr applies
                    group[key] = decay * base_lr / lr
            loss, state = train_step(task, optimizer, batch, state, cfg, step)
            value = float(loss.detach().float().item())
            average = beta * average + (1 - beta) * value
            lrs.append(lr)
            losses.append(value)
            smoothed.append(average / (1 - beta ** (step + 1)))
            best = min(best, smoothed[-1])
            counted += task.count(batch)
            speed = counted / (time.perf_counter() - started)
            bar.update(bar_task, completed=step + 1, loss=value, lr=lr, speed=speed)
            if not math.isfinite(smoothed[-1]) or smoothed[-1] > settings.diverge * best:
                stopped_early = True
                break
    suggestions, used = suggest(lrs, smoothed, settings.steps)
    rule = SuggestRule(settings.rule)
    return Finding(
        lrs, losses, smoothed, suggestions, rule, suggestions[rule], stopped_early, used,
        wall_s=time.perf_counter() - started,
    )  # fmt: skip


def find(cfg: DictConfig) -> Finding:
    """The range test on cfg's recipe (cfg from lr_find_config(overrides)), its PNG and CSV written to
    lr_find.out_dir."""
    if cfg.trainer.threads is not None:
        torch.set_num_threads(cfg.trainer.threads)
    task = recipe_module(cfg.recipe.name).build(cfg, resolve_device(cfg.trainer.device))
    cfg = settled(cfg, task.settled)
    phase = task.run_phases(cfg.trainer.epochs)[0]
    train_mode(task.model, phase)  # before the optimizer: a phase may freeze parameters
    optimizer = build_optimizer(task.model, cfg, task.train_size, phase.param_groups)
    finding = range_test(task, optimizer, cfg, phase)
    return save(finding, Path(cfg.lr_find.out_dir).expanduser(), title(cfg))


FIND = "optimizer.lr=find"


def with_found_lr(overrides: list[str]) -> tuple[list[str], Finding | None]:
    """`optimizer.lr=find`: the range test under the other overrides, its suggestion in the override's place
    (the lr the config names meanwhile is only the reference for the parameter groups' multipliers)."""
    if FIND not in overrides:
        return overrides, None
    others = [o for o in overrides if o != FIND]
    finding = find(lr_find_config(others))
    training = [o for o in others if not o.lstrip("+").startswith("lr_find.")]  # the test's own settings
    return [*training, f"optimizer.lr={finding.lr:.6g}"], finding


def title(cfg: DictConfig) -> str:
    choices = cfg.get("choices") or {}
    s = cfg.lr_find
    return (
        f"LR range test: recipe {cfg.recipe.name}, data {cfg.data.name if cfg.get('data') else '-'}, "
        f"optimizer {choices.get('optimizer', cfg.optimizer.family)}\n"
        f"batch {cfg.trainer.batch_size}, {s.steps} steps from lr {s.start_lr:.0e} to {s.end_lr:.0e}, seed {cfg.seed}"
    )


# ------------------------------------------------------------------------------------------- the files
def save(finding: Finding, out_dir: Path, heading: str) -> Finding:
    """Write out_dir/lr_find.csv and out_dir/lr_find.png, each atomically; the finding with their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path, png_path = out_dir / "lr_find.csv", out_dir / "lr_find.png"
    results.write_text(csv_path, csv_text(finding))
    figure = plot(finding, heading)
    with results.replaced_atomically(png_path) as tmp:
        figure.savefig(tmp, dpi=120)
    return replace(finding, png=png_path, csv=csv_path)


def csv_text(finding: Finding) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for step, row in enumerate(zip(finding.lrs, finding.losses, finding.smoothed, strict=True)):
        writer.writerow([step, *(repr(float(v)) for v in row)])
    return out.getvalue()


def y_range(finding: Finding) -> tuple[float, float]:
    """Loss axis limits, so the diverged tail does not squash the curve: from the lowest loss to the highest
    smoothed loss before the step that tripped the divergence rule (each is below `diverge` x the minimum so
    far), plus at most a quarter more for the raw losses' noise."""
    end = len(finding.lrs) - 1 if finding.stopped_early and len(finding.lrs) > 1 else len(finding.lrs)
    smoothed, raw = (np.asarray(v[:end], dtype=float) for v in (finding.smoothed, finding.losses))
    smoothed, raw = smoothed[np.isfinite(smoothed)], raw[np.isfinite(raw)]
    if len(smoothed) == 0:
        return 0.0, 1.0
    top = float(smoothed.max())
    high = max(top, min(float(raw.max(initial=top)), top + 0.25 * abs(top)))
    low = min(float(smoothed.min()), float(raw.min(initial=smoothed.min())))
    margin = 0.04 * (high - low) if high > low else max(abs(low), 1e-12) * 0.1
    return low - margin, high + margin


def plot(finding: Finding, heading: str) -> Figure:
    """The raw and smoothed loss against the lr (log axis), a vertical line at each suggestion."""
    figure = Figure(figsize=(9, 5.5), layout="constrained")
    ax = figure.add_subplot()
    lrs = np.asarray(finding.lrs)
    ax.plot(lrs, finding.losses, color="tab:blue", alpha=0.25, linewidth=0.8, label="loss of each batch")
    ax.plot(lrs, finding.smoothed, color="tab:blue", linewidth=2, label="smoothed (bias-corrected EMA)")
    start, stop = finding.window
    spans = [(lrs[0], lrs[start])] if start > 0 else []
    spans += [(lrs[stop - 1], lrs[-1])] if stop < len(lrs) else []
    for i, (a, b) in enumerate(spans):
        ax.axvspan(
            a,
            b,
            color="0.5",
            alpha=0.12,
            linewidth=0,
            label="not read by the suggestions" if i == 0 else None,
        )
    styles = {
        SuggestRule.valley: "tab:green",
        SuggestRule.steepest: "tab:orange",
        SuggestRule.minimum: "tab:red",
    }
    for rule, lr in finding.suggestions.items():
        chosen = rule == finding.rule
        ax.axvline(
            lr, color=styles[rule], linewidth=2.5 if chosen else 1.3, linestyle="-" if chosen else "--",
            label=f"{LABELS[rule]}: {lr:.2e}" + ("  (suggested)" if chosen else ""),
        )  # fmt: skip
    if finding.stopped_early:
        ax.axvline(lrs[-1], color="0.3", linewidth=1, linestyle=":", label=f"diverged: {lrs[-1]:.2e}")
    ax.set_xscale("log")
    ax.set_ylim(*y_range(finding))
    ax.set_xlabel("learning rate (optimizer.lr, per step; log scale)")
    ax.set_ylabel("training loss (the recipe's loss per batch)")
    ax.set_title(heading, fontsize=10)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(loc="lower left", fontsize=8, framealpha=0.9)
    return figure
