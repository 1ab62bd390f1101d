"""Fail at once, in one line, when a download is needed and the network is not there.

Without this, the Hugging Face libraries retry for half a minute before their own error (and torchvision's
downloads fail with a long traceback): a user on an offline machine should learn in a second what to do.
"""

from __future__ import annotations

import os
import socket

from runner.errors import UsageError

HUB = "huggingface.co"
PROBE_TIMEOUT_S = 3.0  # seconds to wait for a TCP connection before calling a host unreachable


def reachable(host: str, port: int = 443) -> bool:
    try:
        socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S).close()
    except OSError:
        return False
    return True


def require(host: str, what: str, offline_hint: str) -> None:
    """`what` downloads from `host`: one line now if the host cannot be reached."""
    if not reachable(host):
        raise UsageError(f"{what} needs {host}, which cannot be reached from here (offline?); {offline_hint}")


def require_hub(what: str) -> None:
    """Hub downloads, unless HF_HUB_OFFLINE=1 asks the libraries to read their local cache only."""
    if os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE"):
        return
    require(HUB, what, "with a cached copy set HF_HUB_OFFLINE=1, or point it at a local folder")
