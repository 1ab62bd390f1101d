"""Environment faults through the real command, on real small filesystems: a tmpfs of a few hundred KB that
fills up, and one remounted read-only (as root, file modes do not stop writes, a read-only mount does). Each
fault is one line on stderr naming the path and the cause, exit code 74, and loses nothing: the row says
failed where it can still be written, no temporary file is left, and resume=true once the cause is gone ends
bitwise as an undisturbed run."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from runner import results
from tests.conftest import REPO, assert_one_line, assert_same_run, tiny

ENVIRONMENT_FAULT = 74
pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("mount") is None,
    reason="mounting a tmpfs needs root (CI runs as root)",
)


@contextmanager
def tmpfs(where: Path, size: str):
    where.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def remount(where: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(where)], check=True)


def fill(where: Path, leave: int) -> Path:
    """A file that takes all but `leave` bytes of the filesystem."""
    stats = os.statvfs(where)
    filler = where / "filler"
    filler.write_bytes(b"\0" * max(stats.f_bavail * stats.f_frsize - leave, 0))
    return filler


def adamrun(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "runner.cli", *arguments], cwd=REPO, capture_output=True,
                          text=True, timeout=300)  # fmt: skip


def test_a_full_disk_at_the_checkpoint_is_one_line_and_resume_ends_bitwise(tmp_path, fmnist):
    straight = adamrun("train", *tiny(fmnist, tmp_path / "elsewhere", f"run_dir={tmp_path / 'straight'}"))
    assert straight.returncode == 0, straight.stderr
    with tmpfs(tmp_path / "small", "1m") as disk:
        run_dir = disk / "results" / "runs" / "r"
        filler = fill(disk, leave=48 * 1024)  # the config and the row fit; a checkpoint (150 KB) does not
        done = adamrun("train", *tiny(fmnist, disk / "results", f"run_dir={run_dir}"))
        assert done.returncode == ENVIRONMENT_FAULT, done.stdout + done.stderr
        assert_one_line(done.stderr, f"{run_dir / 'checkpoint.pt'}: No space left on device")
        assert sorted(p.name for p in run_dir.iterdir()) == ["config.yaml", "run.json"]  # no temporary left
        assert (
            results.read_run(run_dir)["status"] == "failed"
        )  # not `running`: the row could still be written
        [row] = results.read_rows(disk / "results" / "runs.csv")
        assert row["status"] == "failed"
        filler.unlink()  # the cause is gone
        resumed = adamrun("train", "resume=true", f"run_dir={run_dir}")
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        assert results.read_run(run_dir)["status"] == "finished"
        assert_same_run(tmp_path / "straight", run_dir)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_read_only_results_folder_is_one_line_for_a_run_a_resume_and_a_report(
    tmp_path, fmnist, slow_fmnist
):
    with tmpfs(tmp_path / "ro", "8m") as disk:
        run_dir = disk / "results" / "runs" / "r"
        command = [sys.executable, "-m", "runner.cli", "train", *tiny(slow_fmnist, disk / 'results',
                   f"run_dir={run_dir}", "trainer.epochs=3")]  # fmt: skip
        first = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.time() + 120
        while not (run_dir / "checkpoint.pt").exists():  # an event, not a sleep: the first epoch is saved
            assert first.poll() is None and time.time() < deadline, first.stderr.read()
            time.sleep(0.05)
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=120) == 143
        assert results.read_run(run_dir)["status"] == "interrupted"
        remount(disk, "ro")
        before = snapshot(disk)
        fresh = adamrun("train", *tiny(fmnist, disk / "results"))
        assert fresh.returncode == ENVIRONMENT_FAULT
        assert_one_line(fresh.stderr, str(disk / "results" / "runs"), "Read-only file system")
        resumed = adamrun("train", "resume=true", f"run_dir={run_dir}")
        assert resumed.returncode == ENVIRONMENT_FAULT
        assert_one_line(resumed.stderr, str(run_dir), "Read-only file system")
        report = adamrun("report", str(disk / "results"))
        assert report.returncode == ENVIRONMENT_FAULT
        assert_one_line(report.stderr, str(disk / "results"), "Read-only file system")
        assert snapshot(disk) == before  # the folder as it was
        remount(disk, "rw")
        again = adamrun("train", "resume=true", f"run_dir={run_dir}")
        assert again.returncode == 0, again.stderr
        assert results.read_run(run_dir)["status"] == "finished"
