"""comparison.csv, report.md, a rich table and the accuracy-vs-latency plot (Pareto front) of a run."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from runner import render
from runner.results import read_json_file, write_rows_csv, write_text

COLUMNS = [
    "variant", "sparsity", "structured", "layers", "precision", "engine", "val_accuracy", "val_drop", "accuracy",
    "accuracy_drop", "params", "nonzero_params", "file_mb", "batch", "seq_len", "threads", "latency_p50_ms",
    "latency_p90_ms", "latency_p99_ms", "throughput_per_s", "speedup", "speedup_vs_int8", "int8_baseline",
]  # fmt: skip
ENGINES = ("deepsparse", "onnxruntime", "openvino", "torch")  # fixed colours in the plot
GOAL_DROP = 0.01  # "within 1 point of the dense model's accuracy" (accuracy is a fraction)
GOAL_SPEEDUP = 4.0  # "at least 4x the fastest dense int8 deployment" at the headline point
PLOT = "pareto.png"
COMMANDS = "commands.txt"  # every command run on this directory, appended by the pipeline


def load(run_dir: Path, name: str) -> Any:
    return read_json_file(run_dir / "stages" / name)


def load_if_run(run_dir: Path, name: str) -> Any:
    """A stage's file, or None where that stage has not run (confirm, scale, the floor)."""
    path = run_dir / "stages" / name
    return read_json_file(path) if path.exists() else None


def is_baseline(r: dict) -> bool:
    """Dense fp32 PyTorch: every speedup and accuracy drop is measured against it."""
    return r["variant"] == "dense" and r["engine"] == "torch" and r["precision"] == "fp32"


def is_dense_int8(r: dict) -> bool:
    """A dense int8 deployment: the baseline a user had without pruning (the fastest one at each point)."""
    return r["variant"] == "dense" and r["precision"].startswith("int8")


def comparison(rows: list[dict], timings: list[dict]) -> list[dict]:
    """One row per variant, precision, engine and benchmark point: speedups against dense fp32 torch and
    against the fastest dense int8 deployment at the same point; accuracy drops against dense fp32 torch."""
    dense = next(r for r in rows if is_baseline(r))
    point = lambda t: (t["batch"], t["seq_len"], t["threads"])  # noqa: E731
    baseline = {
        point(t): t["latency_p50_ms"] for t in timings if rows[t["row"]] is dense and "engine" not in t
    }
    int8: dict[tuple, dict] = {}
    for t in timings:
        if is_dense_int8(rows[t["row"]]) and "engine" not in t:
            best = int8.get(point(t))
            int8[point(t)] = t if best is None or t["latency_p50_ms"] < best["latency_p50_ms"] else best
    table = []
    for t in timings:
        row = rows[t["row"]]
        fastest_int8 = int8.get(point(t))
        table.append({
            **{k: row[k] for k in ("variant", "sparsity", "structured", "layers", "precision", "params", "nonzero_params")},
            "engine": t.get("engine", row["engine"]),
            "val_accuracy": row["val_accuracy"],
            "val_drop": dense["val_accuracy"] - row["val_accuracy"],
            "accuracy": row["accuracy"],
            "accuracy_drop": dense["accuracy"] - row["accuracy"],
            "file_mb": row["file_mb"],
            **{k: t[k] for k in ("batch", "seq_len", "threads", "latency_p50_ms", "latency_p90_ms", "throughput_per_s")},
            "latency_p99_ms": t.get("latency_p99_ms", float("nan")),
            "speedup": baseline[point(t)] / t["latency_p50_ms"],
            "speedup_vs_int8": fastest_int8["latency_p50_ms"] / t["latency_p50_ms"] if fastest_int8 else float("nan"),
            "int8_baseline": name(rows[fastest_int8["row"]]) if fastest_int8 else "",
            "spread": t["spread"],
            "macro_f1": row["macro_f1"],
        })  # fmt: skip
    return table


def cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def markdown(table: list[dict], columns: list[str]) -> str:
    return render.markdown(columns, [[cell(r[c]) for c in columns] for r in table])


def at(table: list[dict], point: list[int]) -> list[dict]:
    return [r for r in table if [r["batch"], r["seq_len"], r["threads"]] == list(point)]


def winner(headline: list[dict]) -> dict:
    """The fastest row whose validation accuracy is within GOAL_DROP of dense fp32 torch's (chosen on the
    validation split: the test split only reports); dense fp32 torch itself qualifies, so there always is one."""
    close = [r for r in headline if r["val_drop"] <= GOAL_DROP + 1e-12]
    return max(close, key=lambda r: r["speedup"])  # one point: the same order as speedup_vs_int8


def undertrained(headline: list[dict]) -> dict | None:
    """The row furthest above dense fp32 on validation, where it is more than GOAL_DROP above it: then dense is
    no reference for the 1-point rule (a student distilled from it, trained longer, learned more than it did),
    and "within 1 point" would hold by default."""
    best = min(headline, key=lambda r: r["val_drop"])
    return best if best["val_drop"] < -GOAL_DROP - 1e-12 else None


def verdict(headline: list[dict]) -> str:
    """The goal line: the winner against the fastest dense int8 deployment, and what unstructured zeros buy."""
    best, weak = winner(headline), undertrained(headline)
    fast = best["speedup_vs_int8"] >= GOAL_SPEEDUP
    goal = "not met" if not fast else "not decided (dense under-trained, below)" if weak else "met"
    lines = [
        f"Fastest variant within {GOAL_DROP * 100:g} point of dense validation accuracy: **{name(best)}**, "
        f"{best['speedup_vs_int8']:.2f}x the fastest dense int8 deployment ({best['int8_baseline']}) and "
        f"{best['speedup']:.2f}x dense fp32 PyTorch ({best['latency_p50_ms']:.2f} ms p50; test accuracy "
        f"{best['accuracy']:.4f}, drop {best['accuracy_drop'] * 100:+.2f} points); goal >= {GOAL_SPEEDUP:g}x the "
        f"dense int8 within {GOAL_DROP * 100:g} point: {goal}."
    ]
    if weak:
        lines.append(
            f"- dense under-trained: {name(weak)} is {-weak['val_drop'] * 100:.2f} points above dense fp32 on "
            f"validation, more than the {GOAL_DROP * 100:g}-point margin, so the accuracy half of the goal says "
            "nothing at this budget (train dense further: optimizer.lr, trainer.epochs, task.train_limit)"
        )
    fastest = max(headline, key=lambda r: r["speedup"])
    lines.append(
        f"- fastest at any accuracy: {name(fastest)}, {fastest['speedup_vs_int8']:.2f}x the dense int8, "
        f"validation drop {fastest['val_drop'] * 100:+.2f} points"
    )
    dense = {(r["engine"], r["precision"]): r for r in headline if r["variant"] == "dense"}
    for r in headline:
        if not r["structured"] and r["variant"] != "dense" and (r["engine"], r["precision"]) in dense:
            same = dense[(r["engine"], r["precision"])]
            lines.append(
                f"- unstructured {name(r)}: {same['latency_p50_ms'] / r['latency_p50_ms']:.2f}x the dense "
                f"model on the same engine and precision"
            )
    return "\n".join(lines)


def seeds_section(confirmed: dict | None, best: dict) -> list[str]:
    """The winner against dense fp32 over every seed (stages/confirm/confirm.json), or why it is missing."""
    title = "## The winner over seeds (dense fp32 PyTorch against it, test accuracy)"
    if confirmed is None:
        return [title, "", "not run yet: stage=confirm re-runs dense and the winner on confirm.seeds", ""]
    if confirmed["winner"] != name(best):  # bench re-timed since, and another row is the fastest now
        return [title, "", f"stale: confirm.json is for {confirmed['winner']}, the winner is now {name(best)} "
                "(rerun stage=confirm)", ""]  # fmt: skip
    points = lambda x: f"{x * 100:+.2f}"  # noqa: E731
    rows = [
        [str(s["seed"]), cell(s["dense"]), cell(s["winner"]), points(s["drop"])] for s in confirmed["seeds"]
    ]
    return [
        title,
        "",
        render.markdown(["seed", "dense", name(best), "drop (points)"], rows),
        "",
        f"Mean drop over {len(rows)} seeds {points(confirmed['mean_drop'])} points, "
        f"{confirmed['level'] * 100:g}% paired-t interval [{points(confirmed['low'])}, "
        f"{points(confirmed['high'])}]; rule (fixed in conf, confirm.max_mean_drop): mean drop at most "
        f"{confirmed['max_mean_drop'] * 100:g} point: **{confirmed['rule']}**.",
        "",
    ]


def floor_line(found: dict | None, dense: dict) -> str:
    """The classical floor (stages/quantize/floor.json) against dense fp32 PyTorch."""
    if found is None:
        return "Classical floor: not run (floor.enabled=false)."
    return (
        f"Classical floor, TF-IDF + logistic regression (C={found['C']:g}, chosen on validation; whole texts): "
        f"test accuracy {found['accuracy']:.4f}, {(dense['accuracy'] - found['accuracy']) * 100:+.2f} points "
        f"below dense fp32 (validation {found['val_accuracy']:.4f}); {found['latency_p50_ms']:.2f} ms p50 "
        "per text at batch 1, timed in the quantize stage's process."
    )


def scaling_section(run_dir: Path, cfg: Any) -> list[str]:
    """scaling.csv, one plot per axis and the findings, from stages/scale/scaling.json (if the stage ran)."""
    from runner.sparsify import scaling

    table = load_if_run(run_dir, "scale/scaling.json")
    if table is None:
        return []
    write_rows_csv(run_dir / "scaling.csv", scaling.COLUMNS, table)
    plots = scaling.plot(run_dir, table)
    return [
        "## Scaling study: one factor at a time around the headline point (scaling.csv)",
        "",
        f"At least {cfg.bench.scaling.calls} timed calls per setting, each in a process of its own. Plots: "
        + ", ".join(p.name for p in plots)
        + ".",
        "",
        *scaling.findings(table, scaling.missing(cfg.bench.scaling)),
        "",
    ]


def command() -> str:
    if Path(sys.argv[0]).name == "adamrun":
        return " ".join(["adamrun", *sys.argv[1:]])
    return " ".join(sys.argv)


def name(r: dict) -> str:
    return f"{r['variant']} {r['precision']} {r['engine']}"


def pareto_front(points: list[dict]) -> list[dict]:
    """The rows no other row beats on both latency and accuracy, fastest first."""
    front, best = [], -1.0
    for r in sorted(points, key=lambda r: r["latency_p50_ms"]):
        if r["accuracy"] > best:
            front.append(r)
            best = r["accuracy"]
    return front


def plot(path: Path, headline: list[dict], point: list[int]) -> None:
    fig = render.new_figure((8, 5.5))
    ax = fig.subplots()
    for engine in sorted({r["engine"] for r in headline}):
        for structured, marker in ((False, "o"), (True, "s")):
            rows = [r for r in headline if r["engine"] == engine and r["structured"] == structured]
            label = f"{engine}{', structured' if structured else ''}"
            latency, accuracy = [r["latency_p50_ms"] for r in rows], [r["accuracy"] * 100 for r in rows]
            ax.scatter(
                latency, accuracy, marker=marker, label=label, color=f"C{sorted(ENGINES).index(engine)}"
            )
    dense = next(r for r in headline if is_baseline(r))
    ax.axhline((dense["accuracy"] - GOAL_DROP) * 100, color="grey", ls="--", lw=0.8, label="dense - 1 point")
    int8 = min((r for r in headline if is_dense_int8(r)), key=lambda r: r["latency_p50_ms"], default=dense)
    ax.axvline(int8["latency_p50_ms"] / GOAL_SPEEDUP, color="grey", ls=":", lw=0.8,
               label=f"{GOAL_SPEEDUP:g}x {name(int8)}")  # fmt: skip
    front = pareto_front(headline)
    ax.step([r["latency_p50_ms"] for r in front], [r["accuracy"] * 100 for r in front], where="post", color="k",
            lw=1, label="Pareto front")  # fmt: skip
    for r in front:  # only the front is labelled: the rest would overlap
        ax.annotate(f"{r['variant']} {r['precision']}", (r["latency_p50_ms"], r["accuracy"] * 100), fontsize=7,
                    xytext=(4, -10), textcoords="offset points")  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel(f"latency p50 (ms), batch {point[0]}, seq {point[1]}, {point[2]} threads")
    ax.set_ylabel("test accuracy (%)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    render.save(fig, path)


def environment_lines(env: dict) -> str:
    libs = ", ".join(f"{k} {v}" for k, v in env["libraries"].items())
    return "\n".join([
        f"- CPU: {env['cpu']['model']}, {env['cpu']['logical_cpus']} logical CPUs, flags: {' '.join(env['cpu']['flags'])}",
        f"- Python {env['python']} on {env['platform']}; {libs}",
        f"- threads: torch default {env['torch_default_threads']}; env {env['thread_variables']}; "
        f"allocator {env['allocator']}",
        f"- load average (1, 5, 15 min) before the benchmark {env['load_average_1_5_15min']}, after "
        f"{env['load_average_after_1_5_15min']}",
        *(f"- {line}" for line in env["torch_parallel"]),
    ])  # fmt: skip


def print_table(headline: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    columns = [
        "variant",
        "precision",
        "engine",
        "accuracy",
        "accuracy_drop",
        "nonzero_params",
        "file_mb",
        "latency_p50_ms",
        "throughput_per_s",
        "speedup",
        "speedup_vs_int8",
    ]
    table = Table(*columns, title="sparsify-bert at the headline point")
    for r in sorted(headline, key=lambda r: r["latency_p50_ms"]):
        table.add_row(*(cell(r[c]) for c in columns))
    Console().print(table)


def write(cfg: Any, run_dir: Path) -> None:
    rows, timings = load(run_dir, "quantize/variants.json"), load(run_dir, "bench/timings.json")
    table = comparison(rows, timings)
    write_rows_csv(run_dir / "comparison.csv", COLUMNS, table)
    point = list(cfg.bench.headline)
    headline = at(table, point)
    plot(run_dir / PLOT, headline, point)
    instances = load(run_dir, "bench/instances.json")
    tested = rows[0]["test_examples"]
    deepsparse = (
        f"measured at this point only, with {cfg.bench.deepsparse_python}; its rows carry the onnxruntime "
        "accuracy of the same ONNX file"
        if cfg.bench.deepsparse_python
        else "absent (bench.deepsparse_python=null; `make deepsparse` builds one)"
    )
    summary_cols = [
        "variant",
        "layers",
        "precision",
        "engine",
        "val_accuracy",
        "accuracy",
        "macro_f1",
        "accuracy_drop",
        "params",
        "nonzero_params",
        "file_mb",
        "latency_p50_ms",
        "latency_p90_ms",
        "throughput_per_s",
        "speedup",
        "speedup_vs_int8",
        "spread",
    ]
    text = [
        f"# sparsify-bert: {cfg.model.name} on {cfg.task.name}",
        "",
        "Commands, in order:",
        "",
        *(f"    {line}" for line in (run_dir / COMMANDS).read_text().splitlines()),
        "",
        verdict(headline),
        "",
        *seeds_section(load_if_run(run_dir, "confirm/confirm.json"), winner(headline)),
        floor_line(load_if_run(run_dir, "quantize/floor.json"), next(r for r in rows if is_baseline(r))),
        "",
        f"## Batch {point[0]}, seq {point[1]}, {point[2]} threads",
        "",
        markdown(sorted(headline, key=lambda r: r["latency_p50_ms"]), summary_cols),
        "",
        f"accuracy: a fraction of the {tested} test examples (one example is {100 / tested:.2g} points); "
        "accuracy_drop: dense fp32 accuracy minus this one; spread: range of the per-round medians over the "
        f"median ({cfg.bench.repeats} interleaved rounds of {cfg.bench.iters} passes after {cfg.bench.warmup} "
        f"warm-up passes). DeepSparse: {deepsparse}.",
        "",
        "Variant names: sS removes the fraction S of the pruned linear weights of every kept layer (unstructured: "
        "single weights; structured: whole attention heads and FFN neurons); -NL keeps only N evenly spaced "
        "encoder layers, dropped before pruning. Every pruned variant is distilled from the dense one.",
        "",
        "## Several single-thread processes vs one multi-thread process (throughput, dense ONNX fp32)",
        "",
        markdown(instances, list(instances[0])),
        "",
        "## Every benchmark point (comparison.csv)",
        "",
        markdown(table, COLUMNS),
        "",
        *scaling_section(run_dir, cfg),
        "## Environment",
        "",
        environment_lines(load(run_dir, "bench/environment.json")),
        "",
    ]
    write_text(run_dir / "report.md", "\n".join(text))
    print_table(headline)
