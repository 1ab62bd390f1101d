"""Text classification tasks: the offline Wikipedia topics (a JSON file inside an installed wheel) and GLUE.

The split is by example (article), stratified by label and deterministic in the seed: examples are sorted by
their key first, so the JSON's order never matters.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from runner import network
from runner.data import read_wiki, stratified_split
from runner.errors import UsageError
from runner.sparsify.schema import TaskKind

SPLITS = ("train", "validation", "test")


@dataclass
class Split:
    texts: list[tuple[str, ...]]  # one field, or a sentence pair
    labels: np.ndarray  # int64 class ids


@dataclass
class TaskData:
    label_names: list[str]
    train: Split
    validation: Split
    test: Split


# ----------------------------------------------------------------------------------------------- reading
def read_glue(task_cfg: Any, split: str) -> tuple[list[tuple[str, ...]], list[int]]:
    """One split of a GLUE config from the Hub (downloaded once, then cached) or a local copy of its files."""
    import datasets  # only the GLUE tasks need it

    if not Path(task_cfg.dataset).expanduser().exists():
        network.require_hub(f"task.dataset '{task_cfg.dataset}'")
    try:
        rows = datasets.load_dataset(task_cfg.dataset, task_cfg.glue_name, split=split)
    except (FileNotFoundError, ValueError, ConnectionError) as err:
        raise UsageError(
            f"task.dataset '{task_cfg.dataset}' ({task_cfg.glue_name}, {split}) could not be loaded: "
            f"{str(err).splitlines()[0]}"
        ) from err
    texts = list(zip(*(rows[field] for field in task_cfg.text_keys), strict=True))
    return texts, list(rows[task_cfg.label_key])


# ------------------------------------------------------------------------------------------------ splits
def limit(indices: np.ndarray, labels: np.ndarray, n: int | None, seed: int) -> np.ndarray:
    """At most n of the indices, keeping the label proportions (stratified)."""
    if n is None or n >= len(indices):
        return indices
    kept, _ = stratified_split(labels[indices], [n / len(indices), 1 - n / len(indices)], seed)
    return indices[kept]


def take(texts: list[tuple[str, ...]], labels: np.ndarray, indices: np.ndarray) -> Split:
    return Split([texts[i] for i in indices], labels[indices])


def load_task(task_cfg: Any, seed: int) -> TaskData:
    if task_cfg.kind == TaskKind.wiki_json:
        texts, names = read_wiki(task_cfg)
        label_names = sorted(set(names))
        labels = np.array([label_names.index(name) for name in names], dtype=np.int64)
        fractions = [task_cfg.split[name] for name in SPLITS]
        parts = dict(zip(SPLITS, stratified_split(labels, fractions, seed), strict=True))
    else:  # GLUE: its test labels are hidden, so its eval split is our test set
        texts, ids = read_glue(task_cfg, "train")
        test_texts, test_ids = read_glue(task_cfg, task_cfg.eval_split)
        labels = np.array(ids + test_ids, dtype=np.int64)
        label_names = [str(i) for i in range(int(labels.max()) + 1)]
        fractions = [task_cfg.split.train, 1 - task_cfg.split.train]
        train, validation = stratified_split(labels[: len(texts)], fractions, seed)
        parts = {"train": train, "validation": validation, "test": np.arange(len(texts), len(labels))}
        texts = texts + test_texts
    limits = {"train": task_cfg.train_limit, "validation": task_cfg.test_limit, "test": task_cfg.test_limit}
    splits = {name: take(texts, labels, limit(parts[name], labels, limits[name], seed)) for name in SPLITS}
    return TaskData(label_names=label_names, **splits)


# ------------------------------------------------------------------------------------ tokens and metrics
def encode(split: Split, tokenizer: Any, max_len: int) -> dict[str, Any]:
    """Token tensors padded to max_len (wiki leads are longer than max_len, so padding costs little)."""
    import torch

    columns = list(zip(*split.texts, strict=True))
    tokens = tokenizer(
        *columns, truncation=True, max_length=max_len, padding="max_length", return_tensors="pt"
    )
    encoded = dict(tokens)
    encoded["labels"] = torch.as_tensor(split.labels)
    return encoded


def batches(encoded: dict[str, Any], batch_size: int, order: Any) -> Iterator[dict[str, Any]]:
    """Consecutive batches of the encoded split in the given index order (a tensor of indices)."""
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        yield {key: value[idx] for key, value in encoded.items()}


def metrics(predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Accuracy and macro-F1 (mean F1 over the classes seen in labels or predictions)."""
    classes = np.union1d(labels, predictions)
    f1s = []
    for c in classes:
        tp = np.sum((predictions == c) & (labels == c))
        denominator = np.sum(predictions == c) + np.sum(labels == c)
        f1s.append(2 * tp / denominator if denominator else 0.0)
    return {"accuracy": float(np.mean(predictions == labels)), "macro_f1": float(np.mean(f1s))}
