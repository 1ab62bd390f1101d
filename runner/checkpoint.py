"""Checkpoints that hold everything a resume needs: model, optimizer, schedule step, RNG states, metrics, config.

Written atomically (to a temporary file, then renamed), so a run killed at any moment, even mid-write, leaves
the previous checkpoint intact.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from runner.errors import UsageError
from runner.results import replaced_atomically

CHECKPOINT = "checkpoint.pt"


def rng_states() -> dict[str, Any]:
    states = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def save(run_dir: Path, state: dict[str, Any]) -> Path:
    path = Path(run_dir) / CHECKPOINT
    buffer = io.BytesIO()
    torch.save(state, buffer)  # in memory first: torch reports a full disk as an opaque RuntimeError
    with replaced_atomically(path) as tmp:
        tmp.write_bytes(buffer.getbuffer())
    return path


def load(run_dir: Path) -> dict[str, Any] | None:
    """The run's last checkpoint, or None when it has none yet (killed during its first epoch)."""
    path = Path(run_dir) / CHECKPOINT
    if not path.exists():
        return None
    try:  # our own file: it holds the config too
        state = torch.load(path, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile) as err:
        raise UsageError(
            f"{path} is corrupt ({str(err).splitlines()[0] if str(err) else type(err).__name__}); "
            "delete it to restart the run from scratch, or start a new run"
        ) from err
    if not isinstance(state, dict) or "headway" not in state:
        raise UsageError(f"{path} is not a checkpoint of this adamrun (an older version's?); start a new run")
    return state
