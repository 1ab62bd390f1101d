"""Run directories and the runs table: a result is a row (config, git SHA, seed, metric).

A run directory holds config.yaml (the resolved config), run.json (identity, status and wall time over all of
the run's segments), metrics.jsonl (one row per evaluation) and checkpoint.pt. Every file is written
atomically: a temporary file beside it, then a rename, so a run killed at any moment leaves the old file or the
new one, never half of one.
"""

from __future__ import annotations

import csv
import fcntl
import json
import os
import re
import subprocess
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from runner.errors import UsageError

REPO = Path(__file__).resolve().parents[1]
RUN_FILES = (
    "config.yaml",
    "run.json",
    "metrics.jsonl",
    "checkpoint.pt",
)  # any of these: the folder holds a run
RUN_COLUMNS = [
    "run_id", "status", "recipe", "data", "model", "optimizer", "schedule", "lr", "weight_decay", "epochs",
    "seed", "metric", "goal", "val_metric", "test_metric", "epochs_run", "time_to_target_s", "epochs_to_target",
    "steps_to_target", "weight_norm", "averaged", "wall_s", "git_sha", "run_dir",
]  # fmt: skip
TERMINAL = ("finished", "diverged", "pruned")  # a run in one of these states has nothing left to do


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


# ------------------------------------------------------------------------------------------ atomic files
@contextmanager
def replaced_atomically(path: Path) -> Iterator[Path]:
    """Yield a temporary path to write; it replaces `path` only once the writing has finished (and is removed
    if the writing fails: `path` stays as it was, and the OSError names it). The name is unique per process,
    so concurrent writers never share one."""
    path = Path(path)
    tmp = path.with_name(
        f".{path.stem}.{os.getpid()}.tmp{path.suffix}"
    )  # the suffix tells libraries the format
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as err:  # a full disk, a read-only or vanished folder: name the file the user knows
        raise OSError(err.errno, err.strerror, str(path)) from err
    finally:
        tmp.unlink(missing_ok=True)


# replaced_atomically's names, .<stem>.<pid>.tmp<suffix>: the pid tells whether the writer still lives
TEMPORARY = re.compile(r"^\..+\.(\d+)\.tmp(\.[^.]+)?$")


def remove_orphaned_temporaries(folder: Path) -> list[Path]:
    """Delete the temporary files of writers that died mid-write (SIGKILL, or a worker its launcher killed),
    which `finally` could not remove: the file each would have replaced is intact, so they are garbage. A
    writer is known by the pid in the name; a live one's file is left alone. Returns the files removed."""
    removed = []
    for tmp in Path(folder).glob(".*.tmp*"):
        match = TEMPORARY.match(tmp.name)
        if match and not process_alive(int(match.group(1))):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def write_text(path: Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with replaced_atomically(path) as tmp:
        tmp.write_text(text)


def write_rows_csv(path: Path, columns: list[str], rows: Iterable[dict]) -> None:
    """A CSV of dict rows in `columns` order (keys outside them left out), atomically."""
    with replaced_atomically(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def write_json(path: Path, value: Any) -> None:
    """A JSON file, atomically (a sparsify stage counts as done when its file exists)."""
    write_text(path, json.dumps(value, indent=2))


def write_config(run_dir: Path, cfg: DictConfig) -> None:
    write_text(Path(run_dir) / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))


def write_metrics(run_dir: Path, rows: Iterable[dict]) -> None:
    """Rewrite metrics.jsonl from the checkpointed history, so a resumed run never repeats an evaluation."""
    write_text(Path(run_dir) / "metrics.jsonl", "".join(json.dumps(row) + "\n" for row in rows))


# ------------------------------------------------------------------------------------------ run identity
def new_run_dir(cfg: DictConfig) -> Path:
    choices = cfg.get("choices") or {}
    stamp = time.strftime("%Y%m%d-%H%M%S")
    name = f"{stamp}-{choices.get('data') or cfg.data.name}-{choices.get('optimizer', 'opt')}-s{cfg.seed}-{os.getpid()}"
    return Path(cfg.results_dir) / "runs" / name


def run_id(run_dir: Path, results_dir: Path) -> str:
    """The run's path relative to results_dir (absolute when it lies elsewhere): two run directories never
    share it, even when their last folder names are equal (exp_a/seed0, exp_b/seed0)."""
    run_dir, results_dir = Path(run_dir).resolve(), Path(results_dir).resolve()
    return (
        run_dir.relative_to(results_dir).as_posix() if run_dir.is_relative_to(results_dir) else str(run_dir)
    )


def holds_run(folder: Path) -> bool:
    return any((Path(folder) / name).exists() for name in RUN_FILES)


def check_new_run_dir(run_dir: Path) -> None:
    """A new run needs a folder of its own: missing, or empty. Never reuse one that holds anything."""
    if run_dir.exists() and not run_dir.is_dir():
        raise UsageError(f"run_dir {run_dir} is a file; give a new folder")
    if holds_run(run_dir):
        raise UsageError(
            f"run_dir {run_dir} already holds a run; continue it with resume=true run_dir={run_dir}, "
            "or give a new folder"
        )
    if run_dir.is_dir() and any(run_dir.iterdir()):
        raise UsageError(f"run_dir {run_dir} is not empty and holds no run; give a new or empty folder")


def read_json_file(path: Path) -> Any:
    """A JSON file that adamrun wrote; empty, truncated or not JSON at all: one line naming it."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        what = "empty" if not Path(path).stat().st_size else f"not JSON ({err})"
        raise UsageError(f"{path} is corrupt: {what}") from err


def read_json(
    path: Path, required: dict[str, type | tuple], optional: dict[str, type | tuple] | None = None
) -> dict:
    """A JSON object that adamrun wrote, checked before anything uses it: a file that is empty, truncated, not
    an object, without a required key, or with a value of the wrong type is one line naming it and the key."""
    value = read_json_file(path)
    if not isinstance(value, dict):
        raise UsageError(f"{path} is corrupt: not a JSON object")
    for key, kind in required.items() | (optional or {}).items():
        if key not in value and key in required:
            raise UsageError(f"{path} is corrupt: no {key!r}")
        wrong = key in value and (
            not isinstance(value[key], kind) or (isinstance(value[key], bool) and kind is not bool)
        )  # JSON's true is a Python int too: it is no count or time
        if wrong:
            raise UsageError(f"{path} is corrupt: {key} is {value[key]!r}")
    return value


RUN_RECORD = {"status": str}  # run.json, as write_run writes it ...
RUN_NUMBERS = {"wall_s": (int, float), "segments": int}  # ... with these where the run got that far


def read_run(run_dir: Path) -> dict:
    """run.json: {run_id, status, wall_s, segments}; an empty record for a run created before it existed."""
    path = Path(run_dir) / "run.json"
    if not path.exists():
        return {}
    return read_json(path, RUN_RECORD, RUN_NUMBERS)


def write_run(run_dir: Path, record: dict) -> None:
    write_json(Path(run_dir) / "run.json", record)


# ------------------------------------------------------------------------------------------ the runs table
@contextmanager
def locked(path: Path):
    """An exclusive lock beside `path`, so parallel sweep jobs update the table one at a time."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def upsert_row(table: Path, row: dict) -> None:
    """Insert the run's row, or replace the one with its run_id (a resumed run). Columns beyond RUN_COLUMNS
    (a sweep trial's overrides) are kept, and added to the header when new."""
    with locked(table):
        rows = [r for r in read_rows(table) if r["run_id"] != row["run_id"]] + [row]
        columns = RUN_COLUMNS + sorted({k for r in rows for k in r} - set(RUN_COLUMNS))
        with replaced_atomically(table) as tmp, open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns, restval="")
            writer.writeheader()
            writer.writerows(rows)


NUMERIC = ("lr", "weight_decay", "epochs", "seed", "val_metric", "test_metric", "epochs_run", "time_to_target_s",
           "epochs_to_target", "steps_to_target", "weight_norm", "averaged", "wall_s")  # columns that hold a number, or nothing  # fmt: skip


def read_table(
    table: Path, required: tuple[str, ...] = ("run_id", "status"), numeric: tuple[str, ...] = NUMERIC
) -> tuple[list[dict], list[str]]:
    """The well-formed rows of a table adamrun wrote (a runs.csv by default), and a line per malformed row (its
    line number and what is wrong: too few or too many fields, a word in a `numeric` column); a missing table
    has none. A file that is no such table at all (empty, not UTF-8 CSV, without a `required` column) is a
    one-line error naming it."""
    table = Path(table)
    if not table.exists():
        return [], []
    if not table.is_file():
        raise UsageError(f"{table} is not a file")
    rows, problems = [], []
    try:
        with open(table, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            header = reader.fieldnames or []
            for row in reader:
                problem = row_problem(row, header, numeric)
                rows += [] if problem else [row]
                problems += [f"line {reader.line_num}: {problem}"] if problem else []
    except (UnicodeDecodeError, csv.Error) as err:
        raise UsageError(f"{table} is not a runs table (not UTF-8 CSV: {err})") from err
    missing = [column for column in required if column not in header]
    if missing or not header:
        what = "a runs table" if required == ("run_id", "status") else "a table of adamrun's"
        raise UsageError(f"{table} is not {what} ({'empty' if not header else f'no {missing[0]} column'})")
    return rows, problems


def row_problem(row: dict, header: list[str], numeric: tuple[str, ...]) -> str | None:
    if None in row or None in row.values():  # DictReader's marks of too many, or too few, fields
        fields = len(header) + len(row.get(None, [])) - sum(v is None for v in row.values())
        return f"{fields} fields where the header has {len(header)}"
    for key in numeric:
        value = row.get(key, "").strip()
        try:
            float(value or 0)
        except ValueError:
            return f"{key} is {value!r}, not a number"
    return None


def read_rows(table: Path, **shape) -> list[dict]:
    """The rows of a runs.csv (or of another table, `shape` as read_table takes it); a missing table has none.
    Any malformed row is a one-line error naming the file and the line: a table that adamrun goes on writing,
    or judges, must be whole."""
    rows, problems = read_table(table, **shape)
    if problems:
        more = f" (and {len(problems) - 1} more malformed rows)" if len(problems) > 1 else ""
        raise UsageError(f"{table}, {problems[0]}{more}")
    return rows


def runs_table(where: str | Path) -> tuple[Path, list[dict], list[str]]:
    """The runs.csv of a results folder, or one named directly: its path, its well-formed rows and a line per
    malformed row; a wrong path is one line."""
    path = Path(where).expanduser()
    if not path.exists():
        raise UsageError(f"{path} does not exist (give a results folder or a runs.csv)")
    table = path / "runs.csv" if path.is_dir() else path
    if not table.exists():
        raise UsageError(f"{path} holds no runs.csv: no run has recorded a row there")
    return table, *read_table(table)


def run_row(
    cfg: DictConfig, run_dir: Path, status: str, summary: dict, wall_s: float, metric: Any = None
) -> dict:
    """The run's row: its setting, the recipe's metric on validation and test, time to target, wall time."""
    choices = cfg.get("choices") or {}
    return {
        "run_id": run_id(run_dir, cfg.results_dir),
        "status": status,
        "recipe": cfg.recipe.name,
        "data": cfg.data.name,
        "model": choices.get("model") or "",
        "optimizer": choices.get("optimizer", ""),
        "schedule": cfg.schedule.name,
        "lr": cfg.optimizer.lr,
        "weight_decay": cfg.optimizer.weight_decay,
        "epochs": cfg.trainer.epochs,
        "seed": cfg.seed,
        "metric": metric.name if metric else "",
        "goal": metric.direction if metric else "",
        **{key: summary.get(key, "") for key in RUN_COLUMNS if key in summary},
        "wall_s": round(wall_s, 1),
        "git_sha": git_sha(),
        "run_dir": str(run_dir),
    }
