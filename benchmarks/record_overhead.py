"""How much `cctrace record` slows examples/serve.py, against plain and torch.profiler.

Runs the modes alternately (plain, cctrace default kinds, cctrace + kernels + NVTX, torch.profiler),
--reps times each, and prints steps/s (median, min, max), the slowdown of each mode against plain by
median and by best run (noise only ever slows a run down, so the best runs compare the undisturbed
speeds), the median step time (serve.py times each step; the median ignores the steps that another
tenant's work slowed) and its slowdown, and the records per second each traced run captured. --cpus pins every run to the same CPUs.
Needs a GPU.

    python benchmarks/record_overhead.py --reps 5 --steps 2000 --cpus 2-5 [--json out.json] [-- serve.py args]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from _serve import Speed, pinned, serve_summary

ROOT = Path(__file__).resolve().parent.parent
SERVE = str(ROOT / "examples" / "serve.py")


def modes(py: str) -> dict[str, list[str]]:
    rec = [py, "-m", "cctrace", "record", "--no-load", "-q", "--force", "-o", "{out}"]
    return {
        "plain": [py, SERVE],
        "cctrace": [*rec, "--", py, SERVE],
        "cctrace+kernels+nvtx": [*rec, "--kernels", "--nvtx", "--", py, SERVE],
        "torch.profiler": [py, SERVE, "--torch-profiler"],
    }


def run_once(cmd: list[str], serve_args: list[str], out: Path, cpus: str | None = None) -> dict:
    full = pinned([c.replace("{out}", str(out)) for c in cmd] + serve_args, cpus)
    r = subprocess.run(full, capture_output=True, text=True, cwd=ROOT)
    summary = serve_summary(r.stdout)
    if r.returncode != 0 or summary is None:
        raise SystemExit(f"run failed ({r.returncode}): {' '.join(full)}\n{r.stderr[-2000:]}")
    records = None
    if out.exists():
        total, seconds = 0, 0.0
        for p in out.glob("proc.*.json"):
            rec = json.loads(p.read_text())
            total += sum(rec.get("rows_written", {}).values())
            if rec.get("end_ns") and rec.get("start_ns"):
                seconds = max(seconds, (rec["end_ns"] - rec["start_ns"]) / 1e9)
        records = {"total": total, "per_s": total / seconds if seconds else None}
    return {"steps_per_s": summary["steps_per_s"], "step_ms": summary.get("step_ms_median"), "records": records}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--cpus", help="run every mode on these CPUs (taskset -c list, e.g. 2-5)")
    ap.add_argument("serve_args", nargs="*", help="extra arguments for serve.py (after --)")
    a = ap.parse_args()
    serve_args = ["--steps", str(a.steps), *a.serve_args]
    results: dict[str, list[dict]] = {m: [] for m in modes(sys.executable)}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(a.reps):
            for name, cmd in modes(sys.executable).items():
                out = Path(tmp) / f"{name}-{rep}"
                res = run_once(cmd, serve_args, out, a.cpus)
                results[name].append(res)
                print(
                    f"rep {rep + 1}/{a.reps} {name:22s} {res['steps_per_s']:8.1f} steps/s", file=sys.stderr, flush=True
                )
    speeds = {m: Speed([r["steps_per_s"] for r in runs], [r["step_ms"] for r in runs]) for m, runs in results.items()}
    rows = []
    print(
        f"\n{'mode':22s} {'median':>9s} {'min':>9s} {'max':>9s} {'slowdown':>9s} {'by best':>8s} "
        f"{'step ms':>8s} {'by step':>8s} {'records/s':>10s}"
    )
    for name, runs in results.items():
        sp = speeds[name]
        s, med = sp.steps_per_s, sp.median
        by_median, by_best, by_step = sp.slowdowns(speeds["plain"])
        rps = [r["records"]["per_s"] for r in runs if r["records"] and r["records"]["per_s"]]
        row = {
            "mode": name,
            "median": med,
            "min": min(s),
            "max": max(s),
            "runs": s,
            "slowdown_pct": by_median,
            "slowdown_best_pct": by_best,
            "step_ms_median": sp.median_step_ms,
            "slowdown_step_pct": by_step,
            "records_per_s": statistics.median(rps) if rps else None,
        }
        rows.append(row)
        rec = f"{row['records_per_s']:10.0f}" if row["records_per_s"] else f"{'-':>10s}"
        print(
            f"{name:22s} {med:9.1f} {min(s):9.1f} {max(s):9.1f} {row['slowdown_pct']:8.1f}% "
            f"{row['slowdown_best_pct']:7.1f}% {row['step_ms_median']:8.3f} {row['slowdown_step_pct']:7.1f}% {rec}"
        )
    if a.json:
        a.json.write_text(json.dumps({"steps": a.steps, "reps": a.reps, "cpus": a.cpus, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
