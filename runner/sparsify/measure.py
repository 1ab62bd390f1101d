"""Time one model on one engine in a process of its own: the only way its figure is its own.

Timed together in one process, ONNX Runtime sessions, OpenVINO and torch each keep a thread pool; the winner
of the last run took 6.16 ms there and 3.11 ms alone. So the benchmark starts this module once per model and
thread count (`python -m runner.sparsify.measure`, a JSON spec on stdin, one JSON line out) and nothing else
runs meanwhile. Inside, `repeats` rounds go over every point, so the spread across rounds is measured too.

spec: {"row": {...}, "threads": 2, "points": [{"batch": 1, "seq_len": 128} | {"batch": 1, "lengths": [...]}],
       "warmup": 3, "iters": 8, "repeats": 3, "seed": 0, "export": {...}, "spinning": null | true | false}
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

RSS_UNIT_MB = 1 / 1024  # ru_maxrss is in KiB on Linux


def rss_mb() -> float:
    """Current resident set size (the peak is ru_maxrss; this is for the baseline before loading)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def example(batch: int, seq_len: int, vocab: int, seed: int) -> dict[str, np.ndarray]:
    """Random token ids with a full attention mask, as numpy (the timing process of an exported model never
    imports torch)."""
    ids = np.random.default_rng(seed).integers(0, vocab, (batch, seq_len), dtype=np.int64)
    return {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}


def inputs_for(point: dict, vocab: int, seed: int) -> list[dict]:
    """The inputs one timed pass cycles through: one padded batch, or each real length at batch 1."""
    if "lengths" in point:
        return [example(1, n, vocab, seed + i) for i, n in enumerate(point["lengths"])]
    return [example(point["batch"], point["seq_len"], vocab, seed)]


def open_forward(spec: dict) -> Any:
    """The row's forward on numpy inputs; only a torch row imports torch (and sets its threads)."""
    from omegaconf import OmegaConf

    row, threads, export_cfg = spec["row"], spec["threads"], OmegaConf.create(spec["export"])
    if row["engine"] != "torch":
        from runner.sparsify import sessions

        return sessions.open_exported(row, threads, export_cfg, spec.get("spinning"))
    import torch

    from runner.sparsify import engines

    torch.set_num_threads(threads)
    forward = engines.open_engine(row, threads, export_cfg)
    return lambda inputs: forward({k: torch.from_numpy(v) for k, v in inputs.items()})


def time_point(forward: Any, inputs: list[dict], warmup: int, iters: int) -> list[float]:
    for i in range(warmup):
        forward(inputs[i % len(inputs)])
    latencies = []
    for i in range(iters):
        batch = inputs[i % len(inputs)]
        started = time.perf_counter()
        forward(batch)
        latencies.append((time.perf_counter() - started) * 1000)
    return latencies


def preloaded() -> list[str]:
    """The LD_PRELOAD libraries really mapped into this process (an allocator that failed to load is absent)."""
    wanted = [Path(p).resolve() for p in os.environ.get("LD_PRELOAD", "").split()]
    with open("/proc/self/maps") as f:
        mapped = {Path(line.split()[-1]) for line in f if line.rstrip().endswith(".so") or ".so." in line}
    return [str(p) for p in wanted if p in mapped]


def main(spec: dict) -> dict:
    before = rss_mb()
    started = time.perf_counter()
    forward = open_forward(spec)
    load_s = time.perf_counter() - started  # a torch row's includes importing torch and transformers
    inputs = [inputs_for(p, spec["row"]["vocab_size"], spec["seed"]) for p in spec["points"]]
    rounds: list[list[list[float]]] = [[] for _ in spec["points"]]
    for _ in range(spec["repeats"]):
        for i, point_inputs in enumerate(inputs):
            rounds[i].append(time_point(forward, point_inputs, spec["warmup"], spec["iters"]))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * RSS_UNIT_MB
    return {"rounds": rounds, "load_s": load_s, "peak_rss_mb": peak, "model_rss_mb": peak - before,
            "preloaded": preloaded()}  # fmt: skip


class TimingFailed(RuntimeError):
    """A timing process that exited with an error; `reason` is its last line of stderr."""

    def __init__(self, spec: dict, reason: str) -> None:
        super().__init__(f"timing {row_name(spec['row'])} at {spec['threads']} threads failed: {reason}")
        self.reason = reason


def run(spec: dict, env: dict[str, str] | None = None) -> dict:
    """Start the timing process for one spec and wait for its result (a failure is one error line)."""
    child_env = os.environ | {"OMP_NUM_THREADS": str(spec["threads"])} | (env or {})
    done = subprocess.run(
        [sys.executable, "-m", "runner.sparsify.measure"],
        input=json.dumps(spec), capture_output=True, text=True, env=child_env,
    )  # fmt: skip
    if done.returncode:
        raise TimingFailed(spec, (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1])
    return json.loads(done.stdout.strip().splitlines()[-1])


def row_name(row: dict) -> str:
    return f"{row.get('variant', row['path'])} {row['precision']} {row['engine']}"


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.stdin.read()))))
