"""Settings chosen per machine by measurement: the same config is faster one way on one CPU and the other way
on the next (channels_last costs 14% under bf16 on this project's AMD EPYC and gains 3% on an Intel Xeon with
AMX), so a recipe may leave a setting open, time each alternative on its own model and data, and keep the
fastest. The choice is written into the run's config.yaml: a resumed run reuses it, measuring nothing."""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable


def seconds_per_step(step: Callable[[], None], steps: int) -> float:
    """The median seconds of `steps` timed calls of `step`, after one untimed call (allocations, kernel
    selection); the median, since one call interrupted by the OS should not decide."""
    step()
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    return sorted(times)[len(times) // 2]


def fastest(seconds: dict[Hashable, float]) -> Hashable:
    """The alternative with the fewest seconds (the first listed among equals)."""
    return min(seconds, key=lambda key: seconds[key])


def describe(what: str, seconds: dict[Hashable, float], chosen: Hashable) -> str:
    """One line for the run's log: each alternative's time per step, and the one chosen."""
    timed = ", ".join(f"{label(key)}: {1000 * value:.1f} ms" for key, value in seconds.items())
    return f"measured {what} per training step on this machine ({timed}): chose {label(chosen)}"


def label(key: Hashable) -> str:
    return "/".join(str(part) for part in key) if isinstance(key, tuple) else str(key)
