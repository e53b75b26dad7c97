"""Arrow IPC stream shards: one writer per process and table, flushed batch by batch.

A stream file is a schema message followed by record batches; each flush appends whole
batches and flushes the OS file, so a process killed with SIGKILL leaves a shard whose
complete batches are all readable. The reader keeps every complete batch of a damaged
shard and reports what it skipped instead of failing.
"""

from __future__ import annotations

import os
import stat
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.ipc as ipc

from cctrace.trace import safefs
from cctrace.trace import schema as S

_WRITE_OPTIONS = ipc.IpcWriteOptions(compression="zstd")


class ShardWriteError(OSError):
    """Some batches could not be written (disk full, ...); they were cut back out and counted."""


class _Sink:
    """Collects what the IPC writer emits for one batch, so the shard only ever gets whole messages."""

    closed = False

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, data) -> int:
        self.parts.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass

    def take(self) -> bytes:
        out, self.parts = b"".join(self.parts), []
        return out


_EOS = b"\xff\xff\xff\xff\x00\x00\x00\x00"  # the IPC stream's end marker


class _Shard:
    """One open shard: its file descriptor and the IPC writer that encodes into a _Sink. A shard
    that already holds a stream (the raw decoder adding to a process's shard) is continued: its end
    marker is cut and the new writer's schema message left out."""

    def __init__(self, fd: int, schema: pa.Schema) -> None:
        self.fd = fd
        self.schema = schema
        self._restart()
        end = os.lseek(fd, 0, os.SEEK_END)
        if end:
            if end >= len(_EOS) and os.pread(fd, len(_EOS), end - len(_EOS)) == _EOS:
                os.ftruncate(fd, end - len(_EOS))
            self._skip = len(_schema_message(schema))

    def _restart(self) -> None:
        self.sink = _Sink()
        self.ipc = ipc.new_stream(self.sink, self.schema, options=_WRITE_OPTIONS)
        self._skip = 0

    def append(self, batch: pa.RecordBatch | None) -> None:
        """Write one batch (None: the end-of-stream marker) whole, or not at all: a failed write is
        truncated back, so every batch before it stays readable."""
        if batch is None:
            self.ipc.close()
        else:
            self.ipc.write_batch(batch)
        data = self.sink.take()[self._skip :]
        self._skip = 0
        pos = os.lseek(self.fd, 0, os.SEEK_END)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self.fd, view) :]
        except OSError:
            os.ftruncate(self.fd, pos)
            if pos == 0:  # the schema went out with it: the next batch must carry it again
                self._restart()
            raise


def _schema_message(schema: pa.Schema) -> bytes:
    sink = _Sink()
    ipc.new_stream(sink, schema, options=_WRITE_OPTIONS).close()
    return sink.take()[: -len(_EOS)]


def _open_shard(directory: Path, name: str) -> int:
    """A new shard file, or this user's existing one (never through a link, never another's file)."""
    with safefs.directory(directory, create=True) as dfd:
        try:
            return safefs.create_file(dfd, name)
        except FileExistsError:
            fd = os.open(name, os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dfd)
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
                os.close(fd)
                raise safefs.UnsafePath(f"{directory / name} is not a shard this user wrote") from None
            return fd


class ShardWriter:
    """Buffers rows per table and appends them to `<table>.<pid>.arrows` on flush.

    Producers (CUPTI's buffer callback, the probe reader) only append tuples to a list under
    a short lock; conversion to Arrow and file I/O happen in `flush`, outside that lock, so a
    producer never waits for the disk. Shards are created with O_EXCL|O_NOFOLLOW in the verified
    trace directory; rows of a batch that could not be written are counted in `rows_lost`.
    """

    def __init__(self, directory: Path, pid: int) -> None:
        self.directory = Path(directory)
        self.pid = pid
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._rows: dict[tuple[str, tuple[str, ...]], list[tuple]] = {}
        self._batches: list[tuple[str, pa.RecordBatch]] = []
        self._shards: dict[str, _Shard] = {}
        self.rows_written: dict[str, int] = {}
        self.rows_lost: dict[str, int] = {}
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
        """Write everything queued so far as whole record batches; raises ShardWriteError after
        writing all it could when some could not be written (those rows are in rows_lost)."""
        with self._flush_lock:
            with self._lock:
                pending, self._rows = self._rows, {}
                batches, self._batches = self._batches, []
            for (table, columns), rows in pending.items():
                cols = dict(zip(columns, map(list, zip(*rows, strict=True)), strict=True))
                batches.append((table, S.rows_to_batch(table, cols)))
            failed: list[str] = []
            for table, batch in batches:
                try:
                    self._shard(table).append(batch)
                except OSError as e:
                    self.rows_lost[table] = self.rows_lost.get(table, 0) + batch.num_rows
                    failed.append(f"{table}: {batch.num_rows} rows ({e.strerror or e})")
                    continue
                self.rows_written[table] = self.rows_written.get(table, 0) + batch.num_rows
            if failed:
                raise ShardWriteError(f"shard writes failed, rows not written: {'; '.join(failed)}")

    def _shard(self, table: str) -> _Shard:
        shard = self._shards.get(table)
        if shard is None:
            fd = _open_shard(self.directory, S.shard_name(table, self.pid))
            shard = self._shards[table] = _Shard(fd, S.schema(table))
        return shard

    def close(self) -> None:
        """Flush and close every shard (writes the stream end marker)."""
        if self.closed:
            return
        try:
            self.flush()
        finally:
            with self._flush_lock:
                for shard in self._shards.values():
                    try:
                        shard.append(None)
                    except OSError:
                        pass  # a stream without its end marker reads the same
                    os.close(shard.fd)
                self._shards.clear()
                self.closed = True

    def reopen_for_child(self, pid: int) -> None:
        """After fork: drop the parent's buffers and files, write this process's own shards."""
        for shard in self._shards.values():
            try:
                os.close(shard.fd)  # the child's copy of the parent's descriptor
            except OSError:
                pass
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._rows = {}
        self._batches = []
        self._shards = {}
        self.rows_written = {}
        self.rows_lost = {}
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


# columns every writer has always written: a shard without one of them lacks data the analysis needs
# (newer columns, such as api_calls.stack_id, are simply null in older traces)
REQUIRED = ("pid", "op", "name", "copy_kind", "bytes", "start_ns", "end_ns", "ts_ns")

# a longer string (a name) is cut to this many characters on load: a hostile shard of a few KB can
# hold gigabytes of names once decompressed
MAX_STRING = 16384


def _table(buf, pos: int):
    """A flatbuffer table at `pos`: a function from field index to the field's position (None: absent)."""
    vtable = pos - struct.unpack_from("<i", buf, pos)[0]
    size = struct.unpack_from("<H", buf, vtable)[0]

    def field(i: int) -> int | None:
        at = 4 + 2 * i
        off = struct.unpack_from("<H", buf, vtable + at)[0] if at < size else 0
        return pos + off if off else None

    return field


def _follow(buf, pos: int) -> int:
    return pos + struct.unpack_from("<I", buf, pos)[0]


def batch_bytes(msg: ipc.Message) -> int:
    """What a record-batch message takes once decompressed, read from its metadata (Message.header ->
    RecordBatch.buffers, and each compressed buffer's length prefix) before anything is decompressed:
    a few KB of zstd can hold gigabytes."""
    meta, body = memoryview(msg.metadata), memoryview(msg.body) if msg.body is not None else memoryview(b"")
    try:
        header = _table(meta, _follow(meta, 0))(2)  # Message.header
        if header is None:
            return 0
        batch = _table(meta, _follow(meta, header))
        compressed, buffers = batch(3) is not None, batch(2)  # RecordBatch.compression, .buffers
        if buffers is None:
            return 0
        vec = _follow(meta, buffers)
        total = 0
        for i in range(struct.unpack_from("<I", meta, vec)[0]):
            offset, length = struct.unpack_from("<qq", meta, vec + 4 + 16 * i)
            raw = struct.unpack_from("<q", body, offset)[0] if compressed and length >= 8 else -1
            total += length if raw == -1 else raw
        return total
    except (struct.error, IndexError) as e:
        raise ValueError(f"batch metadata is corrupt ({e})") from None


class ShardStream:
    """The conformed batches of one shard, one at a time (memory holds one batch); after iterating,
    `problem` says what was wrong (a truncated tail, wrong column types) and `notes` what was fixed."""

    def __init__(self, path: Path, max_batch_bytes: int | None = None) -> None:
        self.path = Path(path)
        self.max_batch_bytes = max_batch_bytes  # a batch bigger than this decompressed is not read
        parsed = parse_shard_name(self.path)
        if parsed is None:
            raise ValueError(f"{self.path.name} is not a shard name (<table>.<pid>{S.SHARD_SUFFIX})")
        self.table, self.pid = parsed
        self.target = S.schema(self.table)
        self.batches = 0
        self.rows = 0
        self.problem: str | None = None
        self.notes: list[str] = []
        self.missing_required: list[str] = []
        self.skipped_bytes = 0

    def __iter__(self) -> Iterator[pa.RecordBatch]:
        try:
            f, st = safefs.open_regular(self.path)
        except safefs.UnsafePath:
            self.problem = "not a regular file (skipped)"
            return
        except OSError as e:
            self.problem = f"cannot open ({e.strerror})"
            return
        with f:
            size, consumed = st.st_size, 0
            try:
                messages = ipc.MessageReader.open_stream(f)
                schema = ipc.read_schema(messages.read_next_message())
            except (pa.ArrowInvalid, pa.ArrowIOError, OSError, StopIteration, TypeError) as e:
                self.problem = f"unreadable header ({e})" if size else "empty file"
                self.skipped_bytes = size
                return
            while True:
                try:
                    msg = messages.read_next_message()
                except StopIteration:
                    consumed = size
                    break
                except (pa.ArrowInvalid, pa.ArrowIOError, OSError) as e:
                    self.problem = f"truncated or corrupt after {self.batches} batches ({e})"
                    break
                try:
                    if msg.type != "record batch":
                        raise pa.ArrowInvalid(f"a {msg.type} message, which cctrace never writes")
                    need = batch_bytes(msg)
                    if self.max_batch_bytes is not None and need > self.max_batch_bytes:
                        self.problem = (
                            f"batch {self.batches + 1} would take {need / 1e6:,.0f} MB decompressed, more than "
                            f"{self.max_batch_bytes / 1e6:,.0f} MB (a quarter of the memory limit); the rest skipped"
                        )
                        break
                    batch = ipc.read_record_batch(msg, schema)
                except (pa.ArrowInvalid, pa.ArrowIOError, pa.ArrowNotImplementedError, OSError, ValueError) as e:
                    self.problem = f"truncated or corrupt after {self.batches} batches ({e})"
                    break
                consumed = f.tell()
                try:
                    batch = self._conform(batch)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as e:
                    self.problem = f"wrong column types after {self.batches} batches ({e})"
                    break
                self.batches += 1
                self.rows += batch.num_rows
                yield batch
            if self.problem:
                self.skipped_bytes = max(0, size - consumed)

    def _conform(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        """The table's schema: columns cast to their types, missing ones as nulls (an older writer),
        invalid UTF-8 replaced and overlong strings cut."""
        cols = []
        missing = [f.name for f in self.target if f.name not in batch.schema.names]
        if missing and not any("lacks" in n for n in self.notes):
            self.notes.append(f"lacks column(s) {', '.join(missing)} (loaded as null)")
            self.missing_required = [c for c in missing if c in REQUIRED]
        for fld in self.target:
            if fld.name not in batch.schema.names:
                cols.append(pa.nulls(batch.num_rows, fld.type))
                continue
            col = batch.column(fld.name)
            if pa.types.is_string(fld.type) and pa.types.is_string(col.type):
                col = self._clean_strings(fld.name, col)
            cols.append(col.cast(fld.type))
        return pa.RecordBatch.from_arrays(cols, schema=self.target)

    def _clean_strings(self, name: str, col: pa.Array) -> pa.Array:
        import pyarrow.compute as pc

        try:
            col.validate(full=True)
        except pa.ArrowInvalid:
            self.notes.append(f"column {name}: invalid UTF-8 replaced")
            col = pa.array(
                [None if v is None else v.decode("utf-8", "replace") for v in col.cast(pa.binary()).to_pylist()],
                pa.string(),
            )
        if len(col) and (pc.max(pc.utf8_length(col)).as_py() or 0) > MAX_STRING:
            if not any(n.startswith(f"column {name}: strings") for n in self.notes):
                self.notes.append(f"column {name}: strings longer than {MAX_STRING} characters cut")
            col = pc.utf8_slice_codeunits(col, 0, MAX_STRING)
        return col


def read_shard(path: Path) -> ShardRead:
    """Read every complete batch of a shard; a truncated or corrupt tail is reported, not raised."""
    stream = ShardStream(path)
    batches = list(stream)
    data = pa.Table.from_batches(batches, schema=stream.target)
    return ShardRead(
        stream.path, stream.table, stream.pid, data, stream.batches, stream.problem, stream.skipped_bytes, stream.notes
    )
