"""Call sites in the outputs: the `callsites` query gives each category's lost time to the Python
line whose calls lost it, on a synthetic trace where every call's stack is known (tests/synth.py)."""

import pytest

from tests import test_attribution
from tests.synth import APP, SITES

synth = test_attribution.synth  # the synthetic trace, as the attribution tests build it


def _row(rows, site: str, category: str) -> dict:
    (r,) = [r for r in rows if r["callsite"] == f"{APP}:{SITES[site]}" and r["category"] == category]
    return r


def test_each_category_goes_to_the_line_that_lost_it(synth):
    _, spec, a = synth
    rows = a.rows("callsites")
    t, steps = spec.truth, spec.steps
    small = _row(rows, "small", "small_crossings")
    assert small["calls"] == t["small_count"] and small["bytes"] == t["small_count"] * spec.small_bytes
    assert small["lost_ms"] == pytest.approx(t["small_excess_ns"] / 1e6, rel=0.02)
    assert small["function"] == f"Server.line{SITES['small']}"  # the call site, not the torch frame below it
    assert small["per_step"] == spec.small_per_step
    stall = _row(rows, "stall", "async_stalls")
    assert stall["calls"] == t["stall_count"] and stall["lost_ms"] == pytest.approx(t["stall_ns"] / 1e6, rel=0.02)
    pair = _row(rows, "alloc_copy", "alloc_and_copy")  # an alloc-and-copy pair is its copy call's
    assert pair["calls"] == t["alloc_pairs"] and pair["lost_ms"] == pytest.approx(t["alloc_copy_ns"] / 1e6, rel=0.02)
    readback, sync = _row(rows, "readback", "sync_waits"), _row(rows, "sync", "sync_waits")
    assert readback["calls"] == sync["calls"] == steps
    assert sync["lost_ms"] == pytest.approx(steps * spec.sync_ns / 1e6, rel=0.02)
    streams = _row(rows, "streams", "stream_concurrency")
    assert streams["lost_ms"] == pytest.approx(t["stream_wait_ns"] / 1e6, rel=0.02)
    # every lost stretch has a call site here; the totals are the attribution's
    assert not [r for r in rows if r["callsite"] is None]
    totals = {r["category"]: r["lost_ms"] for r in a.rows("attribution")}
    for cat, lost in totals.items():
        got = sum(r["lost_ms"] for r in rows if r["category"] == cat)
        assert got == pytest.approx(lost, abs=0.01), cat


def test_report_names_the_line_behind_each_category(synth):
    from cctrace.analyze.analysis import report

    d, spec, _ = synth
    r = report(d, {"normal_call_us": spec.normal_call_ns / 1000})
    where = {c["category"]: c["where"] for c in r["categories"]}
    assert where == {
        "small_crossings": f"{APP}:{SITES['small']} Server.line{SITES['small']}",
        "stream_concurrency": f"{APP}:{SITES['streams']} Server.line{SITES['streams']}",
        "async_stalls": f"{APP}:{SITES['stall']} Server.line{SITES['stall']}",
        "alloc_and_copy": f"{APP}:{SITES['alloc_copy']} Server.line{SITES['alloc_copy']}",
        "sync_waits": f"{APP}:{SITES['readback']} Server.line{SITES['readback']}",  # 50 us readbacks > 20 us syncs
    }
    assert r["callsites"][0]["lost_ms"] == max(s["lost_ms"] for s in r["callsites"])


def test_report_and_diff_print_call_sites(synth, tmp_path):
    from tests.conftest import cctrace
    from tests.synth import Spec, generate

    d, spec, _ = synth
    normal = f"normal_call_us={spec.normal_call_ns / 1000}"
    out = cctrace("report", str(d), "--param", normal)
    assert out.returncode == 0, out.stderr
    assert "Top call sites" in out.stdout and f"serve.py:{SITES['small']}" in out.stdout
    md = cctrace("report", str(d), "--markdown", "--param", normal).stdout
    assert f"Most of it at `{APP}:{SITES['stall']} Server.line{SITES['stall']}`." in md
    # a trace whose launches stall 200 us longer: the diff names their line first
    slower = Spec(stall_ns=spec.stall_ns + 200_000)
    generate(tmp_path / "slower", slower)
    r = cctrace("diff", str(d), str(tmp_path / "slower"), "--json", "--param", normal)
    assert r.returncode == 0, r.stderr
    import json

    top = json.loads(r.stdout)["callsites"][0]
    assert (top["callsite"], top["category"]) == (f"{APP}:{SITES['stall']}", "async_stalls")
    assert top["delta_ms_per_step"] == pytest.approx(spec.stalls_per_step * 0.2, rel=0.02)
    text = cctrace("diff", str(d), str(tmp_path / "slower"), "--param", normal).stdout
    assert "Call sites that changed most" in text and f"serve.py:{SITES['stall']}" in text


def test_strings_from_a_trace_print_without_control_characters():
    from cctrace.ui.render import site

    row = {"callsite": "/srv/\x1b[2Japp.py:3", "function": "f\x07\ng"}
    assert site(row) == "/srv/\\x1b[2Japp.py:3 f\\x07\\x0ag"
    assert site({"callsite": None, "function": None}) == "(no stack)"


def test_exports_carry_call_sites_and_stacks(synth, tmp_path):
    import json

    import pyarrow.parquet as pq

    from tests.conftest import cctrace

    d, _, _ = synth
    out = tmp_path / "t.json"
    r = cctrace("export", str(d), "--format", "perfetto", "-o", str(out))
    assert r.returncode == 0, r.stderr
    api = [e for e in json.loads(out.read_text())["traceEvents"] if e["ph"] == "X" and e["cat"] == "api"]
    by_name = {}
    for e in api:
        by_name.setdefault(e["name"], set()).add(e["args"].get("callsite"))
    stall = SITES["stall"]
    assert by_name["cudaLaunchKernel"] == {f"{APP}:{stall} Server.line{stall}"}
    assert by_name["cudaGetDevice"] == {None}  # recorded without a stack: no call site
    r = cctrace("export", str(d), "--format", "parquet", "-o", str(tmp_path / "pq"))
    assert r.returncode == 0, r.stderr
    stacks = pq.read_table(tmp_path / "pq" / "stacks.parquet").to_pylist()
    assert len(stacks) == 3 * len(SITES) and sum(s["is_callsite"] for s in stacks) == len(SITES)


async def test_explorer_shows_the_call_site_and_stack_of_a_crossing(synth):
    from textual.widgets import Static

    from cctrace.ui.explore import Explorer, Timeline

    d, _, _ = synth
    app = Explorer(d)
    async with app.run_test(size=(160, 40)) as pilot:
        findings = app.query_one("#findings")
        stall = SITES["stall"]
        advice = str(findings.get_row("async_stalls")[2])
        assert advice.endswith(f"Most of it at {APP}:{stall} Server.line{stall}.")
        await pilot.press("2")
        tl = app.query_one(Timeline)
        tl.selected_ns = tl.lo - 1
        await pilot.press("e")  # the first copy: a small H2D at the `small` line
        detail = str(app.query_one("#event-detail", Static).render())
        small = SITES["small"]
        assert f"at {APP}:{small} Server.line{small}" in detail
        assert (
            f"stack: Tensor.to (_tensor.py:77) < Server.line{small} (serve.py:{small}) < main (serve.py:300)" in detail
        )


def test_html_report_says_where_each_category_was_lost(synth, tmp_path):
    from tests.conftest import cctrace

    d, spec, _ = synth
    out = tmp_path / "r.html"
    r = cctrace("report", str(d), "--html", str(out), "--param", f"normal_call_us={spec.normal_call_ns / 1000}")
    assert r.returncode == 0, r.stderr
    stall = SITES["stall"]
    assert f"Most of it at <code>{APP}:{stall} Server.line{stall}</code>." in out.read_text()


def test_callsite_diff_orders_calls_without_a_stack_too():
    from cctrace.analyze.analysis import callsite_diff

    def rep(rows):
        return {"steps": 2, "callsites": rows}

    site = {"callsite": "/a.py:1", "function": "f", "category": "sync_waits", "lost_ms": 4.0}
    none = {"callsite": None, "function": None, "category": "sync_waits", "lost_ms": 4.0}
    rows = callsite_diff(rep([]), rep([none, site]))
    assert [r["callsite"] for r in rows] == [None, "/a.py:1"]  # ties: the unknown site first, then by name
    assert [r["delta_ms_per_step"] for r in rows] == [2.0, 2.0]


def test_call_sites_show_relative_to_the_commands_directory(synth, tmp_path):
    import json
    import shutil

    from tests.conftest import cctrace

    d, spec, _ = synth
    t = tmp_path / "t"
    shutil.copytree(d, t)
    m = json.loads((t / "manifest.json").read_text())
    (t / "manifest.json").write_text(json.dumps({**m, "cwd": "/srv/app"}))
    md = cctrace("report", str(t), "--markdown", "--param", f"normal_call_us={spec.normal_call_ns / 1000}").stdout
    stall = SITES["stall"]
    assert f"Most of it at `serve.py:{stall} Server.line{stall}`." in md
    assert f"| `serve.py:{SITES['small']} Server.line{SITES['small']}` | small crossings |" in md


def _mixed_trace(d):
    """CUPTI and the interposer (`record --interpose on`) number their calls independently, so one
    process holds the same correlation id from both. Here CUPTI's calls 1 (a sync) and 3 (a copy) come
    from a thread with no Python, and the interposer's calls 1 and 3 from Python (stack at APP:10)."""
    import json

    from cctrace.analyze.store import load
    from cctrace.trace.shards import ShardWriter
    from tests.synth import API, COPY, STACK

    pid, py, native, ms = 7, 70, 71, 1_000_000
    ip = 1 << 32  # the interposer's stack ids as stored (STACK_ID_BASE above the written ones)
    cupti = [
        (pid, py, "cudaStreamSynchronize", "runtime", 10 * ms, 12 * ms, 2, 0, "cupti", 5),
        (pid, native, "cudaStreamSynchronize", "runtime", 20 * ms, 23 * ms, 1, 0, "cupti", None),
        (pid, native, "cudaMemcpyAsync", "runtime", 30 * ms, 30 * ms + 5000, 3, 0, "cupti", None),
    ]
    interposer = [  # the same calls' driver calls, numbered by the interposer thread by thread
        (pid, py, "cuStreamSynchronize", "driver", 10 * ms, 12 * ms, 1, 0, "interposer", ip + 1),
        (pid, py, "cuMemcpyHtoDAsync_v2", "driver", 40 * ms, 40 * ms + 5000, 3, 0, "interposer", ip + 1),
        (pid, native, "cuStreamSynchronize", "driver", 20 * ms, 23 * ms, 2, 0, "interposer", None),
    ]
    copy = (pid, "memcpy", "HtoD", "pinned", "device", 256, 30 * ms + 2000, 30 * ms + 4000, 0, 1, 7, 3, True, "cupti")
    stacks = [(pid, 5, 0, APP, 10, "main", True, "cupti"), (pid, ip + 1, 0, APP, 10, "main", True, "interposer")]
    w = ShardWriter(d, pid)
    w.extend("api_calls", (*API, "stack_id"), cupti + interposer)
    w.extend("copies", COPY, [copy])
    w.extend("stacks", STACK, stacks)
    w.close()
    (d / "manifest.json").write_text(json.dumps({"command": ["mixed"], "processes": []}))
    load(d)
    return d


def test_a_call_takes_its_stack_from_its_own_source_only(tmp_path):
    """A CUPTI call without a stack does not take the stack of the interposer's call of its number."""
    from cctrace.analyze.analysis import Analysis

    a = Analysis(_mixed_trace(tmp_path))
    try:
        rows = {r["callsite"]: r for r in a.rows("callsites") if r["category"] == "sync_waits"}
    finally:
        a.close()
    assert rows[f"{APP}:10"]["calls"] == 1 and rows[f"{APP}:10"]["lost_ms"] == 2
    assert rows[None]["calls"] == 1 and rows[None]["lost_ms"] == 3  # the native thread's: no call site


async def test_explorer_shows_the_stack_of_the_copys_own_call(tmp_path):
    from textual.widgets import Static

    from cctrace.ui.explore import Explorer, Timeline

    app = Explorer(_mixed_trace(tmp_path))
    async with app.run_test(size=(160, 40)) as pilot:
        await pilot.press("2")
        tl = app.query_one(Timeline)
        tl.selected_ns = tl.lo - 1
        await pilot.press("e")  # the copy, issued by CUPTI's call 3 on the thread with no Python
        detail = str(app.query_one("#event-detail", Static).render())
        assert "correlation 3" in detail and "cudaMemcpyAsync" in detail
        assert "serve.py" not in detail, detail
