"""Arrow IPC stream shards: one writer per process and table, flushed batch by batch.

A stream file is a schema message followed by record batches; each flush appends whole
batches and flushes the OS file, so a process killed with SIGKILL leaves a shard whose
complete batches are all readable. The reader keeps every complete batch of a damaged
shard and reports what it skipped instead of failing.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.ipc as ipc

from cctrace.trace import schema as S

_WRITE_OPTIONS = ipc.IpcWriteOptions(compression="zstd")


class ShardWriter:
    """Buffers rows per table and appends them to `<table>.<pid>.arrows` on flush.

    Producers (CUPTI's buffer callback, the probe reader) only append tuples to a list under
    a short lock; conversion to Arrow and file I/O happen in `flush`, outside that lock, so a
    producer never waits for the disk.
    """

    def __init__(self, directory: Path, pid: int) -> None:
        self.directory = Path(directory)
        self.pid = pid
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._rows: dict[tuple[str, tuple[str, ...]], list[tuple]] = {}
        self._batches: list[tuple[str, pa.RecordBatch]] = []
        self._writers: dict[str, tuple[object, ipc.RecordBatchStreamWriter]] = {}
        self.rows_written: dict[str, int] = {}
        self.closed = False

    def extend(self, table: str, columns: tuple[str, ...], rows: list[tuple]) -> None:
        """Queue rows (tuples in `columns` order) for `table`; cheap, never does I/O."""
        if not rows:
            return
        key = (table, columns)
        with self._lock:
            buf = self._rows.get(key)
            if buf is None:
                self._rows[key] = list(rows)
            else:
                buf.extend(rows)

    def add_batch(self, table: str, batch: pa.RecordBatch) -> None:
        """Queue a ready batch of the table's schema (sources that build columns vectorised)."""
        if batch.num_rows:
            with self._lock:
                self._batches.append((table, batch))

    def flush(self) -> None:
        """Write everything queued so far as record batches and flush the files."""
        with self._flush_lock:
            with self._lock:
                pending, self._rows = self._rows, {}
                batches, self._batches = self._batches, []
            touched = set()
            for (table, columns), rows in pending.items():
                cols = dict(zip(columns, map(list, zip(*rows, strict=True)), strict=True))
                batches.append((table, S.rows_to_batch(table, cols)))
            for table, batch in batches:
                self._writer(table).write_batch(batch)
                self.rows_written[table] = self.rows_written.get(table, 0) + batch.num_rows
                touched.add(table)
            for table in touched:
                self._writers[table][0].flush()

    def _writer(self, table: str) -> ipc.RecordBatchStreamWriter:
        entry = self._writers.get(table)
        if entry is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            f = open(self.directory / S.shard_name(table, self.pid), "ab")  # noqa: SIM115
            entry = (f, ipc.new_stream(f, S.schema(table), options=_WRITE_OPTIONS))
            self._writers[table] = entry
        return entry[1]

    def close(self) -> None:
        """Flush and close every shard (writes the stream end marker)."""
        if self.closed:
            return
        self.flush()
        with self._flush_lock:
            for f, w in self._writers.values():
                w.close()
                f.close()
            self._writers.clear()
            self.closed = True

    def reopen_for_child(self, pid: int) -> None:
        """After fork: drop the parent's buffers and files, write this process's own shards."""
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._rows = {}
        self._batches = []
        self._writers = {}
        self.rows_written = {}
        self.pid = pid
        self.closed = False


@dataclass
class ShardRead:
    """What reading one shard gave: the table and what, if anything, was skipped."""

    path: Path
    table: str
    pid: int
    data: pa.Table
    batches: int = 0
    problem: str | None = None
    skipped_bytes: int = 0
    notes: list[str] = field(default_factory=list)


def parse_shard_name(path: Path) -> tuple[str, int] | None:
    """`copies.1234.arrows` -> ('copies', 1234); None for anything else."""
    name = path.name
    if not name.endswith(S.SHARD_SUFFIX):
        return None
    parts = name[: -len(S.SHARD_SUFFIX)].rsplit(".", 1)
    if len(parts) != 2 or not parts[1].isdigit() or parts[0] not in S.TABLES:
        return None
    return parts[0], int(parts[1])


def read_shard(path: Path) -> ShardRead:
    """Read every complete batch of a shard; a truncated or corrupt tail is reported, not raised."""
    path = Path(path)
    parsed = parse_shard_name(path)
    if parsed is None:
        raise ValueError(f"{path.name} is not a shard name (<table>.<pid>{S.SHARD_SUFFIX})")
    table, pid = parsed
    target = S.schema(table)
    batches: list[pa.RecordBatch] = []
    problem = None
    size = path.stat().st_size
    consumed = 0
    with pa.OSFile(str(path), "rb") as f:
        try:
            reader = ipc.open_stream(f)
        except (pa.ArrowInvalid, pa.ArrowIOError, OSError) as e:
            reader = None
            problem = f"unreadable header ({e})" if size else "empty file"
        if reader is not None:
            while True:
                try:
                    batch = reader.read_next_batch()
                except StopIteration:
                    break
                except (pa.ArrowInvalid, pa.ArrowIOError, OSError) as e:
                    problem = f"truncated or corrupt after {len(batches)} batches ({e})"
                    break
                batches.append(batch)
                consumed = f.tell()
            if problem is None:
                consumed = size
    data = pa.Table.from_batches(batches, schema=batches[0].schema) if batches else target.empty_table()
    data = _conform(data, target)
    skipped = max(0, size - consumed) if problem else 0
    return ShardRead(path, table, pid, data, len(batches), problem, skipped)


def _conform(data: pa.Table, target: pa.Schema) -> pa.Table:
    """Shards from an older writer may lack newer columns: add them as nulls, in schema order."""
    if data.schema.equals(target):
        return data
    cols = []
    for fld in target:
        if fld.name in data.column_names:
            cols.append(data.column(fld.name).cast(fld.type))
        else:
            cols.append(pa.nulls(data.num_rows, fld.type))
    return pa.Table.from_arrays(cols, schema=target)
