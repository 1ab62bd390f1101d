"""Run one function in a spawned Python process that never ran torch, and return its result.

OpenVINO and NNCF crashed with SIGSEGV (exit 139) when they ran in a process that had already trained with
torch (its OpenMP runtime and thread pools); a spawned child starts clean, so every OpenVINO call (convert,
quantize, load, infer) goes through here. The child is kept for the next call (starting one and importing
OpenVINO and NNCF cost about 3 s, and a run makes a dozen calls); a crash in it is one error line, not a dead
parent, and the call after a crash gets a fresh child.
"""

from __future__ import annotations

import atexit
import functools
import multiprocessing
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any


@functools.cache  # one child per process; cleared after a crash
def worker() -> ProcessPoolExecutor:
    """A one-worker pool whose worker is a spawned (not forked) interpreter, shut down at exit."""
    pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
    atexit.register(pool.shutdown, cancel_futures=True)
    return pool


def call(fn: Callable[..., Any], *args: Any) -> Any:
    """fn(*args) in the isolated child; fn and its arguments must be picklable (module-level)."""
    try:
        return worker().submit(fn, *args).result()
    except BrokenProcessPool as err:
        worker.cache_clear()
        raise RuntimeError(f"{fn.__module__}.{fn.__name__} crashed its isolated process") from err
