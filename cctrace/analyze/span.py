"""One step numbering and one analysis window for every view (report, query, export, explorer).

Steps are the rows of the analysis's `steps` table, numbered from 1 in time order (its `step` column,
as `step_timeline` and the report print them). The window is the analysis's `win`: the first step's
start to the last step's end, else everything recorded, within the traced time (queries/_traced.sql:
a recording with tracing windows traced only inside them, and no step spans the time between two).
`--steps A:B` (inclusive) and `--window A:B` (ms from the window's start) resolve here, and the
explorer's go-to uses the same numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


class SpanError(ValueError):
    """A step range or time window that does not select anything: the message says what to use instead."""


@dataclass(frozen=True)
class Window:
    start_ns: int
    end_ns: int
    steps: int

    @property
    def ms(self) -> float:
        return (self.end_ns - self.start_ns) / 1e6


def analysis_window(con) -> Window:
    """The analysis window and its step count (a connection with the analysis views)."""
    lo, hi, steps = con.execute("SELECT start_ns, end_ns, steps FROM win").fetchall()[0]
    return Window(lo or 0, hi or 0, steps or 0)


def parse_pair(text: str, option: str, integer: bool = False) -> tuple[float, float]:
    """'A:B' -> (A, B): finite, in order; else SpanError naming the option."""
    parts = str(text).split(":")
    kind = "integers" if integer else "numbers"
    try:
        if len(parts) != 2:
            raise ValueError
        a, b = (int(p) if integer else float(p) for p in parts)
    except ValueError:
        raise SpanError(f"{option} expects A:B with two {kind}, got {text!r}") from None
    if not (math.isfinite(a) and math.isfinite(b)):
        raise SpanError(f"{option} {text!r}: A and B must be finite numbers")
    if b < a:
        raise SpanError(f"{option} {text!r} is reversed: A must not be after B")
    return a, b


def step_bounds(con, first: int, last: int) -> tuple[int, int]:
    """Start of step `first` to end of step `last` (numbered from 1, inclusive) in ns."""
    n = analysis_window(con).steps
    if n == 0:
        raise SpanError("this trace has no steps (no NVTX step ranges, none detected); use --window A:B (ms) instead")
    if first < 1 or last > n:
        raise SpanError(f"steps {first}:{last} out of range: this trace has steps 1 to {n}")
    lo, hi = con.execute(
        "SELECT min(start_ns), max(end_ns) FROM steps WHERE step BETWEEN ? AND ?", [first, last]
    ).fetchall()[0]
    return lo, hi


def step_range(con, step: int) -> tuple[int, int] | None:
    """Step `step` (from 1) as (start_ns, end_ns), or None when there is no such step."""
    row = con.execute("SELECT start_ns, end_ns FROM steps WHERE step = ?", [step]).fetchall()
    return (row[0][0], row[0][1]) if row else None


def ms_bounds(con, a_ms: float, b_ms: float) -> tuple[int, int]:
    """A..B ms from the analysis window's start, in ns; both ends inside the window (to its rounded ms)."""
    w = analysis_window(con)
    if a_ms < 0 or a_ms >= w.ms or b_ms > round(w.ms, 3) + 0.0005 or b_ms == a_ms:
        raise SpanError(
            f"--window {a_ms:g}:{b_ms:g} ms is outside the analysis window (0 to {w.ms:.3f} ms, "
            "counted from the first step's start) or empty"
        )
    return w.start_ns + round(a_ms * 1e6), min(w.start_ns + round(b_ms * 1e6), w.end_ns)


def resolve(con, window: str | None, steps: str | None) -> tuple[int, int] | None:
    """The ns bounds that --window or --steps select (None: neither given). Both at once is an error."""
    if window and steps:
        raise SpanError("give --window or --steps, not both")
    if steps:
        a, b = parse_pair(steps, "--steps", integer=True)
        return step_bounds(con, int(a), int(b))
    if window:
        a, b = parse_pair(window, "--window")
        return ms_bounds(con, a, b)
    return None
