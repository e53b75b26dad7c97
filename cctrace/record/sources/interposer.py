"""The driver interposer's raw files (`interpose.<pid>.ipraw`, written by native/interpose.c) -> shards.

The file describes itself: its JSON header block gives the record layout (so the numpy dtype is built
from it, not restated here) and the name tables (functions, ops, copy/memory/sync kinds), and the last
counters block says how many records were taken and lost. Rows are the CUPTI path's tables marked
`source = 'interposer'`: every call in `api_calls` (driver domain, with bytes, copy kind, stream and
pointer), copies and memsets that moved data in `copies` (host call times: the interposer sees no GPU
clock; stream_id is the CUstream handle), allocations and frees in `allocs`, syncs in `syncs`. A graph
launch is one api_calls row and one `copies` row per crossing it replays, all sharing the launch's
correlation id; copies issued while their stream was being captured move nothing and get no `copies` row.
Python stacks (native/py_stacks.h, switched on by InterposerSource as the CUPTI path's are) arrive as
blocks before the records that name them and become `stacks` rows (source 'interposer', call sites
marked with the patterns the traced process recorded) and api_calls.stack_id; their ids are offset by
STACK_ID_BASE, so they never meet a CUPTI stack of the same process (the tables join on pid, stack_id).
This needs numpy and pyarrow only, so it runs wherever the recording ran.
"""

from __future__ import annotations

import ctypes
import json
import struct
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyarrow as pa

from cctrace.record.native import bind_stacks
from cctrace.record.sources import py_stacks
from cctrace.record.sources.raw_blocks import read_blocks
from cctrace.trace import schema as S
from cctrace.trace.manifest import proc_record_path, read_json, write_json_atomic
from cctrace.trace.shards import ShardWriter

SOURCE = "interposer"
RAW_PATTERN = "interpose.*.ipraw"
REC_MAGIC = 0x3130525049544343  # "CCTIPR01"
HEAD_MAGIC = 0x3130484950544343  # "CCTPIH01"
STAT_MAGIC = 0x3130535049544343  # "CCTIPS01"
NUMPY_TYPES = {"u8": "<u8", "u4": "<u4", "u2": "<u2", "u1": "u1", "i4": "<i4"}
STACK_ID_BASE = 1 << 32  # interposer stack ids as stored: above every id the CUPTI shim writes (u32)
COPY_OPS = {"copy": "memcpy", "memset": "memset", "p2p": "p2p"}  # interposer op -> copies.op
RECORDING_MODES = ("on", "windowed")  # the launcher's modes in which the interposer records the trace
NOT_ARMED = "off: the interposer was not armed (no trace directory at its start)"


class InterposerSource:
    """The tracer's handle on the interposer preloaded into its process: switch it on when it stood by
    and CUPTI is off, write its rings and counters on every exit path (os._exit skips C destructors),
    and report its health in the process record. Recording itself needs no Python."""

    def __init__(self, lib: str, mode: str, stacks: dict | None = None) -> None:
        self.path = lib
        self.mode = mode
        self.status = "off: not started"
        self.lib: ctypes.CDLL | None = None
        self.errors: list[str] = []
        # `stacks`: the tracer's {"on", "skip", "keep"} (--no-stacks, --callsite-skip/--callsite-keep)
        self.stacks = py_stacks.account(stacks, "off: the interposer does not record in this process")

    def start(self, cupti_running: bool) -> None:
        if not _mapped(self.path):
            self.status = "off: not preloaded in this process (LD_PRELOAD was dropped)"
            return
        self.lib = ctypes.CDLL(self.path)  # the preloaded copy: dlopen hands back the same library
        self.lib.cct_ip_stats.argtypes = [ctypes.POINTER(ctypes.c_uint64 * 5)]
        if self.mode in RECORDING_MODES:  # windowed: the library starts off, the window is open now
            armed = self.lib.cct_ip_set(1) == 0
            self.status = "active" if armed else NOT_ARMED
        elif cupti_running:
            self.status = "standby: CUPTI records this process"
        elif self.lib.cct_ip_set(1) == 0:
            self.status = "active: CUPTI is off in this process"
        else:
            self.status = NOT_ARMED
        if self.recording() and self.stacks["state"] != py_stacks.NO_STACKS:
            self.stacks.update(py_stacks.start(bind_stacks(self.lib)))

    def recording(self) -> bool:
        return self.lib is not None and self.status.startswith("active")

    def window(self, on: bool) -> None:
        """A tracing window opened or closed: record inside it, call straight through outside it."""
        if self.recording():
            assert self.lib is not None
            self.lib.cct_ip_set(1 if on else 0)

    def callback_hooks(self) -> tuple[tuple[int, int, int], dict[str, int]]:
        """CUPTI-shaped subscribe/enable/unsubscribe through which a callback user (the bridge
        emulator) acts inside the interposed calls, and the callback id of each call's name."""
        lib = self.lib
        assert lib is not None
        lib.cct_ip_function.restype = ctypes.c_char_p
        lib.cct_ip_function.argtypes = [ctypes.c_int]
        ids: dict[str, int] = {}
        i = 0
        while (name := lib.cct_ip_function(i)) is not None:
            ids.setdefault(name.decode(), i)
            i += 1
        hooks = tuple(ctypes.cast(f, ctypes.c_void_p).value for f in (
            lib.cct_ip_subscribe, lib.cct_ip_enable_callback, lib.cct_ip_unsubscribe))  # fmt: skip
        return hooks, ids  # type: ignore[return-value]

    def drain(self) -> None:
        """The interposer's own thread appends its rings every flush interval: nothing to do here."""

    def stop(self) -> None:
        if self.lib is not None:
            if self.stacks["state"] == "on":  # calls made after this (interpreter teardown) carry none
                self.lib.cct_stacks_enable(0)
            self.lib.cct_ip_flush(1)

    def health(self) -> dict:
        out: dict = {"state": self.status, "mode": self.mode}
        if self.lib is not None:
            stats = (ctypes.c_uint64 * 5)()
            self.lib.cct_ip_stats(ctypes.byref(stats))
            keys = ("records", "lost", "unmatched_symbols", "pointer_queries", "graph_crossings")
            out.update(health_of(dict(zip(keys, map(int, stats), strict=True))))
        out["stacks"] = {**self.stacks, **(py_stacks.stats(self.lib) if self.stacks["state"] == "on" else {})}
        return out


def health_of(counters: dict) -> dict:
    """The interposer's counters (cct_ip_stats, or the file's counters block) in the manifest's health
    shape: records per kind, dropped, and the rest as they are."""
    rest = {k: v for k, v in counters.items() if k not in ("records", "lost")}
    return {"records": {"calls": int(counters.get("records", 0))}, "dropped": int(counters.get("lost", 0)), **rest}


def _mapped(path: str) -> bool:
    """Whether this process has the library mapped (it was preloaded)."""
    real = str(Path(path).resolve())
    try:
        with open("/proc/self/maps") as maps:
            return any(line.rstrip().endswith(real) for line in maps)
    except OSError:
        return False


class RawFileError(ValueError):
    """An interposer file that cannot be read (no header, or not one of ours)."""


def raw_files(trace_dir: Path) -> list[Path]:
    return sorted(Path(trace_dir).glob(RAW_PATTERN))


def dtype_of(header: dict) -> np.dtype:
    """The record dtype the header describes (names, types, offsets, size)."""
    layout = header["layout"]
    return np.dtype(
        {
            "names": [f[0] for f in layout],
            "formats": [NUMPY_TYPES[f[1]] for f in layout],
            "offsets": [f[2] for f in layout],
            "itemsize": header["record_size"],
        }
    )


class Raw(NamedTuple):
    header: dict
    records: np.ndarray
    stats: dict  # the counters: each image's last block, summed over the images (exec)
    problems: list[str]
    stacks: list[tuple[int, list[py_stacks.Frame]]]  # (stack id as written, frames innermost first)


def read_raw(path: Path) -> Raw:
    """Everything one raw file holds (whole blocks up to any damage, which `problems` names).

    A process that exec()s after recording appends to the same file (same pid): a new header starts
    the new image's blocks, whose stack ids start again at 1. Its stack ids (blocks and records) are
    moved above every id the file held before, so each id still names one stack, and its counters (which
    start again at 0) are added to the earlier images'."""
    header: dict | None = None
    chunks: list[tuple[int, bytes]] = []  # (stack id offset of the image that wrote it, records)
    images: list[dict] = [{}]  # each image's last counters block
    problems: list[str] = []
    stacks: list[tuple[int, list[py_stacks.Frame]]] = []
    base = top = 0  # this image's stack id offset; the highest id (offset included) so far
    for magic, data, problem in read_blocks(path, (REC_MAGIC, HEAD_MAGIC, STAT_MAGIC, py_stacks.STK_MAGIC)):
        if problem:
            problems.append(f"{path.name}: {problem}; kept the whole blocks before it")
            break
        if magic == HEAD_MAGIC:
            if header is None:
                header = json.loads(data)
            else:  # an exec()'d image of the same process
                base = top
                images.append({})
        elif magic == STAT_MAGIC:
            images[-1] = json.loads(data)
        elif magic == py_stacks.STK_MAGIC:
            try:
                got = [(sid + base, frames) for sid, frames in py_stacks.parse_stacks(data)]
            except struct.error:
                problems.append(f"{path.name}: a damaged stacks block; the stacks before it are kept")
                continue
            stacks.extend(got)
            top = max([top, *(sid for sid, _ in got)])
        else:
            chunks.append((base, data))
    if header is None:
        raise RawFileError(f"{path.name}: no header block (not written by cctrace's interposer)")
    dt = dtype_of(header)
    raw = b"".join(data for _, data in chunks)
    whole = len(raw) - len(raw) % dt.itemsize
    records = np.frombuffer(raw[:whole], dtype=dt)
    if any(b for b, _ in chunks) and "stack_id" in dt.names:
        records = records.copy()
        at = 0
        for b, data in chunks:
            n = min(len(data) // dt.itemsize, len(records) - at)
            ids = records["stack_id"][at : at + n]
            ids[ids != 0] += b
            at += n
    return Raw(header, records, _summed(images), problems, stacks)


def _summed(images: list[dict]) -> dict:
    """One process's counters over its images: numbers added, the unmatched names (space-separated) joined."""
    out: dict = {}
    for stats in images:
        for k, v in stats.items():
            if isinstance(v, str):
                out[k] = " ".join(dict.fromkeys([*out.get(k, "").split(), *v.split()]))
            else:
                out[k] = out.get(k, 0) + v
    return out


def _names(table: list[str], codes: np.ndarray) -> np.ndarray:
    names = np.array([*table, None], dtype=object)
    return names[np.minimum(codes, len(table))]


def _stack_ids(raw: np.ndarray) -> pa.Array:
    """Stack ids as stored (STACK_ID_BASE above the written ones); null where none was captured."""
    return pa.array(raw.astype(np.int64) + STACK_ID_BASE, pa.int64(), mask=raw == 0)


def stack_batch(stacks: list[tuple[int, list[py_stacks.Frame]]], pid: int, skip, keep) -> pa.RecordBatch:
    """The `stacks` rows of one process's interposer stacks, each stack's call site marked."""
    cols = py_stacks.stack_rows(stacks, skip, keep)
    n = len(cols["stack_id"])
    cols["stack_id"] = np.asarray(cols["stack_id"], dtype=np.int64) + STACK_ID_BASE
    return S.rows_to_batch("stacks", {**cols, "pid": [pid] * n, "source": [SOURCE] * n})


def callsite_patterns(proc: dict) -> tuple[list[str], list[str]]:
    """The (skip, keep) call-site patterns the traced process used (its process record); the defaults
    where it left none (a process that is not Python has no stacks anyway)."""
    got = proc
    for key in ("sources", SOURCE, "stacks"):
        got = got.get(key) if isinstance(got, dict) else None
    got = got if isinstance(got, dict) else {}

    def strings(v) -> list[str] | None:
        return [x for x in v if isinstance(x, str)] if isinstance(v, list) else None

    skip, keep = strings(got.get("skip")), strings(got.get("keep"))
    return (py_stacks.default_skip() if skip is None else skip), (keep or [])


def kernel_intervals(trace_dir: Path) -> dict[str, np.ndarray]:
    """The off-CPU intervals and NVIDIA ioctls the eBPF probes recorded in this trace (host_waits,
    ioctls), as rows of (pid, tid, start, end), to join to the interposed calls they fell in."""
    from cctrace.trace.shards import read_shard

    out = {}
    for table in ("host_waits", "ioctls"):
        parts = [read_shard(p).data for p in sorted(Path(trace_dir).glob(f"{table}.*{S.SHARD_SUFFIX}"))]
        parts = [t for t in parts if t.num_rows]
        if parts:
            t = pa.concat_tables(parts)
            cols = ("pid", "tid", "start_ns", "end_ns")
            out[table] = np.stack([t.column(c).to_numpy(zero_copy_only=False).astype(np.int64) for c in cols])
    return out


def _time_inside(pid: int, tid: np.ndarray, start: np.ndarray, end: np.ndarray, iv: np.ndarray) -> np.ndarray:
    """Per call: the summed length of the intervals of its thread that began inside it (at most the call)."""
    total = np.zeros(len(tid), dtype=np.int64)
    iv = iv[:, iv[0] == pid]
    for t in np.intersect1d(np.unique(tid), iv[1]):
        mine = iv[:, iv[1] == t]
        order = np.argsort(mine[2], kind="stable")
        starts, lengths = mine[2][order], (mine[3] - mine[2])[order]
        cum = np.concatenate([[0], np.cumsum(lengths)])
        sel = tid == t
        lo = np.searchsorted(starts, start[sel], side="left")
        hi = np.searchsorted(starts, end[sel], side="left")
        total[sel] = np.minimum(cum[hi] - cum[lo], end[sel] - start[sel])
    return total


def to_batches(
    header: dict, rec: np.ndarray, pid: int, kernel: dict[str, np.ndarray] | None = None
) -> list[tuple[str, pa.RecordBatch]]:
    """Records -> one batch per table (vectorised: no Python per record). `kernel`: the eBPF intervals
    (kernel_intervals) whose time inside each call becomes its off_cpu_ns / ioctl_ns / on_cpu_ns."""
    if not len(rec):
        return []
    flags = header["flags"]
    op = _names(header["ops"], rec["op"])
    replayed = (rec["flags"] & flags["replayed"]) != 0
    captured = (rec["flags"] & flags["captured"]) != 0
    is_async = (rec["flags"] & flags["async"]) != 0
    # one correlation id per call; a replayed crossing shares the launch committed just before it: a
    # thread's records keep their commit order in the file, so a stable sort by thread keeps them adjacent
    order = np.argsort(rec["tid"], kind="stable")
    rec, op, replayed, captured, is_async = rec[order], op[order], replayed[order], captured[order], is_async[order]
    corr = np.cumsum(~replayed).astype(np.int64)
    copy_kind = _names(header["copy_kinds"], rec["copy_kind"])
    copy_kind[copy_kind == "none"] = None
    src_kind = _names(header["memory_kinds"], rec["src_kind"])
    dst_kind = _names(header["memory_kinds"], rec["dst_kind"])
    start, end = rec["start"].astype(np.int64), rec["end"].astype(np.int64)
    pids = np.full(len(rec), pid, dtype=np.int64)
    stream = rec["stream"].astype(np.int64)
    src = lambda n: pa.array([SOURCE] * n, pa.string())  # noqa: E731
    out = []

    call = ~replayed
    has_bytes = np.isin(op, ["copy", "memset", "p2p", "alloc", "graph_launch"])
    c = {
        "pid": pids[call],
        "tid": rec["tid"][call].astype(np.int64),
        "name": pa.array(_names(header["functions"], rec["fn"])[call], pa.string()),
        "domain": pa.array(["driver"] * int(call.sum()), pa.string()),
        "start_ns": start[call],
        "end_ns": end[call],
        "correlation_id": corr[call],
        "return_value": rec["ret"][call].astype(np.int64),
        "bytes": pa.array(rec["bytes"][call].astype(np.int64), pa.int64(), mask=~has_bytes[call]),
        "copy_kind": pa.array(copy_kind[call], pa.string()),
        "stream": rec["stream"][call],
        "ptr": rec["ptr"][call],
        "source": src(int(call.sum())),
        "stack_id": _stack_ids(rec["stack_id"][call]) if "stack_id" in rec.dtype.names else None,
    }
    if kernel and "host_waits" in kernel:
        tid, s0, e0 = c["tid"], c["start_ns"], c["end_ns"]
        c["off_cpu_ns"] = _time_inside(pid, tid, s0, e0, kernel["host_waits"])
        c["on_cpu_ns"] = e0 - s0 - c["off_cpu_ns"]
        if "ioctls" in kernel:
            c["ioctl_ns"] = _time_inside(pid, tid, s0, e0, kernel["ioctls"])
    out.append(("api_calls", S.rows_to_batch("api_calls", c)))

    moved = np.isin(op, list(COPY_OPS)) & ~captured & (rec["ret"] == 0)
    if moved.any():
        is_set = op[moved] == "memset"
        ck = copy_kind[moved].copy()
        ck[is_set] = "memset"
        sk = src_kind[moved].copy()
        sk[is_set] = None
        out.append(
            (
                "copies",
                S.rows_to_batch(
                    "copies",
                    {
                        "pid": pids[moved],
                        "op": pa.array([COPY_OPS[o] for o in op[moved]], pa.string()),
                        "copy_kind": pa.array(ck, pa.string()),
                        "src_kind": pa.array(sk, pa.string()),
                        "dst_kind": pa.array(dst_kind[moved], pa.string()),
                        "bytes": rec["bytes"][moved].astype(np.int64),
                        "start_ns": start[moved],
                        "end_ns": end[moved],
                        "stream_id": stream[moved],
                        "correlation_id": corr[moved],
                        "is_async": is_async[moved],
                        "source": src(int(moved.sum())),
                    },
                ),
            )
        )

    mem = np.isin(op, ["alloc", "free"]) & (rec["ret"] == 0)
    if mem.any():
        out.append(
            (
                "allocs",
                S.rows_to_batch(
                    "allocs",
                    {
                        "pid": pids[mem],
                        "op": pa.array(op[mem], pa.string()),
                        "memory_kind": pa.array(dst_kind[mem], pa.string()),
                        "bytes": pa.array(rec["bytes"][mem].astype(np.int64), pa.int64(), mask=op[mem] == "free"),
                        "address": rec["ptr"][mem],
                        "ts_ns": start[mem],
                        "stream_id": stream[mem],
                        "correlation_id": corr[mem],
                        "is_async": is_async[mem],
                        "source": src(int(mem.sum())),
                    },
                ),
            )
        )

    sync = op == "sync"
    if sync.any():
        sync_type = _names(header["sync_kinds"], rec["sync_kind"])[sync]
        # aux is the event of an event sync or a stream wait; a context sync's (CUDA 13's context) is no event
        event = rec["aux"][sync].astype(np.int64)
        out.append(
            (
                "syncs",
                S.rows_to_batch(
                    "syncs",
                    {
                        "pid": pids[sync],
                        "sync_type": pa.array(sync_type, pa.string()),
                        "start_ns": start[sync],
                        "end_ns": end[sync],
                        "stream_id": stream[sync],
                        "correlation_id": corr[sync],
                        "event_id": pa.array(event, pa.int64(), mask=(event == 0) | (sync_type == "context")),
                        "source": src(int(sync.sum())),
                    },
                ),
            )
        )
    return out


def decode_file(trace_dir: Path, path: Path, kernel: dict[str, np.ndarray] | None = None) -> list[str]:
    """One raw file -> shards of its process, its counters into the process record; returns problems."""
    pid = int(path.name.split(".")[1])
    try:
        header, rec, stats, problems, stacks = read_raw(path)
    except (RawFileError, ValueError, KeyError) as e:
        return [f"{path.name}: {e}"]
    rec_path = proc_record_path(trace_dir, pid)
    try:
        proc = read_json(rec_path) if rec_path.exists() else {}
    except (OSError, ValueError):
        proc = {}
    writer = ShardWriter(trace_dir, pid)
    for table, batch in to_batches(header, rec, pid, kernel):
        writer.add_batch(table, batch)
    if stacks:
        writer.add_batch("stacks", stack_batch(stacks, pid, *callsite_patterns(proc)))
    writer.close()
    if not proc:  # a process that is not Python (or died before its tracer wrote) still appears
        proc = {"pid": pid, "argv": [], "cupti": "off: not a Python process (interposer only)"}
    sources = proc.setdefault("sources", {})
    sources[SOURCE] = {
        "state": "active",
        **(sources.get(SOURCE) or {}),
        "decoded_records": len(rec),
        **health_of(stats),
    }
    written = proc.setdefault("rows_written", {})
    for table, n in writer.rows_written.items():
        written[table] = written.get(table, 0) + n
    write_json_atomic(rec_path, proc)
    path.unlink()
    return problems


def decode_trace(trace_dir: Path) -> list[str]:
    """Every interposer file of a trace -> shards (files are removed once decoded); returns problems."""
    problems: list[str] = []
    files = raw_files(trace_dir)
    kernel = kernel_intervals(trace_dir) if files else {}
    for path in files:
        if path.is_symlink():
            problems.append(f"{path.name}: a symbolic link, not read")
            continue
        problems.extend(decode_file(Path(trace_dir), path, kernel))
    return problems
