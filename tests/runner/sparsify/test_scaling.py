"""The scaling study: one factor at a time around the headline, each setting really applied in its process."""

import math
from pathlib import Path

import pytest

from runner.results import write_rows_csv
from runner.sparsify import engines, export, scaling
from runner.sparsify.schema import compose
from tests.runner.sparsify.test_pruning import tiny_bert

FACTORS = ("batch", "seq_len", "threads", "allocator", "spinning", "inputs")


def test_every_setting_changes_one_factor_of_the_headline():
    cfg = compose([])
    found = scaling.settings(cfg.bench.scaling, list(cfg.bench.headline), lengths=[12, 40])
    [headline] = [s for s in found if s["axis"] == "headline"]
    assert (headline["batch"], headline["seq_len"], headline["threads"]) == tuple(cfg.bench.headline)
    for s in found:
        if s["axis"] in ("headline", "inputs"):
            continue
        changed = [f for f in FACTORS if s[f] != headline[f]]
        assert changed == [s["axis"]], s
    axes = {s["axis"] for s in found}
    assert axes == {"headline", "threads", "batch", "seq_len", "allocator", "spinning", "inputs"}
    assert sorted(s["seq_len"] for s in found if s["axis"] == "seq_len") == [32, 64, 256, 512]


def test_findings_give_each_value_against_the_headline():
    rows = [{"model": "m", "axis": "headline", "value": "headline", "latency_p50_ms": 10.0, "threads": 2},
            {"model": "m", "axis": "threads", "value": 1, "latency_p50_ms": 18.0, "threads": 1}]  # fmt: skip
    [line, absent] = scaling.findings(rows, {"tcmalloc": "/no/such.so"})
    assert line == "- m, threads (p50 against the headline's 2, 10.00 ms): 1 1.80x"
    assert "tcmalloc: not installed" in absent


def test_a_setting_whose_process_fails_is_kept_with_its_error_and_the_study_goes_on(monkeypatch):
    """OpenVINO's wheel aborted ("munmap_chunk(): invalid pointer") under jemalloc and tcmalloc: those settings
    are rows with the error and no figures, every other setting is still timed, and the findings say which."""
    cfg = compose(["bench.scaling.seq_lens=[128]", "bench.scaling.batch_sizes=[1]", "bench.scaling.spinning=[null]",
                   "bench.scaling.allocators.jemalloc=/bin/sh", "bench.scaling.allocators.tcmalloc=/no/such.so"])  # fmt: skip
    started = []

    def fake_run(spec, env):
        started.append(env)
        if "LD_PRELOAD" in env:
            raise scaling.measure.TimingFailed(spec, "munmap_chunk(): invalid pointer")
        return {"rounds": [[[2.0, 2.0], [2.0, 2.0]]], "load_s": 0.1, "peak_rss_mb": 9.0, "preloaded": []}

    monkeypatch.setattr(scaling.measure, "run", fake_run)
    row = {"engine": "openvino", "precision": "int8-static", "path": "m.xml", "vocab_size": 50, "file_mb": 1.0,
           "variant": "dense"}  # fmt: skip
    table = scaling.study([row], cfg, lengths=[])
    assert [r["axis"] for r in table] == ["headline", "threads", "allocator"] and len(started) == 3
    [failed] = [r for r in table if r.get("error")]
    assert failed["value"] == "jemalloc" and failed["error"] == "munmap_chunk(): invalid pointer"
    assert math.isnan(failed["latency_p50_ms"]) and failed["calls"] == 0
    assert table[1]["latency_p50_ms"] == pytest.approx(2.0)
    text = "\n".join(scaling.findings(table, {}))
    assert "jemalloc failed (munmap_chunk(): invalid pointer)" in text and "threads (p50" in text


@pytest.mark.slow
def test_the_study_times_a_model_with_each_allocator_really_preloaded(tmp_path):
    overrides = ["export.dynamo=false", "bench.headline=[1,16,1]", "bench.batch_sizes=[1]", "bench.seq_lens=[16]",
                 "bench.threads=[1]", "bench.warmup=1", "bench.scaling.calls=4", "bench.scaling.threads=[1,2]",
                 "bench.scaling.batch_sizes=[2]", "bench.scaling.seq_lens=[8]"]  # fmt: skip
    cfg = compose(overrides)
    with engines.quiet():
        path = export.export_onnx(tiny_bert(), tmp_path / "model.onnx", cfg.export,
                                  export.example_inputs(2, 8, 50, seed=0))  # fmt: skip
    row = {"engine": "onnxruntime", "precision": "fp32", "path": str(path), "vocab_size": 50, "file_mb": 1.0,
           "variant": "tiny"}  # fmt: skip
    table = scaling.study([row], cfg, lengths=[5, 9, 14])
    installed = {n for n, p in cfg.bench.scaling.allocators.items() if p is None or Path(p).exists()}
    assert {r["value"] for r in table if r["axis"] == "allocator"} == installed - {"glibc"}
    for r in table:
        library = cfg.bench.scaling.allocators[r["allocator"]]
        assert r["preloaded"] == ([str(Path(library).resolve())] if library else [])
        assert r["calls"] >= 4 and r["latency_p50_ms"] > 0
    assert [r["batch"] for r in table if r["axis"] == "batch"] == [2]
    write_rows_csv(tmp_path / "scaling.csv", scaling.COLUMNS, table)
    plots = scaling.plot(tmp_path, table)
    assert [p.name for p in plots] == [f"scaling-{a}.png" for a in scaling.axes(table)]
    assert all(p.stat().st_size > 0 for p in plots) and len(plots) == 6
