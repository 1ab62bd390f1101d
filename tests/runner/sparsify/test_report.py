"""Benchmark summaries and the comparison table on hand-made timings."""

import pytest

from runner.sparsify import bench, report


def test_summarize_percentiles_throughput_and_spread():
    rounds = [[10.0, 12.0, 14.0], [20.0, 22.0, 24.0]]
    found = bench.summarize(rounds, batch=4)
    assert found["latency_p50_ms"] == pytest.approx(17.0)  # median of the six passes
    assert found["latency_p90_ms"] == pytest.approx(23.0)
    assert found["throughput_per_s"] == pytest.approx(4 * 1000 / 17.0)  # batch / mean latency
    assert found["spread"] == pytest.approx((22.0 - 12.0) / 17.0)


def row(variant, precision, engine, accuracy, structured=False):
    return {"variant": variant, "sparsity": 0.5, "structured": structured, "layers": 6, "precision": precision,
            "engine": engine, "accuracy": accuracy, "macro_f1": accuracy, "params": 10, "nonzero_params": 5,
            "file_mb": 1.0}  # fmt: skip


def timing(index, batch, latency, **extra):
    return {"row": index, "batch": batch, "seq_len": 128, "threads": 2, "latency_p50_ms": latency,
            "latency_p90_ms": latency, "throughput_per_s": batch * 1000 / latency, "spread": 0.0} | extra  # fmt: skip


def test_speedup_and_accuracy_drop_are_against_dense_fp32_torch_at_the_same_point():
    rows = [row("dense", "fp32", "torch", 0.92), row("s0.5-structured", "int8", "onnxruntime", 0.915, True)]
    timings = [timing(0, 1, 20.0), timing(1, 1, 4.0), timing(0, 8, 100.0), timing(1, 8, 50.0),
               timing(1, 1, 5.0, engine="deepsparse")]  # fmt: skip
    table = report.comparison(rows, timings)
    assert [r["speedup"] for r in table] == pytest.approx([1.0, 5.0, 1.0, 2.0, 4.0])
    assert table[1]["accuracy_drop"] == pytest.approx(0.005)
    assert table[4]["engine"] == "deepsparse"
    text = report.verdict(report.at(table, [1, 128, 2]))
    assert "s0.5-structured int8 onnxruntime" in text and "5.00x" in text and "goal >= 4x: met." in text
