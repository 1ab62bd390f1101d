"""What every written report shares: markdown tables, figures made without pyplot and saved atomically, and
the names people read for a metric. `adamrun report`, the studies' report and sparsify-bert's use these."""

from __future__ import annotations

import textwrap
from pathlib import Path

from runner import import_frozen
from runner.results import replaced_atomically

DPI = 110  # pixels per inch of every PNG
METRIC_NAMES = {"acc": "accuracy", "ppl": "perplexity", "accuracy": "accuracy", "loss": "loss"}


def markdown(header: list[str], rows: list[list]) -> str:
    escape = lambda text: str(text).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(map(escape, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(escape, row)) + " |" for row in rows]
    return "\n".join(lines)


def wrapped(text: str, width: int = 110) -> str:
    """A plot title, each line wrapped to fit the figure."""
    return "\n".join(textwrap.fill(line, width) for line in text.splitlines())


def new_figure(figsize: tuple[float, float]):
    figure = import_frozen("matplotlib.figure")  # no pyplot: no global state, no GUI backend
    return figure.Figure(figsize=figsize, dpi=DPI, layout="constrained")


def save(fig, path: Path) -> None:
    """The figure as a PNG, replaced atomically; no software tag, so the same figure gives the same bytes."""
    with replaced_atomically(path) as tmp:  # the .png suffix of tmp tells matplotlib the format
        fig.savefig(tmp, dpi=DPI, metadata={"Software": None})


def metric_name(metric: str) -> str:
    return METRIC_NAMES.get(metric, metric or "metric")
