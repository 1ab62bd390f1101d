"""isolated.call: a spawned (not forked) child, kept for the next call, replaced after a crash."""

import os

import pytest

from runner.sparsify import isolated

PARENT_ONLY = []  # filled in the test's process: a forked child would see it, a spawned one imports it empty


def whoami() -> tuple[int, bool]:
    return os.getpid(), bool(PARENT_ONLY)


def crash() -> None:
    os._exit(139)  # as OpenVINO's SIGSEGV ended the child


def test_calls_share_one_clean_child_and_a_crash_is_one_error_then_a_fresh_child():
    PARENT_ONLY.append("the parent's state")
    first, inherited = isolated.call(whoami)
    assert first != os.getpid() and not inherited
    assert isolated.call(whoami)[0] == first  # kept: no second start-up
    with pytest.raises(RuntimeError, match="test_isolated.crash crashed its isolated process"):
        isolated.call(crash)
    assert isolated.call(whoami)[0] not in (first, os.getpid())
