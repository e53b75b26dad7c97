"""Shard writing and reading, including what a crash leaves behind."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pyarrow as pa

from cctrace.trace.shards import ShardWriter, read_shard
from tests.conftest import ROOT

COLS = ("pid", "op", "copy_kind", "bytes", "start_ns", "end_ns", "source")


def _rows(n, start=0):
    return [(7, "memcpy", "HtoD", 8 * i, start + i, start + i + 5, "test") for i in range(n)]


def test_write_flush_close_read(tmp_path):
    w = ShardWriter(tmp_path, 7)
    w.extend("copies", COLS, _rows(10))
    w.flush()
    w.extend("copies", COLS, _rows(5, 100))
    w.close()
    r = read_shard(tmp_path / "copies.7.arrows")
    assert r.problem is None
    assert r.batches == 2
    assert r.data.num_rows == 15
    assert r.data.column("bytes").to_pylist()[:3] == [0, 8, 16]
    assert r.data.column("stream_id").null_count == 15


def test_truncated_shard_keeps_every_complete_batch(tmp_path):
    w = ShardWriter(tmp_path, 7)
    for k in range(4):
        w.extend("copies", COLS, _rows(100, k * 1000))
        w.flush()
    w.close()
    path = tmp_path / "copies.7.arrows"
    data = path.read_bytes()
    full = read_shard(path)
    assert full.data.num_rows == 400
    # cut into the middle of the last batch
    path.write_bytes(data[: len(data) - 200])
    r = read_shard(path)
    assert r.problem is not None and "truncated" in r.problem
    assert r.batches == 3 and r.data.num_rows == 300
    assert r.skipped_bytes > 0


def test_garbage_file_is_reported_not_raised(tmp_path):
    path = tmp_path / "allocs.9.arrows"
    path.write_bytes(b"this is not arrow at all" * 10)
    r = read_shard(path)
    assert r.problem and r.data.num_rows == 0
    assert r.data.schema.names[0] == "pid"


def test_sigkilled_writer_leaves_readable_shards(tmp_path):
    """A real process writes and flushes periodically, then dies by SIGKILL mid-run."""
    code = textwrap.dedent(
        f"""
        import sys, time
        sys.path.insert(0, {str(ROOT)!r})
        from cctrace.trace.shards import ShardWriter
        w = ShardWriter({str(tmp_path)!r}, 99)
        cols = ("pid", "op", "bytes", "start_ns", "end_ns", "source")
        i = 0
        while True:
            w.extend("copies", cols, [(99, "memcpy", i, i, i + 1, "t")])
            i += 1
            if i % 50 == 0:
                w.flush()
                print(i, flush=True)
            time.sleep(0.0005)
        """
    )
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    flushed = 0
    deadline = time.time() + 30
    while flushed < 500 and time.time() < deadline:
        flushed = int(p.stdout.readline())
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    r = read_shard(tmp_path / "copies.99.arrows")
    # every batch flushed before the last line we read is there; the stream has no end marker
    assert r.data.num_rows >= flushed
    assert r.data.column("bytes").to_pylist()[: r.data.num_rows] == list(range(r.data.num_rows))


def test_table_from_older_writer_gets_new_columns(tmp_path):
    import pyarrow.ipc as ipc

    old = pa.schema([("pid", pa.int64()), ("bytes", pa.int64())])
    with open(tmp_path / "copies.5.arrows", "wb") as f, ipc.new_stream(f, old) as w:
        w.write_batch(pa.record_batch([pa.array([5]), pa.array([64])], schema=old))
    r = read_shard(tmp_path / "copies.5.arrows")
    assert r.data.column("bytes").to_pylist() == [64]
    assert "copy_kind" in r.data.column_names


def test_a_stream_appended_after_the_process_is_read_too(tmp_path):
    """A decoder that runs after the traced process (CUPTI buffers, the interposer) appends a second
    stream to the process's shard; both are read, and a truncated second one keeps the first."""
    for rows in ([(1, "a"), (2, "b")], [(3, "c")]):
        w = ShardWriter(tmp_path, 7)
        w.extend("markers", ("pid", "name"), rows)
        w.close()
    r = read_shard(tmp_path / "markers.7.arrows")
    assert r.problem is None and r.data.column("name").to_pylist() == ["a", "b", "c"]
    path = tmp_path / "markers.7.arrows"
    path.write_bytes(path.read_bytes()[:-20])
    r = read_shard(path)
    assert r.problem is not None and r.data.column("name").to_pylist()[:2] == ["a", "b"]


def test_shards_and_records_are_never_written_through_a_planted_link(tmp_path):
    from cctrace.trace.manifest import write_json_atomic

    victim = tmp_path / "victim"
    victim.write_text("keep")
    d = tmp_path / "trace"
    d.mkdir()
    (d / "copies.7.arrows").symlink_to(victim)
    (d / "manifest.json").symlink_to(victim)
    w = ShardWriter(d, 7)
    w.extend("copies", COLS, _rows(3))
    try:
        w.flush()
        raise AssertionError("wrote through a link")
    except OSError:
        pass
    assert w.rows_lost == {"copies": 3} and w.rows_written == {}
    write_json_atomic(d / "manifest.json", {"a": 1})  # replaces the link, never follows it
    assert victim.read_text() == "keep" and not (d / "manifest.json").is_symlink()
    assert [p.name for p in d.iterdir() if p.name.endswith(".tmp")] == []


def test_a_failed_write_is_cut_back_so_the_shard_stays_readable(tmp_path):
    """RLIMIT_FSIZE (in a child) stands in for a full disk."""
    script = textwrap.dedent(
        f"""
        import os, resource, signal, sys
        sys.path.insert(0, {str(ROOT)!r})
        from cctrace.trace.shards import ShardWriter
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000))
        w = ShardWriter({str(tmp_path)!r}, 7)
        for k in range(40):
            w.extend("markers", ("pid", "name", "start_ns", "end_ns"), [(7, os.urandom(300).hex(), k, k)] * 3)
            try:
                w.flush()
            except OSError:
                pass
        w.close()
        print(w.rows_written["markers"], w.rows_lost["markers"])
        """
    )
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    written, lost = map(int, r.stdout.split())
    assert lost > 0 and written + lost == 120
    got = read_shard(tmp_path / "markers.7.arrows")
    assert got.problem is None and got.data.num_rows == written


def test_a_batch_too_big_once_decompressed_is_not_read(tmp_path):
    """A few KB of zstd can hold gigabytes: the size is read from the batch's metadata first."""
    import pyarrow.ipc as ipc

    from cctrace.trace import schema as S
    from cctrace.trace.shards import ShardStream, batch_bytes

    names = pa.array(["n" * (1 << 20)] * 4)
    cols = {f.name: names if f.name == "name" else pa.nulls(4, f.type) for f in S.schema("markers")}
    table = pa.table(cols, schema=S.schema("markers"))
    path = tmp_path / "markers.7.arrows"
    with pa.OSFile(str(path), "wb") as f, ipc.new_stream(f, table.schema, options=ipc.IpcWriteOptions(compression="zstd")) as w:
        w.write_table(table)
    assert path.stat().st_size < 100_000
    reader = ipc.MessageReader.open_stream(pa.OSFile(str(path)))
    reader.read_next_message()
    need = batch_bytes(reader.read_next_message())
    assert 4 << 20 <= need < (4 << 20) + 4096
    stream = ShardStream(path, max_batch_bytes=1 << 20)
    assert list(stream) == [] and "decompressed" in stream.problem
    stream = ShardStream(path, max_batch_bytes=8 << 20)
    (batch,) = list(stream)
    assert stream.problem is None and len(batch.column("name")[0].as_py()) == 16384  # cut for display and memory
