"""The timing harness against a second, standalone timing of the same file (plain onnxruntime, no adamrun code)."""

import json
import os
import subprocess
import sys

import numpy as np

from runner.sparsify import bench, engines, export, measure
from runner.sparsify.schema import compose
from tests.runner.sparsify.test_pruning import tiny_bert

SEQ_LEN, CALLS, WARMUP, VOCAB = 64, 100, 10, 50  # VOCAB: tiny_bert's
MAX_TRIES = 8  # timings of each kind, alternated until the fastest of each agree (a real 2x shift never does)
AGREEMENT = 1.5  # either median at most 1.5x the other: in-process interference (the bug this guards) was 2x


def timed_bert():
    """A BERT whose call takes milliseconds on one thread: the tiny test BERT's 0.2 ms is mostly fixed costs,
    which varied 1.6x between two standalone runs on CI."""
    return tiny_bert(hidden=256, intermediate=1024, positions=SEQ_LEN)


STANDALONE = """
import json, statistics, sys, time
import numpy as np
import onnxruntime as ort
path, vocab, seq_len, calls, warmup = json.loads(sys.argv[1])
options = ort.SessionOptions()
options.intra_op_num_threads, options.inter_op_num_threads = 1, 1
session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
ids = np.random.default_rng(0).integers(0, vocab, (1, seq_len), dtype=np.int64)
every = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
feed = {i.name: every[i.name] for i in session.get_inputs()}
for _ in range(warmup):
    session.run(None, feed)
took = []
for _ in range(calls):
    started = time.perf_counter()
    session.run(None, feed)
    took.append((time.perf_counter() - started) * 1000)
print(statistics.median(took))
"""


def test_the_harness_times_a_model_as_a_standalone_process_does(tmp_path):
    cfg = compose(
        [f"bench.iters={CALLS // 2}", "bench.repeats=2", f"bench.warmup={WARMUP}", "export.dynamo=false"]
    )
    with engines.quiet():
        path = export.export_onnx(timed_bert(), tmp_path / "model.onnx", cfg.export,
                                  export.example_inputs(2, 8, VOCAB, seed=0))  # fmt: skip
    row = {"engine": "onnxruntime", "precision": "fp32", "path": str(path), "vocab_size": VOCAB}
    spec = bench.spec(cfg.bench, cfg.export, row, 1, [{"batch": 1, "seq_len": SEQ_LEN}], seed=0)
    argv = json.dumps([str(path), VOCAB, SEQ_LEN, CALLS, WARMUP])
    harness, alone = [], []
    for _ in range(MAX_TRIES):  # noise from elsewhere only slows a run, so each side's fastest is its figure
        harness.append(float(np.median(np.concatenate(measure.run(spec)["rounds"][0]))))
        alone.append(float(subprocess.run([sys.executable, "-c", STANDALONE, argv], capture_output=True, text=True,
                                          check=True, env=os.environ | {"OMP_NUM_THREADS": "1"}).stdout))  # fmt: skip
        if agree(harness, alone):
            break
    assert agree(harness, alone), (harness, alone)


def agree(harness: list[float], alone: list[float]) -> bool:
    return 1 / AGREEMENT <= min(harness) / min(alone) <= AGREEMENT
