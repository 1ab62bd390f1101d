"""Runs lose nothing and refuse bad input cleanly: each fault through the real command, then the exit code, the
one line on stderr, and what runs.csv and the run directory hold afterwards."""

from __future__ import annotations

import gzip
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from runner import results
from runner.results import replaced_atomically
from tests.conftest import (
    REPO,
    adamrun,
    assert_one_line,
    assert_same_run,
    tiny,
    write_cifar10,
    write_fashion_mnist,
)


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under folder with its bytes: 'nothing changed' means this is equal before and after."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished(tmp_path_factory, fmnist) -> Path:
    """A finished 2-epoch run: its folder, under its results folder."""
    base = tmp_path_factory.mktemp("finished")
    command = [sys.executable, "-m", "runner.cli", "train", *tiny(fmnist, base / "results"),
               f"run_dir={base / 'results' / 'done'}"]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True, cwd=REPO)
    return base / "results" / "done"


def copy_run(run: Path, tmp_path: Path) -> Path:
    """A private copy of a run and its results folder (its config names the copy's absolute paths)."""
    results_dir = tmp_path / "results"
    shutil.copytree(run.parent, results_dir)
    copy = results_dir / run.name
    config = yaml.safe_load((copy / "config.yaml").read_text())
    config |= {"results_dir": str(results_dir), "run_dir": str(copy)}
    (copy / "config.yaml").write_text(yaml.safe_dump(config))
    return copy


# ------------------------------------------------------------------------------------------ results kept
def test_runs_whose_folders_share_a_name_keep_a_row_each(monkeypatch, capsys, tmp_path, fmnist):
    for experiment in ("exp_a", "exp_b"):
        run_dir = tmp_path / "results" / experiment / "seed0"
        code, _, err = adamrun(monkeypatch, capsys, "train", *tiny(fmnist, tmp_path / "results"),
                               "trainer.epochs=1", f"run_dir={run_dir}")  # fmt: skip
        assert code == 0, err
    rows = results.read_rows(tmp_path / "results" / "runs.csv")
    assert sorted(r["run_id"] for r in rows) == ["exp_a/seed0", "exp_b/seed0"]
    assert all(r["status"] == "finished" for r in rows)


@pytest.mark.parametrize(
    "where", ["the finished run", "a file", "the working folder", "a folder of other files"]
)
def test_a_new_run_never_reuses_a_folder_that_holds_something(
    monkeypatch, capsys, tmp_path, fmnist, finished, where
):
    run = copy_run(finished, tmp_path)
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "data.csv").write_text("1,2")
    run_dir = {"the finished run": str(run), "a file": str(tmp_path / "notes.txt"), "the working folder": ".",
               "a folder of other files": str(tmp_path / "other")}[where]  # fmt: skip
    before = snapshot(tmp_path)
    code, out, err = adamrun(monkeypatch, capsys, "train", *tiny(fmnist, tmp_path / "results"),
                             f"run_dir={run_dir}", cwd=tmp_path)  # fmt: skip
    assert code == 2 and out == ""
    assert_one_line(err, "run_dir")
    if where == "the finished run":
        assert "resume=true" in err
    assert snapshot(tmp_path) == before


def test_resuming_a_finished_run_changes_nothing(monkeypatch, capsys, tmp_path, finished):
    run = copy_run(finished, tmp_path)
    before = snapshot(tmp_path)
    code, out, _ = adamrun(monkeypatch, capsys, "train", "resume=true", f"run_dir={run}")
    assert code == 0 and "finished" in out
    assert snapshot(tmp_path) == before  # wall_s included: a no-op adds no seconds


def spawn(overrides: list[str], cwd: Path = REPO) -> subprocess.Popen:
    command = [sys.executable, "-m", "runner.cli", "train", *overrides]
    env = os.environ | {"PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=ctrl_c_as_in_a_terminal,
    )  # fmt: skip


def ctrl_c_as_in_a_terminal() -> None:
    """A command typed in a terminal starts with SIGINT at its default; a suite started as a background job
    (`make test &`, nohup) has it ignored, and a child would inherit that and never see the Ctrl-C sent."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        assert process.poll() is None, process.communicate()
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory, slow_fmnist) -> Path:
    """The uninterrupted 3-epoch run that every stopped-and-resumed run is compared with (once per module)."""
    tmp = tmp_path_factory.mktemp("straight")
    process = spawn([*tiny(slow_fmnist, tmp / "results", "trainer.epochs=3"), f"run_dir={tmp / 'run'}"])
    assert process.wait() == 0, process.communicate()
    return tmp / "run"


@pytest.mark.slow
@pytest.mark.parametrize("stop,code", [(signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_a_stop_signal_mid_epoch_is_handled_as_ctrl_c(tmp_path, slow_fmnist, straight_run, stop, code):
    """SLURM, submitit and Ray stop jobs with SIGTERM: the row says interrupted, the exit code is 128 + the
    signal, resume finishes bitwise as an uninterrupted run would, and wall_s adds up both segments."""
    overrides = tiny(slow_fmnist, tmp_path / "results", "trainer.epochs=3")
    run_dir = tmp_path / "stopped"
    process = spawn([*overrides, f"run_dir={run_dir}"])
    wait_for(run_dir / "checkpoint.pt", process)
    time.sleep(0.3)  # into epoch 2
    process.send_signal(stop)
    _, err = process.communicate(timeout=60)
    assert process.returncode == code, err
    first = json.loads((run_dir / "run.json").read_text())
    [row] = [r for r in results.read_rows(tmp_path / "results" / "runs.csv") if r["run_dir"] == str(run_dir)]
    assert row["status"] == first["status"] == "interrupted"
    assert float(row["wall_s"]) > 0
    resumed = spawn(["train", "resume=true", f"run_dir={run_dir}"][1:])
    assert resumed.wait() == 0, resumed.communicate()
    assert_same_run(straight_run, run_dir)
    final = json.loads((run_dir / "run.json").read_text())
    assert final["status"] == "finished" and final["segments"] == 2
    assert final["wall_s"] > first["wall_s"]  # the total over both segments, not the resumed part alone


def in_interpreter_start_up(returncode: int, err: str) -> bool:
    """A Ctrl-C before any adamrun code ran: 130 is adamrun's answer once it runs. Before, Python itself ends the
    process: by SIGINT (a shell shows 130 too), or with exit 1 and this traceback when it lands in `site` (the
    editable install's .pth finder), as a loop of Ctrl-Cs at 5-80 ms into `python -c "import runner.cli"` shows."""
    in_site = "<frozen site>" in err and err.rstrip().endswith("KeyboardInterrupt")
    return returncode == -signal.SIGINT or (returncode == 1 and in_site)


@pytest.mark.slow
def test_ctrl_c_in_the_first_seconds_leaves_a_run_that_resumes_or_nothing(tmp_path, slow_fmnist):
    """Ctrl-C while the data loads leaves no row and no folder; once the folder exists, a row that says
    interrupted and a run that resume=true finishes."""
    overrides = tiny(slow_fmnist, tmp_path / "results", "trainer.epochs=1")
    outcomes = set()
    for delay in (0.5, 2.5, 4.0):
        run_dir = tmp_path / f"run{delay}"
        process = spawn([*overrides, f"run_dir={run_dir}"])
        time.sleep(delay)
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=60)
        if not run_dir.exists():
            assert process.returncode == 130 or in_interpreter_start_up(process.returncode, err), (
                process.returncode,
                err,
            )
            assert not any(
                r["run_dir"] == str(run_dir) for r in results.read_rows(tmp_path / "results" / "runs.csv")
            )
            outcomes.add("nothing")
            continue
        record = json.loads((run_dir / "run.json").read_text())
        assert record["status"] in ("interrupted", "finished")
        outcomes.add(record["status"])
        resumed = spawn([f"run_dir={run_dir}", "resume=true"])
        assert resumed.wait() == 0, resumed.communicate()
        assert json.loads((run_dir / "run.json").read_text())["status"] == "finished"
    assert outcomes & {"nothing", "interrupted"}


def test_a_resumed_run_keeps_its_row_in_its_own_table_from_any_folder(monkeypatch, capsys, tmp_path, fmnist):
    """results_dir=results (relative) is saved as an absolute path: a resume from elsewhere finds it."""
    home, elsewhere = tmp_path / "home", tmp_path / "elsewhere"
    home.mkdir()
    elsewhere.mkdir()
    run_dir = home / "results" / "r1"
    code, _, _ = adamrun(monkeypatch, capsys, "train", *tiny(fmnist, Path("results")), "run_dir=results/r1",
                         cwd=home)  # fmt: skip
    assert code == 0
    (run_dir / "run.json").write_text(
        json.dumps(json.loads((run_dir / "run.json").read_text()) | {"status": "interrupted"})
    )
    code, _, err = adamrun(monkeypatch, capsys, "train", "resume=true", f"run_dir={run_dir}", cwd=elsewhere)
    assert code == 0, err
    assert not (elsewhere / "results").exists()
    [row] = results.read_rows(home / "results" / "runs.csv")
    assert row["run_id"] == "r1" and row["status"] == "finished"


# ------------------------------------------------------------------------------------------ rows that lie
@pytest.mark.parametrize(
    "override,says",
    [("trainer.epochs=3", "trainer.epochs is 2"), ("optimizer=sgd", "optimizer is"), ("seed=1", "seed is 0")],
)
def test_resume_refuses_an_override_that_would_change_the_run(
    monkeypatch, capsys, tmp_path, finished, override, says
):
    run = copy_run(finished, tmp_path)
    (run / "run.json").write_text(
        json.dumps(json.loads((run / "run.json").read_text()) | {"status": "interrupted"})
    )
    before = snapshot(tmp_path)
    code, _, err = adamrun(monkeypatch, capsys, "train", "resume=true", f"run_dir={run}", override)
    assert code == 2
    assert_one_line(err, says, "start a new run")
    assert snapshot(tmp_path) == before


# ------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    "override,says",
    [
        ("optimizer=[adamw,sgd]", "optimizer takes one option"),
        ("+optimizer.lrr=1e-3", "unknown config key 'optimizer.lrr'; valid keys here: family, decoupled, lr"),
        ("++trainer.epocs=3", "unknown config key 'trainer.epocs'"),
        ("+seeed=1", "unknown config key 'seeed'"),
        ("optimizer.lr=inf", "optimizer.lr must be a finite number"),
        ("optimizer.weight_decay=nan", "optimizer.weight_decay must be a finite number"),
        ("schedule.div_factor=inf", "schedule.div_factor must be a finite number"),
        ("trainer.grad_clip=-inf", "trainer.grad_clip"),
        ("recipe.scaling=nan", "recipe.scaling"),
        ("recipe.widths=[0,0,0,0]", "recipe.widths must all be > 0"),
        ("recipe.widths=[8,8]", "recipe.widths must be four channel counts"),
        ("recipe.crop_padding=100", "recipe.crop_padding must be below the image side (28 pixels)"),
        ("recipe.bn_momentum=-0.1", "recipe.bn_momentum must be in [0, 1]"),
        ("recipe.label_smoothing=1.5", "recipe.label_smoothing must be in [0, 1)"),
        ("recipe.scaling=[1,2]", "recipe.scaling"),
        ("optimizer.lr=[1e-3,3e-3]", "optimizer.lr"),
        ("data.val_size=192", "data.val_size must be below the 192 training images"),
        ("model=awd_lstm", "model is not read by recipe cifar10"),
        ("trainer.target=val_acc>=0.9", "trainer.target names val_acc, which this run does not log"),
        ("trainer.target=accuracy", "trainer.target must look like val_acc>=0.93"),
        ("trainer.eval_every=0.3", "trainer.eval_every"),
        ("trainer.stop_at_target=true", "trainer.stop_at_target needs trainer.target"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(monkeypatch, capsys, tmp_path, fmnist, override, says):
    code, out, err = adamrun(monkeypatch, capsys, "train", *tiny(fmnist, tmp_path / "results"), override)
    assert code == 2 and out == ""
    assert_one_line(err, says)
    assert not (tmp_path / "results").exists()


def corrupt(root: Path, fault: str) -> str:
    """Damage one file of a good Fashion-MNIST folder the way disks and downloads do; returns its name."""
    name = {"truncated gzip": "train-images-idx3-ubyte.gz", "not gzip": "t10k-images-idx3-ubyte.gz",
            "short labels": "train-labels-idx1-ubyte.gz", "too few bytes": "t10k-labels-idx1-ubyte.gz"}[fault]  # fmt: skip
    path = root / name
    data = path.read_bytes()
    if fault == "truncated gzip":
        path.write_bytes(data[: len(data) // 2])
    elif fault == "not gzip":
        path.write_bytes(gzip.decompress(data))  # the bytes without the compression, still named .gz
    elif fault == "short labels":
        labels = gzip.decompress(data)
        header = (0x0801).to_bytes(4, "big") + (100).to_bytes(4, "big")
        path.write_bytes(gzip.compress(header + labels[8:108]))  # 100 labels for 192 images
    else:
        path.write_bytes(gzip.compress(gzip.decompress(data)[:-5]))  # declares 64 labels, holds 59
    return name


@pytest.mark.parametrize("fault", ["truncated gzip", "not gzip", "short labels", "too few bytes"])
def test_a_corrupt_data_file_is_one_line_naming_it(monkeypatch, capsys, tmp_path, fault):
    root = tmp_path / "fmnist"
    root.mkdir()
    write_fashion_mnist(root, n_train=192, n_test=64)
    name = corrupt(root, fault)
    code, _, err = adamrun(monkeypatch, capsys, "train", *tiny(root, tmp_path / "results"))
    assert code == 2
    assert_one_line(err, name)
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("fault", ["garbage", "no labels", "wrong width"])
def test_a_corrupt_cifar10_batch_is_one_line_naming_it(monkeypatch, capsys, tmp_path, fault):
    folder = tmp_path / "cifar" / "cifar-10-batches-py"
    write_cifar10(folder, per_batch=8)
    batch = folder / "data_batch_3"
    if fault == "garbage":
        batch.write_bytes(batch.read_bytes()[:100])
    else:
        content = {"data": np.zeros((8, 3072 if fault == "no labels" else 1000), np.uint8), "labels": [0] * 8}
        if fault == "no labels":
            del content["labels"]
        batch.write_bytes(pickle.dumps(content))
    overrides = tiny(tmp_path, tmp_path / "results", "data=cifar10", f"data.root={tmp_path / 'cifar'}")
    code, _, err = adamrun(monkeypatch, capsys, "train", *overrides)
    assert code == 2
    assert_one_line(err, "data_batch_3")
    assert not (tmp_path / "results").exists()


# ------------------------------------------------------------------------------------------ corrupt runs
@pytest.mark.parametrize(
    "fault,says",
    [
        ("empty checkpoint", "checkpoint.pt is corrupt"),
        ("garbage checkpoint", "checkpoint.pt is corrupt"),
        ("lr: banana", "optimizer.lr"),
        ("unknown key", "unknown config key 'optimizer.lrr'"),
        ("negative epochs", "trainer.epochs must be > 0"),
        ("config not yaml", "config.yaml is not a readable config"),
        ("run.json garbage", "run.json is corrupt"),
    ],
)
def test_a_corrupt_run_cannot_resume_and_keeps_its_row(monkeypatch, capsys, tmp_path, finished, fault, says):
    run = copy_run(finished, tmp_path)
    record = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps(record | {"status": "interrupted"}))
    config = yaml.safe_load((run / "config.yaml").read_text())
    if fault == "empty checkpoint":
        (run / "checkpoint.pt").write_bytes(b"")
    elif fault == "garbage checkpoint":
        (run / "checkpoint.pt").write_bytes(b"\x80\x04garbage" * 50)
    elif fault == "lr: banana":
        config["optimizer"]["lr"] = "banana"
    elif fault == "unknown key":
        config["optimizer"]["lrr"] = 1.0
    elif fault == "negative epochs":
        config["trainer"]["epochs"] = -1
    elif fault == "run.json garbage":
        (run / "run.json").write_bytes(b"\xff\xfe{not json")
    if fault == "config not yaml":
        (run / "config.yaml").write_text("optimizer: [unclosed\n  - {")
    else:
        (run / "config.yaml").write_text(yaml.safe_dump(config))
    before = snapshot(tmp_path)
    code, _, err = adamrun(monkeypatch, capsys, "train", "resume=true", f"run_dir={run}")
    assert code == 2
    assert_one_line(err, says)
    assert snapshot(tmp_path) == before


def test_resume_of_a_missing_run_names_the_path(monkeypatch, capsys, tmp_path):
    code, _, err = adamrun(monkeypatch, capsys, "train", "resume=true", f"run_dir={tmp_path / 'nowhere'}")
    assert code == 2
    assert_one_line(err, str(tmp_path / "nowhere"), "does not exist")


def test_a_results_folder_that_cannot_be_written_is_one_line(monkeypatch, capsys, tmp_path, fmnist):
    (tmp_path / "afile").write_text("")
    code, _, err = adamrun(monkeypatch, capsys, "train", *tiny(fmnist, tmp_path / "afile" / "results"))
    assert code == 2
    assert_one_line(err, "afile")


# ------------------------------------------------------------------------------------------ report
@pytest.mark.parametrize("fault", ["binary table", "table is a folder", "missing folder", "not a runs table"])
def test_report_faults_are_one_line_naming_the_path(monkeypatch, capsys, tmp_path, fault):
    target = tmp_path / "results"
    if fault == "binary table":
        target.mkdir()
        (target / "runs.csv").write_bytes(bytes(range(256)) * 4)
    elif fault == "table is a folder":
        (target / "runs.csv").mkdir(parents=True)
    elif fault == "not a runs table":
        target.mkdir()
        (target / "runs.csv").write_text("a,b\n1,2\n")
    code, out, err = adamrun(monkeypatch, capsys, "report", str(target))
    assert code == 2 and out == ""
    assert_one_line(err, str(target))


def test_report_reads_a_path_or_results_dir(monkeypatch, capsys, tmp_path, finished):
    run = copy_run(finished, tmp_path)
    for argument in (str(run.parent), f"results_dir={run.parent}", str(run.parent / "runs.csv")):
        code, out, err = adamrun(monkeypatch, capsys, "report", argument)
        assert code == 0, err
        assert "fashion_mnist" in out and "adamw" in out


# ------------------------------------------------------------------------------------------ sparsify-bert
def test_sparsify_stages_that_reuse_a_run_need_its_folder(monkeypatch, capsys, tmp_path):
    code, _, err = adamrun(monkeypatch, capsys, "sparsify-bert", "stage=bench", f"results_dir={tmp_path}")
    assert code == 2
    assert_one_line(err, "run_dir")
    assert list(tmp_path.iterdir()) == []


def test_a_hub_dataset_offline_fails_at_once(monkeypatch, capsys, tmp_path):
    from runner import network

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(network, "HUB", "hub.invalid")  # never resolves, online or not
    started = time.perf_counter()
    code, _, err = adamrun(monkeypatch, capsys, "sparsify-bert", "task=mnli", f"results_dir={tmp_path}")
    assert code == 2 and time.perf_counter() - started < 20
    assert_one_line(err, "task.dataset 'nyu-mll/glue'", "HF_HUB_OFFLINE=1")
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------ atomic files
def test_a_write_that_fails_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "runs.csv"
    path.write_text("old")
    with pytest.raises(RuntimeError), replaced_atomically(path) as tmp:
        tmp.write_text("half of the new")
        raise RuntimeError("killed mid-write")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["runs.csv"]


def dead_pid() -> int:
    """The pid of a process that has ended (reaped: no process has it now, barring reuse within the test)."""
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    return ended.pid


def test_temporaries_of_writers_that_died_are_removed_and_live_ones_kept(tmp_path):
    """SIGKILL mid-write skips replaced_atomically's cleanup: the next resume (or the sweep's settle) removes
    what a dead writer left, by the pid in its name, and nothing else."""
    dead, live = dead_pid(), os.getppid()
    orphans = [tmp_path / f".checkpoint.{dead}.tmp.pt", tmp_path / f".metrics.{dead}.tmp.jsonl"]
    kept = [tmp_path / f".checkpoint.{os.getpid()}.tmp.pt", tmp_path / f".run.{live}.tmp.json",
            tmp_path / "checkpoint.pt", tmp_path / ".notes.tmp", tmp_path / f".x.{dead}.tmpfile"]  # fmt: skip
    for path in (*orphans, *kept):
        path.write_text("x")
    assert sorted(results.remove_orphaned_temporaries(tmp_path)) == sorted(orphans)
    assert sorted(tmp_path.iterdir()) == sorted(kept)


def test_a_sweep_settles_the_temporaries_of_killed_workers(tmp_path):
    from runner.sweep import settle

    trial = tmp_path / "optimizer.lr=0.001"
    trial.mkdir()
    orphan = trial / f".checkpoint.{dead_pid()}.tmp.pt"
    orphan.write_bytes(b"half a checkpoint")
    (trial / "checkpoint.pt").write_bytes(b"the previous one")
    settle(tmp_path)
    assert sorted(p.name for p in trial.iterdir()) == ["checkpoint.pt"]


@pytest.mark.slow
def test_a_run_killed_mid_checkpoint_resumes_without_its_temporary(tmp_path, slow_fmnist):
    """The state SIGKILL leaves when it lands inside torch.save: the old checkpoint and a dead writer's
    temporary beside it. resume=true removes the temporary and finishes the run."""
    run_dir = tmp_path / "results" / "run"
    three_epochs = [o for o in tiny(slow_fmnist, tmp_path / "results") if not o.startswith("trainer.epochs")]
    process = spawn([*three_epochs, "trainer.epochs=3", f"run_dir={run_dir}"])
    wait_for(run_dir / "checkpoint.pt", process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    orphan = run_dir / f".checkpoint.{process.pid}.tmp.pt"
    orphan.write_bytes(b"half a checkpoint")
    resumed = subprocess.run([sys.executable, "-m", "runner.cli", "train", "resume=true", f"run_dir={run_dir}"],
                             cwd=REPO, capture_output=True, text=True)  # fmt: skip
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert not orphan.exists() and results.read_run(run_dir)["status"] == "finished"
