"""Does a copy slowed by the bridge hold Python's GIL? (GPU machine)

The remedy "drain D2H readbacks on a worker thread" helps only if the worker's copy call lets the main
thread run. Under `cctrace record --emulate-bridge toll_us=T --kinds none` (the emulator spins T µs
inside the driver's copy call, as a CC bridge's encryption would), a worker thread issues copies while
the main thread sleeps 50 µs at a time and measures how late it wakes up: a thread that wakes needs the
GIL back, so if the worker's copy call holds the GIL the main thread waits for the rest of that call.
The switch interval is set to 20 µs so that a worker running Python bytecode hands the GIL over at once;
what is left is time the GIL was held inside a call. Reference: the worker idle (sleeping).

    python benchmarks/gil_during_copy.py --toll-us 300 --copies 1000 --cpus 2-5
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from _serve import ROOT, pinned, recorded, summary_line


def _late_while(work) -> tuple[list[float], float]:
    """How late (µs) the main thread woke from each 50 µs sleep while `work` ran in a worker thread,
    and work's seconds."""
    done = threading.Event()
    box: dict[str, float] = {}

    def worker() -> None:
        t = time.perf_counter()
        work()
        box["s"] = time.perf_counter() - t
        done.set()

    th = threading.Thread(target=worker)
    late = []
    th.start()
    while not done.is_set():
        t = time.perf_counter()
        time.sleep(50e-6)
        late.append((time.perf_counter() - t) * 1e6 - 50)
    th.join()
    return late, box["s"]


def inner(a: argparse.Namespace) -> None:
    import torch

    sys.setswitchinterval(20e-6)
    dev = torch.zeros(32, dtype=torch.int32, device="cuda")
    host = torch.empty(32, dtype=torch.int32).pin_memory()
    pageable = torch.empty(32, dtype=torch.int32)
    torch.cuda.synchronize()

    def d2h_pinned() -> None:
        for _ in range(a.copies):
            host.copy_(dev, non_blocking=True)
        torch.cuda.synchronize()

    def d2h_pageable() -> None:
        for _ in range(a.copies):
            pageable.copy_(dev)

    def h2d_pinned() -> None:
        for _ in range(a.copies):
            dev.copy_(host, non_blocking=True)
        torch.cuda.synchronize()

    def idle() -> None:
        time.sleep(0.3)

    out = {}
    for _ in range(2):  # the first round warms up
        for name, fn in (
            ("idle (sleep)", idle),
            ("D2H pinned", d2h_pinned),
            ("D2H pageable", d2h_pageable),
            ("H2D pinned", h2d_pinned),
        ):
            late, secs = _late_while(fn)
            q = statistics.quantiles(late, n=100)
            out[name] = {
                "worker_s": secs,
                "wakeups": len(late),
                "p50": q[49],
                "p90": q[89],
                "p99": q[98],
                "max": max(late),
            }
    print("GIL_SUMMARY " + json.dumps(out), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--toll-us", type=float, default=300.0)
    ap.add_argument("--copies", type=int, default=2000)
    ap.add_argument("--cpus", help="pin the run to these CPUs (taskset -c); give at least 2")
    ap.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.inner:
        inner(a)
        return
    rows = {}
    for label, spec in (
        ("no bridge", None),
        (f"toll {a.toll_us:g} us", f"toll_us={a.toll_us:g},bw_ratio=1,serialize=off,async_block=off"),
    ):
        cmd = [sys.executable, __file__, "--inner", "--toll-us", str(a.toll_us), "--copies", str(a.copies)]
        with tempfile.TemporaryDirectory() as tmp:
            if spec:  # the emulation only: no CUPTI activity, no probes
                opts = ["--kinds", "none", "--host-probes", "off", "--emulate-bridge", spec]
                cmd = recorded(cmd, f"{tmp}/t", opts)
            r = subprocess.run(pinned(cmd, a.cpus), capture_output=True, text=True, cwd=ROOT)
        summary = summary_line(r.stdout, "GIL_SUMMARY")
        if summary is None:
            sys.exit(f"{label}: no summary\n{r.stdout[-1500:]}\n{r.stderr[-1500:]}")
        rows[label] = summary
    print(
        f"{'bridge':<16}{'worker does':<16}{'worker s':>9}{'wakeups':>9}  main thread woke late by, µs: p50 / p90 / p99 / max"
    )
    for label, res in rows.items():
        for name, v in res.items():
            print(
                f"{label:<16}{name:<16}{v['worker_s']:>9.3f}{v['wakeups']:>9d}  "
                f"{v['p50']:.0f} / {v['p90']:.0f} / {v['p99']:.0f} / {v['max']:.0f}"
            )


if __name__ == "__main__":
    main()
