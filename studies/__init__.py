"""The studies of `adamrun reproduce`: the papers' claims as sweeps of normal runs, and their verdicts.

A study is a config in conf/study/ whose `kind` names how it runs, how it is judged and how it is drawn: one
module here per kind (decoupling, compare, schedules, warmup), each defining its `KIND`. Beside them:
trials.py (the sweeps a kind runs and the CSVs it writes), section.py (what a kind's analysis reads back and
returns), stats.py (the intervals and the verdict rules), report.py (report.md from the CSVs alone) and
reproduce.py (the command: plan, run every study, then the report). A new kind is one module, listed in KINDS.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd
    from omegaconf import DictConfig

    from studies.section import Section
    from studies.trials import Context, Shared, Study

KINDS = ("decoupling", "compare", "schedules", "warmup")  # studies/<kind>.py, each with its KIND


@dataclass(frozen=True)
class StudyKind:
    """What a kind of study is made of; its module's name is the `kind:` its studies' configs name."""

    scale: type  # the schema of a study's block per scale (scales.offline, scales.full of its config)
    arms: Callable[[DictConfig], list[str]]  # the shared arms (conf/reproduce.yaml) a study runs
    # its sweeps as (label, overrides), each value that a selection decides at its first candidate: enough to
    # compose one trial of each before anything runs
    sweeps: Callable[[Context], list[tuple[str, list[str]]]]
    run: Callable[[Context], tuple[list[dict], list[dict], dict]]  # the rows of its runs, curves, settings
    # its verdict, table and figure, from those rows and settings (read back from the CSVs)
    analyze: Callable[[pd.DataFrame, pd.DataFrame, dict], Section]
    check: Callable[[Study, Shared], None] = lambda study, shared: None  # what more its config must meet


@functools.cache
def kinds() -> dict[str, StudyKind]:
    """Every kind by name, imported on first use: each kind's module imports this one for StudyKind."""
    return {name: importlib.import_module(f"{__name__}.{name}").KIND for name in KINDS}
