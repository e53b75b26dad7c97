"""Exports: Chrome/Perfetto trace-event JSON, and one Parquet file per table.

The Perfetto export streams rows from DuckDB in chunks (bounded memory on large traces): host threads'
API calls and every GPU stream's copies/kernels as slices, a flow arrow from each call to the GPU work
it issued (same process and correlation id), and counter tracks for bytes in flight per direction.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from cctrace.analyze.store import connect
from cctrace.trace import schema as S

STREAM_TID_BASE = 1_000_000_000  # GPU streams become pseudo-threads above every real tid
CHUNK = 50_000


def _window_sql(con, window: tuple[float, float] | None, steps: tuple[int, int] | None) -> tuple[int, int]:
    lo, hi = con.execute("""SELECT min(t), max(t) FROM (SELECT start_ns AS t FROM api_calls UNION ALL
                            SELECT end_ns FROM api_calls UNION ALL SELECT start_ns FROM copies UNION ALL
                            SELECT end_ns FROM copies UNION ALL SELECT start_ns FROM kernels UNION ALL
                            SELECT end_ns FROM kernels)""").fetchall()[0]
    lo, hi = lo or 0, hi or 0
    if steps:
        rows = con.execute("""SELECT start_ns, end_ns FROM markers WHERE name LIKE 'step%'
                              ORDER BY start_ns""").fetchall()
        sel = rows[steps[0] : steps[1] + 1]
        if sel:
            lo, hi = sel[0][0], sel[-1][1]
    if window:
        base = lo
        lo, hi = base + int(window[0] * 1e6), base + int(window[1] * 1e6)
    return lo, hi


def _flow(ph: str, pid: int, tid: int, corr: int, ts_ns: int) -> dict:
    """One end of the arrow from an API call ('s') to the GPU work it issued ('f', bound to its start)."""
    ev = {"ph": ph, "name": "issue", "cat": "flow", "id": f"{pid}:{corr}", "pid": pid, "tid": tid, "ts": ts_ns / 1e3}
    if ph == "f":
        ev["bp"] = "e"
    return ev


def export_perfetto(
    trace: Path,
    out: Path,
    window: tuple[float, float] | None = None,
    steps: tuple[int, int] | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict:
    con = connect(trace)
    lo, hi = _window_sql(con, window, steps)
    counts = {"api_slices": 0, "gpu_slices": 0, "flows": 0, "counters": 0, "markers": 0}
    with open(out, "w") as f:
        f.write('{"displayTimeUnit": "ns", "traceEvents": [\n')
        first = [True]

        def put(ev: dict) -> None:
            f.write(("" if first[0] else ",\n") + json.dumps(ev, separators=(",", ":")))
            first[0] = False

        for pid, tid in con.execute("SELECT DISTINCT pid, tid FROM api_calls ORDER BY 1, 2").fetchall():
            put({"ph": "M", "name": "thread_name", "pid": pid, "tid": tid, "args": {"name": f"host thread {tid}"}})
        for pid, stream in con.execute("""SELECT DISTINCT pid, stream_id FROM (SELECT pid, stream_id FROM copies
                                          UNION SELECT pid, stream_id FROM kernels) WHERE stream_id IS NOT NULL
                                          ORDER BY 1, 2""").fetchall():
            put(
                {
                    "ph": "M",
                    "name": "thread_name",
                    "pid": pid,
                    "tid": STREAM_TID_BASE + stream,
                    "args": {"name": f"GPU stream {stream}"},
                }
            )
        # host API calls; a flow starts at every call that issued GPU work
        cur = con.execute(
            """SELECT a.pid, a.tid, a.name, a.start_ns, a.end_ns, a.correlation_id, a.bytes,
                                    a.off_cpu_ns, a.source,
                                    EXISTS (SELECT 1 FROM copies c WHERE c.pid = a.pid AND c.correlation_id = a.correlation_id)
                                    OR EXISTS (SELECT 1 FROM kernels k WHERE k.pid = a.pid AND k.correlation_id = a.correlation_id)
                             FROM api_calls a WHERE a.start_ns >= ? AND a.start_ns <= ? ORDER BY a.start_ns""",
            [lo, hi],
        )
        while rows := cur.fetchmany(CHUNK):
            for pid, tid, name, s, e, corr, nbytes, off, source, issued in rows:
                args = {"correlation_id": corr, "source": source}
                if nbytes is not None:
                    args["bytes"] = nbytes
                if off is not None:
                    args["off_cpu_us"] = off / 1e3
                put(
                    {
                        "ph": "X",
                        "name": name,
                        "cat": "api",
                        "pid": pid,
                        "tid": tid,
                        "ts": s / 1e3,
                        "dur": max(e - s, 1) / 1e3,
                        "args": args,
                    }
                )
                counts["api_slices"] += 1
                if issued and corr and corr > 0 and source != "ebpf":
                    put(_flow("s", pid, tid, corr, s))
            if progress:
                progress(f"{counts['api_slices']:,} API slices")
        # GPU work on stream tracks, each the end of its call's flow; bytes in flight as counters
        issued = {
            (p, c)
            for p, c in con.execute(
                """SELECT DISTINCT pid, correlation_id FROM api_calls WHERE source <> 'ebpf' AND correlation_id > 0
               AND start_ns >= ? AND start_ns <= ?""",
                [lo, hi],
            ).fetchall()
        }
        cur = con.execute(
            """SELECT pid, stream_id, name, start_ns, end_ns, correlation_id, bytes, copy_kind, kind
                             FROM (SELECT pid, stream_id, op || ' ' || copy_kind AS name, start_ns, end_ns,
                                          correlation_id, bytes, copy_kind, 'copy' AS kind FROM copies
                                   UNION ALL SELECT pid, stream_id, name, start_ns, end_ns, correlation_id,
                                          NULL, NULL, 'kernel' FROM kernels)
                             WHERE start_ns >= ? AND start_ns <= ? ORDER BY start_ns""",
            [lo, hi],
        )
        in_flight: dict[str, int] = {}
        pending_ends: list[tuple[int, str, int, int]] = []
        while rows := cur.fetchmany(CHUNK):
            for pid, stream, name, s, e, corr, nbytes, kind, what in rows:
                tid = STREAM_TID_BASE + (stream if stream is not None else 0)
                put(
                    {
                        "ph": "X",
                        "name": name,
                        "cat": what,
                        "pid": pid,
                        "tid": tid,
                        "ts": s / 1e3,
                        "dur": max(e - s, 1) / 1e3,
                        "args": {"correlation_id": corr, "bytes": nbytes},
                    }
                )
                counts["gpu_slices"] += 1
                if corr and (pid, corr) in issued:
                    put(_flow("f", pid, tid, corr, s))
                    counts["flows"] += 1
                if what == "copy" and kind in ("HtoD", "DtoH") and nbytes:
                    pending_ends.append((e, kind, nbytes, pid))
                    pending_ends.sort()
                    while pending_ends and pending_ends[0][0] <= s:
                        t, k, b, p = pending_ends.pop(0)
                        in_flight[k] = in_flight.get(k, 0) - b
                        put(
                            {
                                "ph": "C",
                                "name": f"{k} bytes in flight",
                                "pid": p,
                                "ts": t / 1e3,
                                "args": {k: in_flight[k]},
                            }
                        )
                    in_flight[kind] = in_flight.get(kind, 0) + nbytes
                    put(
                        {
                            "ph": "C",
                            "name": f"{kind} bytes in flight",
                            "pid": pid,
                            "ts": s / 1e3,
                            "args": {kind: in_flight[kind]},
                        }
                    )
                    counts["counters"] += 1
            if progress:
                progress(f"{counts['gpu_slices']:,} GPU slices")
        for t, k, b, p in pending_ends:
            in_flight[k] = in_flight.get(k, 0) - b
            put({"ph": "C", "name": f"{k} bytes in flight", "pid": p, "ts": t / 1e3, "args": {k: in_flight[k]}})
        for pid, tid, name, s, e in con.execute(
            """SELECT pid, tid, name, start_ns, end_ns FROM markers
                                                  WHERE start_ns >= ? AND start_ns <= ?""",
            [lo, hi],
        ).fetchall():
            put(
                {
                    "ph": "X",
                    "name": name,
                    "cat": "nvtx",
                    "pid": pid,
                    "tid": tid,
                    "ts": s / 1e3,
                    "dur": max(e - s, 1) / 1e3,
                }
            )
            counts["markers"] += 1
        f.write("\n]}\n")
    con.close()
    return counts


def export_parquet(trace: Path, out_dir: Path) -> dict[str, int]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    con = connect(trace)
    rows = {}
    for table in S.TABLES:
        path = out_dir / f"{table}.parquet"
        names = S.schema(table).names
        # in time order: the loader does not keep the shards' row order
        order = next((f" ORDER BY {c}" for c in ("start_ns", "ts_ns") if c in names), "")
        con.execute(
            f"COPY (SELECT * FROM \"{table}\"{order}) TO '{path}' (FORMAT parquet)"
        )  # names from the schema module
        rows[table] = con.execute(f'SELECT count(*) FROM "{table}"').fetchall()[0][0]
    con.close()
    return rows
