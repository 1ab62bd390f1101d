"""Synthetic studies: the CSVs a study writes, made up with known answers, for the analyses and the report to
read back."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from studies import trials

BASES = {
    "cnn": {
        "trials": ["recipe=cifar10", "data=fashion_mnist", "trainer.epochs=3"],
        "select": [],
        "confirm": [],
    }
}


SEQUENCING = {
    "stages": [3, 6, 10, 16],
    "alpha": 0.05,
    "primary": "paired",
    "futility": 0.1,
    "first_seed": 101,
}
SEEDS = list(range(101, 117))  # the confirmation seeds of every look


def settings(study: str, kind: str, **details) -> dict:
    return {
        "study": study,
        "order": 0,
        "kind": kind,
        "claim": f"the {study} claim.",
        "source": "a paper",
        "paper": "a figure",
        "untested": "",
        "scale": "offline",
        "minutes_expected": 1,
        "replica_of": "",
        "preregistered": "0" * 40,
        "rules": {},
        "wall_s": 60.0,
        "cpu_s": 110.0,
        "segments": 1,
        "load_at_start": 0.0,
        "command": f"adamrun reproduce study={study}",
        "bases": BASES,
        "seeds": SEEDS,
        "extra": [],
        "sweeps": [],
        "machine": "test",
        "sequencing": SEQUENCING,
        "stages": SEQUENCING["stages"],
        **details,
    }


def arm_info(label: str, lr: list[float], wd: list[float]) -> dict:
    return {
        "label": label,
        "wd_name": "wd",
        "overrides": [f"optimizer={label.lower()}"],
        "base": "cnn",
        "lr": lr,
        "weight_decay": wd,
    }


def run(
    arm: str, role: str, seed: int, test: float, val: float, lr=1e-3, wd=1e-3, epochs=3, variant="", **extra
):
    return {
        "study": "",
        "arm": arm,
        "role": role,
        "variant": variant,
        "optimizer": arm,
        "schedule": "one_cycle",
        "lr": lr,
        "weight_decay": wd,
        "epochs": epochs,
        "seed": seed,
        "status": extra.get("status", "finished"),
        "metric": "acc",
        "goal": "max",
        "val_metric": val,
        "test_metric": test,
        "epochs_to_target": extra.get("epochs_to_target", ""),
        "time_to_target_s": "",
        "weight_norm": extra.get("weight_norm", ""),
        "averaged": extra.get("averaged", ""),
        "wall_s": 10.0,
        "sweep": "s",
        "run_id": f"{arm}-{role}-{seed}-{lr}-{wd}-{epochs}-{variant}",
    }


def write_study(
    folder: Path, name: str, rows: list[dict], details: dict, curves: list[dict] | None = None
) -> None:
    trials.write_table(folder / f"{name}_runs.csv", rows, trials.RUN_COLUMNS)
    trials.write_table(folder / f"{name}_curves.csv", curves or [], trials.CURVE_COLUMNS)
    trials.write_settings(folder / f"{name}_settings.csv", details)


COMPARE_TEST = {
    "metric": "test_error",
    "better": "lower",
    "rule": "superiority",
    "effect": -2.0,
    "diverged": 90.0,
}
DECAY = {"kind": "decay", "min_shrink": 0.1}
EDGES = {"kind": "edges", "min_rows": 3}


def grid_rows(arm: str, shrink: float) -> list[dict]:
    """A 2 x 2 grid, 2 seeds a cell; the chosen cell (lr 1e-3, wd 1e-3) ends with 1 - shrink of the weight norm
    of the smallest wd at its lr."""
    return [
        run(
            arm,
            "select",
            seed,
            0.0,
            0.81 if wd == 1e-3 else 0.80,
            lr=lr,
            wd=wd,
            weight_norm=10.0 * (1 - shrink) if wd == 1e-3 else 10.0,
        )  # fmt: skip
        for lr in (1e-3, 3e-3)
        for wd in (1e-5, 1e-3)
        for seed in (1, 2)
    ]


def compare_study(
    folder: Path,
    gap: float,
    spread: float,
    name: str = "adamw_vs_adam",
    seeds: int = 16,
    shrink: float = 0.5,
    test: dict | None = None,
    timing: dict | None = None,
    curves: list[dict] | None = None,
    stages: list[int] | None = None,
) -> None:
    """Adam-L2 against AdamW: per seed, test accuracy 88% (+ gap for AdamW) + a shared seed effect + noise."""
    rng = np.random.default_rng(1)
    rows = grid_rows("adam_l2", shrink) + grid_rows("adamw", shrink)
    for seed in SEEDS[:seeds]:
        shared = rng.normal(0, spread)
        rows.append(run("adam_l2", "confirm", seed, 0.88 + shared + rng.normal(0, spread), 0.88))
        rows.append(run("adamw", "confirm", seed, 0.88 + gap + shared + rng.normal(0, spread), 0.88))
    if curves is None:
        curves = [
            {
                "study": name,
                "arm": a,
                "variant": "",
                "seed": s,
                "epoch": e,
                "val_metric": 0.8 + 0.02 * e,
                "train_loss": 1.0,
            }  # fmt: skip
            for a in ("adam_l2", "adamw")
            for s in SEEDS[:seeds]
            for e in (1, 2, 3)
        ]
    details = settings(
        name,
        "compare",
        arms={
            "adam_l2": arm_info("Adam-L2", [1e-3, 3e-3], [1e-5, 1e-3]),
            "adamw": arm_info("AdamW", [1e-3, 3e-3], [1e-5, 1e-3]),
        },
        baseline="adam_l2",
        contender="adamw",
        relative=True,
        chosen={a: {"lr": "0.001", "weight_decay": "0.001", "cells": 4} for a in ("adam_l2", "adamw")},
        test=test or COMPARE_TEST,
        timing=timing,
        mechanism=DECAY,
        **({"stages": stages} if stages else {}),
    )
    write_study(folder, name, rows, details, curves)


def decoupling_study(
    folder: Path,
    noise: float = 0.002,
    measure: str = "edge",
    drops: tuple[float, ...] = (0.5, 1.0, 2.0),
    mechanism: dict = DECAY,
) -> None:
    """Adam-L2's accuracy depends on lr x wd (a diagonal ridge), AdamW's on lambda alone (axis-aligned)."""
    rng = np.random.default_rng(2)
    lrs, wds = [1e-4, 3e-4, 1e-3, 3e-3, 1e-2], [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1]
    rows = []
    for seed in (1, 2):
        for lr in lrs:
            for wd in wds:
                coupled = 0.9 - 0.02 * (math.log10(lr * wd) + 6.5) ** 2 + rng.normal(0, noise)
                decoupled = 0.9 - 0.02 * (math.log10(wd) + 3) ** 2 + rng.normal(0, noise)
                norm = 10.0 * (1 - 0.9 * wd / max(wds))  # more decay, a smaller norm
                rows += [
                    run("adam_l2", "select", seed, 0.0, coupled, lr=lr, wd=wd, weight_norm=norm),
                    run("adamw", "select", seed, 0.0, decoupled, lr=lr, wd=wd, weight_norm=norm),
                ]
    details = settings(
        "decoupling",
        "decoupling",
        arms={"adam_l2": arm_info("Adam-L2", lrs, wds), "adamw": arm_info("AdamW", lrs, wds)},
        coupled="adam_l2",
        decoupled="adamw",
        torch_view=True,
        margin=0.5,
        measure=measure,
        drops=drops,
        drop=drops[0],
        mechanism=mechanism,
        chosen={
            "adam_l2": {"lr": "0.001", "weight_decay": "0.1", "cells": 30},
            "adamw": {"lr": "0.001", "weight_decay": "0.1", "cells": 30},
        },  # fmt: skip
    )
    write_study(folder, "decoupling", rows, details)


SCHEDULES_TEST = {"metric": "test_metric", "better": "higher", "rule": "non_inferiority", "margin": 0.5,
                  "diverged": 10.0}  # fmt: skip


def schedules_study(folder: Path, short_acc: float = 0.88, long_acc: float = 0.885, seeds: int = 10) -> None:
    """One-cycle at 1 epoch against constant at 8, each seed's test accuracy near its schedule's mean."""
    rng = np.random.default_rng(3)
    rows = []
    for schedule, acc, epochs in (("one_cycle", short_acc, 1), ("constant", long_acc, 8)):
        rows += [
            run(schedule, "select", s, 0.0, 0.8, lr=lr, epochs=epochs) for lr in (1e-3, 3e-3) for s in (1, 2)
        ]
        rows += [
            run(schedule, "confirm", s, acc + rng.normal(0, 0.002), acc, lr=3e-3, epochs=epochs)
            for s in SEEDS[:seeds]
        ]
    details = settings(
        "schedules",
        "schedules",
        arm=arm_info("AdamW", [1e-3], [1e-3]),
        weight_decay=1e-3,
        schedules=["one_cycle", "constant"],
        chosen={"one_cycle": "0.003", "constant": "0.003"},
        short=1,
        long=8,
        lr=[1e-3, 3e-3],
        test=SCHEDULES_TEST,
        trials=[],
        stages=[3, 6, 10],
    )
    write_study(folder, "schedules", rows, details)
