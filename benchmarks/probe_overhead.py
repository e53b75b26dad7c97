"""What the host probes cost.

1. Added cost per probed call (any Linux machine with root and bcc): a C program calls an exported
   `cuMemcpyHtoDAsync_v2` that returns at once, N times, timed plain and with the host probes
   attached to its library; prints ns/call for each and the difference, over --reps alternating runs.
   The same loop with empty uprobe+uretprobe programs gives the kernel's own trap cost (cctrace's floor);
   what cctrace's programs add is the difference.
2. On a GPU machine (libcuda present), also examples/serve.py steps/s: `run_serve.py probes` (plain,
   host probes only, with --probe-launches, CUPTI + host probes; alternating, --reps each).

    sudo python benchmarks/probe_overhead.py --reps 5 --calls 200000
"""

from __future__ import annotations

import argparse
import ctypes
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import run_serve

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def per_call(calls: int, reps: int) -> dict:
    from cctrace.record.sources.host_probes import HostProbes, build_trap_bench, run_trap_bench

    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        lib, app = build_trap_bench(d)
        plain, probed, lost = [], [], []
        for rep in range(reps):
            plain.append(run_trap_bench(app, calls))
            probes = HostProbes(d / f"t{rep}", libcuda=str(lib))
            probes.start()
            p = subprocess.Popen([str(app), str(calls)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            probes.trace_pid(p.pid)
            out, _ = p.communicate("go\n")
            health = probes.stop()
            probed.append(float(out))
            lost.append(health["lost"])
    added = [b - a for a, b in zip(plain, probed, strict=True)]
    return {
        "calls": calls,
        "plain_ns": plain,
        "probed_ns": probed,
        "added_us_median": statistics.median(added) / 1e3,
        "added_us_min": min(added) / 1e3,
        "added_us_max": max(added) / 1e3,
        "lost_events": lost,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--calls", type=int, default=200_000)
    ap.add_argument("--steps", type=int, default=3000)
    a = ap.parse_args()
    pc = per_call(a.calls, a.reps)
    from cctrace.record.sources.host_probes import uprobe_trap_cost

    pc["empty_uprobe_ns"] = uprobe_trap_cost(a.calls)
    print(
        f"per probed call ({a.calls:,} calls x {a.reps} runs): plain {statistics.median(pc['plain_ns']):.1f} ns, "
        f"probed {statistics.median(pc['probed_ns']):.1f} ns, added {pc['added_us_median']:.2f} us "
        f"(min {pc['added_us_min']:.2f}, max {pc['added_us_max']:.2f}); events lost per run: {pc['lost_events']}"
    )
    floor = pc["empty_uprobe_ns"] / 1e3
    print(f"the kernel's own cost here, empty uprobe + uretprobe programs: {floor:.2f} us/call")
    print(f"added by cctrace's eBPF programs beyond that floor: {pc['added_us_median'] - floor:.2f} us/call")
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        print("no GPU here: serve.py comparison skipped")
        return
    run_serve.main(["probes", "--reps", str(a.reps), "--steps", str(a.steps)])


if __name__ == "__main__":
    main()
