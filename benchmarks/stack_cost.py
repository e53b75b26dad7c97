"""What capturing the calling thread's Python stack adds to one recorded call, without a GPU.

The shim records calls delivered by the stand-in CUPTI of tests/test_cupti_shim.py; a Python function
at a chosen depth calls the stand-in's C loop (through ctypes, which lets go of the GIL, as torch
does around its copies), so every call is recorded on a thread whose Python stack is that deep.
Blocks with stacks on and off alternate in one process; the figure is the median (and 25th-75th
percentiles) over rounds of the per-call difference, in this thread's CPU time (a busy machine's
preemptions do not count). Distinct stacks are few, so this is the cost
of walking the frames and finding the stack already interned: the steady state of a serving loop.

    python benchmarks/stack_cost.py --depths 10,40,100 --calls 200000 --rounds 15
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cctrace.record.native import address, build_shim, load_shim  # noqa: E402
from cctrace.record.sources import py_stacks  # noqa: E402
from tests.test_cupti_shim import FAKE, FAKE_CALLBACKS, stand_in  # noqa: E402 - the stand-in CUPTI, one copy


def _stand_in(tmp: Path) -> tuple[ctypes.CDLL, ctypes.CDLL]:
    return stand_in(tmp, "fake", FAKE, "-O2"), stand_in(tmp, "fakecb", FAKE_CALLBACKS, "-O2")


def _at_depth(depth: int, fn, *args):
    return fn(*args) if depth <= 1 else _at_depth(depth - 1, fn, *args)


def _pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--depths", default="10,40,100", help="Python frames above the call, comma-separated")
    p.add_argument("--calls", type=int, default=200_000, help="recorded calls per block")
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="cct-stackcost-") as tmp:
        fake, fc = _stand_in(Path(tmp))
        shim = load_shim(build_shim())
        raw = Path(tmp) / f"cupti.{os.getpid()}.cuptiraw"
        assert shim.cct_start(address(fake.cuptiActivityRegisterCallbacks), str(raw).encode(), 1 << 20) == 0
        doms, ids = (ctypes.c_int * 1)(2), (ctypes.c_uint32 * 1)(7)
        rc = shim.cct_api_start(
            address(fc.fake_subscribe), address(fc.fake_enable), address(fc.fake_timestamp), doms, ids, 1
        )
        state = py_stacks.start(shim)
        if rc != 0 or state.get("state") != "on":
            sys.exit(f"cannot measure: api start {rc}, stacks {state}")
        rows = []
        for depth in [int(d) for d in a.depths.split(",")]:
            diffs, off_ns = [], []
            for _ in range(a.rounds):
                per = {}
                for on in (0, 1):
                    shim.cct_stacks_enable(on)
                    t0 = time.thread_time_ns()
                    _at_depth(depth, fc.fake_calls, a.calls)
                    per[on] = (time.thread_time_ns() - t0) / a.calls
                    shim.cct_api_flush(0)
                diffs.append(per[1] - per[0])
                off_ns.append(per[0])
            rows.append({
                "depth": depth, "record_ns_per_call_stacks_off": statistics.median(off_ns),
                "added_ns_per_call": statistics.median(diffs), "p25_ns": _pct(diffs, 0.25), "p75_ns": _pct(diffs, 0.75),
            })  # fmt: skip
        shim.cct_api_flush(1)
        stats = py_stacks.stats(shim)
    result = {"python": sys.version.split()[0], "calls": a.calls, "rounds": a.rounds, "rows": rows, "stats": stats}
    if os.environ.get("OUT"):  # the GPU machine's results folder
        Path(os.environ["OUT"], "stack_cost.json").write_text(json.dumps(result, indent=1))
    if a.json:
        print(json.dumps(result))
        return 0
    print(
        f"Python {sys.version.split()[0]}, {a.calls} calls per block, {a.rounds} rounds; distinct stacks {stats['stacks']}"
    )
    print(f"{'depth':>6}{'record ns/call (off)':>22}{'stacks add ns/call':>20}{'p25..p75':>16}")
    for r in rows:
        print(
            f"{r['depth']:>6}{r['record_ns_per_call_stacks_off']:>22.0f}{r['added_ns_per_call']:>20.0f}"
            f"{r['p25_ns']:>8.0f}..{r['p75_ns']:.0f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
