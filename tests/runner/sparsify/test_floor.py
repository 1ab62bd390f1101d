"""The TF-IDF + logistic-regression floor: C chosen on validation, the test split read once for that C."""

import numpy as np
import pytest

from runner.sparsify import floor, task
from runner.sparsify.schema import compose

WORDS = {0: "violin sonata orchestra", 1: "striker goal league"}  # one topic's words per label


def split(labels, rng):
    noise = ["the", "of", "and", "was", "in", "a", "by"]
    texts = [(f"{WORDS[y]} " + " ".join(rng.choice(noise, 6)),) for y in labels]
    return task.Split(texts, np.asarray(labels))


def toy(rng):
    return task.TaskData(
        label_names=["music", "sport"],
        train=split([0] * 30 + [1] * 10, rng),  # unbalanced: an underfit model says 0 to everything
        validation=split([0, 1] * 10, rng),
        test=split([1, 0] * 10, rng),
    )


def test_the_floor_learns_the_topic_words_and_tests_the_c_that_validation_chose(monkeypatch):
    cfg = compose(["floor.C=[1e-6,10.0]", "floor.timed_calls=5"]).floor
    loaded = toy(np.random.default_rng(0))
    read, names, real = [], {id(loaded.validation): "validation", id(loaded.test): "test"}, floor.texts
    monkeypatch.setattr(floor, "texts", lambda s: read.append(names.get(id(s), "train")) or real(s))
    found = floor.fit(loaded, cfg)
    # C=1e-6 leaves only the intercept: class 0 everywhere, validation 0.5; C=10 learns the topic words
    assert found["C"] == 10.0
    assert found["val_accuracy"] == found["accuracy"] == found["macro_f1"] == 1.0
    assert read.count("test") == 2  # once to score the chosen C, once for the texts it is timed on
    assert read.count("validation") == 2  # one per C
    assert found["latency_p50_ms"] > 0


def test_equal_validation_scores_go_to_the_strongest_regularization():
    cfg = compose(["floor.C=[1.0,10.0,100.0]", "floor.timed_calls=1"]).floor
    assert floor.fit(toy(np.random.default_rng(1)), cfg)["C"] == pytest.approx(1.0)  # all three score 1.0
