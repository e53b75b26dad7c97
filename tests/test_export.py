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
    """--steps counts as the report does: from 1 within the analysis window (NVTX "step 5" is step 1)."""
    out = tmp_path / "w.json"
    r = cctrace("export", str(trace), "--format", "perfetto", "-o", str(out), "--steps", "11:20")
    assert r.returncode == 0, r.stderr
    names = [e["name"] for e in json.loads(out.read_text())["traceEvents"] if e.get("cat") == "nvtx"]
    assert sorted(names) == sorted(f"step {i}" for i in range(15, 25))  # NVTX steps 0-4 were warm-up
    timeline = json.loads(cctrace("query", "step_timeline", str(trace), "--format", "json").stdout)
    assert [r["name"] for r in timeline if 11 <= r["step"] <= 20] == [f"step {i}" for i in range(15, 25)]


def test_perfetto_window_counts_from_the_analysis_window(trace, tmp_path):
    """--window A:B is ms from the report's window start (the first step's start), not the first event."""
    con = duckdb.connect(str(trace / "trace.duckdb"), read_only=True)
    (s1, _), (s2, _) = con.execute(
        "SELECT start_ns, end_ns FROM markers WHERE name IN ('step 5', 'step 6') ORDER BY start_ns"
    ).fetchall()
    out = tmp_path / "w.json"
    r = cctrace("export", str(trace), "--format", "perfetto", "-o", str(out), "--window", f"0:{(s2 - s1 - 1) / 1e6}")
    assert r.returncode == 0, r.stderr
    events = json.loads(out.read_text())["traceEvents"]
    assert [e["name"] for e in events if e.get("cat") == "nvtx"] == ["step 5"]
    api = [e["ts"] * 1e3 for e in events if e.get("cat") == "api"]
    n = con.execute("SELECT count(*) FROM api_calls WHERE start_ns BETWEEN ? AND ?", [s1, s2 - 1]).fetchone()[0]
    assert len(api) == n > 0 and min(api) >= s1 - 1


EDGES = [
    (["--steps", "0:5"], "out of range: this trace has steps 1 to 300"),
    (["--steps", "290:301"], "out of range"),
    (["--steps", "5:3"], "reversed"),
    (["--steps", "a:b"], "expects A:B"),
    (["--steps", "1.5:3"], "expects A:B"),
    (["--window", "5:1"], "reversed"),
    (["--window", "0:inf"], "finite"),
    (["--window", "nan:5"], "finite"),
    (["--window", "-1:5"], "outside the analysis window"),
    (["--window", "5000:5010"], "outside the analysis window"),
    (["--window", "3:3"], "empty"),
    (["--window", "1:2", "--steps", "1:2"], "not both"),
]


@pytest.mark.parametrize(("args", "says"), EDGES, ids=[" ".join(a) for a, _ in EDGES])
def test_export_says_no_in_one_line(trace, tmp_path, args, says):
    out = tmp_path / "no.json"
    r = cctrace("export", str(trace), "--format", "perfetto", "-o", str(out), *args)
    assert r.returncode == 2 and says in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert not out.exists()


def test_export_steps_on_a_trace_without_steps(one_call_trace, tmp_path):
    d = one_call_trace
    r = cctrace("export", str(d), "--format", "perfetto-proto", "-o", str(tmp_path / "o.pftrace"), "--steps", "1:2")
    assert r.returncode == 2 and "no steps" in r.stderr and "--window" in r.stderr, r.stderr
    r = cctrace("export", str(d), "--format", "perfetto-proto", "-o", str(tmp_path / "o.pftrace"))
    assert r.returncode == 0, r.stderr


def test_export_refuses_a_link(trace, tmp_path):
    (tmp_path / "target").write_text("keep")
    (tmp_path / "link.json").symlink_to(tmp_path / "target")
    r = cctrace("export", str(trace), "--format", "perfetto", "-o", str(tmp_path / "link.json"), "--steps", "1:1")
    assert r.returncode == 2 and "symbolic link" in r.stderr
    assert (tmp_path / "target").read_text() == "keep"


def test_perfetto_proto_decodes_with_perfettos_protos(trace, tmp_path):
    """The protobuf export holds the JSON export's slices, tracks and flows, read back with the `perfetto`
    package's generated TracePacket classes. (Perfetto's trace processor is not run here: the `perfetto`
    package downloads trace_processor_shell at run time and no registry package ships the binary, and
    CI reaches package registries only.)"""
    P = pytest.importorskip("perfetto.protos.perfetto.trace.perfetto_trace_pb2")
    out, js = tmp_path / "t.pftrace", tmp_path / "t.json"
    for path, fmt in ((out, "perfetto-proto"), (js, "perfetto")):
        r = cctrace("export", str(trace), "--format", fmt, "-o", str(path), "--steps", "1:50")
        assert r.returncode == 0, r.stderr
    t = P.Trace()
    t.ParseFromString(out.read_bytes())
    tracks = {p.track_descriptor.uuid: p.track_descriptor for p in t.packet if p.HasField("track_descriptor")}
    names = {u: d.thread.thread_name or d.name or d.process.process_name for u, d in tracks.items()}
    (proc,) = json.loads((trace / "manifest.json").read_text())["processes"]
    assert "GPU stream 7" in names.values() and f"host thread {proc['pid']}" in names.values()
    assert "HtoD bytes in flight" in names.values()
    te = P.TrackEvent
    open_: dict = {}
    slices: list = []
    flows_out, flows_in = {}, {}
    for p in t.packet:
        if not p.HasField("track_event"):
            continue
        e = p.track_event
        assert e.track_uuid in tracks  # every event on a declared track
        if e.type == te.TYPE_SLICE_BEGIN:
            open_.setdefault(e.track_uuid, []).append((p.timestamp, e))
        elif e.type == te.TYPE_SLICE_END:
            ts, b = open_[e.track_uuid].pop()
            assert p.timestamp > ts
            slices.append((names[e.track_uuid], b.categories[0], b.name, ts, p.timestamp))
            for f in b.flow_ids:
                flows_out[f] = (names[e.track_uuid], ts)
            for f in b.terminating_flow_ids:
                flows_in[f] = (names[e.track_uuid], ts)
    assert not any(open_.values())
    events = json.loads(js.read_text())["traceEvents"]
    jslices = [e for e in events if e["ph"] == "X"]
    for cat in ("api", "copy", "kernel", "nvtx"):
        assert sum(s[1] == cat for s in slices) == sum(e["cat"] == cat for e in jslices) > 0
    assert sum(s[1] == "nvtx" for s in slices) == 50
    # each flow runs from a host thread's call to the GPU stream's work, never backwards in time
    assert flows_in and set(flows_in) <= set(flows_out)
    assert len(flows_in) == sum(e["ph"] == "f" for e in events)
    for f, (track, ts) in flows_in.items():
        assert track.startswith("GPU stream") and flows_out[f][0].startswith("host thread")
        assert ts >= flows_out[f][1]


def test_query_with_no_rows_says_so(trace, tmp_path):
    sql = tmp_path / "none.sql"
    sql.write_text("SELECT * FROM copies WHERE bytes < 0")
    r = cctrace("query", str(sql), str(trace))
    assert r.returncode == 0 and r.stdout.strip() == "no rows", r.stdout
    r = cctrace("query", str(sql), str(trace), "--format", "json")
    assert json.loads(r.stdout) == [] and "no rows" in r.stderr


def test_parquet_export_round_trips(trace, tmp_path):
    r = cctrace("export", str(trace), "--format", "parquet", "-o", str(tmp_path / "pq"))
    assert r.returncode == 0, r.stderr
    con = duckdb.connect(str(trace / "trace.duckdb"), read_only=True)
    for table in ("copies", "api_calls", "kernels", "markers"):
        n = con.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
        assert pq.read_table(tmp_path / "pq" / f"{table}.parquet").num_rows == n


@pytest.mark.parametrize("columns", [80, 200])
def test_query_table_never_splits_a_number(trace, columns):
    """On a narrow terminal a wide result prints one block per row instead of folding cells: every value
    of the JSON result appears whole on the screen, and no line is wider than the terminal."""
    rows = json.loads(cctrace("query", "small_crossings", str(trace), "--format", "json").stdout)
    r = cctrace("query", "small_crossings", str(trace), env={"COLUMNS": str(columns)})
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert max(len(line) for line in lines) <= columns
    tokens = r.stdout.replace("│", " ").split()
    for row in rows:
        for v in row.values():
            assert str(v) in tokens, v
    assert ("-- row 1 --" in r.stdout) == (columns == 80)
