"""What the third-party workloads share: the fence copy that bounds the window their counts are exact
for, their command-line options, and the one-line JSON summary they print.

Each workload issues one pageable H2D copy of exactly FENCE_BYTES bytes right before its measured loop
and one right after it (both completed before the loop starts / after it ends). The copies a workload
lists under `window` are the ones whose GPU start lies strictly between those two fences: a trace can
be checked against them exactly with only pyarrow, whatever the framework copied before (weights,
compilation constants, prefill) or after.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

FENCE_BYTES = 7919  # a prime: no framework copy in these workloads has this size
TAG = "WORKLOAD_SUMMARY"
# workload -> (the module it needs, extra args of the plain run: what counts what it issued)
WORKLOADS = {
    "hf_generate": ("transformers", ["--count-copies"]),
    "jax_loop": ("jax", []),
    "cupy_loop": ("cupy", []),
    "graph_replay": ("torch", []),
}
# the keys of a summary's `window` (and of window_counts) that a recording must match exactly
KEYS = ("h2d", "d2h", "h2d_bytes", "d2h_bytes")


def parser(doc: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("--json", action="store_true", help=f"print the summary as one JSON line prefixed '{TAG} '")
    return p


class Timer:
    """Per-iteration wall times (the median step time a diff is checked against)."""

    def __init__(self) -> None:
        self.ends: list[int] = []
        self.t0 = time.perf_counter_ns()

    def tick(self) -> None:
        self.ends.append(time.perf_counter_ns())

    def summary(self) -> dict:
        starts = [self.t0, *self.ends[:-1]]
        d = sorted(b - a for a, b in zip(starts, self.ends, strict=True))
        if not d:
            return {"seconds": 0.0}
        return {
            "seconds": (self.ends[-1] - self.t0) / 1e9,
            "step_ms_median": statistics.median(d) / 1e6,
            "step_ms_p10": d[int(len(d) * 0.1)] / 1e6,
            "step_ms_p90": d[int(len(d) * 0.9)] / 1e6,
        }


def window(per_iteration: list[dict], iterations: int) -> dict:
    """Totals over the window from the copies one iteration issues ({direction, bytes, memory} each)."""
    out = dict.fromkeys(KEYS, 0)
    for c in per_iteration:
        out[c["direction"]] += iterations
        out[c["direction"] + "_bytes"] += iterations * c["bytes"]
    return out


def report(
    args: argparse.Namespace,
    workload: str,
    per: list[dict],
    iterations: int,
    iterations_total: int,
    timer: Timer,
    per_iteration: dict,
    **extra: object,
) -> dict:
    """A fenced loop's summary (its copies per iteration, the window they add up to, its step times), printed."""
    summary = {
        "workload": workload,
        "params": vars(args) | {"json": None},
        "iterations": iterations,
        "iterations_total": iterations_total,
        "per_iteration": {"copies": per, **per_iteration},
        **extra,
        "window": window(per, iterations),
        "window_exact": True,
        **timer.summary(),
    }
    emit(args, summary)
    return summary


def emit(args: argparse.Namespace, summary: dict) -> None:
    summary["fence_bytes"] = FENCE_BYTES
    if args.json:
        print(TAG + " " + json.dumps(summary, sort_keys=True), flush=True)
    else:
        w = summary["window"]
        print(
            f"{summary['workload']}: {summary['iterations']} iterations, window H2D {w['h2d']} ({w['h2d_bytes']} B),"
            f" D2H {w['d2h']} ({w['d2h_bytes']} B), {summary.get('seconds', 0):.2f} s",
            flush=True,
        )


def parse_summary(stdout: str) -> dict | None:
    """The summary a workload printed with --json (its last TAG line), or None when it printed none."""
    lines = [ln for ln in stdout.splitlines() if ln.startswith(TAG + " ")]
    return json.loads(lines[-1].split(" ", 1)[1]) if lines else None


def _rows(trace_dir, table: str) -> list[dict]:
    from pathlib import Path

    from cctrace.trace.shards import read_shard

    return [r for f in sorted(Path(trace_dir).glob(f"{table}.*.arrows")) for r in read_shard(f).data.to_pylist()]


def _fences(copies: list[dict]) -> list[int]:
    return sorted(r["start_ns"] for r in copies if r["copy_kind"] == "HtoD" and r["bytes"] == FENCE_BYTES)


def window_counts(trace_dir) -> dict:
    """The H2D/D2H copies a recorded trace holds strictly between a workload's two fence copies, read
    from the copies shards with pyarrow only (the GPU machine has no duckdb): the same keys as a
    summary's `window`, plus `by_size` ([direction, bytes, count] rows) and `fences` (how many found)."""
    rows = _rows(trace_dir, "copies")
    memcpy = [r for r in rows if r["op"] == "memcpy" and r["copy_kind"] in ("HtoD", "DtoH")]
    fences = _fences(memcpy)
    out = {"h2d": 0, "d2h": 0, "h2d_bytes": 0, "d2h_bytes": 0, "fences": len(fences), "by_size": []}
    if len(fences) < 2:
        return out
    sizes: dict[tuple[str, int], int] = {}
    for r in memcpy:
        if fences[0] < r["start_ns"] < fences[-1]:
            d = "h2d" if r["copy_kind"] == "HtoD" else "d2h"
            out[d] += 1
            out[d + "_bytes"] += r["bytes"]
            sizes[(d, r["bytes"])] = sizes.get((d, r["bytes"]), 0) + 1
    out["by_size"] = sorted([d, n, k] for (d, n), k in sizes.items())
    return out


def window_calls(trace_dir) -> list[list]:
    """The recorded API calls that start between the fences, as [source, domain, name, calls, threads]
    rows (most calls first): which calls a framework makes per iteration, what a step detector can
    see, read with pyarrow only. Empty without both fences."""
    fences = _fences([r for r in _rows(trace_dir, "copies") if r["op"] == "memcpy"])
    if len(fences) < 2:
        return []
    calls: dict[tuple[str, str, str], tuple[int, set]] = {}
    for r in _rows(trace_dir, "api_calls"):
        if fences[0] < r["start_ns"] < fences[-1]:
            n, tids = calls.get((r["source"], r["domain"], r["name"]), (0, set()))
            calls[(r["source"], r["domain"], r["name"])] = (n + 1, tids | {r["tid"]})
    return sorted(([*k, n, len(t)] for k, (n, t) in calls.items()), key=lambda r: (-r[3], r[:3]))
