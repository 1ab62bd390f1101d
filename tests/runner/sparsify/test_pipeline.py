"""The whole sparsify-bert pipeline on a tiny random BERT and a fixture JSON file (slow: a few minutes;
the TorchScript exporter here, the dynamo one in test_export)."""

import csv
import json
import shutil

import numpy as np
import pytest

from runner.sparsify import export, isolated, model, openvino_engine, pipeline, report
from runner.sparsify.schema import compose
from tests.runner.sparsify.test_pruning import tiny_bert
from tests.runner.sparsify.test_task import wiki_file  # noqa: F401 - the fixture

DENSE_INT8 = [
    ("int8", "torch"),
    ("int8", "onnxruntime"),
    ("int8-static", "onnxruntime"),
    ("int8-static", "openvino"),
]
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")


@pytest.fixture
def tiny_model_dir(tmp_path):
    """A local model folder: a 2-layer random BERT with MiniLM's tokenizer (ids clipped to a small vocab)."""
    folder = tmp_path / "tiny-bert"
    bert = tiny_bert()
    tokenizer_dir = model.source(compose([]).model)
    bert.resize_token_embeddings(30522)  # MiniLM's vocabulary, so its tokenizer's ids are valid
    bert.save_pretrained(folder)
    for name in TOKENIZER_FILES:
        shutil.copy(f"{tokenizer_dir}/{name}", folder / name)
    return folder


def spy_on_calibration(monkeypatch) -> list[tuple[str, list]]:
    """(engine, batches) of every static quantization: ONNX Runtime's in this process, NNCF's sent to its own."""
    calibrated = []
    static, call = export.quantize_static_onnx, isolated.call

    def quantize_static_onnx(fp32, out, batches, cfg):
        calibrated.append(("onnxruntime", batches))
        return static(fp32, out, batches, cfg)

    def isolated_call(fn, *args):
        if fn is openvino_engine.quantize:
            calibrated.append(("openvino", args[2]))
        return call(fn, *args)

    monkeypatch.setattr(export, "quantize_static_onnx", quantize_static_onnx)
    monkeypatch.setattr(isolated, "call", isolated_call)
    return calibrated


@pytest.mark.slow
def test_pipeline_end_to_end_then_bench_stage_alone(tmp_path, monkeypatch, wiki_file, tiny_model_dir):  # noqa: F811
    run_dir = tmp_path / "run"
    calibrated = spy_on_calibration(monkeypatch)
    overrides = [
        "model.package=null", f"model.name_or_path={tiny_model_dir}", "task.package=null", f"task.file={wiki_file}",
        "task.train_limit=null", "task.max_len=16", "export.dynamo=false", "trainer.epochs=1", "trainer.batch_size=8",
        "trainer.progress=false", "prune.epochs=1", "prune.layer_drop_epochs=1", "prune.update_every=1", "sparsify.sparsity=[0.5]", "sparsify.unstructured=true", "sparsify.layers=[null,1]",
        "bench.batch_sizes=[1]", "bench.seq_lens=[16]", "bench.threads=[1]", "bench.headline=[1,16,1]",
        "bench.iters=2", "bench.warmup=1", "bench.repeats=2", "bench.instances.iters=2",
        "bench.instances.seq_len=16", "confirm.seeds=[1]", "bench.scaling.calls=2", "bench.scaling.threads=[1]", "bench.scaling.batch_sizes=[1]",
        "bench.scaling.seq_lens=[16]", "bench.scaling.spinning=[null]", "bench.scaling.real_lengths=3",
        "~bench.scaling.allocators.jemalloc", "~bench.scaling.allocators.tcmalloc", f"run_dir={run_dir}",
    ]  # fmt: skip
    assert pipeline.run(compose(overrides)) == run_dir
    main = pipeline.Run(compose(overrides), run_dir)
    head = main.data()[0]["train"]["input_ids"][: compose(overrides).export.calibration_examples].numpy()
    assert {engine for engine, _ in calibrated} == {"onnxruntime", "openvino"}
    for _, batches in calibrated:  # the first training examples, nothing from validation or test
        np.testing.assert_array_equal(np.concatenate([b["input_ids"] for b in batches]), head)
    with open(run_dir / "comparison.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == report.COLUMNS
    kinds = {(r["variant"], r["precision"], r["engine"]) for r in rows}
    assert ("dense", "fp32", "torch") in kinds and ("s0.5-structured", "int8", "onnxruntime") in kinds
    # dense: torch fp32/bf16/int8, ORT fp32/int8/int8-static, OpenVINO fp32/int8-static; pruned: all but torch's two
    assert len(rows) == 8 + 3 * 6
    assert ("s0.5-structured-1L", "int8-static", "openvino") in kinds
    assert {r["int8_baseline"] for r in rows} <= {f"dense {p} {e}" for p, e in DENSE_INT8}
    assert {r["layers"] for r in rows if r["variant"] == "s0.5-structured-1L"} == {
        "1"
    }  # of the tiny BERT's 2
    dense = next(r for r in rows if (r["variant"], r["precision"], r["engine"]) == ("dense", "fp32", "torch"))
    assert float(dense["speedup"]) == 1.0 and float(dense["accuracy_drop"]) == 0.0
    dense_onnx = next(
        r for r in rows if (r["variant"], r["precision"], r["engine"]) == ("dense", "fp32", "onnxruntime")
    )
    assert dense_onnx["accuracy"] == dense["accuracy"]  # the same function, measured on its own engine
    dense_ov = next(
        r for r in rows if (r["variant"], r["precision"], r["engine"]) == ("dense", "fp32", "openvino")
    )
    assert dense_ov["accuracy"] == dense["accuracy"]
    structured = next(r for r in rows if r["variant"] == "s0.5-structured" and r["engine"] == "torch")
    assert int(structured["params"]) < int(dense["params"])  # heads and neurons really removed
    for name in (
        "dense-fp32",
        "dense-int8",
        "s0.5-structured-int8",
        "s0.5-unstructured-fp32",
        "s0.5-structured-1L-int8",
        "s0.5-structured-int8-static",
    ):
        assert (run_dir / "variants" / name / "model.onnx").is_file()
    assert (run_dir / "variants" / "s0.5-structured-int8-static-openvino" / "model.xml").is_file()
    assert (run_dir / "pareto.png").stat().st_size > 0
    assert "goal >= 4x" in (run_dir / "report.md").read_text()

    # the confirm stage: dense and the winner alone re-run on seed 1, on seed 0's split, the winner's kind only
    confirmed = json.loads((run_dir / "stages" / "confirm" / "confirm.json").read_text())
    assert [s["seed"] for s in confirmed["seeds"]] == [0, 1] and confirmed["df"] == 1
    winner = next(r for r in rows if report.name(r) == confirmed["winner"])
    assert confirmed["seeds"][0]["winner"] == float(winner["accuracy"])
    assert confirmed["seeds"][0]["dense"] == float(dense["accuracy"])
    seed_stages = {p.name for p in (run_dir / "seeds" / "1" / "stages").iterdir()}
    pruned = set() if winner["variant"] == "dense" else {f"prune-{winner['variant']}"}
    assert seed_stages == {"finetune"} | pruned
    same_split = pipeline.seed_run(main, 1).data()[0]["test"]["input_ids"]
    assert same_split.equal(main.data()[0]["test"]["input_ids"])  # tested on the examples seed 0 was
    assert "Mean drop over 2 seeds" in (run_dir / "report.md").read_text()
    with open(run_dir / "scaling.csv") as f:  # the winner and its dense int8 baseline: headline, test lengths
        studied = list(csv.DictReader(f))
    assert {r["model"] for r in studied} == {confirmed["winner"], winner["int8_baseline"]}
    assert sorted(r["axis"] for r in studied) == ["headline", "headline", "inputs", "inputs"]
    assert "## Scaling study" in (run_dir / "report.md").read_text()
    floor = json.loads((run_dir / "stages" / "quantize" / "floor.json").read_text())
    assert 0 <= floor["accuracy"] <= 1 and floor["C"] in compose(overrides).floor.C
    assert f"test accuracy {floor['accuracy']:.4f}" in (run_dir / "report.md").read_text()

    timings = run_dir / "stages" / "bench" / "timings.json"
    before = json.loads(timings.read_text())
    pipeline.run(compose([*overrides, "stage=bench"]))  # re-times the saved models only
    assert json.loads(timings.read_text()) != before
    assert (run_dir / "stages" / "finetune" / "metrics.json").stat().st_mtime < timings.stat().st_mtime
    assert (run_dir / "comparison.csv").stat().st_mtime > timings.stat().st_mtime  # the report follows
