"""runner.import_frozen: a large import runs without garbage collections and is frozen afterwards."""

from __future__ import annotations

import gc
import sys

import pytest

from runner import import_frozen

HEAVY = """
tables = [{"row": i, "cells": [i, str(i)]} for i in range(200_000)]  # tracked objects, as a big import makes
"""


@pytest.fixture
def heavy_module(tmp_path, monkeypatch):
    (tmp_path / "heavy_for_test.py").write_text(HEAVY)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "heavy_for_test"
    sys.modules.pop("heavy_for_test", None)
    gc.unfreeze()


def collections_during(action) -> int:
    seen = []
    callback = lambda phase, info: seen.append(info["generation"]) if phase == "start" else None  # noqa: E731
    gc.callbacks.append(callback)
    try:
        action()
    finally:
        gc.callbacks.remove(callback)
    return len(seen)


def test_a_plain_import_of_the_same_module_collects(heavy_module):
    """The control: without import_frozen, the interpreter collects while the module's objects pile up."""
    assert gc.isenabled()
    assert collections_during(lambda: __import__(heavy_module)) > 0


def test_import_frozen_imports_without_collecting_then_freezes_once(heavy_module):
    frozen_before = gc.get_freeze_count()
    assert collections_during(lambda: import_frozen(heavy_module)) == 0
    module = sys.modules[heavy_module]
    assert len(module.tables) == 200_000 and gc.isenabled()  # the collector is back on
    assert gc.get_freeze_count() >= frozen_before + 200_000  # the module's objects: no longer walked
    frozen_after = gc.get_freeze_count()
    assert import_frozen(heavy_module) is module and gc.get_freeze_count() == frozen_after  # once only


def test_import_frozen_leaves_a_disabled_collector_disabled(heavy_module):
    gc.disable()
    try:
        import_frozen(heavy_module)
        assert not gc.isenabled()
    finally:
        gc.enable()
