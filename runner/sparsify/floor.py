"""The classical floor: TF-IDF + logistic regression on the run's own split, what the task takes without BERT.

A baseline gets the same care as the variants: its regularization strength is chosen on the validation split
from conf's floor.C, and the test split is read once, for that choice. It reads each whole text (a sentence
pair joined by a space); the BERT variants read their first task.max_len tokens.

    stages/quantize/floor.json   {"C", "val_accuracy", "accuracy", "macro_f1", "latency_p50_ms", "fit_s"}
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from runner.sparsify import measure, task

RESULT = "floor.json"


def texts(split: task.Split) -> list[str]:
    return [" ".join(fields) for fields in split.texts]


def pipeline(cfg: Any, c: float) -> Any:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    tfidf = TfidfVectorizer(ngram_range=(1, cfg.ngram_max), min_df=cfg.min_df, sublinear_tf=cfg.sublinear_tf)
    return make_pipeline(tfidf, LogisticRegression(C=c, max_iter=cfg.max_iter))


def latency_p50_ms(model: Any, examples: list[str], calls: int) -> float:
    """Median time of one prediction at batch 1, cycling through real texts (this process, nothing else run)."""
    return float(np.median(measure.time_point(model.predict, [[text] for text in examples], 0, calls)))


def fit(loaded: task.TaskData, cfg: Any) -> dict[str, float]:
    """Every C of the grid fitted on train and scored on validation; the best one tested and timed."""
    started, tried = time.perf_counter(), []
    for c in cfg.C:
        model = pipeline(cfg, float(c)).fit(texts(loaded.train), loaded.train.labels)
        val = task.metrics(model.predict(texts(loaded.validation)), loaded.validation.labels)["accuracy"]
        tried.append((val, float(c), model))
    val, c, model = max(tried, key=lambda t: t[0])  # the first of equals: the strongest regularization
    fit_s = time.perf_counter() - started
    test = task.metrics(model.predict(texts(loaded.test)), loaded.test.labels)
    latency = latency_p50_ms(model, texts(loaded.test), cfg.timed_calls)
    return {"C": c, "val_accuracy": val, "accuracy": test["accuracy"], "macro_f1": test["macro_f1"],
            "latency_p50_ms": latency, "fit_s": fit_s}  # fmt: skip
