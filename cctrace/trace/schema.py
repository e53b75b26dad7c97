"""The one place that defines every trace table's Arrow schema.

Sources write rows in these shapes, the loader creates DuckDB tables from them and the tests
generate synthetic traces with them, so a column added here reaches every layer at once.
Column names follow CUPTI / Nsight Systems where one exists (copy_kind, src_kind, stream_id,
correlation_id) so results can be cross-checked against an nsys export. All times are integer
nanoseconds on CLOCK_MONOTONIC.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa

I64 = pa.int64()
U64 = pa.uint64()
STR = pa.string()

# Value sets of the string "enum" columns, documented once here.
COPY_KINDS = ("HtoD", "DtoH", "DtoD", "HtoH", "PtoP", "AtoX", "unknown")
MEMORY_KINDS = ("pageable", "pinned", "device", "managed", "array", "device_static", "unknown")
SYNC_TYPES = ("stream", "event", "context", "stream_wait_event", "unknown")

# the columns every stream-ordered GPU row (kernel, memcpy, memset) has, in this order
ON_STREAM = [
    ("start_ns", I64),
    ("end_ns", I64),
    ("device_id", I64),
    ("context_id", I64),
    ("stream_id", I64),
    ("correlation_id", I64),
]

TABLES: dict[str, pa.Schema] = {
    # memcpy (incl. peer-to-peer) and memset executions on the GPU.
    "copies": pa.schema(
        [
            ("pid", I64),
            ("op", STR),  # memcpy | memset | p2p
            ("copy_kind", STR),  # COPY_KINDS; 'memset' rows carry 'memset'
            ("src_kind", STR),  # MEMORY_KINDS
            ("dst_kind", STR),
            ("bytes", I64),
            *ON_STREAM,
            ("is_async", pa.bool_()),
            ("src_device_id", I64),
            ("dst_device_id", I64),
            ("source", STR),  # cupti | synthetic
        ]
    ),
    # allocations and frees, with the memory kind (device, pinned, managed, ...).
    "allocs": pa.schema(
        [
            ("pid", I64),
            ("op", STR),  # alloc | free
            ("memory_kind", STR),
            ("bytes", I64),
            ("address", U64),
            ("ts_ns", I64),
            ("device_id", I64),
            ("context_id", I64),
            ("stream_id", I64),
            ("correlation_id", I64),
            ("is_async", pa.bool_()),
            ("source", STR),
        ]
    ),
    # runtime/driver calls from CUPTI, or probed entry points from eBPF (with their arguments).
    "api_calls": pa.schema(
        [
            ("pid", I64),
            ("tid", I64),
            ("name", STR),  # e.g. cudaMemcpyAsync, cuMemcpyHtoDAsync_v2
            ("domain", STR),  # runtime | driver
            ("start_ns", I64),
            ("end_ns", I64),
            ("correlation_id", I64),
            ("return_value", I64),
            ("bytes", I64),  # host probes only
            ("copy_kind", STR),  # host probes only
            ("stream", U64),  # host probes only: the stream handle argument
            ("ptr", U64),  # host probes only: the destination / allocated pointer
            ("on_cpu_ns", I64),  # host probes only
            ("off_cpu_ns", I64),
            ("ioctl_ns", I64),
            ("source", STR),  # cupti | ebpf | interposer | synthetic
            ("stack_id", I64),  # the calling thread's Python stack (`stacks`), null when none was captured
        ]
    ),
    # CUPTI synchronization records (stream/event/context syncs, stream waits).
    "syncs": pa.schema(
        [
            ("pid", I64),
            ("sync_type", STR),  # SYNC_TYPES
            ("start_ns", I64),
            ("end_ns", I64),
            ("context_id", I64),
            ("stream_id", I64),
            ("correlation_id", I64),
            ("event_id", I64),
            ("source", STR),
        ]
    ),
    "kernels": pa.schema(
        [
            ("pid", I64),
            ("name", STR),
            *ON_STREAM,
            ("source", STR),
        ]
    ),
    # NVTX ranges (push/pop and start/end), e.g. one per decode step.
    "markers": pa.schema(
        [
            ("pid", I64),
            ("tid", I64),
            ("name", STR),
            ("domain", STR),
            ("start_ns", I64),
            ("end_ns", I64),
            ("source", STR),
        ]
    ),
    # off-CPU intervals of traced threads (host probes), with the probed call they fell in.
    "host_waits": pa.schema(
        [
            ("pid", I64),
            ("tid", I64),
            ("start_ns", I64),
            ("end_ns", I64),
            ("in_call", STR),
            ("source", STR),
        ]
    ),
    "ioctls": pa.schema(
        [
            ("pid", I64),
            ("tid", I64),
            ("start_ns", I64),
            ("end_ns", I64),
            ("fd", I64),
            ("request", U64),
            ("return_value", I64),
            ("in_call", STR),
            ("source", STR),
        ]
    ),
    # CUPTI's own overhead (buffer flushes, instrumentation), to tell tracer cost from program cost.
    "overheads": pa.schema(
        [
            ("pid", I64),
            ("kind", STR),
            ("start_ns", I64),
            ("end_ns", I64),
            ("source", STR),
        ]
    ),
    # the bridge emulator's ground truth: one row per injection it made (what, where, how long).
    "bridge_injections": pa.schema(
        [
            ("pid", I64),
            ("tid", I64),
            ("ts_ns", I64),  # when the injected wait began
            ("ns", I64),  # how long it lasted
            ("kind", STR),  # toll | bandwidth | serialize | async_block
            ("direction", STR),  # h2d | d2h | none
            ("bytes", I64),
            ("call", STR),  # the CUDA call it was injected into (driver API name), or graph_launch
            ("correlation_id", I64),
            ("source", STR),  # emulator
        ]
    ),
    # interned Python stacks of recorded calls: one row per frame, depth 0 innermost; the frame that is
    # the call site (innermost outside the frameworks) is marked.
    "stacks": pa.schema(
        [
            ("pid", I64),
            ("stack_id", I64),
            ("depth", I64),
            ("file", STR),
            ("line", I64),
            ("function", STR),
            ("is_callsite", pa.bool_()),
            ("source", STR),
        ]
    ),
    # one row per traced process; built from the per-process records by the launcher/loader.
    "processes": pa.schema(
        [
            ("pid", I64),
            ("ppid", I64),
            ("argv", STR),
            ("start_ns", I64),
            ("end_ns", I64),
            ("cupti", STR),  # active | off: <reason>
        ]
    ),
    # the times each process traced, from the manifest (processes[].windows): one row per window of a
    # recording with tracing windows (record --delay/--duration/--toggle-signal, attach); no rows: the
    # whole run was traced. end_ns NULL: the window was still open when the process's record was last written.
    "traced_windows": pa.schema([("pid", I64), ("start_ns", I64), ("end_ns", I64)]),
}
# the tables the loader builds from the manifest (no shards, no source column)
FROM_MANIFEST = ("processes", "traced_windows")

SHARD_SUFFIX = ".arrows"


def schema(table: str) -> pa.Schema:
    """The schema of `table`; KeyError names the known tables."""
    try:
        return TABLES[table]
    except KeyError:
        raise KeyError(f"unknown table {table!r}; known: {', '.join(TABLES)}") from None


def shard_name(table: str, pid: int) -> str:
    return f"{table}.{pid}{SHARD_SUFFIX}"


def empty_table(table: str) -> pa.Table:
    return schema(table).empty_table()


def rows_to_batch(table: str, columns: dict[str, Sequence]) -> pa.RecordBatch:
    """Columns (lists, numpy or Arrow arrays; missing ones become nulls) -> a record batch of the
    table's schema."""
    sch = schema(table)
    n = len(next(iter(columns.values()))) if columns else 0
    arrays = []
    for field in sch:
        values = columns.get(field.name)
        arrays.append(pa.nulls(n, field.type) if values is None else pa.array(values, field.type))
    return pa.RecordBatch.from_arrays(arrays, schema=sch)
