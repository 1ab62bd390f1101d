"""Time one ONNX model in a process of its own (standalone: numpy and one engine, no project imports).

Runs under the project's python for onnxruntime, and under `bench.deepsparse_python` for DeepSparse, whose
own virtual environment pins numpy and onnx versions the project cannot share. Prints one JSON line.

    python worker.py ENGINE MODEL.onnx THREADS BATCH SEQ_LEN WARMUP ITERS VOCAB SEED START_AT
"""

import json
import os
import sys
import tempfile
import time

import numpy as np

DEEPSPARSE_IR_VERSION = 9  # the newest ONNX IR version DeepSparse 1.8.0 loads


def make_inputs(names, batch, seq_len, vocab, seed):
    ids = np.random.default_rng(seed).integers(0, vocab, (batch, seq_len), dtype=np.int64)
    values = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    return [values[name] for name in names]


def onnxruntime_engine(path, threads, batch, seq_len):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    sess = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    return names, lambda arrays: sess.run(None, dict(zip(names, arrays, strict=True)))


def deepsparse_engine(path, threads, batch, seq_len):
    os.environ["NM_DISABLE_ANALYTICS"] = "1"  # no usage reporting from the benchmark
    import onnx
    from deepsparse import Engine

    model = onnx.load(path)
    # DeepSparse 1.8 reads ONNX IR <= 9; torch's exporter writes IR 10, whose additions (4-bit types,
    # function overloads) our graphs do not use, so relabelling the copy is enough.
    model.ir_version = min(model.ir_version, DEEPSPARSE_IR_VERSION)
    copy = os.path.join(tempfile.mkdtemp(), "model.onnx")
    onnx.save(model, copy)
    names = [i.name for i in model.graph.input]
    engine = Engine(
        model=copy, batch_size=batch, num_cores=threads, input_shapes=[[batch, seq_len]] * len(names)
    )
    return names, engine.run


ENGINES = {"onnxruntime": onnxruntime_engine, "deepsparse": deepsparse_engine}


def main(argv):
    engine, path = argv[0], argv[1]
    threads, batch, seq_len, warmup, iters, vocab, seed = map(int, argv[2:9])
    start_at = float(argv[9])  # wall-clock time at which all concurrent workers start timing together
    names, run = ENGINES[engine](path, threads, batch, seq_len)
    arrays = make_inputs(names, batch, seq_len, vocab, seed)
    for _ in range(warmup):
        run(arrays)
    time.sleep(max(0.0, start_at - time.time()))
    latencies, started = [], time.perf_counter()
    for _ in range(iters):
        t = time.perf_counter()
        run(arrays)
        latencies.append((time.perf_counter() - t) * 1000)
    print(json.dumps({"latencies_ms": latencies, "elapsed_s": time.perf_counter() - started}))


if __name__ == "__main__":
    main(sys.argv[1:])
