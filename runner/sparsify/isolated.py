"""Run one function in a fresh spawned Python process and return its result.

OpenVINO and NNCF crashed with SIGSEGV (exit 139) when they ran in a process that had already trained with
torch (its OpenMP runtime and thread pools); a spawned child starts clean, so every OpenVINO call (convert,
quantize, load, infer) goes through here. A crash in the child is one error line, not a dead parent.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any


def isolated() -> ProcessPoolExecutor:
    """A one-worker pool whose worker is a spawned (not forked) interpreter."""
    return ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))


def call(fn: Callable[..., Any], *args: Any) -> Any:
    """fn(*args) in a process of its own; fn and its arguments must be picklable (module-level)."""
    with isolated() as pool:
        try:
            return pool.submit(fn, *args).result()
        except BrokenProcessPool as err:
            raise RuntimeError(f"{fn.__module__}.{fn.__name__} crashed its isolated process") from err
