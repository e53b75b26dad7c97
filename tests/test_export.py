"""Perfetto and Parquet exports of a real (H100) sample trace, checked by loading them back."""

import json
import shutil

import duckdb
import pyarrow.parquet as pq
import pytest

from tests.conftest import ROOT, cctrace


@pytest.fixture(scope="module")
def trace(tmp_path_factory):
    d = tmp_path_factory.mktemp("exp") / "serve-bridge"
    shutil.copytree(ROOT / "sample_traces" / "serve-bridge", d)
    return d


def test_perfetto_export_is_valid_and_bound(trace, tmp_path):
    out = tmp_path / "t.json"
    r = cctrace("export", str(trace), "--format", "perfetto", "-o", str(out))
    assert r.returncode == 0, r.stderr
    events = json.loads(out.read_text())["traceEvents"]
    for e in events:
        assert e["ph"] in "XsfCM" and "pid" in e
        if e["ph"] != "M":
            assert isinstance(e["ts"], float | int)
    slices = [e for e in events if e["ph"] == "X"]
    con = duckdb.connect(str(trace / "trace.duckdb"), read_only=True)
    n_api = con.execute("SELECT count(*) FROM api_calls").fetchone()[0]
    n_gpu = con.execute("SELECT (SELECT count(*) FROM copies) + (SELECT count(*) FROM kernels)").fetchone()[0]
    n_nvtx = con.execute("SELECT count(*) FROM markers").fetchone()[0]
    assert sum(e["cat"] == "api" for e in slices) == n_api
    assert sum(e["cat"] in ("copy", "kernel") for e in slices) == n_gpu
    assert sum(e["cat"] == "nvtx" for e in slices) == n_nvtx
    # every flow has both ends, each bound to a slice on its track at that time
    by_track: dict = {}
    for e in slices:
        by_track.setdefault((e["pid"], e["tid"]), []).append((e["ts"], e["ts"] + e["dur"]))
    starts = {e["id"]: e for e in events if e["ph"] == "s"}
    ends = {e["id"]: e for e in events if e["ph"] == "f"}
    assert ends and set(ends) <= set(starts)
    for fid, f in ends.items():
        s = starts[fid]
        assert any(a <= s["ts"] <= b for a, b in by_track[(s["pid"], s["tid"])])
        assert any(a == f["ts"] for a, _ in by_track[(f["pid"], f["tid"])])
        assert f["ts"] >= s["ts"]  # the GPU never starts before the call that issued it
    issued = con.execute("""SELECT count(*) FROM (SELECT pid, correlation_id FROM copies UNION ALL
                                SELECT pid, correlation_id FROM kernels) g
                            WHERE EXISTS (SELECT 1 FROM api_calls a WHERE a.pid = g.pid
                                          AND a.correlation_id = g.correlation_id)""").fetchone()[0]
    assert sum(e["ph"] == "f" for e in events) == issued > 1800
    # bytes in flight return to zero at the end
    last = {}
    for e in events:
        if e["ph"] == "C":
            last.update(e["args"])
    assert last and all(v == 0 for v in last.values())


def test_perfetto_steps_limit_the_range(trace, tmp_path):
    out = tmp_path / "w.json"
    r = cctrace("export", str(trace), "--format", "perfetto", "-o", str(out), "--steps", "10:19")
    assert r.returncode == 0, r.stderr
    names = [e["name"] for e in json.loads(out.read_text())["traceEvents"] if e.get("cat") == "nvtx"]
    assert sorted(names) == sorted(f"step {i}" for i in range(15, 25))  # steps 0-4 were warm-up: names start at 5


def test_parquet_export_round_trips(trace, tmp_path):
    r = cctrace("export", str(trace), "--format", "parquet", "-o", str(tmp_path / "pq"))
    assert r.returncode == 0, r.stderr
    con = duckdb.connect(str(trace / "trace.duckdb"), read_only=True)
    for table in ("copies", "api_calls", "kernels", "markers"):
        n = con.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
        assert pq.read_table(tmp_path / "pq" / f"{table}.parquet").num_rows == n
