"""Run directories and the runs table: a result is a row (config, git SHA, seed, metric)."""

from __future__ import annotations

import csv
import fcntl
import json
import os
import subprocess
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

REPO = Path(__file__).resolve().parents[1]
RUN_COLUMNS = [
    "run_id", "status", "recipe", "data", "optimizer", "schedule", "lr", "weight_decay", "epochs", "seed",
    "test_acc", "wall_s", "git_sha", "run_dir",
]  # fmt: skip


def git_sha() -> str:
    """HEAD's short SHA, with -dirty when the tree has uncommitted changes; 'unknown' outside git."""
    try:
        sha = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short=12", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return sha + ("-dirty" if dirty else "")


def new_run_dir(cfg: DictConfig) -> Path:
    choices = cfg.get("choices", {})
    stamp = time.strftime("%Y%m%d-%H%M%S")
    name = (
        f"{stamp}-{choices.get('data', 'data')}-{choices.get('optimizer', 'opt')}-s{cfg.seed}-{os.getpid()}"
    )
    return Path(cfg.results_dir) / "runs" / name


@contextmanager
def replaced_atomically(path: Path) -> Iterator[Path]:
    """Yield a temporary path to write; it replaces `path` only once the writing has finished."""
    tmp = path.with_name(path.name + ".tmp")
    yield tmp
    os.replace(tmp, path)


def write_json(path: Path, value: Any) -> None:
    """Write a JSON file atomically: a killed run leaves the old file or the new one, never half of one
    (a sparsify stage counts as done when its file exists)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with replaced_atomically(path) as tmp:
        tmp.write_text(json.dumps(value, indent=2))


def write_config(run_dir: Path, cfg: DictConfig) -> None:
    (Path(run_dir) / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))


def write_metrics(run_dir: Path, rows: Iterable[dict]) -> None:
    """Rewrite metrics.jsonl from the checkpointed history, so a resumed run never repeats an epoch."""
    with replaced_atomically(Path(run_dir) / "metrics.jsonl") as tmp:
        tmp.write_text("".join(json.dumps(row) + "\n" for row in rows))


def append_metrics(run_dir: Path, row: dict) -> None:
    with open(Path(run_dir) / "metrics.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")


@contextmanager
def locked(path: Path):
    """An exclusive lock beside `path`, so parallel sweep jobs update the table one at a time."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def upsert_row(table: Path, row: dict) -> None:
    """Insert the run's row, or replace it when the run_id is already there (a resumed run)."""
    with locked(table):
        rows = read_rows(table)
        rows = [r for r in rows if r["run_id"] != row["run_id"]] + [{k: row.get(k, "") for k in RUN_COLUMNS}]
        with replaced_atomically(table) as tmp, open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=RUN_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)


def read_rows(table: Path) -> list[dict]:
    if not table.exists():
        return []
    with open(table, newline="") as f:
        return list(csv.DictReader(f))


def run_row(cfg: DictConfig, run_dir: Path, status: str, metrics: list[dict], wall_s: float) -> dict:
    choices = cfg.get("choices", {})
    last = metrics[-1] if metrics else {}
    return {
        "run_id": Path(run_dir).name,
        "status": status,
        "recipe": cfg.recipe.name,
        "data": cfg.data.name,
        "optimizer": choices.get("optimizer", ""),
        "schedule": cfg.schedule.name,
        "lr": cfg.optimizer.lr,
        "weight_decay": cfg.optimizer.weight_decay,
        "epochs": cfg.trainer.epochs,
        "seed": cfg.seed,
        "test_acc": last.get("test_acc", ""),
        "wall_s": round(wall_s, 1),
        "git_sha": git_sha(),
        "run_dir": str(run_dir),
    }


SETTING = ["recipe", "data", "optimizer", "schedule", "lr", "weight_decay", "epochs"]


def summarize(results_dir: str) -> list[dict]:
    """One row per setting over its finished runs: seeds, test accuracy mean ± std, mean wall time."""
    import pandas as pd

    rows = read_rows(Path(results_dir) / "runs.csv")
    finished = pd.DataFrame([r for r in rows if r["status"] == "finished"], columns=RUN_COLUMNS)
    if finished.empty:
        return []
    finished["test_acc"] = finished["test_acc"].astype(float)
    finished["wall_s"] = finished["wall_s"].astype(float)
    grouped = finished.groupby(SETTING, sort=False)
    table = grouped.agg(
        seeds=("seed", "count"),
        acc_mean=("test_acc", "mean"),
        acc_std=("test_acc", "std"),
        wall_s=("wall_s", "mean"),
    ).reset_index()
    table["test_acc"] = [
        f"{mean:.4f}" if seeds == 1 else f"{mean:.4f} ± {std:.4f}"
        for mean, std, seeds in zip(table.acc_mean, table.acc_std, table.seeds, strict=True)
    ]
    return table[[*SETTING, "seeds", "test_acc", "wall_s"]].to_dict("records")
