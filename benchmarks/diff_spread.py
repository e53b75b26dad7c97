"""How much of the baseline -> bridge step gap `cctrace diff` explains, over every pair of repeated runs.

`sample_traces/record.sh` (with REPS=N) records each sample N times, interleaved, and keeps the runs
under OUTDIR/runs/NAME.REP. A diff of one baseline run against one bridge run also holds the host's
run-to-run variance; this prints the explained share of the mean and of the median step's gap for all
N x N pairs, and its spread, so that the one committed pair can be set against the distribution.
Runs on any machine (the traces are loaded here).

    python benchmarks/diff_spread.py OUTDIR/runs [--base serve-baseline] [--trace serve-bridge]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cctrace.analyze.analysis import diff, report  # noqa: E402
from cctrace.analyze.store import load  # noqa: E402


def _runs(runs: Path, name: str) -> list[Path]:
    found = sorted(runs.glob(f"{name}.*"), key=lambda p: p.suffix)
    found = [p for p in found if p.is_dir()]
    if not found:
        sys.exit(f"no runs named {name}.N under {runs}")
    return found


def _quartiles(xs: list[float]) -> str:
    q = statistics.quantiles(xs, n=4) if len(xs) > 1 else [xs[0]] * 3
    return f"median {q[1]:.1f}%  p25..p75 {q[0]:.1f}..{q[2]:.1f}%  min..max {min(xs):.1f}..{max(xs):.1f}%"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", type=Path, help="the runs/ folder record.sh leaves")
    ap.add_argument("--base", default="serve-baseline")
    ap.add_argument("--trace", default="serve-bridge")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    bases, traces = _runs(a.runs, a.base), _runs(a.runs, a.trace)
    for d in (*bases, *traces):
        if not (d / "trace.duckdb").exists():
            load(d)
    reports = {t: report(t) for t in traces}
    rows = []
    for b in bases:
        for t in traces:
            d = diff(b, t, trace_report=reports[t])
            explained = sum(r["delta_ms_per_step"] for r in d["categories"])
            rows.append(
                {
                    "base": b.name,
                    "trace": t.name,
                    "gap_ms": d["gap_ms_per_step"],
                    "gap_median_ms": d["gap_median_ms_per_step"],
                    "explained_ms": round(explained, 4),
                    "share_of_mean_gap_pct": round(100 * explained / d["gap_ms_per_step"], 1),
                    "share_of_median_gap_pct": round(100 * explained / d["gap_median_ms_per_step"], 1),
                    "share_of_injected_pct": round(100 * explained / d["bridge_injected_ms_per_step"], 1)
                    if d.get("bridge_injected_ms_per_step")
                    else None,
                }
            )
    if a.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"{'base':<22}{'trace':<22}{'gap ms':>8}{'median gap':>11}{'explained':>10}{'% mean':>8}{'% median':>9}")
    for r in rows:
        print(
            f"{r['base']:<22}{r['trace']:<22}{r['gap_ms']:>8.3f}{r['gap_median_ms']:>11.3f}"
            f"{r['explained_ms']:>10.3f}{r['share_of_mean_gap_pct']:>8.1f}{r['share_of_median_gap_pct']:>9.1f}"
        )
    n = len(rows)
    print(
        f"\n{n} pairs; share of the mean step's gap explained: {_quartiles([r['share_of_mean_gap_pct'] for r in rows])}"
    )
    print(
        f"{n} pairs; share of the median step's gap explained: {_quartiles([r['share_of_median_gap_pct'] for r in rows])}"
    )
    print(f"pairs at or above 90% of the mean gap: {sum(r['share_of_mean_gap_pct'] >= 90 for r in rows)} of {n}")
    inj = [r["share_of_injected_pct"] for r in rows if r["share_of_injected_pct"] is not None]
    if inj:
        print(f"share of the injected toll explained: {_quartiles(inj)}")


if __name__ == "__main__":
    main()
