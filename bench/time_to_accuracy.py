"""make bench, section `time_to_accuracy`: how fast the CIFAR-10 recipe reaches a test accuracy on the full
Fashion-MNIST, against the plain PyTorch loop a user would write, on this machine, in one run.

1. Time to accuracy. Every run is a process of its own (`python -m runner.cli train`, `python -m
   bench.plain_baseline`), timed from its start (imports, data, the per-machine measurement, compilation and
   every evaluation count); both read the test split after every epoch. An evaluation's time on the clock is
   counted back from the process's end (`clock_s`: later checkpoints and the exit count against it, never
   for it); `once_s` is the same less the earlier evaluations, what a run that evaluated only there pays.
   Time to a target: the first epoch at or above it, by `once_s`; a run that never reaches it is censored at
   its end (the CSV says so, and the ratio becomes a bound).
2. The baseline gets the care the recipe got: its lr and epochs are chosen from `baseline_grid` on a
   validation split (the fastest to `select_target`, else the best), then it runs `seeds` on the test split.
3. Ablation: the recipe with each trick off alone (`ablation`), one seed.
4. Settings: each (channels_last, precision) alternative's seconds per training step (the recipe's own
   measurement, more steps), and torch.compile's step time and compile time (does it pay within a run?).
5. Loop efficiency: the recipe's FLOP/s (torch's FlopCounterMode x its measured images/s) against this CPU's
   rate on the recipe's own layer shapes, each conv and linear timed alone in the chosen layout and precision.
6. Trial profile: today's study trial (conf/reproduce.yaml's cnn base) against the named profile
   (conf/recipe/cifar10_trial.yaml): the profile's wall time to today's validation accuracy.

CSVs under `out`: time_to_accuracy.csv (+ .png), time_to_accuracy_runs.csv, time_to_accuracy_ablation.csv,
time_to_accuracy_settings.csv, loop_efficiency.csv, trial_profile.csv; each row with the environment.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from omegaconf import MISSING, DictConfig

from bench.harness import adamrun, bench_config, launched, section_config
from recipes import cifar10
from runner import machine, render, results
from runner.config import Precision, check, settled


# ------------------------------------------------------------------------------------------------ settings
@dataclass
class Grid:
    lr: list[float] = MISSING
    epochs: list[int] = MISSING


@dataclass
class TrialProfile:
    today: list[str] = MISSING
    profile: list[str] = MISSING
    seeds: list[int] = MISSING


@dataclass
class TimeToAccuracySettings:
    seeds: list[int] = MISSING
    targets: list[float] = MISSING
    goal_target: float = MISSING
    goal_seconds: float = MISSING
    ratio_goal: float = MISSING
    recipe: list[str] = MISSING
    baseline: list[str] = MISSING
    baseline_grid: Grid = MISSING
    selection: list[str] = MISSING
    select_target: float = MISSING
    ablation: dict[str, list[str]] = field(default_factory=dict)
    settings_steps: int = MISSING
    compile_steps: int = MISSING
    trial: TrialProfile = MISSING

    def __post_init__(self) -> None:
        check(len(self.seeds) > 0, "seeds", "must name at least one seed", self.seeds)
        check(all(0 < t < 1 for t in self.targets), "targets", "must be accuracies in (0, 1)", self.targets)
        check(self.goal_target in self.targets, "goal_target", "must be one of targets", self.goal_target)
        check(self.settings_steps > 0, "settings_steps", "must be > 0", self.settings_steps)


def settings() -> DictConfig:
    return section_config("time_to_accuracy", TimeToAccuracySettings)


# ------------------------------------------------------------------------------------------------ clocks
def clocked(rows: list[dict], wall_s: float) -> list[dict]:
    """Each evaluation row with `clock_s`, its time since the process started, counted back from the end:
    wall_s less the training and evaluation of the epochs after it; and `once_s`, that less the earlier
    evaluations (a run evaluated only there)."""
    later, out = 0.0, []
    for row in reversed(rows):
        out.append({**row, "clock_s": wall_s - later})
        later += row["train_s"] + row["eval_s"]
    out.reverse()
    earlier = 0.0
    for row in out:
        row["once_s"] = row["clock_s"] - earlier
        earlier += row["eval_s"]
    return out


def time_to(rows: list[dict], key: str, target: float) -> tuple[float, bool]:
    """(seconds, reached): the first evaluation at or above the target, by once_s; else (the run's end, False),
    a censored time."""
    for row in rows:
        if row[key] >= target:
            return row["once_s"], True
    return rows[-1]["clock_s"], False


# ------------------------------------------------------------------------------------------------ runs
def run_recipe(overrides: list[str], work: Path, clock: str = "process") -> tuple[list[dict], float]:
    """One `adamrun train` in a process of its own: its evaluation rows and its wall time, the process's or
    (clock="run") the run's own (run.json's wall_s: what a trial costs inside a sweep, whose workers start
    once)."""
    run_dir = work / f"run-{time.monotonic_ns()}"
    command = adamrun(
        "train", *overrides, f"run_dir={run_dir}", f"results_dir={work}", "trainer.progress=false"
    )
    wall_s, _ = launched(command)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return rows, wall_s if clock == "process" else float(results.read_run(run_dir)["wall_s"])


def run_baseline(overrides: list[str]) -> tuple[list[dict], float]:
    """One plain-loop run (bench/plain_baseline.py) in a process of its own: its rows and wall time."""
    wall_s, output = launched([sys.executable, "-m", "bench.plain_baseline", *overrides])
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")], wall_s


def baseline_choice(s: DictConfig) -> tuple[dict, pd.DataFrame]:
    """The baseline's lr and epochs, chosen on the validation split: the fastest to select_target, else the
    best final validation accuracy."""
    rows = []
    for lr in s.baseline_grid.lr:
        for epochs in s.baseline_grid.epochs:
            print(f"time to accuracy: baseline grid, lr {lr:g}, {epochs} epochs", flush=True)
            history, wall_s = run_baseline(
                [
                    *s.baseline,
                    *s.selection,
                    f"optimizer.lr={lr}",
                    f"trainer.epochs={epochs}",
                    f"seed={s.seeds[0]}",
                ]
            )
            history = clocked(history, wall_s)
            seconds, reached = time_to(history, "val_acc", s.select_target)
            rows.append({"lr": lr, "epochs": epochs, "val_acc": history[-1]["val_acc"],
                         "seconds_to_select_target": seconds, "reached": reached, "wall_s": wall_s})  # fmt: skip
    grid = pd.DataFrame(rows)
    finishers = grid[grid.reached]
    best = (
        finishers.sort_values("seconds_to_select_target").iloc[0]
        if len(finishers)
        else grid.sort_values("val_acc").iloc[-1]
    )
    return {"lr": float(best.lr), "epochs": int(best.epochs)}, grid


def curves(s: DictConfig, work: Path) -> tuple[pd.DataFrame, dict]:
    """Every evaluation of the recipe's and the chosen baseline's seeds, clocked; and the baseline's choice."""
    chosen, grid = baseline_choice(s)
    points = []
    for seed in s.seeds:
        print(f"time to accuracy: recipe, seed {seed}", flush=True)
        rows, wall_s = run_recipe([*s.recipe, f"seed={seed}"], work)
        points += [{"arm": "recipe", "seed": seed, "wall_s": wall_s, **r} for r in clocked(rows, wall_s)]
        print(f"time to accuracy: baseline, seed {seed}", flush=True)
        rows, wall_s = run_baseline(
            [
                *s.baseline,
                f"optimizer.lr={chosen['lr']}",
                f"trainer.epochs={chosen['epochs']}",
                f"seed={seed}",
            ]
        )
        points += [{"arm": "baseline", "seed": seed, "wall_s": wall_s, **r} for r in clocked(rows, wall_s)]
    return pd.DataFrame(points), {**chosen, "grid": grid}


def times_to_targets(points: pd.DataFrame, targets: list[float]) -> pd.DataFrame:
    """One row per arm, seed and target: the seconds to it and whether it was reached (else censored)."""
    rows = []
    for (arm, seed), run in points.groupby(["arm", "seed"], sort=False):
        history = run.to_dict("records")
        for target in targets:
            seconds, reached = time_to(history, "test_acc", target)
            rows.append({"arm": arm, "seed": seed, "target": target, "seconds": seconds, "reached": reached,
                         "final_test_acc": history[-1]["test_acc"], "wall_s": history[-1]["wall_s"]})  # fmt: skip
    return pd.DataFrame(rows)


def ratios(times: pd.DataFrame) -> pd.DataFrame:
    """Recipe over baseline per target, medians over seeds; a censored baseline makes it an upper bound ('<='),
    a censored recipe a lower one ('>='), both censored no ratio at all ('none reached')."""
    rows = []
    for target, at in times.groupby("target"):
        recipe, baseline = at[at.arm == "recipe"], at[at.arm == "baseline"]
        bound = {(True, True): "=", (True, False): "<=", (False, True): ">=", (False, False): "none reached"}[
            (bool(recipe.reached.all()), bool(baseline.reached.all()))
        ]
        rows.append({"target": target, "recipe_median_s": recipe.seconds.median(),
                     "baseline_median_s": baseline.seconds.median(),
                     "ratio": recipe.seconds.median() / baseline.seconds.median(), "ratio_is": bound,
                     "recipe_reached": f"{int(recipe.reached.sum())}/{len(recipe)}",
                     "baseline_reached": f"{int(baseline.reached.sum())}/{len(baseline)}"})  # fmt: skip
    return pd.DataFrame(rows)


def draw(points: pd.DataFrame, targets: list[float], path: Path) -> None:
    fig = render.new_figure((7, 4.5))
    ax = fig.subplots()
    colors = {"recipe": "tab:blue", "baseline": "tab:orange"}
    for (arm, seed), run in points.groupby(["arm", "seed"], sort=False):
        ax.plot(run.once_s, 100 * run.test_acc, marker="o", ms=3, color=colors[arm], alpha=0.8,
                label=arm if seed == points.seed.min() else None)  # fmt: skip
    for target in targets:
        ax.axhline(100 * target, color="grey", lw=0.6, ls=":")
    low = max(80.0, 100 * points.test_acc.min() - 1)
    ax.set(xlabel="wall seconds since the process started (evaluating only there)",
           ylabel="test accuracy (%)", ylim=(low, 100 * points.test_acc.max() + 0.5),
           title="Fashion-MNIST, full test set: time to accuracy, one line per seed")  # fmt: skip
    ax.legend()
    render.save(fig, path)


# ------------------------------------------------------------------------------------------------ ablation
def ablation(s: DictConfig, work: Path) -> pd.DataFrame:
    """The recipe with each trick off alone, seed s.seeds[0]: its time to each target and final accuracy."""
    rows = []
    for name, overrides in {"as shipped": [], **s.ablation}.items():
        print(f"time to accuracy: ablation, {name}", flush=True)
        history, wall_s = run_recipe([*s.recipe, *overrides, f"seed={s.seeds[0]}"], work)
        history = clocked(history, wall_s)
        row = {"variant": name, "overrides": " ".join(overrides), "final_test_acc": history[-1]["test_acc"],
               "wall_s": wall_s}  # fmt: skip
        for target in s.targets:
            seconds, reached = time_to(history, "test_acc", target)
            row[f"s_to_{target:.3f}"] = seconds if reached else None
        rows.append(row)
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------------ settings
def shipped_task(s: DictConfig, *overrides: str):
    cfg = bench_config([*s.recipe, *overrides])
    return cfg, cifar10.build(cfg, torch.device("cpu"))


def first_batch(cfg: DictConfig, task) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = next(iter(task.batches(torch.Generator().manual_seed(cfg.seed))))
    return x.contiguous(), y


def layout_rows(s: DictConfig) -> pd.DataFrame:
    """Seconds per training step of every (channels_last, precision) alternative, and torch.compile's."""
    cfg, task = shipped_task(s, "recipe.channels_last=false", "trainer.precision=fp32")
    x, y = first_batch(cfg, task)
    rows = []
    for setting in [
        (True, Precision.bf16),
        (True, Precision.fp32),
        (False, Precision.bf16),
        (False, Precision.fp32),
    ]:
        seconds = cifar10.seconds_per_step(task.model, x, y, setting, s.settings_steps)
        rows.append({"setting": f"channels_last={setting[0]}, {setting[1]}", "s_per_step": seconds,
                     "compile_s": 0.0})  # fmt: skip
    best = min(rows, key=lambda r: r["s_per_step"])
    rows.append(compiled_row(task.model, x, y, best["setting"], s.compile_steps))
    table = pd.DataFrame(rows)
    table["images_per_s"] = len(y) / table.s_per_step
    table["ratio_vs_fastest_eager"] = best["s_per_step"] / table.s_per_step
    table["batch_size"] = len(y)
    return table


def compiled_row(model, x, y, best: str, steps: int) -> dict:
    """torch.compile (inductor) of the fastest eager setting: its first step (the compilation) and its steps."""
    channels_last, precision = "channels_last=True" in best, "bf16" if "bf16" in best else "fp32"
    layout = torch.channels_last if channels_last else torch.contiguous_format
    net, x = torch.compile(model.to(memory_format=layout)), x.contiguous(memory_format=layout)

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            F.cross_entropy(net(x), y).backward()
        net.zero_grad(set_to_none=True)

    started = time.perf_counter()
    step()
    compile_s = time.perf_counter() - started
    return {"setting": f"{best}, torch.compile", "s_per_step": machine.seconds_per_step(step, steps),
            "compile_s": compile_s}  # fmt: skip


# ------------------------------------------------------------------------------------------------ efficiency
def loop_efficiency(s: DictConfig, images_per_s: float) -> pd.DataFrame:
    """The recipe's training FLOP/s at its measured images/s against the rate of its own conv and linear
    layers timed alone (forward + backward, the chosen layout and precision, 2 threads): the fraction."""
    cfg, task = shipped_task(s)
    cfg = settled(cfg, task.settled)
    x, y = first_batch(cfg, task)
    bf16 = cfg.trainer.precision == Precision.bf16
    flops = step_flops(task.model, x, y, bf16)
    layer_flops, layer_s = 0.0, 0.0
    for layer, shape in layer_inputs(task.model, x):
        layout = x_layout(x) if len(shape) == 4 else torch.contiguous_format
        inputs = torch.randn(shape).contiguous(memory_format=layout).requires_grad_(True)
        layer_flops += step_flops(layer, inputs, None, bf16)
        layer_s += machine.seconds_per_step(layer_step(layer, inputs, bf16), s.settings_steps)
    achievable = layer_flops / layer_s
    recipe_rate = flops / len(y) * images_per_s
    return pd.DataFrame([{"recipe_gflop_per_image": flops / len(y) / 1e9, "recipe_images_per_s": images_per_s,
                          "recipe_gflop_per_s": recipe_rate / 1e9, "layers_alone_gflop_per_s": achievable / 1e9,
                          "fraction": recipe_rate / achievable, "precision": str(cfg.trainer.precision),
                          "channels_last": cfg.recipe.channels_last, "batch_size": len(y)}])  # fmt: skip


def x_layout(x: torch.Tensor):
    return (
        torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
    )


def layer_inputs(model: torch.nn.Module, x: torch.Tensor) -> list[tuple[torch.nn.Module, torch.Size]]:
    """Every trainable conv and linear layer with the shape of its input on the batch x (a forward hook)."""
    seen: list[tuple[torch.nn.Module, torch.Size]] = []
    hooks = [m.register_forward_hook(lambda m, inputs, out: seen.append((m, inputs[0].shape)))
             for m in model.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.Linear)]  # fmt: skip
    with torch.no_grad():
        model(x)
    for hook in hooks:
        hook.remove()
    return seen


def step_flops(module: torch.nn.Module, x: torch.Tensor, y: torch.Tensor | None, bf16: bool) -> float:
    """FLOPs of one forward + backward, counted by torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        out = module(x)
        (F.cross_entropy(out, y) if y is not None else out.float().sum()).backward()
    module.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def layer_step(layer: torch.nn.Module, inputs: torch.Tensor, bf16: bool):
    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = layer(inputs)
        out.float().sum().backward()
        layer.zero_grad(set_to_none=True)
        inputs.grad = None

    return step


# ------------------------------------------------------------------------------------------------ profile
def trial_profile(s: DictConfig, work: Path) -> pd.DataFrame:
    """Today's study trial and the profile, each seed in a process of its own, timed by the run's own clock
    (a sweep's workers start once, so a trial costs its run): today's final validation accuracy, and the
    profile's time to reach it (by once_s; censored at its end if it never does)."""
    rows = []
    for seed in s.trial.seeds:
        print(f"time to accuracy: trial profile, seed {seed}", flush=True)
        today, today_s = run_recipe([*s.trial.today, f"seed={seed}"], work, clock="run")
        profile, profile_s = run_recipe([*s.trial.profile, f"seed={seed}"], work, clock="run")
        target = today[-1]["val_acc"]
        seconds, reached = time_to(clocked(profile, profile_s), "val_acc", target)
        rows.append({"seed": seed, "today_val_acc": target, "today_wall_s": today_s,
                     "profile_val_acc": profile[-1]["val_acc"], "profile_wall_s": profile_s,
                     "profile_s_to_today_val_acc": seconds, "reached": reached,
                     "ratio": seconds / today_s})  # fmt: skip
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------------ section
def run(cfg: DictConfig, out: Path, env: dict) -> list[Path]:
    s = settings()
    written = []

    def write(name: str, table: pd.DataFrame) -> None:
        results.write_text(out / name, table.assign(**env).to_csv(index=False))
        print(table.to_string(index=False), flush=True)
        written.append(out / name)

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        settings_table = layout_rows(s)
        write("time_to_accuracy_settings.csv", settings_table)
        points, chosen = curves(s, work)
        write("time_to_accuracy_runs.csv", points)
        write("time_to_accuracy_baseline_grid.csv", chosen["grid"])
        times = times_to_targets(points, list(s.targets))
        summary = ratios(times).assign(baseline_lr=chosen["lr"], baseline_epochs=chosen["epochs"])
        write("time_to_accuracy.csv", pd.concat([times.assign(kind="run"), summary.assign(kind="ratio")]))
        draw(points, list(s.targets), out / "time_to_accuracy.png")
        written.append(out / "time_to_accuracy.png")
        recipe_speed = points[points.arm == "recipe"].examples_per_s.median()
        write("loop_efficiency.csv", loop_efficiency(s, float(recipe_speed)))
        write("time_to_accuracy_ablation.csv", ablation(s, work))
        write("trial_profile.csv", trial_profile(s, work))
    return written
