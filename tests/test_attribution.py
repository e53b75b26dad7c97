"""Every canned query recovers the amounts injected into a synthetic trace (within 2%, counts exactly)."""

import json
import shutil

import pytest

from cctrace.analyze.analysis import Analysis, QueryError, diff, list_queries, report
from cctrace.analyze.store import load
from cctrace.trace.shards import ShardWriter
from tests.conftest import ROOT, cctrace
from tests.synth import API, Spec, generate


def close(got, want, rel=0.02):
    return got == pytest.approx(want, rel=rel)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    d = tmp_path_factory.mktemp("synth")
    spec = generate(d, Spec())
    a = Analysis(d, {"normal_call_us": spec.normal_call_ns / 1000})
    yield d, spec, a
    a.close()


def test_every_query_has_a_header_and_runs(synth):
    _, _, a = synth
    qs = list_queries()
    assert {q.name for q in qs} >= {
        "overview",
        "cost_model",
        "small_crossings",
        "stream_concurrency",
        "async_stalls",
        "alloc_copy",
        "sync_waits",
        "gpu_idle",
        "step_timeline",
        "attribution",
        "latency_by_size",
    }
    for q in qs:
        assert q.answers and q.columns, q.name
        t = a.run(q.name)
        assert t.column_names == q.column_names, q.name


def test_cost_model_recovers_toll_and_bandwidth(synth):
    _, spec, a = synth
    row = next(r for r in a.rows("cost_model") if (r["copy_kind"], r["host_kind"]) == ("HtoD", "pinned"))
    assert close(row["toll_us"], spec.toll_ns / 1000) and close(row["gbps"], spec.bytes_per_ns)
    assert row["bandwidth_assumed"] is False


def test_small_crossings(synth):
    _, spec, a = synth
    row = next(r for r in a.rows("small_crossings") if (r["copy_kind"], r["host_kind"]) == ("HtoD", "pinned"))
    assert row["copies"] == spec.truth["small_count"]
    assert close(row["excess_ms"], spec.truth["small_excess_ns"] / 1e6)
    assert row["api_name"] == "cudaMemcpyAsync" and row["per_step"] == spec.small_per_step


def test_small_threshold_can_be_overridden(synth):
    d, _, _ = synth
    a = Analysis(d, {"small_bytes": 100})  # below every copy: nothing is small
    try:
        assert a.rows("small_crossings") == []
    finally:
        a.close()


def test_lost_stream_concurrency(synth):
    _, spec, a = synth
    rows = a.rows("stream_concurrency")
    assert close(sum(r["wait_ms"] for r in rows), spec.truth["stream_wait_ns"] / 1e6)
    pairs = {(r["stream_id"], r["blocked_by_stream"]): r["copies_delayed"] for r in rows}
    assert pairs == {(21, 20): spec.steps, (22, 20): spec.steps, (22, 21): spec.steps}


def test_async_stalls(synth):
    _, spec, a = synth
    (row,) = a.rows("async_stalls")
    assert row["name"] == "cudaLaunchKernel" and row["stalled_calls"] == spec.truth["stall_count"]
    assert close(row["stall_ms"], spec.truth["stall_ns"] / 1e6)


def test_alloc_and_copy(synth):
    _, spec, a = synth
    (row,) = a.rows("alloc_copy")
    assert row["pairs"] == spec.truth["alloc_pairs"]
    assert close(row["total_ms"], spec.truth["alloc_copy_ns"] / 1e6)


def test_sync_waits_and_readbacks(synth):
    _, spec, a = synth
    rows = a.rows("sync_waits")
    assert {r["wait_kind"] for r in rows} == {"sync", "readback"}
    assert close(sum(r["wait_ms"] for r in rows), spec.truth["sync_ns"] / 1e6)


def test_gpu_idle_is_attributed_to_the_stalls_that_caused_it(synth):
    _, spec, a = synth
    rows = {r["category"]: r for r in a.rows("gpu_idle")}
    assert close(rows["async_stalls"]["idle_overlap_ms"], spec.truth["idle_stall_ns"] / 1e6)
    assert sum(r["idle_overlap_ms"] for c, r in rows.items() if c != "async_stalls") < 0.01


def test_step_timeline(synth):
    _, spec, a = synth
    rows = a.rows("step_timeline")
    assert len(rows) == spec.steps
    assert all(close(r["async_stalls_us"], spec.stalls_per_step * spec.stall_ns / 1000) for r in rows)
    assert close(sum(r["step_us"] for r in rows) / spec.steps, spec.truth["step_ns"] / 1000)


def test_report_totals_and_unexplained(synth):
    d, spec, _ = synth
    r = report(d, {"normal_call_us": spec.normal_call_ns / 1000})
    cats = {c["category"]: c for c in r["categories"]}
    assert r["steps"] == spec.steps and r["step_source"] == "nvtx"
    assert close(cats["async_stalls"]["lost_ms"], spec.truth["stall_ns"] / 1e6)
    assert close(cats["stream_concurrency"]["lost_ms"], spec.truth["stream_wait_ns"] / 1e6)
    assert close(r["explained_ms"] + r["unexplained_ms"], r["window_ms"], rel=1e-6)
    assert cats["async_stalls"]["advice"] and r["gpu_busy_complete"]
    assert r["gpu_times"] and all(c["measured"] for c in r["categories"])  # CUPTI's copies: GPU-side times


def test_diff_attributes_a_known_gap_to_its_category(tmp_path):
    base = generate(tmp_path / "base", Spec(stall_ns=0))
    slow = generate(tmp_path / "slow", Spec(stall_ns=300_000))
    d = diff(tmp_path / "base", tmp_path / "slow", {"normal_call_us": 5.0})
    gap = (slow.truth["step_ns"] - base.truth["step_ns"]) / 1e6
    assert close(d["gap_ms_per_step"], gap)
    assert close(d["gap_median_ms_per_step"], gap)  # equal steps: the median gap is the mean gap
    row = next(c for c in d["categories"] if c["category"] == "async_stalls")
    assert close(row["share_of_gap"], 1.0)
    assert abs(d["unexplained_ms_per_step"]) < 0.02 * gap
    others = [c["delta_ms_per_step"] for c in d["categories"] if c["category"] != "async_stalls"]
    assert max(abs(x) for x in others) < 0.02 * gap
    assert d["bridge_injected_ms_per_step"] is None  # neither trace ran under the bridge emulator


def test_host_probe_only_trace(tmp_path):
    """No CUPTI copies: transfers come from probed copy calls (bytes and direction from arguments)."""
    w = ShardWriter(tmp_path, 7)
    cols = (*API, "bytes", "copy_kind")
    rows = [
        (
            7,
            8,
            "cuMemcpyHtoDAsync_v2",
            "driver",
            1000 + i * 1_000_000,
            1000 + i * 1_000_000 + 30_000 + (500_000 if i < 5 else 0),  # 5 calls block 500 us
            i,
            0,
            "ebpf",
            128,
            "HtoD",
        )
        for i in range(40)
    ]
    rows += [
        (
            7,
            8,
            "cuMemcpyHtoDAsync_v2",
            "driver",
            100_000_000 + i * 1_000_000,
            100_000_000 + i * 1_000_000 + 30_000 + (8 << 20) // 10,
            100 + i,
            0,
            "ebpf",
            8 << 20,
            "HtoD",
        )
        for i in range(5)
    ]
    w.extend("api_calls", cols, rows)
    w.close()
    load(tmp_path)
    a = Analysis(tmp_path, {"normal_call_us": 5.0, "steps_from": "none"})  # the whole recording
    try:
        (cm,) = a.rows("cost_model")
        assert close(cm["toll_us"], 30.0) and close(cm["gbps"], 10.0)
        (small,) = a.rows("small_crossings")
        assert small["copies"] == 40
        # what the crossing model explains (toll + bytes) is the crossing's; only the rest stalled
        (stalls,) = a.rows("async_stalls")
        assert stalls["stalled_calls"] == 5
        assert close(stalls["stall_ms"], 5 * (0.5 - 0.005 - 128 / 10 / 1e6))
    finally:
        a.close()


def test_unknown_parameter_and_query_are_clear_errors(synth):
    d, _, _ = synth
    with pytest.raises(QueryError, match="unknown parameter"):
        Analysis(d, {"bogus": 1})
    r = cctrace("query", "nope", str(d))
    assert r.returncode == 2 and "no canned query 'nope'" in r.stderr
    r = cctrace("report", str(d), "--param", "normal_call_us=abc")
    assert r.returncode == 2 and "needs a float" in r.stderr
    r = cctrace("report", str(d / "missing"))
    assert r.returncode == 3 and "does not exist" in r.stderr


def test_cli_report_query_diff(synth, tmp_path):
    d, spec, _ = synth
    r = cctrace("report", str(d), "--json", "--param", "normal_call_us=5")
    assert r.returncode == 0, r.stderr
    j = json.loads(r.stdout)
    assert {"window_ms", "steps", "categories", "explained_ms", "unexplained_ms", "cost_model"} <= set(j)
    r = cctrace("report", str(d), "--markdown")
    assert r.returncode == 0 and "| async stalls |" in r.stdout
    r = cctrace("report", str(d))
    assert r.returncode == 0 and "Where the time went" in r.stdout
    r = cctrace("query", "--list")
    assert r.returncode == 0 and "stream_concurrency" in r.stdout and "normal_call_us" in r.stdout
    r = cctrace("query", "alloc_copy", str(d), "--format", "json")
    assert json.loads(r.stdout)[0]["pairs"] == spec.truth["alloc_pairs"]
    r = cctrace("query", "sync_waits", str(d), "--format", "csv")
    assert r.stdout.splitlines()[0].startswith('"wait_kind"')
    out = tmp_path / "x.parquet"
    r = cctrace("query", "overview", str(d), "--format", "parquet", "-o", str(out))
    import pyarrow.parquet as pq

    assert r.returncode == 0 and pq.read_table(out).num_rows > 0
    own = tmp_path / "mine.sql"
    own.write_text("SELECT count(*) AS n FROM steps")
    r = cctrace("query", str(own), str(d), "--format", "json")
    assert json.loads(r.stdout) == [{"n": spec.steps}]
    r = cctrace("diff", str(d), str(d), "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["gap_ms_per_step"] == 0


def test_parameters_are_bound_not_pasted(synth):
    d, _, _ = synth
    a = Analysis(d, {"step_pattern": "x'; DROP TABLE copies; --"})
    try:
        assert a.scalar("SELECT count(*) FROM marked_steps") == 0
        assert a.scalar("SELECT count(*) FROM copies") > 0
    finally:
        a.close()


# ---- one fact in one place ------------------------------------------------------------------------


def _sql_texts() -> dict[str, str]:
    from cctrace.analyze.analysis import QUERY_DIR

    return {p.name: p.read_text() for p in sorted(QUERY_DIR.glob("*.sql"))}


def test_every_parameter_is_bound_from_the_table_and_the_sql_has_no_defaults():
    import re

    from cctrace.analyze.analysis import PARAMS
    from cctrace.analyze.categories import code_variables

    texts = _sql_texts()
    read = {v for t in texts.values() for v in re.findall(r"getvariable\('(\w+)'\)", t)}
    set_in_sql = {v for t in texts.values() for v in re.findall(r"SET VARIABLE (\w+)", t)}
    assert read - set_in_sql == set(PARAMS) | set(code_variables())  # every one read is bound, none unused
    fallbacks = [n for n, t in texts.items() if re.search(r"coalesce\(getvariable\('\w+'\),\s*['\d]", t)]
    assert fallbacks == []


def test_categories_come_from_one_table(synth):
    import re

    from cctrace.analyze.categories import CATEGORIES, LABELS, NAMES
    from cctrace.ui import render

    _, _, a = synth
    texts = "\n".join(_sql_texts().values())
    assert set(re.findall(r"getvariable\('c_(\w+)'\)", texts)) == set(NAMES)
    assert [r["category"] for r in sorted(a.rows("attribution"), key=lambda r: NAMES.index(r["category"]))] == list(
        NAMES
    )
    assert a.run("step_timeline").column_names[3:] == [f"{n}_us" for n in NAMES]
    assert {q.name for q in list_queries()} >= {c.query for c in CATEGORIES}
    assert render.LABELS is LABELS and len({c.code for c in CATEGORIES}) == len(CATEGORIES)


def test_a_query_builds_only_the_modules_it_needs(synth):
    d, _, _ = synth
    a = Analysis(d)
    try:
        a.run("cost_model")
        assert a._built == {"traced", "steps", "transfers", "cost_model"}
        a.run("stream_concurrency")
        assert a._built == {"traced", "steps", "transfers", "cost_model", "concurrency"}
        a.scalar("SELECT count(*) FROM category_totals")  # SQL of any kind: every module
        assert "categories" in a._built and "truth" in a._built
    finally:
        a.close()
    r = cctrace("query", "--list")
    assert r.returncode == 0
    assert "small_bytes" in r.stdout and "steps_from" in r.stdout and "(default auto)" in r.stdout


def test_advice_leaves_out_what_measured_worse_and_what_needs_cupti():
    from cctrace.analyze.categories import advise

    h100 = "NVIDIA H100 80GB HBM3"
    # the staging stream measured -8.8% on the H100: advised elsewhere, never there
    assert "staging stream" in advise("async_stalls", {}, "Other GPU", False)
    assert "staging stream" not in advise("async_stalls", {}, h100, False)
    assert "one idle stream" not in advise("stream_concurrency", {}, h100, False)
    # what the trace already does is not advised
    assert "pack" in advise("small_crossings", {}, h100, False)
    assert "already one copy per step" in advise("small_crossings", {"packed_h2d": True}, h100, False)
    assert "worker thread" not in advise("sync_waits", {"async_readback": True}, h100, False)
    assert "readbacks" in advise("small_crossings", {"readbacks_dominate": True}, h100, False)
    # host probes cannot tell memory kinds or streams
    assert "record with CUPTI" in advise("small_crossings", {}, h100, True)
    assert "staging stream" not in advise("async_stalls", {}, "Other GPU", True)


def test_a_cupti_trace_without_copies_still_has_gpu_times(synth, tmp_path):
    """No copies at all (e.g. --kinds without memcpy) is not host-timed copies: nothing is 'not measured'."""
    d, spec, _ = synth
    bare = tmp_path / "bare"
    shutil.copytree(d, bare, ignore=shutil.ignore_patterns("trace.duckdb*", "copies.*"))
    r = report(bare, {"normal_call_us": spec.normal_call_ns / 1000})
    assert r["gpu_times"] and all(c["measured"] for c in r["categories"])
    assert r["gpu_idle_ms"] is not None and r["gpu_busy_complete"]


def test_a_category_one_trace_cannot_measure_explains_nothing_in_a_diff(synth, tmp_path):
    """Against an interposer-only trace (host-timed copies), lost stream concurrency is measured in BASE
    only: its delta is shown as not measured and counts in neither the explained total nor the call sites."""
    d, spec, _ = synth
    other = tmp_path / "interposed"
    sample = ROOT / "sample_traces" / "workloads-interposer" / "traces" / "cupy_loop-default"
    shutil.copytree(sample, other, ignore=shutil.ignore_patterns("trace.duckdb*"))
    r = diff(d, other, {"normal_call_us": spec.normal_call_ns / 1000})
    rows = {c["category"]: c for c in r["categories"]}
    assert [n for n, c in rows.items() if not c["measured"]] == ["stream_concurrency"]
    assert rows["stream_concurrency"]["base_ms_per_step"] > 0  # what BASE lost there is real, and left out
    measured = sum(c["delta_ms_per_step"] for c in rows.values() if c["measured"])
    assert close(r["explained_ms_per_step"], measured, rel=1e-3)
    assert close(r["unexplained_ms_per_step"], r["gap_ms_per_step"] - measured - r["slow_steps_ms_per_step"], rel=1e-3)
    assert "stream_concurrency" not in {s["category"] for s in r["callsites"]}
    assert any("GPU-side copy times" in w for w in r["warnings"])
