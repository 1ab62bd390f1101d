"""Shared fixtures: tiny datasets in the real on-disk formats, and the real configs shrunk to CPU seconds."""

from __future__ import annotations

import gzip
import json
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from rich.console import Console

from runner import checkpoint, cli
from runner.config import compose

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def one_thread():
    """Every test on one torch thread, the count restored after: the suite shares a 2-core machine, and train()
    sets whatever thread count a test's config asks for."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write_idx(path: Path, array: np.ndarray) -> None:
    """IDX as Fashion-MNIST ships it: magic 0x0008<ndim>, big-endian dims, then unsigned bytes; gzip."""
    header = (0x0800 | array.ndim).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def write_fashion_mnist(root: Path, n_train: int, n_test: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Learnable fake images: each class has its own brightness (the nets pool globally, so not a position)."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        images = (25 * labels[:, None, None] + rng.integers(0, 20, (n, 28, 28))).astype(np.uint8)
        write_idx(root / f"{split}-images-idx3-ubyte.gz", images)
        write_idx(root / f"{split}-labels-idx1-ubyte.gz", labels)
        arrays[split] = (images, labels)
    return arrays


@pytest.fixture
def fmnist_root(tmp_path: Path) -> Path:
    root = tmp_path / "fashion-mnist"
    root.mkdir()
    write_fashion_mnist(root, n_train=192, n_test=64)
    return root


@pytest.fixture(scope="module")
def fmnist(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fmnist")
    write_fashion_mnist(root, n_train=192, n_test=64)
    return root


@pytest.fixture(scope="module")
def slow_fmnist(tmp_path_factory) -> Path:
    """Enough images that an epoch lasts about a second: signals arrive mid-epoch."""
    root = tmp_path_factory.mktemp("fmnist_big")
    write_fashion_mnist(root, n_train=3072, n_test=256)
    return root


def write_cifar10(folder: Path, per_batch: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """cifar-10-batches-py as the python tarball ships it: pickled dicts with 'data' N x 3072 and 'labels'."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    xs, ys = [], []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (per_batch, 3072)).astype(np.uint8)
        labels = rng.integers(0, 10, per_batch).tolist()
        with open(folder / name, "wb") as f:
            pickle.dump({"batch_label": name.encode(), "labels": labels, "data": data}, f)
        xs.append(data)
        ys.append(labels)
    return np.concatenate(xs), np.concatenate(ys)


# The settings the recipe would otherwise measure per run (runner/machine.py), pinned: two runs that a test
# compares must not differ by what each happened to measure.
PINNED = ["recipe.channels_last=false", "trainer.precision=bf16"]


def tiny_overrides(tmp_path: Path, fmnist_root: Path) -> list[str]:
    """The real train config on the tiny Fashion-MNIST fixture: a few CPU seconds per run."""
    return [
        "data=fashion_mnist",
        f"data.root={fmnist_root}",
        f"results_dir={tmp_path / 'results'}",
        "recipe.widths=[8,8,16,16]",
        "trainer.epochs=3",
        "trainer.batch_size=32",
        "trainer.eval_batch_size=64",
        "trainer.progress=false",
        "trainer.log_every=2",
        "trainer.threads=1",
        *PINNED,
    ]


def tiny(root: Path, results_dir: Path, *extra: str) -> list[str]:
    """The overrides of a tiny run of the CIFAR-10 recipe on Fashion-MNIST files in `root`, for the command line."""
    return [
        "data=fashion_mnist", f"data.root={root}", f"results_dir={results_dir}", "recipe.widths=[8,8,16,16]",
        "trainer.batch_size=32", "trainer.eval_batch_size=64", "trainer.progress=false", "trainer.log_every=2",
        "trainer.threads=1", "trainer.epochs=2", *PINNED, *extra,
    ]  # fmt: skip


@pytest.fixture
def tiny_cfg(tmp_path: Path, fmnist_root: Path):
    def make(*extra: str):
        return compose(tiny_overrides(tmp_path, fmnist_root) + list(extra))

    return make


# ------------------------------------------------------------------------------------------ shared checks
TIMING = "_s"  # metrics whose names end in _s are wall-clock timings: equal runs differ only there


def without_timings(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if not k.endswith(TIMING)} for row in rows]


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def assert_same_run(a: Path, b: Path) -> None:
    state_a, state_b = checkpoint.load(a), checkpoint.load(b)
    for key, tensor in state_a["model"].items():
        assert torch.equal(tensor, state_b["model"][key]), key
    assert without_timings(read_metrics(a)) == without_timings(read_metrics(b))
    assert state_a["step"] == state_b["step"]


def interrupting(build, at_batch: int, after_epoch: int, inspect=None):
    """`build` (a recipe's) whose task raises KeyboardInterrupt, as Ctrl-C does, at batch `at_batch` of the
    epoch that follows a checkpoint of `after_epoch` epochs; `inspect(state)` first looks at that checkpoint."""

    def built(cfg, device):
        task = build(cfg, device)
        batches = task.batches

        def stopping(generator):
            for i, batch in enumerate(batches(generator)):
                state = checkpoint.load(Path(cfg.run_dir)) if i == at_batch else None
                if state is not None and state["epoch"] == after_epoch:
                    if inspect is not None:
                        inspect(state)
                    raise KeyboardInterrupt
                yield batch

        task.batches = stopping
        return task

    return built


def adamrun(monkeypatch, capsys, *argv: str, cwd: Path | None = None) -> tuple[int, str, str]:
    """The real command in this process (cli.main), as a user types it."""
    monkeypatch.setattr(sys, "argv", ["adamrun", *argv])
    monkeypatch.setattr(cli, "console", Console(width=200))
    if cwd is not None:
        monkeypatch.chdir(cwd)
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


def assert_one_line(err: str, *fragments: str) -> None:
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, err
