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
        "wall_s": 60.0,
        "segments": 1,
        "load_at_start": 0.0,
        "command": f"adamrun reproduce study={study}",
        "bases": BASES,
        "seeds": [1, 2, 3, 4],
        "extra": [],
        "sweeps": [],
        "machine": "test",
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


def compare_study(folder: Path, gap: float, spread: float, name: str = "adamw_vs_adam") -> None:
    rng = np.random.default_rng(1)
    rows = [run("adam_l2", "select", 0, 0.8, 0.8, lr=lr) for lr in (1e-3, 3e-3)]
    rows += [run("adamw", "select", 0, 0.8, 0.81, lr=lr) for lr in (1e-3, 3e-3)]
    for seed in (1, 2, 3, 4):
        rows.append(run("adam_l2", "confirm", seed, 0.88 + rng.normal(0, spread), 0.88))
        rows.append(run("adamw", "confirm", seed, 0.88 + gap + rng.normal(0, spread), 0.88))
    curves = [
        {
            "study": name,
            "arm": a,
            "variant": "",
            "seed": s,
            "epoch": e,
            "val_metric": 0.8 + 0.02 * e,
            "train_loss": 1.0,
        }
        for a in ("adam_l2", "adamw")
        for s in (1, 2)
        for e in (1, 2, 3)
    ]
    details = settings(
        name,
        "compare",
        arms={
            "adam_l2": arm_info("Adam-L2", [1e-3, 3e-3], [1e-3]),
            "adamw": arm_info("AdamW", [1e-3, 3e-3], [1e-3]),
        },
        baseline="adam_l2",
        contender="adamw",
        relative=True,
        chosen={a: {"lr": "0.001", "weight_decay": "0.001", "cells": 2} for a in ("adam_l2", "adamw")},
        tests=[{"metric": "test_error", "better": "lower", "rule": "superiority", "margin": None}],
    )
    write_study(folder, name, rows, details, curves)


def decoupling_study(folder: Path, noise: float = 0.002, measure: str = "edge") -> None:
    """Adam-L2's accuracy depends on lr x wd (a diagonal ridge), AdamW's on lambda alone (axis-aligned)."""
    rng = np.random.default_rng(2)
    lrs, wds = [1e-4, 3e-4, 1e-3, 3e-3, 1e-2], [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1]
    rows = []
    for lr in lrs:
        for wd in wds:
            coupled = 0.9 - 0.02 * (math.log10(lr * wd) + 6.5) ** 2 + rng.normal(0, noise)
            decoupled = 0.9 - 0.02 * (math.log10(wd) + 3) ** 2 + rng.normal(0, noise)
            rows += [
                run("adam_l2", "select", 0, 0.0, coupled, lr=lr, wd=wd),
                run("adamw", "select", 0, 0.0, decoupled, lr=lr, wd=wd),
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
        drop=1.0,
    )
    write_study(folder, "decoupling", rows, details)


def schedules_study(folder: Path) -> None:
    rows = []
    accuracy = {"one_cycle": {1: 0.80, 2: 0.88, 4: 0.90}, "constant": {1: 0.70, 2: 0.80, 4: 0.85}}
    for schedule, by_budget in accuracy.items():
        rows += [run(schedule, "select", 0, 0.0, 0.8, lr=lr, epochs=2) for lr in (1e-3, 3e-3)]
        for budget, acc in by_budget.items():
            rows += [
                run(
                    schedule,
                    "confirm",
                    s,
                    acc + 0.002 * s,
                    acc,
                    lr=3e-3,
                    epochs=budget,
                    epochs_to_target=budget if acc >= 0.88 else "",
                )
                for s in (1, 2, 3)
            ]
    details = settings(
        "schedules",
        "schedules",
        arm=arm_info("AdamW", [1e-3], [1e-3]),
        weight_decay=1e-3,
        schedules=["one_cycle", "constant"],
        chosen={"one_cycle": "0.003", "constant": "0.003"},
        budgets=[1, 2, 4],
        short=2,
        long=4,
        margin=0.5,
        select_budget=2,
        lr=[1e-3, 3e-3],
        target="val_acc>=0.88",
    )
    write_study(folder, "schedules", rows, details)
