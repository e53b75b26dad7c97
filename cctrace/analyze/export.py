"""Exports: Perfetto (Chrome trace-event JSON, or Perfetto's native protobuf TracePacket stream), and
one Parquet file per table.

Both Perfetto formats are written from one stream of events read from DuckDB in chunks (bounded memory
on large traces): host threads' API calls (with their Python call site, when stacks were recorded) and
every GPU stream's copies/kernels as slices, a flow arrow from each call to the GPU work it issued (same
process and correlation id), NVTX ranges, and counter tracks for bytes in flight per direction. `--steps`/`--window` select by the analysis's own steps and
window (cctrace.analyze.span).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

from cctrace.analyze import perfetto_proto as PP
from cctrace.analyze.store import connect
from cctrace.trace import schema as S
from cctrace.trace.safefs import open_output

STREAM_TID_BASE = 1_000_000_000  # GPU streams become pseudo-threads above every real tid (JSON)
CHUNK = 50_000
FORMATS = ("perfetto", "perfetto-proto", "parquet")

# one event stream, two writers: ("track", pid, key, name) declares a track before its first use,
# key = ("thread", tid) or ("stream", stream_id); ("slice", pid, key, cat, name, start_ns, end_ns, args,
# flow_out, flow_in) with flow ids (pid, correlation id) or None; ("counter", pid, series, ts_ns, value)


def counter_name(series: str) -> str:
    return f"{series} bytes in flight"


def _events(con, lo: int | None, hi: int | None, counts: dict, progress) -> Iterator[tuple]:
    lo = -(2**63) if lo is None else lo
    hi = 2**63 - 1 if hi is None else hi
    declared: set = set()

    def track(pid: int, key: tuple) -> Iterator[tuple]:
        if (pid, key) not in declared:
            declared.add((pid, key))
            name = f"host thread {key[1]}" if key[0] == "thread" else f"GPU stream {key[1]}"
            yield ("track", pid, key, name)

    # host API calls; a flow starts at every call that issued GPU work
    cur = con.execute(
        """SELECT a.pid, a.tid, a.name, a.start_ns, a.end_ns, a.correlation_id, a.bytes, a.off_cpu_ns, a.source,
                  EXISTS (SELECT 1 FROM copies c WHERE c.pid = a.pid AND c.correlation_id = a.correlation_id)
                  OR EXISTS (SELECT 1 FROM kernels k WHERE k.pid = a.pid AND k.correlation_id = a.correlation_id),
                  a.stack_id, s.file || ':' || s.line || ' ' || s.function
           FROM api_calls a
           LEFT JOIN stacks s ON s.pid = a.pid AND s.stack_id = a.stack_id AND s.is_callsite
           WHERE a.start_ns >= ? AND a.start_ns <= ? ORDER BY a.start_ns""",
        [lo, hi],
    )
    while rows := cur.fetchmany(CHUNK):
        for pid, tid, name, s, e, corr, nbytes, off, source, issued, stack_id, callsite in rows:
            args = {"correlation_id": corr, "source": source}
            if callsite is not None:  # the Python line that made the call (`stacks` has the whole stack)
                args["callsite"] = callsite
                args["stack_id"] = stack_id
            if nbytes is not None:
                args["bytes"] = nbytes
            if off is not None:
                args["off_cpu_us"] = off / 1e3
            flow = (pid, corr) if issued and corr and corr > 0 and source != "ebpf" else None
            yield from track(pid, ("thread", tid))
            yield ("slice", pid, ("thread", tid), "api", name, s, e, args, flow, None)
            counts["api_slices"] += 1
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
                 UNION ALL SELECT pid, stream_id, name, start_ns, end_ns, correlation_id, NULL, NULL, 'kernel'
                 FROM kernels)
           WHERE start_ns >= ? AND start_ns <= ? ORDER BY start_ns""",
        [lo, hi],
    )
    in_flight: dict[str, int] = {}
    pending_ends: list[tuple[int, str, int, int]] = []
    while rows := cur.fetchmany(CHUNK):
        for pid, stream, name, s, e, corr, nbytes, kind, what in rows:
            key = ("stream", stream if stream is not None else 0)
            flow = (pid, corr) if corr and (pid, corr) in issued else None
            yield from track(pid, key)
            yield ("slice", pid, key, what, name, s, e, {"correlation_id": corr, "bytes": nbytes}, None, flow)
            counts["gpu_slices"] += 1
            counts["flows"] += flow is not None
            if what == "copy" and kind in ("HtoD", "DtoH") and nbytes:
                pending_ends.append((e, kind, nbytes, pid))
                pending_ends.sort()
                while pending_ends and pending_ends[0][0] <= s:
                    t, k, b, p = pending_ends.pop(0)
                    in_flight[k] = in_flight.get(k, 0) - b
                    yield ("counter", p, k, t, in_flight[k])
                in_flight[kind] = in_flight.get(kind, 0) + nbytes
                yield ("counter", pid, kind, s, in_flight[kind])
                counts["counters"] += 1
        if progress:
            progress(f"{counts['gpu_slices']:,} GPU slices")
    for t, k, b, p in pending_ends:
        in_flight[k] = in_flight.get(k, 0) - b
        yield ("counter", p, k, t, in_flight[k])
    for pid, tid, name, s, e in con.execute(
        "SELECT pid, tid, name, start_ns, end_ns FROM markers WHERE start_ns >= ? AND start_ns <= ? ORDER BY start_ns",
        [lo, hi],
    ).fetchall():
        yield from track(pid, ("thread", tid))
        yield ("slice", pid, ("thread", tid), "nvtx", name, s, e, {}, None, None)
        counts["markers"] += 1


class ExportError(Exception):
    """The export cannot be written; the message says why."""


def _open_out(path: Path, binary: bool):
    """The output file, created or truncated; a symbolic link, FIFO or device there is refused."""
    try:
        return open_output(path, binary)
    except OSError as e:
        raise ExportError(str(e)) from None


def _flow_id(flow: tuple[int, int]) -> str:
    return f"{flow[0]}:{flow[1]}"


def _write_json(f, events: Iterator[tuple]) -> None:
    f.write('{"displayTimeUnit": "ns", "traceEvents": [\n')
    first = True

    def put(ev: dict) -> None:
        nonlocal first
        f.write(("" if first else ",\n") + json.dumps(ev, separators=(",", ":")))
        first = False

    def tid(key: tuple) -> int:
        return key[1] if key[0] == "thread" else STREAM_TID_BASE + key[1]

    for ev in events:
        if ev[0] == "track":
            _, pid, key, name = ev
            put({"ph": "M", "name": "thread_name", "pid": pid, "tid": tid(key), "args": {"name": name}})
        elif ev[0] == "slice":
            _, pid, key, cat, name, s, e, args, flow_out, flow_in = ev
            sl = {"ph": "X", "name": name, "cat": cat, "pid": pid, "tid": tid(key), "ts": s / 1e3}
            sl["dur"] = max(e - s, 1) / 1e3
            if args:
                sl["args"] = args
            put(sl)
            for ph, flow in (("s", flow_out), ("f", flow_in)):
                if flow:
                    fe = {"ph": ph, "name": "issue", "cat": "flow", "id": _flow_id(flow), "pid": pid}
                    fe |= {"tid": tid(key), "ts": s / 1e3} | ({"bp": "e"} if ph == "f" else {})
                    put(fe)
        else:
            _, pid, series, ts, value = ev
            put({"ph": "C", "name": counter_name(series), "pid": pid, "ts": ts / 1e3, "args": {series: value}})
    f.write("\n]}\n")


def _write_proto(f, events: Iterator[tuple]) -> None:
    """The same events as Perfetto's TracePacket stream: a track per process, host thread, GPU stream and
    counter; slices as begin/end pairs; flow ids (pid << 32 | correlation id) from a call to its GPU work."""
    uuids: dict[tuple, int] = {}
    first = True

    def put(body: bytes) -> None:
        nonlocal first
        f.write(PP.packet(body, first))
        first = False

    def process(pid: int) -> int:
        if ("process", pid) not in uuids:
            uuids["process", pid] = len(uuids) + 1
            put(PP.process_track(uuids["process", pid], pid, f"process {pid}"))
        return uuids["process", pid]

    def flow(ids: tuple[int, int] | None) -> int | None:
        return None if ids is None else (ids[0] << 32) | (ids[1] & 0xFFFFFFFF)

    for ev in events:
        if ev[0] == "track":
            _, pid, key, name = ev
            parent = process(pid)
            u = uuids[key, pid] = len(uuids) + 1
            if key[0] == "thread":
                put(PP.thread_track(u, parent, pid, key[1], name))
            else:
                put(PP.named_track(u, parent, name))
        elif ev[0] == "slice":
            _, pid, key, cat, name, s, e, args, flow_out, flow_in = ev
            track = uuids[key, pid]
            put(PP.slice_begin(s, track, name, cat, args, flow(flow_out), flow(flow_in)))
            put(PP.slice_end(max(e, s + 1), track))
        else:
            _, pid, series, ts, value = ev
            if ("counter", pid, series) not in uuids:
                parent = process(pid)
                uuids["counter", pid, series] = len(uuids) + 1
                put(PP.named_track(uuids["counter", pid, series], parent, counter_name(series), counter=True))
            put(PP.counter(ts, uuids["counter", pid, series], value))


def export_perfetto(
    trace: Path,
    out: Path,
    bounds: tuple[int, int] | None = None,
    fmt: str = "perfetto",
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Write TRACE (the events starting within `bounds` ns, else all) as Perfetto JSON or protobuf."""
    counts = {"api_slices": 0, "gpu_slices": 0, "flows": 0, "counters": 0, "markers": 0}
    con = connect(trace)
    try:
        lo, hi = bounds if bounds else (None, None)
        events = _events(con, lo, hi, counts, progress)
        with _open_out(out, binary=fmt == "perfetto-proto") as f:
            if fmt == "perfetto-proto":
                _write_proto(f, events)
            else:
                _write_json(f, events)
    finally:
        con.close()
    return counts


def export_parquet(trace: Path, out_dir: Path) -> dict[str, int]:
    """One Parquet file per table, streamed from DuckDB in record batches and written by pyarrow
    (the connection has no file access: no path ever reaches SQL)."""
    import pyarrow.parquet as pq

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    con = connect(trace)
    rows = {}
    for table in S.TABLES:
        names = S.schema(table).names
        # in time order: the loader does not keep the shards' row order
        order = next((f" ORDER BY {c}" for c in ("start_ns", "ts_ns") if c in names), "")
        rel = con.sql(f'SELECT * FROM "{table}"{order}')  # names from the schema module
        # a relation streams its batches (a cursor's reader copies every row first)
        reader = rel.to_arrow_reader(CHUNK) if hasattr(rel, "to_arrow_reader") else rel.record_batch(CHUNK)
        n = 0
        with _open_out(out_dir / f"{table}.parquet", binary=True) as f, pq.ParquetWriter(f, reader.schema) as w:
            for batch in reader:
                w.write_batch(batch)
                n += batch.num_rows
        rows[table] = n
    con.close()
    return rows
