"""Data helpers every recipe shares: deterministic, stratified splits of a labelled training set, and a
per-process cache of decoded data files."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np

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
