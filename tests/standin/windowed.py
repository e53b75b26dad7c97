"""The traced program of tests/test_windows.py: CUDA calls played on the stand-in CUPTI
(fake_memcpy(correlation id)), in phases that follow the tracer's state as this process sees it.
It prints one JSON line per phase; the test answers "off?"/"on?" with the toggle signal."""

import ctypes
import json
import os
import sys
import time
from pathlib import Path

from cctrace.record import tracer

lib = ctypes.CDLL(os.environ["CCTRACE_TEST_LIBCUPTI"])
COUNTERS = ("n_calls", "n_subscribe", "n_register", "n_finalize", "n_flush", "n_delivered", "n_records", "t_first_call")


def counters() -> dict:
    return {n: ctypes.c_uint64.in_dll(lib, n).value for n in COUNTERS}


def say(at: str, **kw) -> None:
    print(json.dumps({"at": at, **kw}), flush=True)


def window_missed() -> bool:
    """The launcher opened and closed its window before this process started listening."""
    state = json.loads((Path(os.environ["CCTRACE_DIR"]) / "control.json").read_text())
    return state["changes"] >= 2 and not tracer._active.windows


def calls_until(attached: bool, first: int) -> int:
    """Calls while waiting for the tracer to reach `attached`; the next id after they end."""
    i = first
    while tracer._active.attached != attached:
        if window_missed():
            say("missed")
            sys.exit(0)
        lib.fake_memcpy(i)
        i += 1
        time.sleep(0.001)
    return i


def phase(first: int, n: int, pause: float = 0.0) -> None:
    for i in range(first, first + n):
        lib.fake_memcpy(i)
    time.sleep(pause)  # several flush intervals: a flusher that woke would call CUPTI


if sys.argv[1] == "toggle":
    phase(0, 100)
    say("off?")
    calls_until(False, 10000)
    before = counters()
    phase(100, 100, pause=0.5)
    say("on?", detached=[before, counters()])
    calls_until(True, 20000)
    phase(200, 100)
    say("done", counters=counters())
elif sys.argv[1] in ("idle", "idle-cancel"):  # no CUDA call while the detach waits: finalize left pending
    phase(0, 100)
    say("off?")
    while tracer._active.attached:
        time.sleep(0.01)
    state = tracer._active.sources["cupti"].detach_state
    if sys.argv[1] == "idle":
        phase(100, 100, pause=0.2)  # the first call's exit finalizes
    say("on?", state=state, counters=counters())
    while not tracer._active.attached:
        time.sleep(0.01)
    phase(200, 100)
    say("done", counters=counters())
else:  # the launcher opens and closes the window by the clock (--delay, --duration)
    opened = calls_until(True, 0)
    closed = calls_until(False, opened)
    after_close = counters()
    phase(closed, 100, pause=0.5)
    say("done", opened=opened, closed=closed, detached=[after_close, counters()])
