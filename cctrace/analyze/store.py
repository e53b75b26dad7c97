"""The store: Arrow shards -> one DuckDB file with a table per schema, plus the joining views.

DuckDB is needed here, not on the recording host. Loading is per table: every shard of a
table is read (keeping each complete batch of a damaged shard), concatenated in Arrow and
inserted in one statement.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from cctrace.trace import handoff as H
from cctrace.trace import schema as S
from cctrace.trace.manifest import read_manifest
from cctrace.trace.shards import parse_shard_name, read_shard

DB_NAME = "trace.duckdb"

# Views every analysis can rely on; they only join and name, they do not analyse.
VIEWS = {
    # each copy with the API call (same process, same correlation id) that issued it; copy_row
    # (the copy's rowid) keys a copy for the analysis's joins
    "copies_with_api": """
        SELECT c.rowid AS copy_row, c.*, a.name AS api_name, a.tid AS api_tid, a.start_ns AS api_start_ns, a.end_ns AS api_end_ns
        FROM copies c
        LEFT JOIN api_calls a
          ON a.pid = c.pid AND a.correlation_id = c.correlation_id AND a.source <> 'ebpf' AND c.correlation_id > 0
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

    def to_json(self) -> dict:
        return {"db": str(self.db_path), "rows": self.rows, "shards": self.shards, "problems": self.problems}


def find_shards(trace_dir: Path) -> dict[str, list[Path]]:
    out: dict[str, list[Path]] = {t: [] for t in S.TABLES}
    for p in sorted(Path(trace_dir).iterdir()):
        parsed = parse_shard_name(p)
        if parsed:
            out[parsed[0]].append(p)
    return out


def processes_table(manifest: dict) -> pa.Table:
    rows = [
        {
            "pid": p.get("pid"),
            "ppid": p.get("ppid"),
            "argv": json.dumps(p.get("argv") or []),
            "start_ns": p.get("start_ns"),
            "end_ns": p.get("end_ns"),
            "cupti": p.get("cupti"),
        }
        for p in manifest.get("processes") or []
        if isinstance(p.get("pid"), int) and p["pid"] > 0
    ]
    return pa.Table.from_pylist(rows, schema=S.schema("processes"))


def load(
    trace_dir: Path,
    db_path: Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> LoadResult:
    """Build `trace.duckdb` in the trace directory (replacing an older one) from its shards."""
    import duckdb

    trace_dir = Path(trace_dir)
    if not trace_dir.is_dir():
        raise LoadError(f"{trace_dir} is not a directory; give the trace directory that `cctrace record` wrote")
    result_problems = _decode_pending_raw(trace_dir, progress)
    shards = find_shards(trace_dir)
    if not any(shards.values()) and not (trace_dir / "manifest.json").exists():
        raise LoadError(f"{trace_dir} holds no trace shards (*.arrows) and no manifest.json")
    db_path = Path(db_path) if db_path else trace_dir / DB_NAME
    tmp = db_path.with_name(db_path.name + ".loading")
    for p in (tmp, Path(str(tmp) + ".wal")):
        if p.exists():
            p.unlink()
    result = LoadResult(db_path, problems=result_problems)
    con = duckdb.connect(str(tmp))
    limit_memory(con)
    # Rows keep no meaning in their storage order (every query orders by time), and without it DuckDB
    # appends and compresses row groups in parallel instead of in a final single-threaded checkpoint:
    # the 10M-event load went from 4.7-6.1 to 3.6-3.9 s here (benchmarks/analysis_scale.py).
    con.execute("SET preserve_insertion_order = false")
    try:
        for table in S.TABLES:
            # one shard at a time, so memory holds one shard, not a whole table
            con.register("_incoming", S.empty_table(table))
            con.execute(f'CREATE TABLE "{table}" AS SELECT * FROM _incoming')
            con.unregister("_incoming")
            if table == "processes":
                parts = [processes_table(read_manifest(trace_dir))]
            else:
                parts = shards[table]
            n = 0
            for part in parts:
                if isinstance(part, Path):
                    r = read_shard(part)
                    result.shards += 1
                    if r.problem:
                        result.problems.append(
                            f"{part.name}: kept {r.batches} batches ({r.data.num_rows} rows), {r.problem}"
                        )
                    part = r.data
                con.register("_incoming", part)
                con.execute(f'INSERT INTO "{table}" SELECT * FROM _incoming')
                con.unregister("_incoming")
                n += part.num_rows
            result.rows[table] = n
            if progress:
                progress(f"{table}: {n:,} rows")
        for name, sql in VIEWS.items():
            con.execute(f'CREATE VIEW "{name}" AS {sql}')
        con.execute("CREATE TABLE trace_meta AS SELECT ? AS manifest", [json.dumps(read_manifest(trace_dir))])
        con.execute("CHECKPOINT")
    finally:
        con.close()
    os.replace(tmp, db_path)
    return result


# Raw CUPTI buffers that a killed recording left are decoded by the record side (it needs cupti-python);
# the CLI, which composes both sides, sets this. The analysis side never imports the record side.
RawDecoder = Callable[[Path, "Callable[[str], None] | None"], list[str]]
raw_decoder: RawDecoder | None = None


def _decode_pending_raw(trace_dir: Path, progress: Callable[[str], None] | None = None) -> list[str]:
    return raw_decoder(trace_dir, progress) if raw_decoder else []


def resolve_db(trace: Path) -> Path:
    """TRACE may be a trace directory or its DuckDB file; load the directory if not yet loaded."""
    trace = Path(trace)
    if trace.is_file():
        return trace
    if not trace.exists():
        raise LoadError(f"{trace} does not exist")
    db = trace / DB_NAME
    if not db.exists():
        load(trace)
    return db


# DuckDB's block allocator keeps freed buffer blocks for reuse instead of handing them back to the
# OS after each statement and faulting them in again for the next: the 10M-event report went from
# 4.9 to 4.5 s on the 2-core CI machine (benchmarks/analysis_scale.py), load was unchanged. What it
# holds is kept until the database closes, so it is a third of the memory limit, at most 1 GB.
BLOCK_POOL_MAX = 1 << 30


def limit_memory(con) -> None:
    """Keep DuckDB under handoff.MEMORY_LIMIT (default 3GB), spilling to a temporary directory beyond it."""
    import tempfile

    import duckdb

    text = H.MEMORY_LIMIT.get()
    limit = _size_bytes(text)
    con.execute(f"SET memory_limit = '{text.strip()}'").fetchall()
    spill = os.path.join(tempfile.gettempdir(), "cctrace-spill").replace("'", "''")
    con.execute(f"SET temp_directory = '{spill}'").fetchall()  # SET takes no bound parameters
    pool = min(BLOCK_POOL_MAX, limit // 3)
    try:
        con.execute(f"SET block_allocator_memory = '{pool}B'").fetchall()
    except duckdb.Error:  # DuckDB before 1.3 has no such setting; a shared instance's pool cannot shrink
        pass


_UNITS = {"kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def _size_bytes(text: str) -> int:
    """handoff.MEMORY_LIMIT's value ('3GB', '2500 MiB') in bytes; anything else is refused."""
    import re

    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([a-z]+)", text.strip(), re.I)
    if not m or m.group(2).lower() not in _UNITS:
        raise LoadError(f"{H.MEMORY_LIMIT.name}={text!r} is not a size like 3GB or 2500MB")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def connect(trace: Path, read_only: bool = True):
    import duckdb

    con = duckdb.connect(str(resolve_db(trace)), read_only=read_only)
    limit_memory(con)
    return con
