"""Putting every timestamp on CLOCK_MONOTONIC, the clock eBPF's bpf_ktime_get_ns uses."""

from __future__ import annotations

import time
from collections.abc import Callable


def now_ns() -> int:
    return time.monotonic_ns()


def measure_offset(other_clock: Callable[[], int], samples: int = 9) -> dict:
    """Offset to add to `other_clock` readings to get CLOCK_MONOTONIC ns.

    Each sample brackets one read of the other clock between two monotonic reads; the
    tightest bracket gives the offset with the smallest uncertainty (half its width).
    """
    best: tuple[int, int] | None = None
    for _ in range(samples):
        a = time.monotonic_ns()
        o = other_clock()
        b = time.monotonic_ns()
        width = b - a
        offset = (a + b) // 2 - o
        if best is None or width < best[0]:
            best = (width, offset)
    assert best is not None
    return {"offset_ns": best[1], "uncertainty_ns": best[0] // 2, "measured_at_ns": time.monotonic_ns()}
