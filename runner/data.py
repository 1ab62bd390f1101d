"""Data helpers the recipes share: the schema of labelled image data, deterministic stratified splits, a
per-process cache of decoded data files, the IDX reader (Fashion-MNIST), and the offline data that installs as
packages (files read from an installed distribution, never imported; Wikipedia articles as JSON)."""

from __future__ import annotations

import functools
import gzip
import importlib.metadata
import json
import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from omegaconf import MISSING

from runner.config import check
from runner.errors import UsageError

Decoded = TypeVar("Decoded", np.ndarray, tuple[np.ndarray, ...])
CACHED_FILES = 8  # per reader: CIFAR-10's six batches, Fashion-MNIST's four files


def read_once(read: Callable[[Path], Decoded]) -> Callable[[Path], Decoded]:
    """`read(path)` decodes each version of a file once per process: a sweep's trials share their process
    (Hydra's basic launcher runs them all in one, joblib's workers several each), and decoding Fashion-MNIST's
    gzip files took a quarter of a second per trial. Keyed by path, size and modification time, so a file
    that changed is read again. The arrays are shared between trials, so they are made read-only."""

    @functools.lru_cache(maxsize=CACHED_FILES)
    def decoded(path: str, size: int, modified_ns: int) -> Decoded:
        arrays = read(Path(path))
        for array in arrays if isinstance(arrays, tuple) else (arrays,):
            array.flags.writeable = False
        return arrays

    @functools.wraps(read)
    def reader(path: Path) -> Decoded:
        stat = Path(path).stat()
        return decoded(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)

    return reader


def stratified_split(labels: np.ndarray, fractions: list[float], seed: int) -> list[np.ndarray]:
    """Indices of each part: every label's examples shuffled (seeded) and cut at the cumulative fractions."""
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[] for _ in fractions]
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        cuts = np.round(np.cumsum(fractions)[:-1] * len(members)).astype(int)
        for part, chunk in zip(parts, np.split(members, cuts), strict=True):
            part.append(chunk)
    return [np.sort(np.concatenate(part)) for part in parts]


def holdout(labels: np.ndarray, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) indices: `size` examples held out, stratified by label, the same for every run
    with the same seed; size 0 holds out nothing."""
    everything = np.arange(len(labels))
    if size == 0:
        return everything, everything[:0]
    train, val = stratified_split(labels, [1 - size / len(labels), size / len(labels)], seed)
    return train, val


@dataclass
class ImageDataConfig:
    """Labelled image data (the CIFAR-10 and Cars recipes); recipes with other data bring their own schema."""

    name: str = MISSING
    root: str = MISSING
    download: bool = MISSING
    train_limit: int | None = MISSING  # use only the first N training examples (quick runs, tests)
    test_limit: int | None = MISSING
    val_size: int = MISSING  # training examples held out for validation (stratified); 0: none
    val_seed: int = MISSING  # the held-out examples depend on this, not on the run's seed

    def __post_init__(self) -> None:
        for key in ("train_limit", "test_limit"):
            limit = getattr(self, key)
            if limit is not None:
                check(limit > 0, f"data.{key}", "must be > 0 or null", limit)
        check(self.val_size >= 0, "data.val_size", "must be >= 0", self.val_size)
        if (
            self.train_limit is not None
        ):  # known before any image is read: a sweep stops before its first trial
            check(self.val_size < self.train_limit, "data.val_size",
                  f"must be below data.train_limit ({self.train_limit}): the rest is the training set",
                  self.val_size)  # fmt: skip


@read_once
def read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzip), as LeCun's MNIST and Zalando's Fashion-MNIST ship them: magic, dims, then uint8."""
    try:
        with gzip.open(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as err:  # not gzip, truncated, or corrupt
        raise UsageError(f"{path} is not a readable gzip file ({err})") from err
    magic = int.from_bytes(data[0:4], "big")
    if len(data) < 4 or magic >> 8 != 0x08:  # 0x08: unsigned byte; the low byte is the number of dimensions
        raise UsageError(f"{path} is not an IDX file of unsigned bytes (magic {magic:#x})")
    ndim = magic & 0xFF
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    if len(data) != offset + math.prod(shape):
        raise UsageError(
            f"{path} declares {shape} bytes of data but holds {len(data) - offset}: truncated or corrupt"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(shape)


FASHION_MNIST_FILES = {
    "train_x": "train-images-idx3-ubyte.gz",
    "train_y": "train-labels-idx1-ubyte.gz",
    "test_x": "t10k-images-idx3-ubyte.gz",
    "test_y": "t10k-labels-idx1-ubyte.gz",
}


FASHION_MNIST_FILES = {
    "train_x": "train-images-idx3-ubyte.gz",
    "train_y": "train-labels-idx1-ubyte.gz",
    "test_x": "t10k-images-idx3-ubyte.gz",
    "test_y": "t10k-labels-idx1-ubyte.gz",
}


def read_fashion_mnist(root: Path) -> dict[str, np.ndarray]:
    """Fashion-MNIST's four IDX files in `root` (Debian's dataset-fashion-mnist, or Zalando's download):
    train_x, train_y, test_x, test_y as uint8 arrays, images 28 x 28."""
    missing = [name for name in FASHION_MNIST_FILES.values() if not (root / name).exists()]
    if missing:
        raise UsageError(
            f"Fashion-MNIST not found in {root} (missing {missing[0]}); "
            "install it with `sudo apt-get install dataset-fashion-mnist`, or set data.root=<folder>"
        )
    arrays = {key: read_idx(root / name) for key, name in FASHION_MNIST_FILES.items()}
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_x"], arrays[f"{split}_y"]
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise UsageError(
                f"{root / FASHION_MNIST_FILES[f'{split}_x']} holds {images.shape[0]} images but "
                f"{FASHION_MNIST_FILES[f'{split}_y']} has {labels.shape[0]} labels"
            )
    return arrays


def data_file(task_cfg: Any) -> Path:
    """The task's file: inside an installed distribution (never imported), or a plain local path."""
    if task_cfg.package is None:
        path = Path(task_cfg.file).expanduser()
    else:
        files = importlib.metadata.distribution(task_cfg.package).files or []
        found = [f for f in files if str(f) == task_cfg.file]
        path = Path(found[0].locate()) if found else Path("<missing>")
    if not path.is_file():
        raise UsageError(
            f"task.file '{task_cfg.file}' not found (package: {task_cfg.package}); run `make install`"
        )
    return path


def read_wiki(task_cfg: Any) -> tuple[list[tuple[str, ...]], list[str]]:
    """Texts and string labels, sorted by article title, without the dropped labels."""
    path = data_file(task_cfg)
    try:
        articles = json.loads(path.read_text(encoding="utf-8"))
        keep = [
            key for key in sorted(articles) if articles[key][task_cfg.label_key] not in task_cfg.drop_labels
        ]
        texts = [tuple(articles[key][field] for field in task_cfg.text_keys) for key in keep]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as err:
        raise UsageError(f"{path} is not a JSON object of articles ({type(err).__name__}: {err})") from err
    return texts, [articles[key][task_cfg.label_key] for key in keep]


def check_installed(package: str | None, key: str) -> None:
    if package is None:
        return
    try:
        importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        raise UsageError(f"{key}: package '{package}' is not installed (run `make install`)") from None
