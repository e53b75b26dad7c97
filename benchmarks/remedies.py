"""How much each remedy in examples/serve.py recovers under an emulated CC bridge (GPU machine).

Runs serve.py under `cctrace record --emulate-bridge SPEC --kinds none --host-probes off` (the
emulation only, no recording cost) with no remedy, each remedy alone and all of them, alternating
over --reps repetitions, plus plain serve.py without the bridge; prints steps/s (median, min-max)
and the share of the bridge's loss that each configuration recovers.

    python benchmarks/remedies.py --reps 3 --steps 300 --bridge b300-tdx --cpus 2-5
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from _serve import run_serve

CONFIGS = {
    "no bridge": (None, []),
    "bridge": ("bridge", []),
    "bridge + packed H2D": ("bridge", ["--packed-h2d"]),
    "bridge + staging stream": ("bridge", ["--staging-stream"]),
    "bridge + async readback": ("bridge", ["--async-readback"]),
    "bridge + all three": ("bridge", ["--packed-h2d", "--staging-stream", "--async-readback"]),
}


def run(bridge: str | None, flags: list[str], steps: int, cpus: str | None = None) -> float:
    opts = None
    if bridge:  # the emulation alone: no CUPTI activity, no probes
        opts = ["--kinds", "none", "--host-probes", "off", "--emulate-bridge", bridge]
    return run_serve(["--no-nvtx", "--steps", str(steps), *flags], opts, cpus)["steps_per_s"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--bridge", default="b300-tdx", help="bridge spec (see cctrace record --help)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--cpus", help="pin every run to these CPUs (taskset -c)")
    a = ap.parse_args()
    res: dict[str, list[float]] = {k: [] for k in CONFIGS}
    for rep in range(a.reps):
        for name, (b, flags) in CONFIGS.items():
            res[name].append(run(a.bridge if b else None, flags, a.steps, a.cpus))
            print(f"rep {rep + 1}/{a.reps} {name}: {res[name][-1]:.1f} steps/s", file=sys.stderr, flush=True)
    plain = statistics.median(res["no bridge"])
    bridged = statistics.median(res["bridge"])
    print(f"serve.py --steps {a.steps}, bridge {a.bridge}, {a.reps} reps (median, min-max steps/s)")
    print(f"{'configuration':28} {'steps/s':>9} {'min-max':>15} {'ms/step':>8} {'recovered':>10}")
    for name, xs in res.items():
        m = statistics.median(xs)
        # share of the bridge's per-step loss that this configuration wins back
        lost = 1 / bridged - 1 / plain
        rec = (1 / bridged - 1 / m) / lost if lost > 0 and name != "no bridge" else float("nan")
        print(f"{name:28} {m:9.1f} {min(xs):7.1f}-{max(xs):<7.1f} {1000 / m:8.3f} {rec:10.1%}")
    if a.json:
        a.json.write_text(json.dumps({"bridge": a.bridge, "steps": a.steps, "steps_per_s": res}, indent=1))


if __name__ == "__main__":
    main()
