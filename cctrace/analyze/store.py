"""The store: Arrow shards -> one DuckDB file with a table per schema, plus the joining views.

DuckDB is needed here, not on the recording host. Loading streams every shard batch by batch
(keeping each complete batch of a damaged shard), compares the rows with what the recording
says it wrote, and keeps what is missing in `trace_meta.partial`: report/diff/explore say PARTIAL.

Every connection is locked down (no file access outside the database, no extensions, locked
settings, a private spill directory), and a trace.duckdb is opened only when this user's cctrace
built it (an HMAC of the file's inode and change times under a per-user key, beside it); anything else is rebuilt from the shards.
"""

from __future__ import annotations

import atexit
import hashlib
import hmac
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from cctrace.trace import handoff as H
from cctrace.trace import safefs
from cctrace.trace import schema as S
from cctrace.trace.environment import redact_argv
from cctrace.trace.manifest import MANIFEST, load_manifest, read_proc_records
from cctrace.trace.shards import ShardStream, parse_shard_name

DB_NAME = "trace.duckdb"
FINGERPRINT_SUFFIX = ".cctrace-hmac"  # beside the DuckDB file: the HMAC that says this user's cctrace built it
FORMAT = "cctrace-duckdb/4"  # bump when a loaded file's layout changes: older files are rebuilt

# Views every analysis can rely on; they only join and name, they do not analyse.
VIEWS = {
    # each copy with the API call (same process, same source, same correlation id) that issued it;
    # copy_row (the copy's rowid) keys a copy for the analysis's joins
    "copies_with_api": """
        SELECT c.rowid AS copy_row, c.*, a.name AS api_name, a.tid AS api_tid, a.start_ns AS api_start_ns, a.end_ns AS api_end_ns,
               a.on_cpu_ns AS api_on_cpu_ns, a.off_cpu_ns AS api_off_cpu_ns, a.ioctl_ns AS api_ioctl_ns,
               a.stack_id AS api_stack_id
        FROM copies c
        LEFT JOIN api_calls a
          ON a.pid = c.pid AND a.correlation_id = c.correlation_id AND a.source = c.source AND c.correlation_id > 0
    """,
}


class LoadError(Exception):
    """A trace directory that cannot be loaded; the message says what to do."""


@dataclass
class LoadResult:
    db_path: Path
    rows: dict[str, int] = field(default_factory=dict)
    shards: int = 0
    problems: list[str] = field(default_factory=list)
    # what is missing from the trace (rows the recording wrote that did not load, no manifest, ...):
    # report/diff/explore print PARTIAL with these
    partial: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {
            "db": str(self.db_path),
            "rows": self.rows,
            "shards": self.shards,
            "problems": self.problems,
            "partial": self.partial,
        }


def find_shards(trace_dir: Path) -> dict[str, list[Path]]:
    out: dict[str, list[Path]] = {t: [] for t in S.TABLES}
    for p in sorted(Path(trace_dir).iterdir()):
        parsed = parse_shard_name(p)
        if parsed:
            out[parsed[0]].append(p)
    return out


def _int_or_none(v) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) and -(2**63) <= v < 2**63 else None


def processes_table(manifest: dict) -> pa.Table:
    rows = [
        {
            "pid": p["pid"],
            "ppid": _int_or_none(p.get("ppid")),
            "argv": json.dumps(redact_argv(p["argv"] if isinstance(p.get("argv"), list) else [])),
            "start_ns": _int_or_none(p.get("start_ns")),
            "end_ns": _int_or_none(p.get("end_ns")),
            "cupti": p.get("cupti") if isinstance(p.get("cupti"), str) else None,
        }
        for p in manifest.get("processes") or []
        if isinstance(p, dict) and _int_or_none(p.get("pid")) and p["pid"] > 0
    ]
    return pa.Table.from_pylist(rows, schema=S.schema("processes"))


def traced_windows_table(manifest: dict) -> pa.Table:
    """The times each process traced (processes[].windows, CLOCK_MONOTONIC ns pairs) in a recording with
    tracing windows; a process of such a recording without windows (its listener failed, or `attach`'s
    record) traced its whole life. No rows when the recording had no windows: the whole run was traced.
    An end not written (the process was killed in a window) is NULL: the analysis takes the last event."""
    procs = [p for p in manifest.get("processes") or [] if isinstance(p, dict) and _int_or_none(p.get("pid"))]
    options = manifest.get("options") if isinstance(manifest.get("options"), dict) else {}
    windowed = isinstance(options.get("window"), dict) or any(isinstance(p.get("windows"), list) for p in procs)
    rows = []
    for p in procs if windowed else []:
        w = p.get("windows")
        for pair in w if isinstance(w, list) else [[p.get("start_ns"), p.get("end_ns")]]:
            if not (isinstance(pair, list) and len(pair) == 2):
                continue
            start, end = _int_or_none(pair[0]), _int_or_none(pair[1])
            if start is not None and (end is None or end >= start) and (end is not None or pair[1] is None):
                rows.append({"pid": p["pid"], "start_ns": start, "end_ns": end})
    return pa.Table.from_pylist(rows, schema=S.schema("traced_windows"))


# how the loader builds each table of S.FROM_MANIFEST
MANIFEST_TABLES: dict[str, Callable[[dict], pa.Table]] = {
    "processes": processes_table,
    "traced_windows": traced_windows_table,
}


def expected_rows(manifest: dict) -> dict[tuple[str, int], int]:
    """(table, pid) -> rows the recording says it wrote (process records and the host probes' writer)."""
    out: dict[tuple[str, int], int] = {}
    holders = list(manifest.get("processes") or [])
    probes = (manifest.get("options") or {}).get("host_probes")
    if isinstance(probes, dict):
        holders.append(probes)
    for h in holders:
        pid, rows = (
            h.get("pid") if isinstance(h, dict) else None,
            h.get("rows_written") if isinstance(h, dict) else None,
        )
        if _int_or_none(pid) and isinstance(rows, dict):
            for table, n in rows.items():
                if table in S.TABLES and _int_or_none(n) is not None:
                    out[(table, pid)] = out.get((table, pid), 0) + n
    return out


def trace_manifest(trace_dir: Path) -> tuple[dict, list[str]]:
    """The manifest, or one rebuilt from the process records when cctrace died before writing it;
    with what is missing because of it."""
    manifest, problem = load_manifest(trace_dir)
    if not problem:
        return manifest, []
    procs = [p for p in read_proc_records(trace_dir) if p.get("pid", -1) > 0]
    if procs and not manifest.get("processes"):
        manifest["processes"] = procs
        problem += f"; processes taken from {len(procs)} process record(s)"
    return manifest, [problem]


def load(
    trace_dir: Path,
    db_path: Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> LoadResult:
    """Build `trace.duckdb` in the trace directory (replacing an older one) from its shards.

    The file is built in a private directory made inside the trace directory and renamed into
    place, so a link planted at `trace.duckdb` or its temporaries is replaced, never followed."""
    import duckdb

    trace_dir = Path(trace_dir)
    if not trace_dir.is_dir():
        raise LoadError(f"{trace_dir} is not a directory; give the trace directory that `cctrace record` wrote")
    try:
        result_problems = _decode_pending_raw(trace_dir, progress)
        shards = find_shards(trace_dir)
    except OSError as e:
        raise LoadError(f"cannot read {trace_dir}: {e.strerror or e}") from None
    if not any(shards.values()) and not os.path.lexists(trace_dir / MANIFEST):
        raise LoadError(f"{trace_dir} holds no trace shards (*.arrows) and no manifest.json")
    db_path = Path(db_path) if db_path else trace_dir / DB_NAME
    manifest, partial = trace_manifest(trace_dir)
    result = LoadResult(db_path, problems=result_problems, partial=partial)
    try:
        work = Path(tempfile.mkdtemp(prefix=".cctrace-load-", dir=db_path.parent))
    except OSError as e:
        raise LoadError(
            f"cannot write {db_path} ({e.strerror}); run `cctrace load` as the trace's owner or copy the directory"
        ) from None
    try:
        tmp = work / db_path.name
        con = duckdb.connect(str(tmp), config=locked_config(work))
        try:
            _fill(con, shards, manifest, result, progress)
        finally:
            con.close()
        with safefs.directory(db_path.parent) as dfd:
            safefs.remove(dfd, db_path.name + ".wal")  # a stale WAL would be replayed into the new file
            os.replace(tmp, db_path.name, dst_dir_fd=dfd)
        _write_fingerprint(db_path)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return result


def _fill(con, shards: dict, manifest: dict, result: LoadResult, progress) -> None:
    expected = expected_rows(manifest)
    loaded: dict[tuple[str, int], int] = {}
    for table in S.TABLES:
        con.register("_incoming", S.empty_table(table))
        con.execute(f'CREATE TABLE "{table}" AS SELECT * FROM _incoming')  # names from the schema module
        con.unregister("_incoming")
        n = 0
        if table in S.FROM_MANIFEST:
            n = _insert(con, table, MANIFEST_TABLES[table](manifest))
        for path in shards[table]:
            stream = ShardStream(path, max_batch_bytes=_size_bytes(H.MEMORY_LIMIT.get()) // 4)
            result.shards += 1
            for batch in stream:  # one batch in memory at a time
                n += _insert(con, table, batch)
            loaded[(table, stream.pid)] = loaded.get((table, stream.pid), 0) + stream.rows
            if stream.problem:
                result.problems.append(
                    f"{path.name}: kept {stream.batches} batches ({stream.rows} rows), {stream.problem}"
                )
            result.problems.extend(f"{path.name}: {note}" for note in stream.notes)
            if stream.missing_required:
                result.partial.append(f"{path.name} lacks {', '.join(stream.missing_required)}: loaded as null")
        result.rows[table] = n
        if progress:
            progress(f"{table}: {n:,} rows")
    for p in manifest.get("processes") or []:
        lost = p.get("rows_lost") if isinstance(p.get("rows_lost"), dict) else {}
        for table, n in sorted(lost.items()):
            if _int_or_none(n):
                result.partial.append(f"{table} of pid {p.get('pid')}: {n:,} rows could not be written (disk full?)")
    for (table, pid), want in sorted(expected.items()):
        got = loaded.get((table, pid), 0)
        if got < want:
            result.partial.append(f"{table} of pid {pid}: {got:,} of {want:,} rows written ({want - got:,} missing)")
    if not any(n for t, n in result.rows.items() if t not in S.FROM_MANIFEST):
        result.partial.append("no events: the trace holds no rows in any table")
    for name, sql in VIEWS.items():
        con.execute(f'CREATE VIEW "{name}" AS {sql}')
    con.execute(
        "CREATE TABLE trace_meta AS SELECT ? AS manifest, ? AS partial, ? AS format",
        [json.dumps(manifest, default=str), json.dumps(result.partial), FORMAT],
    )
    con.execute("CHECKPOINT")


def _insert(con, table: str, data) -> int:
    con.register("_incoming", data)
    con.execute(f'INSERT INTO "{table}" SELECT * FROM _incoming')
    con.unregister("_incoming")
    return data.num_rows


def partial_of(con) -> list[str]:
    """What a loaded trace is missing (empty: complete); a file from before the check says so."""
    try:
        (raw,) = con.execute("SELECT partial FROM trace_meta").fetchall()[0]
    except Exception:  # noqa: BLE001 - an older file: no partial column
        return ["loaded by an older cctrace that did not check rows against the recording; run `cctrace load`"]
    value = json.loads(raw) if raw else []
    return [str(v) for v in value] if isinstance(value, list) else []


# Raw CUPTI buffers that a killed recording left are decoded by the record side (it needs cupti-python);
# the CLI, which composes both sides, sets this. The analysis side never imports the record side.
RawDecoder = Callable[[Path, "Callable[[str], None] | None"], list[str]]
raw_decoder: RawDecoder | None = None


def _decode_pending_raw(trace_dir: Path, progress: Callable[[str], None] | None = None) -> list[str]:
    return raw_decoder(trace_dir, progress) if raw_decoder else []


def resolve_db(trace: Path) -> Path:
    """TRACE may be a trace directory or its DuckDB file. The file is used when this user's cctrace
    built it; otherwise (never loaded, changed, built elsewhere or by an older version) it is rebuilt
    from the trace directory's shards."""
    trace = Path(trace)
    if not os.path.lexists(trace):
        raise LoadError(f"{trace} does not exist; give a trace directory that `cctrace record` wrote")
    if trace.is_dir():
        db = trace / DB_NAME
    elif trace.is_file():
        db = trace
    else:
        raise LoadError(f"{trace} is not a trace directory or a DuckDB file")
    if fingerprint_ok(db):
        return db
    if db.name != DB_NAME:
        raise LoadError(f"{trace} is not a trace directory or a trace.duckdb that cctrace built here")
    home = db.parent
    if not (any(find_shards(home).values()) or os.path.lexists(home / MANIFEST)):
        raise LoadError(f"{db} was not built by cctrace and {home} holds no shards to rebuild it from")
    load(home, db_path=home / DB_NAME)
    return home / DB_NAME


# ---- fingerprints ----------------------------------------------------------------------------------


def _key() -> bytes:
    """This user's fingerprint key (made on first use, readable by the user only)."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cctrace"
    path = base / "db-key"
    try:
        return safefs.read_file(path, 64)
    except FileNotFoundError:
        pass
    except OSError as e:
        raise LoadError(f"cannot read the fingerprint key {path} ({e}); remove it") from None
    try:
        base.mkdir(parents=True, exist_ok=True, mode=0o700)
        with safefs.directory(base) as dfd:
            fd = safefs.create_file(dfd, path.name, 0o600)
            os.write(fd, os.urandom(32))
            os.close(fd)
        return safefs.read_file(path, 64)
    except FileExistsError:
        return safefs.read_file(path, 64)
    except OSError as e:
        raise LoadError(
            f"cannot make the fingerprint key {path} ({e}); set XDG_CACHE_HOME to a writable directory"
        ) from None


def _digest(db: Path) -> str | None:
    """HMAC of the file's identity and change times (device, inode, size, mtime, ctime) under this
    user's key: any change to the file, or another file put in its place, changes ctime or the inode,
    and nobody can set ctime back. O(1), where hashing the content took ~3 s per GB."""
    try:
        st = os.stat(db, follow_symlinks=False)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    ident = f"{FORMAT} {st.st_dev} {st.st_ino} {st.st_size} {st.st_mtime_ns} {st.st_ctime_ns}"
    return hmac.new(_key(), ident.encode(), hashlib.sha256).hexdigest()


def _write_fingerprint(db: Path) -> None:
    digest = _digest(db)
    if digest:
        safefs.write_atomic(db.with_name(db.name + FINGERPRINT_SUFFIX), digest.encode())


def fingerprint_ok(db: Path) -> bool:
    """Whether `db` is a DuckDB file this user's cctrace built and nobody changed since."""
    try:
        want = safefs.read_file(db.with_name(db.name + FINGERPRINT_SUFFIX), 128).decode("ascii", "replace")
    except OSError:
        return False
    got = _digest(db)
    return got is not None and hmac.compare_digest(want, got)


# ---- locked connections ----------------------------------------------------------------------------

# DuckDB's block allocator keeps freed buffer blocks for reuse instead of handing them back to the
# OS after each statement and faulting them in again for the next (a faster report: benchmarks/README.md,
# analysis_scale). What it holds is kept until the database closes, so it is a third of the memory
# limit, at most 1 GB.
BLOCK_POOL_MAX = 1 << 30

_spill_dirs: list[str] = []


def _spill_dir() -> str:
    """A private spill directory (mkdtemp: 0700, a fresh name nobody could plant), removed at exit."""
    if not _spill_dirs:
        _spill_dirs.append(tempfile.mkdtemp(prefix="cctrace-spill-"))
        atexit.register(shutil.rmtree, _spill_dirs[0], True)
    return _spill_dirs[0]


def locked_config(spill: Path | str | None = None, external_access: bool = False) -> dict:
    """Settings of every connection: handoff.MEMORY_LIMIT (default 3GB) with a private spill
    directory, and nothing outside the database: no file access, no extensions, settings locked.
    Rows keep no meaning in their storage order (every query orders by time), and without it DuckDB
    appends and compresses row groups in parallel instead of in a final single-threaded checkpoint
    (a faster load: benchmarks/README.md, analysis_scale)."""
    text = H.MEMORY_LIMIT.get()
    limit = _size_bytes(text)
    return {  # enable_external_access first: DuckDB 1.4/2.0 refuse temp_directory given before it
        "enable_external_access": external_access,
        "memory_limit": f"{limit}B",
        "temp_directory": str(spill or _spill_dir()),
        "block_allocator_memory": f"{min(BLOCK_POOL_MAX, limit // 3)}B",
        "preserve_insertion_order": False,
        "autoinstall_known_extensions": False,
        "autoload_known_extensions": False,
        "lock_configuration": True,
    }


_UNITS = {"kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def _size_bytes(text: str) -> int:
    """handoff.MEMORY_LIMIT's value ('3GB', '2500 MiB') in bytes; anything else is refused."""
    import re

    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([a-z]+)", text.strip(), re.I)
    if not m or m.group(2).lower() not in _UNITS:
        raise LoadError(f"{H.MEMORY_LIMIT.name}={text!r} is not a size like 3GB or 2500MB")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def connect(trace: Path, read_only: bool = True, external_access: bool = False):
    """A locked connection to TRACE's DuckDB file (built or rebuilt first when needed).
    `external_access`: only for the user's own FILE.sql with --allow-external-access."""
    import duckdb

    db = resolve_db(trace)
    try:
        return duckdb.connect(str(db), read_only=read_only, config=locked_config(external_access=external_access))
    except duckdb.Error as e:
        raise LoadError(
            f"{db} cannot be opened ({str(e).splitlines()[0]}); run `cctrace load` on its directory"
        ) from None
