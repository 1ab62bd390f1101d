"""The scaling study ("Scaling up BERT-like model inference on modern CPU"): one factor at a time around the
headline point, for the winner and the dense int8 baseline it is compared with.

Axes (bench.scaling in conf): threads, batch, sequence length, the memory allocator (glibc, or jemalloc /
tcmalloc by LD_PRELOAD), the thread wait policy (OMP_WAIT_POLICY and ONNX Runtime's intra-op spinning),
padded inputs against the test set's own lengths at batch 1, and instances (2 single-thread processes
against 1 with 2 threads, ONNX Runtime models). Every setting is one measure.py process with at least
`calls` timed calls, nothing else running. A setting whose process fails is kept with its error (and no
figures), and the study goes on: OpenVINO's wheel, for one, crashed under either preloaded allocator here.

    scaling.csv, scaling-<axis>.png, and the findings in report.md
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from runner import render
from runner.sparsify import bench, measure

COLUMNS = [
    "model", "axis", "value", "batch", "seq_len", "threads", "allocator", "spinning", "inputs", "latency_p50_ms",
    "latency_p90_ms", "latency_p99_ms", "throughput_per_s", "calls", "file_mb", "load_s", "peak_rss_mb", "preloaded",
    "error",
]  # fmt: skip
TIMED = ("latency_p50_ms", "latency_p90_ms", "latency_p99_ms", "throughput_per_s", "load_s", "peak_rss_mb")
WAIT_POLICY = {True: "ACTIVE", False: "PASSIVE"}  # OMP_WAIT_POLICY for spinning on / off


def settings(scaling: Any, headline: list[int], lengths: list[int]) -> list[dict]:
    """Every setting of the study: the headline point with one factor changed (the headline itself once)."""
    batch, seq_len, threads = headline
    base = {"batch": batch, "seq_len": seq_len, "threads": threads, "allocator": "glibc", "spinning": None,
            "inputs": "padded"}  # fmt: skip
    out = [base | {"axis": "headline", "value": "headline"}]
    out += [base | {"axis": "threads", "value": t, "threads": t} for t in scaling.threads if t != threads]
    out += [base | {"axis": "batch", "value": b, "batch": b} for b in scaling.batch_sizes if b != batch]
    out += [base | {"axis": "seq_len", "value": s, "seq_len": s} for s in scaling.seq_lens if s != seq_len]
    out += [
        base | {"axis": "allocator", "value": name, "allocator": name}
        for name in scaling.allocators
        if name != "glibc"
    ]
    out += [
        base | {"axis": "spinning", "value": str(s), "spinning": s} for s in scaling.spinning if s is not None
    ]
    if lengths:
        out.append(base | {"axis": "inputs", "value": "test lengths", "inputs": "test lengths", "batch": 1})
    return out


def environment(setting: dict, scaling: Any) -> dict[str, str]:
    env = {}
    library = scaling.allocators[setting["allocator"]]
    if library:
        env["LD_PRELOAD"] = library
    if setting["spinning"] is not None:
        env["OMP_WAIT_POLICY"] = WAIT_POLICY[setting["spinning"]]
    return env


def missing(scaling: Any) -> dict[str, str]:
    """Allocators of the study whose library is not on this machine (their settings are skipped and said)."""
    return {name: path for name, path in scaling.allocators.items() if path and not Path(path).exists()}


def time_setting(setting: dict, row: dict, scaling: Any, bench_cfg: Any, export_cfg: Any, lengths: list[int],
                 seed: int) -> dict:  # fmt: skip
    point = {"batch": 1, "lengths": lengths} if setting["inputs"] == "test lengths" else {
        "batch": setting["batch"], "seq_len": setting["seq_len"]}  # fmt: skip
    spec = bench.spec(bench_cfg, export_cfg, row, setting["threads"], [point], seed)
    spec |= {
        "iters": -(-scaling.calls // scaling.repeats),
        "repeats": scaling.repeats,
        "spinning": setting["spinning"],
    }
    kept = {**setting, "model": measure.row_name(row), "file_mb": row["file_mb"]}
    try:
        result = measure.run(spec, environment(setting, scaling))
    except (
        measure.TimingFailed
    ) as err:  # that setting only: OpenVINO's wheel crashed under LD_PRELOAD'ed allocators
        return kept | {"calls": 0, "preloaded": [], "error": err.reason, **dict.fromkeys(TIMED, float("nan"))}
    rounds = result["rounds"][0]
    found = bench.summarize(rounds, point["batch"])
    return {**kept, "calls": sum(len(r) for r in rounds),
            "load_s": result["load_s"], "peak_rss_mb": result["peak_rss_mb"], "preloaded": result["preloaded"], **found}  # fmt: skip


def study(rows: list[dict], cfg: Any, lengths: list[int]) -> list[dict]:
    """Every setting for every row, one timing process at a time, with a progress bar."""
    scaling = cfg.bench.scaling
    absent = missing(scaling)
    todo = [s for s in settings(scaling, list(cfg.bench.headline), lengths) if s["allocator"] not in absent]
    found = []
    with bench.progress() as bar:
        job = bar.add_task("scaling study, a process per setting", total=len(todo) * len(rows))
        for row in rows:
            for setting in todo:
                found.append(time_setting(setting, row, scaling, cfg.bench, cfg.export, lengths, cfg.seed))
                bar.advance(job)
    return found


def axes(table: list[dict]) -> list[str]:
    return list(dict.fromkeys(r["axis"] for r in table if r["axis"] != "headline"))


def plot(folder: Path, table: list[dict]) -> list[Path]:
    """One figure per axis: p50 latency of each model at each value, the headline setting included."""
    written = []
    for axis in axes(table):
        fig = render.new_figure((6, 4))
        ax = fig.subplots()
        for model in dict.fromkeys(r["model"] for r in table):
            rows = [r for r in table if r["model"] == model and r["axis"] in ("headline", axis)]
            labels = [headline_value(r, axis) if r["axis"] == "headline" else str(r["value"]) for r in rows]
            ax.plot(labels, [r["latency_p50_ms"] for r in rows], marker="o", label=model)
        ax.set_xlabel(axis)
        ax.set_ylabel("latency p50 (ms)")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
        written.append(folder / f"scaling-{axis}.png")
        render.save(fig, written[-1])
    return written


def headline_value(row: dict, axis: str) -> str:
    """What the headline setting is on an axis (its x label in that axis's plot)."""
    names = {"spinning": "default", "inputs": "padded"}
    return names.get(axis, str(row.get(axis, "")))


def findings(table: list[dict], absent: dict[str, str]) -> list[str]:
    """Per model and axis: the fastest value and how it compares with the headline setting (p50)."""
    lines = []
    for model in dict.fromkeys(r["model"] for r in table):
        own = [r for r in table if r["model"] == model]
        headline = next(r for r in own if r["axis"] == "headline")
        if headline.get("error"):
            lines.append(
                f"- {model}: its headline setting failed ({headline['error']}), nothing to compare with"
            )
            continue
        for axis in axes(own):
            rows = [r for r in own if r["axis"] == axis]
            ratios = ", ".join(
                f"{r['value']} failed ({r['error']})" if r.get("error")
                else f"{r['value']} {r['latency_p50_ms'] / headline['latency_p50_ms']:.2f}x"
                for r in rows
            )  # fmt: skip
            lines.append(f"- {model}, {axis} (p50 against the headline's {headline_value(headline, axis)}, "
                         f"{headline['latency_p50_ms']:.2f} ms): {ratios}")  # fmt: skip
    lines += [
        f"- allocator {name}: not installed ({path} missing), not timed" for name, path in absent.items()
    ]
    return lines
