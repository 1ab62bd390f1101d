"""CPU benchmark of every variant: each model on each engine and thread count timed in a process of its own.

Timed in one shared process, the winner of the last run took 6.16 ms against 3.11 ms alone (other engines'
thread pools compete for the two cores), so every figure comes from measure.py's own process, one after the
other; inside it `repeats` rounds go over the grid and the report gives the spread across rounds. The instance
study and DeepSparse run in worker.py processes.
"""

from __future__ import annotations

import itertools
import json
import os
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from runner.results import write_json
from runner.sparsify import measure

WORKER = Path(__file__).with_name("worker.py")
LIBRARIES = ("torch", "transformers", "onnx", "onnxruntime", "onnxscript", "openvino", "nncf", "numpy")
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_PROC_BIND", "KMP_AFFINITY", "LD_PRELOAD")
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_bf16", "amx_int8", "amx_tile")
WORKER_START_DELAY_S = 3.0  # concurrent workers load and warm up, then start timing together after this


# ------------------------------------------------------------------------------------------ environment
def cpu_info() -> dict[str, Any]:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    flags = set(fields.get("flags", "").split())
    return {
        "model": fields.get("model name", platform.processor()),
        "logical_cpus": os.cpu_count(),
        "flags": [f for f in CPU_FLAGS if f in flags],
    }


def environment() -> dict[str, Any]:
    return {
        "cpu": cpu_info(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "libraries": {name: metadata.version(name) for name in LIBRARIES},
        "torch_default_threads": torch.get_num_threads(),
        "torch_parallel": torch.__config__.parallel_info().splitlines()[:4],
        "thread_variables": {k: os.environ.get(k) for k in THREAD_VARIABLES},
        "load_average_1_5_15min": os.getloadavg(),  # other processes on the machine disturb the timings
        "allocator": os.environ.get("LD_PRELOAD", "glibc malloc"),  # tcmalloc/jemalloc come in via LD_PRELOAD
    }


# ----------------------------------------------------------------------------------------- timing
def summarize(rounds: list[list[float]], batch: int) -> dict[str, float]:
    """p50/p90/p99 over all timed passes; throughput from the mean; spread = range of round medians / median."""
    pooled = np.concatenate(rounds)
    medians = [np.median(r) for r in rounds]
    p50 = float(np.median(pooled))
    return {
        "latency_p50_ms": p50,
        "latency_p90_ms": float(np.percentile(pooled, 90)),
        "latency_p99_ms": float(np.percentile(pooled, 99)),
        "throughput_per_s": float(batch * 1000 / pooled.mean()),
        "spread": float((max(medians) - min(medians)) / p50),
    }


def spec(bench_cfg: Any, export_cfg: Any, row: dict, threads: int, points: list[dict], seed: int) -> dict:
    return {
        "row": row, "threads": threads, "points": points, "warmup": bench_cfg.warmup, "iters": bench_cfg.iters,
        "repeats": bench_cfg.repeats, "seed": seed, "export": OmegaConf.to_container(export_cfg, resolve=True),
    }  # fmt: skip


def main_grid(bench_cfg: Any, export_cfg: Any, rows: list[dict], seed: int) -> list[dict]:
    """Every row at every grid point: one timing process per row and thread count, one at a time."""
    points = [
        {"batch": b, "seq_len": s} for b, s in itertools.product(bench_cfg.batch_sizes, bench_cfg.seq_lens)
    ]
    found = []
    with progress() as bar:
        job = bar.add_task("benchmark, a process per model", total=len(rows) * len(bench_cfg.threads))
        for (i, row), threads in itertools.product(enumerate(rows), bench_cfg.threads):
            result = measure.run(spec(bench_cfg, export_cfg, row, threads, points, seed))
            for point, rounds in zip(points, result["rounds"], strict=True):
                where = {"row": i, "batch": point["batch"], "seq_len": point["seq_len"], "threads": threads}
                load = {"load_s": result["load_s"], "peak_rss_mb": result["peak_rss_mb"]}
                found.append(where | summarize(rounds, point["batch"]) | load)
            bar.advance(job)
    return found


def progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()
    )


# --------------------------------------------------------------------------------------- subprocesses
def workers(python: str, engine: str, model: str, threads: list[int], shape: tuple[int, ...]) -> list[dict]:
    """Run one worker per entry of `threads` at the same time; their timed loops start together."""
    start_at = str(time.time() + WORKER_START_DELAY_S)
    env = os.environ | {"NM_DISABLE_ANALYTICS": "1"}
    procs = [
        subprocess.Popen(
            [python, str(WORKER), engine, model, str(t), *map(str, shape), start_at],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )
        for t in threads
    ]  # fmt: skip
    outputs = [p.communicate() for p in procs]
    failed = [
        err.strip().splitlines()[-1:] for p, (_, err) in zip(procs, outputs, strict=True) if p.returncode
    ]
    if failed:
        raise RuntimeError(f"{engine} worker failed: {failed[0]}")
    return [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]


def instances(bench_cfg: Any, row: dict, seed: int) -> list[dict]:
    """Throughput of `count` single-thread processes at once vs one process with `count` threads."""
    inst = bench_cfg.instances
    shape = (inst.batch, inst.seq_len, bench_cfg.warmup, inst.iters, row["vocab_size"], seed)
    layouts = {f"{inst.count} x 1 thread": [1] * inst.count, f"1 x {inst.count} threads": [inst.count]}
    found = []
    for label, threads in layouts.items():
        results = workers(sys.executable, "onnxruntime", row["path"], threads, shape)
        throughput = sum(inst.batch * inst.iters / r["elapsed_s"] for r in results)
        p50 = float(np.median(np.concatenate([r["latencies_ms"] for r in results])))
        found.append(
            {
                "layout": label,
                "batch": inst.batch,
                "seq_len": inst.seq_len,
                "latency_p50_ms": p50,
                "throughput_per_s": throughput,
                "model": f"{row['variant']} {row['precision']} onnxruntime",
            }
        )
    return found


def deepsparse(bench_cfg: Any, rows: list[dict], seed: int) -> list[dict]:
    """DeepSparse timings of every fp32 ONNX variant at the headline point (a process each: ~10 s to compile)."""
    batch, seq_len, threads = bench_cfg.headline
    shape = (batch, seq_len, bench_cfg.warmup, bench_cfg.iters * bench_cfg.repeats)
    found = []
    for i, row in enumerate(rows):
        if row["engine"] == "onnxruntime" and row["precision"] == "fp32":
            args = (*shape, row["vocab_size"], seed)
            result = workers(bench_cfg.deepsparse_python, "deepsparse", row["path"], [threads], args)[0]
            summary = summarize([result["latencies_ms"]], batch) | {"spread": float("nan")}
            point = {"batch": batch, "seq_len": seq_len, "threads": threads}
            found.append({"row": i, "engine": "deepsparse", **point, **summary})
    return found


def run_all(cfg: Any, rows: list[dict], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    threads_before = torch.get_num_threads()
    before = environment()
    timings = main_grid(cfg.bench, cfg.export, rows, cfg.seed)
    dense_onnx = next(r for r in rows if r["variant"] == "dense" and r["engine"] == "onnxruntime")
    write_json(out / "instances.json", instances(cfg.bench, dense_onnx, cfg.seed))
    if cfg.bench.deepsparse_python is not None:
        timings += deepsparse(cfg.bench, rows, cfg.seed)
    torch.set_num_threads(threads_before)
    after = {"load_average_after_1_5_15min": os.getloadavg()}
    write_json(out / "environment.json", before | after)
    write_json(out / "timings.json", timings)  # last: its presence marks the stage done
