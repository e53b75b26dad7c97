"""Analysis at scale: generate traces of N events, time `load` and the full `report`, print events/s.

Each generated step has the serve.py pattern: 5 small H2D copies and a D2H readback (with their
runtime calls), a stream sync, 6 kernels and an NVTX range: 20 events per step, all written through
the real shard writer. Each size is generated in one process, loaded in a fresh one (as `cctrace load`) and
reported in another fresh one (as `cctrace report` on a loaded trace), so each max RSS printed is that step's alone.
With --repeat N each load and report runs N times (each in a fresh process, load rebuilding the DuckDB
file): the median is printed with the min-max range, since one run on a shared VM moves by about 10%.

    python benchmarks/analysis_scale.py --events 1e6 1e7 3e7 --repeat 3
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cctrace.trace import schema as S  # noqa: E402
from cctrace.trace.shards import ShardWriter  # noqa: E402

EVENTS_PER_STEP = 20
CHUNK_STEPS = 50_000


def generate(out: Path, events: int) -> int:
    steps = max(1, events // EVENTS_PER_STEP)
    w = ShardWriter(out, 1)
    rng = np.random.default_rng(0)
    step_ns = 700_000
    for s0 in range(0, steps, CHUNK_STEPS):
        n = min(CHUNK_STEPS, steps - s0)
        base = 1_000_000_000 + (np.arange(s0, s0 + n, dtype=np.int64) * step_ns)
        # 6 copies per step: 5 H2D then one D2H readback
        k = np.tile(np.arange(6), n)
        t = np.repeat(base, 6) + k * 60_000
        api_dur = np.where(k == 5, 40_000, 6_000) + rng.integers(0, 2000, 6 * n)
        cdur = 2_000 + rng.integers(0, 500, 6 * n)
        corr = np.arange(6 * n, dtype=np.int64) + s0 * 10
        kind = np.where(k == 5, "DtoH", "HtoD")
        src = np.where(k == 5, "device", np.where(k % 2 == 0, "pageable", "pinned"))
        dst = np.where(k == 5, "pageable", "device")
        nbytes = np.where(k == 2, 4096, 128)
        w.add_batch(
            "copies",
            S.rows_to_batch(
                "copies",
                {
                    "pid": np.ones(6 * n, np.int64),
                    "op": np.full(6 * n, "memcpy"),
                    "copy_kind": kind,
                    "src_kind": src,
                    "dst_kind": dst,
                    "bytes": nbytes,
                    "start_ns": t + 2_000,
                    "end_ns": t + 2_000 + cdur,
                    "stream_id": np.full(6 * n, 7),
                    "correlation_id": corr,
                    "source": np.full(6 * n, "cupti"),
                },
            ),
        )
        sync_t = np.repeat(base, 1) + 400_000
        w.add_batch(
            "api_calls",
            S.rows_to_batch(
                "api_calls",
                {
                    "pid": np.ones(7 * n, np.int64),
                    "tid": np.full(7 * n, 2),
                    "name": np.concatenate([np.full(6 * n, "cudaMemcpyAsync"), np.full(n, "cudaStreamSynchronize")]),
                    "domain": np.full(7 * n, "runtime"),
                    "start_ns": np.concatenate([t, sync_t]),
                    "end_ns": np.concatenate([t + api_dur, sync_t + 20_000]),
                    "correlation_id": np.concatenate([corr, -np.arange(n, dtype=np.int64) - 1]),
                    "source": np.full(7 * n, "cupti"),
                },
            ),
        )
        kt = np.repeat(base, 6) + 420_000 + np.tile(np.arange(6), n) * 40_000
        w.add_batch(
            "kernels",
            S.rows_to_batch(
                "kernels",
                {
                    "pid": np.ones(6 * n, np.int64),
                    "name": np.full(6 * n, "gemm"),
                    "start_ns": kt,
                    "end_ns": kt + 35_000,
                    "stream_id": np.full(6 * n, 7),
                    "source": np.full(6 * n, "cupti"),
                },
            ),
        )
        w.add_batch(
            "markers",
            S.rows_to_batch(
                "markers",
                {
                    "pid": np.ones(n, np.int64),
                    "tid": np.full(n, 2),
                    "name": [f"step {i}" for i in range(s0, s0 + n)],
                    "start_ns": base,
                    "end_ns": base + step_ns - 1,
                    "source": np.full(n, "nvtx"),
                },
            ),
        )
        w.flush()
    w.close()
    (out / "manifest.json").write_text(json.dumps({"command": ["analysis_scale"], "processes": []}))
    return steps * EVENTS_PER_STEP


def measure(d: Path, step: str) -> dict:
    """`load` or `report` of a generated trace in this (fresh) process: its time and max RSS. Modules are
    imported before the clock starts (duckdb's import is ~0.06 s, a fixed cost, not throughput)."""
    import duckdb  # noqa: F401

    from cctrace.analyze.analysis import report
    from cctrace.analyze.store import load

    t0 = time.perf_counter()
    r = load(d) if step == "load" else report(d)
    seconds = time.perf_counter() - t0
    out = {"seconds": round(seconds, 2), "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}
    if step == "report":
        out["steps"] = r["steps"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=float, nargs="+", default=[1e6, 1e7, 3e7])
    ap.add_argument("--repeat", type=int, default=1, help="runs of each load and report (fresh processes)")
    ap.add_argument("--gen", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--measure", nargs=2, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.gen:
        print(generate(Path(a.gen[0]), int(float(a.gen[1]))))
        return
    if a.measure:
        print(json.dumps(measure(Path(a.measure[0]), a.measure[1])))
        return
    print(
        f"{'events':>12s} {'load s':>18s} {'events/s':>12s} {'load RSS MB':>12s} {'report s':>18s} {'report RSS MB':>14s}"
    )
    for n in a.events:
        with tempfile.TemporaryDirectory() as tmp:
            d = Path(tmp) / "t"
            g = subprocess.run([sys.executable, __file__, "--gen", str(d), str(n)], capture_output=True, text=True)
            events = int(g.stdout.strip())
            m: dict[str, list[dict]] = {"load": [], "report": []}
            for _ in range(a.repeat):
                for step in ("load", "report"):
                    r = subprocess.run(
                        [sys.executable, __file__, "--measure", str(d), step], capture_output=True, text=True
                    )
                    if r.returncode != 0:
                        sys.exit(f"{events:,d} events: {step} failed: {r.stderr[-800:]}")
                    m[step].append(json.loads(r.stdout.strip().splitlines()[-1]))
        ld, rp = ([x["seconds"] for x in m[k]] for k in ("load", "report"))
        print(
            f"{events:>12,d} {_spread(ld):>18s} {round(events / statistics.median(ld)):>12,d} "
            f"{max(x['max_rss_mb'] for x in m['load']):>12,d} {_spread(rp):>18s} "
            f"{max(x['max_rss_mb'] for x in m['report']):>14,d}",
            flush=True,
        )


def _spread(xs: list[float]) -> str:
    """median, and the min-max range when there is more than one run"""
    med = statistics.median(xs)
    return f"{med:.2f}" if len(xs) == 1 else f"{med:.2f} ({min(xs):.2f}-{max(xs):.2f})"


if __name__ == "__main__":
    main()
