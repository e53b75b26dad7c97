"""The views at scale: on a generated trace of N events (analysis_scale's serve.py-like steps), time the
explorer's timeline query (whole window and one step, as many cells as a 200-column terminal has), both
Perfetto exports (seconds and bytes) and the `report --html` page (report included).

    python benchmarks/views_scale.py --events 1e6
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.analysis_scale import generate  # noqa: E402


def _timed(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=float, nargs="+", default=[1e6])
    ap.add_argument("--cells", type=int, default=186, help="timeline cells (a 200-column terminal has 186)")
    a = ap.parse_args()
    from cctrace.analyze.analysis import Analysis
    from cctrace.analyze.export import export_perfetto
    from cctrace.analyze.span import analysis_window, step_range
    from cctrace.analyze.store import load
    from cctrace.ui.timeline import busy_rows

    print(
        f"{'events':>12s} {'timeline whole s':>17s} {'timeline step s':>16s} {'json s':>8s} {'json MB':>8s} "
        f"{'proto s':>8s} {'proto MB':>9s} {'html s':>7s}"
    )
    for n in a.events:
        with tempfile.TemporaryDirectory() as tmp:
            d = Path(tmp) / "t"
            events = generate(d, int(n))
            load(d)
            an = Analysis(d)
            w = analysis_window(an.con)
            whole, _ = _timed(lambda w=w, an=an: busy_rows(an.con, w.start_ns, w.end_ns, a.cells))
            lo, hi = step_range(an.con, max(w.steps // 2, 1))
            one, _ = _timed(lambda lo=lo, hi=hi, an=an: busy_rows(an.con, lo, hi, a.cells))
            an.close()
            js, _ = _timed(lambda d=d: export_perfetto(d, d / "t.json", fmt="perfetto"))
            pb, _ = _timed(lambda d=d: export_perfetto(d, d / "t.pftrace", fmt="perfetto-proto"))
            cmd = [sys.executable, "-m", "cctrace", "report", str(d), "--html", str(d / "r.html")]
            html, r = _timed(lambda cmd=cmd: subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT))
            if r.returncode != 0:
                sys.exit(f"report --html failed: {r.stderr[-500:]}")
            mb = [(d / f).stat().st_size / 1e6 for f in ("t.json", "t.pftrace")]
            print(
                f"{events:>12,d} {whole:>17.2f} {one:>16.3f} {js:>8.2f} {mb[0]:>8.1f} {pb:>8.2f} {mb[1]:>9.1f} {html:>7.2f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
