"""Where the CUPTI source's overhead comes from: serve.py steps/s under one CUPTI setting at a time.

Each configuration is a set of activity kinds (and the diagnostic knobs CCTRACE_CUPTI_BUFFER_KB and
CCTRACE_CUPTI_DISCARD), run alternately --reps times; prints median steps/s, slowdown against plain,
and the tracer's own conversion CPU time per second. Needs a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from _serve import Speed, pinned, recorded, serve_summary

ROOT = Path(__file__).resolve().parent.parent
SERVE = str(ROOT / "examples" / "serve.py")
BASE = "memcpy,memset,memory,sync"
DEFAULT = "memcpy,memcpy2,memset,memory,runtime,overhead"
CONFIGS = {
    "plain": None,
    "default": (DEFAULT, {}),
    "default-no-periodic-flush": (DEFAULT, {"CCTRACE_CUPTI_FLUSH": "none"}),
    "default-python-callbacks": (DEFAULT, {"CCTRACE_NO_SHIM": "1"}),
    "none": ("none", {}),
    "base4": (BASE, {}),
    "memcpy": ("memcpy", {}),
    "sync": ("sync", {}),
    "memory": ("memory", {}),
    "memcpy+runtime": ("memcpy,runtime", {}),
    # RUNTIME on, but records kept for no call / for copies only (CCTRACE_RUNTIME_KEEP is a regex)
    "memcpy+runtime-none": ("memcpy,runtime", {"CCTRACE_RUNTIME_KEEP": "^$"}),
    "memcpy+runtime-copies": ("memcpy,runtime", {"CCTRACE_RUNTIME_KEEP": "^cudaMemcpy"}),
    "default+sync": (DEFAULT + ",sync", {}),
    "base4+memcpy2": (BASE + ",memcpy2", {}),
    "base4+overhead": (BASE + ",overhead", {}),
    "base4+runtime": (BASE + ",runtime", {}),
    "default+kernel+nvtx": (DEFAULT + ",kernel,nvtx", {}),
}


def run(
    name: str, steps: int, out: Path, cpus: str | None = None, serve_args: tuple[str, ...] = ()
) -> tuple[float, float | None, float]:
    cfg = CONFIGS[name]
    env = dict(os.environ)
    if cfg is None:
        cmd = [sys.executable, SERVE, "--steps", str(steps), *serve_args]
    else:
        kinds, extra = cfg
        env.update(extra)
        cmd = recorded([sys.executable, SERVE, "--steps", str(steps), *serve_args], out, ["--kinds", kinds])
    r = subprocess.run(pinned(cmd, cpus), capture_output=True, text=True, env=env, cwd=ROOT)
    summary = serve_summary(r.stdout)
    if summary is None:
        raise SystemExit(f"{name} failed: {r.stderr[-1500:]}")
    sps = summary["steps_per_s"]
    conv = None
    for p in out.glob("proc.*.json"):
        rec = json.loads(p.read_text())
        c = rec.get("sources", {}).get("cupti", {})
        if rec.get("end_ns"):
            conv = c.get("convert_cpu_ns", 0) / ((rec["end_ns"] - rec["start_ns"]) / 1e9) / 1e6
    return sps, conv, summary["step_ms_median"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--only", help="comma-separated configuration names")
    ap.add_argument("--cpus", help="run every configuration on these CPUs (taskset -c list, e.g. 2-5)")
    ap.add_argument("serve_args", nargs="*", help="extra arguments for serve.py (after --)")
    a = ap.parse_args()
    names = a.only.split(",") if a.only else list(CONFIGS)
    res: dict[str, list] = {n: [] for n in names}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(a.reps):
            for n in names:
                res[n].append(run(n, a.steps, Path(tmp) / f"{n}-{rep}", a.cpus, tuple(a.serve_args)))
    speeds = {n: Speed([r[0] for r in rs], [r[2] for r in rs]) for n, rs in res.items()}
    plain = speeds.get("plain", Speed([1.0], [1.0]))
    print(
        f"{'config':22s} {'steps/s':>9s} {'runs':>20s} {'slowdown':>9s} {'by best':>8s} {'step ms':>8s} "
        f"{'by step':>8s} {'convert ms/s':>13s}"
    )
    for n, rs in res.items():
        sp = speeds[n]
        by_median, by_best, by_step = sp.slowdowns(plain)
        conv = [r[1] for r in rs if r[1] is not None]
        runs = "/".join(f"{s:.0f}" for s in sp.steps_per_s)
        cv = f"{statistics.median(conv):13.1f}" if conv else f"{'-':>13s}"
        print(
            f"{n:22s} {sp.median:9.1f} {runs:>20s} {by_median:8.1f}% {by_best:7.1f}% "
            f"{sp.median_step_ms:8.3f} {by_step:7.1f}% {cv}"
        )


if __name__ == "__main__":
    main()
