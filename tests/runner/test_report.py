"""`adamrun report`: tables and plots of a hand-made sweep (no training): the numbers are checked against
numpy computed here from the generated values, not through the report's own grouping."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread
from rich.console import Console

from runner import render, report
from runner.errors import UsageError
from runner.results import RUN_COLUMNS

OPTIMIZERS = ("adam_l2", "adamw")
LRS = ("1e-4", "1e-3", "1e-2")  # as a sweep writes its override values
WDS = ("1e-4", "1e-2")
EPOCHS = 4
TARGET = 0.9  # val_acc>=0.9
VAL_WINNER = ("adamw", "1e-3", "1e-2")  # best mean validation of adamw ...
TEST_WINNER = ("adamw", "1e-2", "1e-4")  # ... while this one has the best mean test


def quality(optimizer: str, lr: str, wd: str) -> tuple[float, float]:
    """(val, test) before seed noise: Adam-L2's good region is a diagonal, AdamW's is not."""
    x, y = math.log10(float(lr)), math.log10(float(wd))
    if optimizer == "adam_l2":
        val = 0.93 - 0.02 * abs((x + 3) + (y + 2))
    else:
        val = 0.9 - 0.01 * abs(x + 3) - 0.01 * abs(y + 2)
    test = val - 0.01
    if (optimizer, lr, wd) == VAL_WINNER:
        val, test = 0.95, 0.90
    if (optimizer, lr, wd) == TEST_WINNER:
        val, test = 0.94, 0.97
    return val, test


def make_runs(folder: Path, metric: str = "acc", goal: str = "max", val_split: bool = True) -> list[dict]:
    """runs.csv and metrics.jsonl of 2 optimizers x 3 lr x 2 wd, 2 (adam_l2) or 3 (adamw) seeds; one setting
    that diverged on every seed, one diverged seed, one failed row with empty numbers and no folder, one
    interrupted seed, one finished run without metrics.jsonl. Returns the rows, numbers as floats or None."""
    rng = np.random.default_rng(0)
    records = []
    for optimizer in OPTIMIZERS:
        for lr in LRS:
            for wd in WDS:
                for seed in range(2 if optimizer == "adam_l2" else 3):
                    val, test = quality(optimizer, lr, wd)
                    val, test = val + rng.normal(0, 0.004), test + rng.normal(0, 0.004)
                    if metric == "ppl":  # perplexity: lower is better
                        val, test = 100 * (1.5 - val), 100 * (1.5 - test)
                    status = "finished"
                    if optimizer == "adam_l2" and lr == "1e-2" and wd == "1e-2":
                        status = "diverged"
                    if (optimizer, lr, wd, seed) in {("adamw", "1e-2", "1e-2", 2)}:
                        status = "diverged"
                    if (optimizer, lr, wd, seed) == ("adam_l2", "1e-4", "1e-4", 1):
                        status = "interrupted"
                    records.append({"optimizer": optimizer, "lr": lr, "wd": wd, "seed": seed, "status": status,
                                    "val": val if status == "finished" and val_split else None,
                                    "test": test if status == "finished" else None})  # fmt: skip
    records.append({"optimizer": "adamw", "lr": "1e-4", "wd": "1e-4", "seed": 3, "status": "failed", "val": None,
                    "test": None})  # fmt: skip
    rows = []
    for index, r in enumerate(records):
        run_id = f"runs/{r['optimizer']}-lr{r['lr']}-wd{r['wd']}-s{r['seed']}"
        reached = r["status"] == "finished" and metric == "acc" and (r["val"] or r["test"]) >= TARGET
        r["time"] = round(10.0 + 5 * (index % 7) + r["seed"], 1) if reached else None
        r["epochs_to_target"] = float(2 + index % 3) if reached else None
        numbers = lambda v: "" if v is None else repr(v)  # noqa: E731
        row = {
            "run_id": run_id, "status": r["status"], "recipe": "cifar10", "data": "fashion_mnist", "model": "",
            "optimizer": r["optimizer"], "schedule": "one_cycle", "lr": repr(float(r["lr"])),
            "weight_decay": repr(float(r["wd"])), "epochs": str(EPOCHS), "seed": str(r["seed"]), "metric": metric,
            "goal": goal, "val_metric": numbers(r["val"]), "test_metric": numbers(r["test"]),
            "epochs_run": "" if r["status"] == "failed" else str(EPOCHS), "time_to_target_s": numbers(r["time"]),
            "epochs_to_target": numbers(r["epochs_to_target"]), "steps_to_target": "", "wall_s": "" if
            r["status"] == "failed" else repr(60.0 + index), "git_sha": "abc123",
            # absolute, relative to the folder, or empty (then the run_id, relative to the folder, finds it)
            "run_dir": [str(folder / run_id), run_id, ""][index % 3],
            "optimizer.lr": r["lr"], "optimizer.weight_decay": r["wd"],
        }  # fmt: skip
        rows.append(row)
        if r["status"] == "failed" or (r["optimizer"], r["lr"], r["wd"], r["seed"]) == (
            "adamw",
            "1e-3",
            "1e-4",
            0,
        ):
            continue  # no folder, or a folder without metrics.jsonl
        run_dir = folder / run_id
        run_dir.mkdir(parents=True)
        (run_dir / "config.yaml").write_text(f"trainer:\n  target: val_{metric}>={TARGET}\n")
        with open(run_dir / "metrics.jsonl", "w") as f:
            final = r["val"] if val_split else r["test"]
            for epoch in range(1, EPOCHS + 1):
                if final is None:
                    break
                split = "val" if val_split else "test"
                value = final - 0.05 * (EPOCHS - epoch) * (1 if goal == "max" else -100)
                line = {
                    "epoch": epoch,
                    "step": 10 * epoch,
                    "train_loss": 1.0 / epoch,
                    f"{split}_{metric}": value,
                }
                if epoch == EPOCHS and r["test"] is not None:
                    line[f"test_{metric}"] = r["test"]
                f.write(json.dumps(line) + "\n")
    columns = [*RUN_COLUMNS, "optimizer.lr", "optimizer.weight_decay"]
    with open(folder / "runs.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return records


def expected(records: list[dict], optimizer: str, lr: str, wd: str) -> dict:
    """The setting's numbers straight from the generated values, with numpy."""
    same = [r for r in records if (r["optimizer"], r["lr"], r["wd"]) == (optimizer, lr, wd)]
    done = [r for r in same if r["status"] == "finished"]

    def stats(key: str) -> tuple[float, float]:
        values = np.array([r[key] for r in done if r[key] is not None], dtype=float)
        mean = values.mean() if len(values) else math.nan
        return mean, (values.std(ddof=1) if len(values) >= 2 else math.nan)

    times = [r["time"] for r in done if r["time"] is not None]
    return {
        "seeds": len(done), "val": stats("val"), "test": stats("test"), "reached": len(times),
        "time": np.mean(times) if times else math.nan,
        **{s: sum(r["status"] == s for r in same) for s in ("diverged", "failed", "interrupted", "finished")},
    }  # fmt: skip


def row_of(table, optimizer: str, lr: str, wd: str):
    found = table[(table["optimizer"] == optimizer) & np.isclose(table["lr"], float(lr)) &
                  np.isclose(table["weight_decay"], float(wd))]  # fmt: skip
    assert len(found) == 1
    return found.iloc[0]


def near(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-9, abs=1e-12)


def table_rows(folder: Path) -> list[dict]:
    with open(folder / "runs.csv", newline="") as f:
        return list(csv.DictReader(f))


def rewrite(folder: Path, rows: list[dict]) -> None:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with open(folder / "runs.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(rows)


def png_size(path: Path) -> tuple[int, int]:
    image = imread(path)
    assert image.ndim == 3 and image.shape[2] in (3, 4)
    return image.shape[1], image.shape[0]  # width, height


def inches_to_pixels(figsize: tuple[float, float]) -> tuple[int, int]:
    return round(figsize[0] * render.DPI), round(figsize[1] * render.DPI)


@pytest.fixture
def sweep(tmp_path: Path) -> tuple[Path, list[dict]]:
    folder = tmp_path / "sweep"
    folder.mkdir()
    return folder, make_runs(folder)


def test_summary_matches_numpy_over_the_generated_values(sweep):
    folder, records = sweep
    rep = report.write_report(folder)
    assert len(rep.summary) == len(OPTIMIZERS) * len(LRS) * len(WDS)  # the seed is not part of a setting
    assert "optimizer.lr" in rep.setting and "seed" not in rep.setting
    for optimizer in OPTIMIZERS:
        for lr in LRS:
            for wd in WDS:
                want, got = expected(records, optimizer, lr, wd), row_of(rep.summary, optimizer, lr, wd)
                assert got["seeds"] == want["seeds"]
                assert near(got["val_mean"], want["val"][0]) and near(got["val_std"], want["val"][1])
                assert near(got["test_mean"], want["test"][0]) and near(got["test_std"], want["test"][1])
                assert got["reached"] == want["reached"] and near(got["time_to_target_s"], want["time"])
                for status in ("diverged", "failed", "interrupted", "finished"):
                    assert got[status] == want[status], (optimizer, lr, wd, status)
    one_seed = row_of(rep.summary, "adam_l2", "1e-4", "1e-4")  # the other seed was interrupted
    assert one_seed["seeds"] == 1 and math.isnan(one_seed["val_std"])
    statuses = [r["status"] for r in records]
    assert rep.status_counts == {s: statuses.count(s) for s in report.STATUSES}
    assert rep.status_counts["diverged"] == 3 and rep.status_counts["failed"] == 1
    text = (folder / "summary.md").read_text()
    assert f"{one_seed['val_mean']:.4f} |" in text  # one seed: the mean alone, no ± std


def test_summary_csv_round_trips_and_the_failed_row_breaks_nothing(sweep):
    folder, records = sweep
    rep = report.write_report(folder)
    import pandas as pd

    written = pd.read_csv(folder / "summary.csv")
    assert len(written) == len(rep.summary)
    failed = row_of(written, "adamw", "1e-4", "1e-4")
    assert failed["failed"] == 1 and failed["seeds"] == 3
    assert {"val_mean", "val_std", "test_mean", "test_std", "reached", "wall_s", "diverged"} <= set(written)
    missing = dict(zip(rep.missing["run_id"], rep.missing["missing"], strict=True))
    assert "status failed" in missing["runs/adamw-lr1e-4-wd1e-4-s3"]
    assert missing["runs/adamw-lr1e-3-wd1e-4-s0"] == "no metrics.jsonl"
    assert "status diverged" in missing["runs/adam_l2-lr1e-2-wd1e-2-s0"]
    md = (folder / "report.md").read_text()
    assert "runs/adamw-lr1e-4-wd1e-4-s3" in md and "1 failed" in md and "3 diverged" in md


def test_best_is_chosen_on_validation_and_reports_that_settings_test(sweep):
    folder, records = sweep
    rep = report.write_report(folder)
    best = rep.best.set_index("optimizer")
    assert list(best.index) == ["adam_l2", "adamw"]
    # test alone would pick TEST_WINNER: the report must not
    means = {s: expected(records, *s) for s in [VAL_WINNER, TEST_WINNER]}
    assert means[TEST_WINNER]["test"][0] > means[VAL_WINNER]["test"][0]
    assert means[VAL_WINNER]["val"][0] > means[TEST_WINNER]["val"][0]
    adamw = best.loc["adamw"]
    assert (adamw["lr"], adamw["weight_decay"]) == (float(VAL_WINNER[1]), float(VAL_WINNER[2]))
    assert near(adamw["test_mean"], means[VAL_WINNER]["test"][0])
    assert near(adamw["test_std"], means[VAL_WINNER]["test"][1])
    assert adamw["selected_on"] == "val"
    # adam_l2: the best mean val over its settings, by numpy over the generated values
    settings = [("adam_l2", lr, wd) for lr in LRS for wd in WDS]
    vals = {s: expected(records, *s)["val"][0] for s in settings}
    chosen = max((s for s in settings if not math.isnan(vals[s])), key=vals.get)
    assert (best.loc["adam_l2", "lr"], best.loc["adam_l2", "weight_decay"]) == (
        float(chosen[1]),
        float(chosen[2]),
    )
    assert (folder / "best.csv").read_text().count("\n") == 3  # header + one row per optimizer


def test_plots_exist_with_the_expected_size(sweep):
    folder, _ = sweep
    rep = report.write_report(folder)
    assert rep.skipped == {}
    for name in ("curves", "heatmap", "time_to_target"):
        assert folder / report.FILES[name] in rep.written
    assert png_size(folder / "curves.png") == inches_to_pixels(report.CURVES_FIGSIZE)
    assert png_size(folder / "heatmap.png") == inches_to_pixels(report.heatmap_figsize(2, len(LRS), len(WDS)))
    assert png_size(folder / "time_to_target.png") == inches_to_pixels(report.time_figsize(2))
    md = (folder / "report.md").read_text()
    assert all(f"]({report.FILES[n]})" in md for n in ("curves", "heatmap", "time_to_target"))
    assert {p.name for p in folder.iterdir() if p.name.startswith(".")} == set()  # no temporary file left


def test_curves_average_the_seeds_of_the_chosen_setting(sweep):
    folder, records = sweep
    rep = report.write_report(folder)
    runs = report.load_runs(folder)[1]
    adamw = rep.best[rep.best["optimizer"] == "adamw"].iloc[0]
    points = report.curve(folder, report.setting_rows(runs, adamw, rep.setting), "val_acc")
    finals = [r["val"] for r in records if (r["optimizer"], r["lr"], r["wd"]) == VAL_WINNER]
    assert list(points["epoch"]) == [1.0, 2.0, 3.0, 4.0] and list(points["n"]) == [3] * 4
    assert points["mean"].iloc[-1] == pytest.approx(np.mean(finals))
    assert points["std"].iloc[-1] == pytest.approx(np.std(finals, ddof=1))


def test_without_validation_the_choice_is_on_test_and_says_so(tmp_path):
    records = make_runs(tmp_path, val_split=False)
    rep = report.write_report(tmp_path)
    assert set(rep.best["selected_on"]) == {report.BIASED}
    adamw = rep.best[rep.best["optimizer"] == "adamw"].iloc[0]
    assert (adamw["lr"], adamw["weight_decay"]) == (float(TEST_WINNER[1]), float(TEST_WINNER[2]))
    assert near(adamw["test_mean"], expected(records, *TEST_WINNER)["test"][0])
    assert "biased" in (tmp_path / "best.md").read_text() and "biased" in (tmp_path / "report.md").read_text()
    assert (tmp_path / "curves.png").exists() and (tmp_path / "heatmap.png").exists()  # drawn from test


def test_perplexity_selects_the_minimum(tmp_path):
    records = make_runs(tmp_path, metric="ppl", goal="min")
    rep = report.write_report(tmp_path)
    for optimizer in OPTIMIZERS:
        settings = [(optimizer, lr, wd) for lr in LRS for wd in WDS]
        vals = {s: expected(records, *s)["val"][0] for s in settings}
        chosen = min((s for s in settings if not math.isnan(vals[s])), key=vals.get)
        got = rep.best[rep.best["optimizer"] == optimizer].iloc[0]
        assert (got["lr"], got["weight_decay"]) == (float(chosen[1]), float(chosen[2]))
        assert got["val_mean"] == pytest.approx(vals[chosen])
    assert "time_to_target" in rep.skipped  # no run reached a target
    assert not (tmp_path / "time_to_target.png").exists()


def test_a_plot_without_data_is_skipped_and_said(tmp_path):
    make_runs(tmp_path)
    report.write_report(tmp_path)
    assert (tmp_path / "heatmap.png").exists() and (tmp_path / "time_to_target.png").exists()
    rows = table_rows(tmp_path)
    kept = [r for r in rows if r["weight_decay"] == repr(1e-2)]  # lr varies, wd does not
    for r in kept:
        r["time_to_target_s"] = ""
    rewrite(tmp_path, kept)
    rep = report.write_report(tmp_path)
    assert set(rep.skipped) == {"heatmap", "time_to_target"}
    # the earlier report's plots are gone: they no longer describe the table
    assert not (tmp_path / "heatmap.png").exists() and not (tmp_path / "time_to_target.png").exists()
    assert (tmp_path / "curves.png").exists()
    assert "Not drawn: the runs do not vary both" in (tmp_path / "report.md").read_text()


def test_deterministic_and_independent_of_row_order(sweep):
    folder, _ = sweep
    report.write_report(folder)
    first = {n: (folder / n).read_bytes() for n in ("summary.csv", "best.csv", "report.md", "heatmap.png")}
    rows = table_rows(folder)
    rewrite(folder, rows[::-1])
    report.write_report(folder)
    assert {n: (folder / n).read_bytes() for n in first} == first


def test_tables_for_the_cli_and_errors(sweep):
    folder, _ = sweep
    rep = report.write_report(folder / "runs.csv")  # a runs.csv path works too
    console = Console(record=True, width=200)
    console.print(report.best_table(rep))
    console.print(report.summary_table(rep))
    text = console.export_text()
    assert "adamw" in text and "adam_l2" in text and "selected_on" in text and "diverged" in text
    with pytest.raises(UsageError, match="cannot group by 'optimiser'"):
        report.write_report(folder, group_by="optimiser")
    with pytest.raises(UsageError, match="does not exist"):
        report.write_report(folder / "nowhere")


def test_empty_table_writes_an_empty_report(tmp_path):
    (tmp_path / "runs.csv").write_text(",".join(RUN_COLUMNS) + "\n")
    rep = report.write_report(tmp_path)
    assert rep.summary.empty and rep.best.empty and set(rep.skipped) == set(report.PLOTS)
    assert "0 runs" in (tmp_path / "report.md").read_text()


def test_a_sweep_trial_that_raised_counts_as_a_failed_run_of_its_setting(sweep):
    folder, records = sweep
    rows = table_rows(folder)
    # runner/sweep.py's row of a trial that raised: identity, the overrides and the error, nothing else
    rows.append({"run_id": "optimizer.lr=1e-3,optimizer.weight_decay=1e-2,optimizer=adamw,seed=7",
                 "status": "failed", "seed": "7", "run_dir": "", "optimizer": "adamw", "optimizer.lr": "1e-3",
                 "optimizer.weight_decay": "1e-2", "error": "RuntimeError: out of memory"})  # fmt: skip
    rewrite(folder, rows)
    rep = report.write_report(folder)
    assert len(rep.summary) == len(OPTIMIZERS) * len(LRS) * len(WDS)  # no setting of its own
    got, want = row_of(rep.summary, *VAL_WINNER), expected(records, *VAL_WINNER)
    assert got["failed"] == 1 and got["seeds"] == want["seeds"] and near(got["val_mean"], want["val"][0])
    assert "error" not in rep.setting
    missing = dict(zip(rep.missing["run_id"], rep.missing["missing"], strict=True))
    assert "RuntimeError: out of memory" in missing[rows[-1]["run_id"]]


def test_a_random_search_gets_a_scatter_instead_of_a_grid(tmp_path):
    rng = np.random.default_rng(3)
    rows = []
    for trial in range(8):
        lr, wd = 10 ** rng.uniform(-4, -2), 10 ** rng.uniform(-5, -1)
        rows.append({"run_id": f"t{trial}", "status": "finished" if trial != 5 else "pruned", "recipe": "cifar10",
                     "data": "fashion_mnist", "optimizer": "adamw", "lr": repr(lr), "weight_decay": repr(wd),
                     "epochs": "3", "seed": "0", "metric": "acc", "goal": "max",
                     "val_metric": repr(0.5 + trial / 100) if trial != 5 else "", "test_metric": "", "trial": str(trial),
                     "optimizer.lr": repr(lr), "optimizer.weight_decay": repr(wd)})  # fmt: skip
    rewrite(tmp_path, rows)
    rep = report.write_report(tmp_path)
    assert "trial" not in rep.setting and len(rep.summary) == 8
    assert png_size(tmp_path / "heatmap.png") == inches_to_pixels(report.heatmap_figsize(1, 5, 5))
    assert rep.best.iloc[0]["val_mean"] == pytest.approx(0.57)  # trial 7
    assert "curves" in rep.skipped  # no run folders at all: nothing to draw, and no crash


def test_an_older_table_with_test_acc_reads_it_as_the_test_metric(tmp_path):
    header = "run_id,status,recipe,data,optimizer,schedule,lr,weight_decay,epochs,seed,test_acc,wall_s,git_sha,run_dir"
    lines = [f"r{seed},finished,cifar10,fashion_mnist,adamw,one_cycle,0.003,0.1,3,{seed},{acc},30,abc,r{seed}"
             for seed, acc in enumerate([0.90, 0.92, 0.94])]  # fmt: skip
    (tmp_path / "runs.csv").write_text("\n".join([header, *lines]) + "\n")
    rep = report.write_report(tmp_path)
    assert len(rep.summary) == 1 and rep.summary.iloc[0]["seeds"] == 3
    assert rep.summary.iloc[0]["test_mean"] == pytest.approx(0.92)
    assert rep.summary.iloc[0]["test_std"] == pytest.approx(np.std([0.90, 0.92, 0.94], ddof=1))
    assert rep.best.iloc[0]["selected_on"] == report.BIASED


def test_a_run_of_one_evaluation_draws_no_curve_and_says_why(tmp_path):
    make_runs(tmp_path)
    for jsonl in tmp_path.rglob("metrics.jsonl"):  # every run evaluated once, at its end
        jsonl.write_text("".join(line + "\n" for line in jsonl.read_text().splitlines()[-1:]))
    rep = report.write_report(tmp_path)
    assert "one evaluation per run" in rep.skipped["curves"]
    assert not (tmp_path / "curves.png").exists() and (tmp_path / "heatmap.png").exists()
