"""Data helpers every recipe shares: deterministic, stratified splits of a labelled training set."""

from __future__ import annotations

import numpy as np


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
