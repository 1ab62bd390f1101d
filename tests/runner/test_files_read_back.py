"""Every file adamrun reads back is checked: each one, made empty, truncated, given the wrong number of fields
or a word where a number belongs, through the command that reads it. A command that continues what a file
holds stops with one line naming the file (and the line, where the file has lines), exit 2, and changes
nothing; `adamrun report`, which summarises many runs, instead leaves the bad row out, names it and counts it,
and never prints shifted columns."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from runner import results
from tests.conftest import adamrun, assert_one_line, tiny_overrides, write_fashion_mnist

FAULTS = ("empty", "truncated", "wrong field count", "non-numeric")


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A results folder with one finished tiny run in it, `run/`."""
    from runner.config import compose
    from runner.run import train

    home = tmp_path_factory.mktemp("finished")
    (home / "fmnist").mkdir()
    write_fashion_mnist(home / "fmnist", n_train=96, n_test=32)
    row = train(
        compose(
            [
                *tiny_overrides(home, home / "fmnist"),
                "trainer.epochs=1",
                f"run_dir={home / 'results' / 'run'}",
            ]
        )
    )
    assert row["status"] == "finished"
    return home / "results"


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def cut(path: Path) -> None:
    """Truncated as a writer killed mid-write, or a full disk, leaves a file written in place."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])


def spoil_json(path: Path, fault: str, key: str, number: str) -> None:
    """`key` goes missing (the wrong field count of an object); `number` gets a word (the wrong type)."""
    record = json.loads(path.read_text())
    if fault == "empty":
        path.write_text("")
    elif fault == "truncated":
        cut(path)
    elif fault == "wrong field count":
        path.write_text(json.dumps({k: v for k, v in record.items() if k != key}))
    else:
        path.write_text(json.dumps(record | {number: "fast"}))


def interrupted_copy(finished: Path, tmp_path: Path) -> Path:
    """The finished run as one that stopped: resume=true reads every file of its folder."""
    results_dir = tmp_path / "results"
    shutil.copytree(finished, results_dir)
    run = results_dir / "run"
    record = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps(record | {"status": "interrupted"}))
    config = (run / "config.yaml").read_text().replace(str(finished), str(results_dir))
    (run / "config.yaml").write_text(config)
    return run


@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("name", ["run.json", "config.yaml", "checkpoint.pt"])
def test_a_spoilt_run_file_stops_a_resume_with_one_line_naming_it(
    monkeypatch, capsys, tmp_path, finished, name, fault
):
    run = interrupted_copy(finished, tmp_path)
    path = run / name
    if name == "run.json":
        spoil_json(path, fault, key="status", number="wall_s")
    elif name == "config.yaml":
        text = path.read_text()
        spoilt = {"empty": "", "truncated": text[: len(text) // 3],
                  "wrong field count": text.replace("  lr: ", "  lr: 0.1\n  lrr: ", 1),
                  "non-numeric": text.replace("  lr: ", "  lr: fast #", 1)}[fault]  # fmt: skip
        path.write_text(spoilt)
    elif fault == "empty":
        path.write_bytes(b"")
    elif fault == "truncated":
        cut(path)
    else:  # a checkpoint has no fields or numbers of its own to spoil: not what its name says, then
        path.write_text("epoch,step\n1,fast\n" if fault == "non-numeric" else "a,b,c\n1,2\n")
    before = snapshot(tmp_path)
    code, _, err = adamrun(monkeypatch, capsys, "train", "resume=true", f"run_dir={run}")
    assert code == 2, err
    assert_one_line(err, str(run) if name == "config.yaml" else name)
    assert snapshot(tmp_path) == before


def spoil_table(table: Path, fault: str) -> None:
    lines = table.read_text().splitlines(keepends=True)
    header = lines[0].rstrip("\n").split(",")
    row = dict(zip(header, next(csv.reader([lines[1]])), strict=True))
    if fault == "empty":
        table.write_text("")
    elif fault == "truncated":
        table.write_text("".join(lines) + lines[1][: len(lines[1]) // 2])  # a second row, cut short
    elif fault == "wrong field count":
        table.write_text("".join(lines) + ",".join(list(row.values())[:5]) + "\n")
    else:
        shifted = row | {"run_id": "other", "test_metric": "one_cycle", "lr": "0.003x"}
        table.write_text("".join(lines) + ",".join(shifted[h] for h in header) + "\n")


@pytest.mark.parametrize("fault", FAULTS)
def test_report_leaves_a_malformed_row_out_names_it_and_counts_it(
    monkeypatch, capsys, tmp_path, finished, fault
):
    shutil.copytree(finished, tmp_path / "results")
    spoil_table(tmp_path / "results" / "runs.csv", fault)
    code, out, err = adamrun(monkeypatch, capsys, "report", str(tmp_path / "results"))
    if fault == "empty":  # no header: not a runs table at all
        assert code == 2
        assert_one_line(err, "runs.csv is not a runs table (empty)")
        return
    assert code == 0, err
    assert "skipped 1 malformed entry:" in out and "runs.csv, line 3:" in out
    with open(tmp_path / "results" / "summary.csv") as f:
        [summary] = list(csv.DictReader(f))  # one setting: the good run's, no shifted row beside it
    [good] = results.read_rows(finished / "runs.csv")
    assert int(float(summary["runs"])) == 1 and float(summary["test_mean"]) == pytest.approx(
        float(good["test_metric"])
    )


@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("name", ["runs.csv", "sweep.json"])
def test_a_spoilt_sweep_file_stops_its_resume_with_one_line(
    monkeypatch, capsys, tmp_path, finished, name, fault
):
    folder = tmp_path / "sweep"
    folder.mkdir()
    shutil.copy(finished / "runs.csv", folder / "runs.csv")
    results.write_json(folder / "sweep.json", {"name": "lr_wd_grid", "overrides": ["data=fashion_mnist"]})
    if name == "runs.csv":
        spoil_table(folder / "runs.csv", fault)
    else:
        spoil_json(folder / "sweep.json", fault, key="overrides", number="overrides")
    before = snapshot(folder)
    code, _, err = adamrun(
        monkeypatch, capsys, "sweep", "sweep=lr_wd_grid", "resume=true", f"sweep_dir={folder}"
    )
    assert code == 2, err
    assert_one_line(err, name, *(["line 3"] if name == "runs.csv" and fault != "empty" else []))
    assert snapshot(folder) == before


@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("name", ["tune.json", "study.db"])
def test_a_spoilt_search_file_stops_the_search_with_one_line(monkeypatch, capsys, tmp_path, name, fault):
    from runner import tune

    folder = tmp_path / "search"
    arguments = ["tune=adamw_lr_wd", "trials=1", f"sweep_dir={folder}", "data=fashion_mnist"]
    search = tune.plan(arguments)
    tune.study(search)  # the real study.db, with its tables
    if name == "tune.json":
        spoil_json(folder / "tune.json", fault, key="overrides", number="overrides")
    elif fault == "empty":
        (folder / "study.db").write_bytes(b"")
    elif fault == "truncated":
        cut(folder / "study.db")
    else:  # a database has no fields or numbers to spoil in place: not what its name says, then
        (folder / "study.db").write_text(
            "a,b,c\n1,2\n" if fault == "wrong field count" else "trial,value\n0,fast\n"
        )
    before = snapshot(folder)
    code, _, err = adamrun(monkeypatch, capsys, "tune", *arguments)
    assert code == 2, err
    assert_one_line(err, name)
    assert snapshot(folder) == before


@pytest.mark.parametrize("fault", FAULTS)
def test_report_leaves_a_malformed_metrics_line_out_and_names_it(
    monkeypatch, capsys, tmp_path, finished, fault
):
    shutil.copytree(finished, tmp_path / "results")
    table = tmp_path / "results" / "runs.csv"
    table.write_text(table.read_text().replace(str(finished), str(tmp_path / "results")))  # the copy's run
    metrics = tmp_path / "results" / "run" / "metrics.jsonl"
    line = metrics.read_text().splitlines()[0]
    row = json.loads(line)
    spoilt = {"empty": "{}x", "truncated": line[: len(line) // 2],
              "wrong field count": "[1, 2]", "non-numeric": json.dumps(row | {"train_loss": "low"})}[fault]  # fmt: skip
    metrics.write_text(metrics.read_text() + spoilt + "\n")
    code, out, err = adamrun(monkeypatch, capsys, "report", str(tmp_path / "results"))
    assert code == 0, err
    assert "skipped 1 malformed entry:" in out and f"{metrics}, line 2:" in out.replace("\n", "")


@pytest.mark.parametrize("fault", FAULTS)
def test_a_spoilt_study_table_stops_the_report_with_one_line(monkeypatch, capsys, tmp_path, fault):
    """The reproduction report is drawn from the studies' CSVs alone: a spoilt one is named, nothing redrawn."""
    out_dir = tmp_path / "reproduction"
    shutil.copytree(Path(__file__).parents[2] / "results" / "reproduction", out_dir)
    table = out_dir / "amsgrad_runs.csv"
    lines = table.read_text().splitlines(keepends=True)
    header = lines[0].rstrip("\n").split(",")
    if fault == "empty":
        table.write_text("")
    elif fault == "truncated":
        table.write_text("".join(lines[:2]) + lines[2][: len(lines[2]) // 2] + "\n")
    elif fault == "wrong field count":
        table.write_text("".join(lines[:2]) + ",".join(lines[2].split(",")[:3]) + "\n" + "".join(lines[3:]))
    else:
        values = dict(zip(header, next(csv.reader([lines[2]])), strict=True)) | {"test_metric": "high"}
        table.write_text("".join(lines[:2]) + ",".join(values[h] for h in header) + "\n" + "".join(lines[3:]))
    before = snapshot(out_dir)
    code, _, err = adamrun(monkeypatch, capsys, "reproduce", "--report-only", f"out_dir={out_dir}")
    assert code == 2, err
    assert_one_line(err, str(table), *([] if fault == "empty" else ["line 3"]))
    assert snapshot(out_dir) == before
