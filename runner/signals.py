"""Stop signals handled the way Ctrl-C is: SLURM preemption, submitit and Ray stop jobs with SIGTERM, a closed
terminal sends SIGHUP. Each raises Interrupted where the program is, as Ctrl-C raises KeyboardInterrupt, except
inside `deferred()` blocks (a checkpoint and its metrics, a row), which finish first, so what is on disk stays
consistent. The exit code is 128 + the signal's number (130 Ctrl-C, 143 SIGTERM, 129 SIGHUP).
"""

from __future__ import annotations

import functools
import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


class Interrupted(KeyboardInterrupt):
    """A stop signal: handled wherever Ctrl-C is (it is a KeyboardInterrupt), remembering which signal."""

    def __init__(self, signum: int = signal.SIGINT):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


_pending: list[int] = []  # signals that arrived inside a deferred block
_last = [signal.SIGINT]  # the stop signal handled most recently
_deferring = threading.local()


def exit_code() -> int:
    """128 + the number of the stop signal handled most recently (130 for Ctrl-C)."""
    return 128 + _last[0]


def _handle(signum: int, frame) -> None:
    _last[0] = signum
    if getattr(_deferring, "depth", 0):
        _pending.append(signum)
        return
    raise Interrupted(signum)


@contextmanager
def handled() -> Iterator[None]:
    """SIGTERM/SIGHUP (and Ctrl-C, as ever) raise Interrupted inside this block; elsewhere, the old handlers.
    Signal handlers can only be set in the main thread: in any other thread this changes nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _handle) for s in (*STOP_SIGNALS, signal.SIGINT)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@contextmanager
def deferred() -> Iterator[None]:
    """A stop signal that arrives in here is raised when the block ends, not in the middle of it."""
    _deferring.depth = getattr(_deferring, "depth", 0) + 1
    try:
        yield
    finally:
        _deferring.depth -= 1
    if not _deferring.depth and _pending:
        signum = _pending[0]
        _pending.clear()
        raise Interrupted(signum) from None


class JobStopped(Exception):
    """A stop signal in a job a cluster scheduler runs (under submitit: scancel, preemption), raised as an
    error: submitit records an Exception as the job's result, a KeyboardInterrupt as nothing, and where the
    cluster has no accounting (no sacct) the launcher would then wait for that job for ever."""


@contextmanager
def stops_as_job_errors() -> Iterator[None]:
    """Around a launcher job's work: under submitit, a stop signal leaves it as JobStopped."""
    try:
        yield
    except KeyboardInterrupt as stop:
        if not os.environ.get("SUBMITIT_EXECUTOR"):  # set in every job submitit starts
            raise
        raise JobStopped(str(stop) or "SIGINT") from None


ORPHAN_POLL_S = 1.0  # seconds between a worker's looks at its parent
ORPHAN_GRACE_S = 60.0  # seconds an orphaned worker's trial has to stop cleanly (its row, its checkpoint)
_orphaned = threading.Event()


@functools.cache  # one watcher per process
def leave_with(parent: int) -> None:
    """In a worker that `parent` started (a joblib/loky worker, a submitit_local job): once the parent is gone,
    whatever killed it (SIGKILL, the OOM killer, a scheduler's hard limit), stop the trial in hand as SIGTERM
    does (its row says interrupted, its last checkpoint stays, resume=true continues it), then exit; an idle
    worker exits at once. A process that `parent` did not start (a SLURM job, a Ray actor) is left alone."""
    if os.getppid() != parent:
        return

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(ORPHAN_POLL_S)
        _orphaned.set()
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(ORPHAN_GRACE_S)  # the trial's own stop did not end the process in time
        os._exit(128 + signal.SIGTERM)

    threading.Thread(target=watch, name="leave-with-parent", daemon=True).start()


def exit_if_orphaned() -> None:
    """After a trial stopped because its parent died: nobody waits for its result, so the worker ends here."""
    if _orphaned.is_set():
        os._exit(128 + signal.SIGTERM)
