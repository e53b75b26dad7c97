"""Bounded tracing (record --toggle-signal/--delay/--duration) with CUPTI truly detached outside the
windows: the real launcher, tracer and C shim in real subprocesses with real signals, over the
stand-in libcupti and cupti-python of tests/standin/ (no GPU here). What is asserted: which calls
were recorded (only those inside a window), that no CUPTI function was entered while detached, and
that the analysis counts only the traced time: synthetic traces (tests/synth.py) with two windows and
an untraced gap give exact step counts, GPU-idle totals and windows, and so does a real recording
through `report --json`.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from cctrace.analyze.analysis import Analysis, report
from cctrace.analyze.store import load, traced_windows_table
from cctrace.trace.shards import read_shard
from cctrace.ui.html import report_page
from cctrace.ui.render import describe_traced, report_markdown
from tests.conftest import STANDIN, cctrace, run_answering, toggle_when_asked
from tests.synth import PID, TID, US, Spec, generate, serve_loop


def _record(env, out: Path, mode: str, *window: str, answer=None) -> list[dict]:
    """Run the program under `cctrace record`; `answer(proc, msg)` may signal cctrace. Its messages."""
    cmd = [sys.executable, "-m", "cctrace", "record", "-o", str(out), "--kinds", "memcpy,runtime"]
    cmd += ["--flush-interval", "0.05", "--host-probes", "off", "--no-load", "-q", *window]
    cmd += ["--", sys.executable, str(STANDIN / "windowed.py"), mode]
    return run_answering(cmd, env, answer)


def _recorded(out: Path) -> tuple[dict, dict]:
    """Correlation ids (sorted) of the recorded copies and API calls, and the one process record."""
    (proc,) = json.loads((out / "manifest.json").read_text())["processes"]
    ids = {}
    for table in ("copies", "api_calls"):
        path = out / f"{table}.{proc['pid']}.arrows"
        data = read_shard(path).data if path.exists() else None
        ids[table] = sorted(data.column("correlation_id").to_pylist()) if data is not None else []
        if data is not None and table == "copies":
            ids["copy_times"] = list(
                zip(data.column("start_ns").to_pylist(), data.column("end_ns").to_pylist(), strict=True)
            )
    return ids, proc


def _cupti_calls(pair: list[dict]) -> int:
    before, after = pair
    return after["n_calls"] - before["n_calls"]


def test_toggle_signal_detaches_cupti_and_attaches_it_again(tmp_path, standin_env):
    out = tmp_path / "t"

    msgs = _record(standin_env, out, "toggle", "--toggle-signal", "USR2", answer=toggle_when_asked)
    ids, proc = _recorded(out)
    by = {m["at"]: m for m in msgs}
    # inside the windows: every call, both ways; outside: none
    for table in ("copies", "api_calls"):
        got = ids[table]
        steady = [i for i in got if i < 10000]
        assert steady == list(range(100)) + list(range(200, 300)), table
        assert not [i for i in got if 100 <= i < 200]
    # while detached (0.5 s, ten flush intervals) no CUPTI function was entered at all
    assert _cupti_calls(by["on?"]["detached"]) == 0
    final = by["done"]["counters"]
    assert final["n_finalize"] == 1  # one detach, finalized at a call's exit
    assert final["n_subscribe"] == 2 and final["n_register"] == 2  # attached twice
    health = proc["sources"]["cupti"]
    assert health["detach"] == {"state": "attached", "detaches": 1, "finalized": 1, "finalize_status": 0}
    assert proc["cupti"] == "active"
    # two windows in the process, in order, and every recorded copy inside one of them
    (w1, w2) = proc["windows"]
    assert w1[0] < w1[1] < w2[0] < w2[1]
    assert all(any(a <= s and e <= b for a, b in proc["windows"]) for s, e in ids["copy_times"])
    m = json.loads((out / "manifest.json").read_text())
    assert m["options"]["window"]["toggle_signal"] == "SIGUSR2"
    assert len(m["options"]["window"]["windows"]) == 2
    assert not list(out.glob("control.*.fifo"))  # the tracer removed its pipe
    steps, lo, hi, idle = check_traced_report(out, proc)
    assert steps > 0 and w1[0] <= lo < w1[1] and w2[0] < hi <= w2[1]  # the period of the copy calls, in both
    # read as if traced throughout: one step more (the interval across the detach), the same window,
    # and the time between the windows idle
    gap = w2[0] - w1[1]
    whole = out.with_name("whole")
    shutil.copytree(out, whole, ignore=shutil.ignore_patterns("trace.duckdb*"))
    del m["options"]["window"], m["processes"][0]["windows"]
    (whole / "manifest.json").write_text(json.dumps(m))
    load(whole)
    w_lo, w_hi, w_traced, w_idle, w_steps, _, _ = _analysed(whole)
    assert (w_steps, w_lo, w_hi, w_traced, w_idle) == (steps + 1, lo, hi, hi - lo, idle + gap)


def check_traced_report(out: Path, proc: dict) -> tuple[int, int, int, int]:
    """`report --json` on a recording of `proc` with two tracing windows: what was traced, the window,
    steps and GPU-idle time inside the windows. Steps, the window's bounds and GPU idle ns."""
    r = cctrace("report", "--json", str(out))
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    windows = proc["windows"]
    m = json.loads((out / "manifest.json").read_text())
    assert rep["traced"] == {
        "windows": 2,
        "traced_ms": round(sum(b - a for a, b in windows) / 1e6, 3),
        "run_ms": round((m["end_ns"] - m["start_ns"]) / 1e6, 3),
    }
    text = cctrace("report", str(out)).stdout
    assert "traced 2 windows, " in text  # the figures: rep["traced"]
    lo, hi, traced_ns, idle, steps, across, copies = _analysed(out)
    assert steps == rep["steps"] and across == 0  # no step holds the detach
    assert any(w0 <= lo < w1 for w0, w1 in windows) and any(w0 < hi <= w1 for w0, w1 in windows)
    # the window's traced time: its length less the time between the windows
    assert traced_ns == sum(max(0, min(w1, hi) - max(w0, lo)) for w0, w1 in windows)
    assert rep["window_ms"] == round(traced_ns / 1e6, 3)
    # GPU idle: before each copy in the window, back to the previous one's end (the window's start
    # before the first), cut to the windows: the detached time between them is not idle time
    want, busy = 0, lo
    for s, e in copies:
        for w0, w1 in windows:
            want += max(0, min(s, w1) - max(busy, w0))
        busy = max(busy, e)
    assert idle == want < traced_ns
    return steps, lo, hi, idle


def _analysed(trace: Path) -> tuple:
    """The window, its traced time, GPU idle, steps, steps across untraced time, and the window's copies."""
    a = Analysis(trace)
    try:
        lo, hi, traced_ns, steps = a.con.execute("SELECT start_ns, end_ns, traced_ns, steps FROM win").fetchall()[0]
        idle = a.scalar("SELECT coalesce(sum(end_ns - start_ns), 0) FROM gpu_idle")
        across = a.scalar(
            "SELECT count(*) FROM steps s WHERE NOT EXISTS "
            "(SELECT 1 FROM traced_windows t WHERE s.start_ns >= t.start_ns AND s.end_ns <= t.end_ns)"
        )
        copies = a.con.execute(
            "SELECT start_ns, end_ns FROM copies WHERE end_ns > ? AND start_ns < ? ORDER BY start_ns", [lo, hi]
        ).fetchall()
    finally:
        a.close()
    return lo, hi, traced_ns, idle, steps, across, copies


@pytest.mark.parametrize("mode", ["idle", "idle-cancel"])
def test_a_detach_without_cuda_calls_finalizes_at_the_next_call_or_is_called_off(tmp_path, standin_env, mode):
    """No CUDA call returns while the detach waits: CUPTI is finalized at the program's next call
    ('idle'), or, when tracing is turned on again first, the finalize is called off ('idle-cancel')."""
    out = tmp_path / mode

    msgs = _record(standin_env, out, mode, "--toggle-signal", "USR2", answer=toggle_when_asked)
    by = {m["at"]: m for m in msgs}
    assert by["on?"]["state"].startswith("finalize pending")
    ids, proc = _recorded(out)
    expected = list(range(100)) + list(range(200, 300))
    assert ids["copies"] == expected and ids["api_calls"] == expected
    final = by["done"]["counters"]
    if mode == "idle":
        assert by["on?"]["counters"]["n_finalize"] == 1  # at phase B's first call
        assert (final["n_subscribe"], final["n_register"]) == (2, 2)
    else:
        assert final["n_finalize"] == 0  # called off: CUPTI stayed attached, its subscription reused
        assert (final["n_subscribe"], final["n_register"]) == (1, 1)
    assert proc["sources"]["cupti"]["detach"]["state"] == "attached"


def test_delay_and_duration_trace_one_window_only(tmp_path, standin_env):
    for delay in (0.3, 1.5, 5.0):  # a machine under load may start the program after a short window
        out = tmp_path / f"w{delay}"
        (msg,) = _record(standin_env, out, "window", "--delay", str(delay), "--duration", "0.4")
        if msg["at"] != "missed":
            break
    assert msg["at"] == "done"
    ids, proc = _recorded(out)
    opened, closed = msg["opened"], msg["closed"]
    for table in ("copies", "api_calls"):
        got = ids[table]
        assert got and got == list(range(got[0], got[-1] + 1)), table  # one unbroken run of calls
        assert got[0] <= opened and got[-1] < closed  # all seen attached were recorded; none after
    assert _cupti_calls(msg["detached"]) == 0
    (w,) = proc["windows"]
    assert msg["detached"][0]["t_first_call"] >= w[0]  # CUPTI was not touched before the window opened
    assert all(w[0] <= s and e <= w[1] for s, e in ids["copy_times"])
    m = json.loads((out / "manifest.json").read_text())
    (lw,) = m["options"]["window"]["windows"]
    assert lw[0] - m["start_ns"] >= delay * 1e9  # the launcher opened it no sooner than --delay
    assert lw[1] - m["start_ns"] >= (delay + 0.4) * 1e9  # and closed it no sooner than --delay + --duration
    rep = json.loads(cctrace("report", "--json", str(out)).stdout)
    assert rep["traced"] == {
        "windows": 1,
        "traced_ms": round((w[1] - w[0]) / 1e6, 3),
        "run_ms": round((m["end_ns"] - m["start_ns"]) / 1e6, 3),
    }


def test_window_options_say_no_in_one_line(tmp_path, run_cctrace):
    r = run_cctrace("record", "-o", str(tmp_path / "x"), "--start-detached", "--", "true")
    assert r.returncode == 2 and "needs --toggle-signal" in r.stderr and "Traceback" not in r.stderr
    r = run_cctrace("record", "-o", str(tmp_path / "x"), "--toggle-signal", "KILL", "--", "true")
    assert r.returncode == 2 and "choose one of" in r.stderr
    r = run_cctrace(
        "record", "-o", str(tmp_path / "x"), "--duration", "1", "--emulate-bridge", "b300-tdx", "--", "true"
    )
    assert r.returncode == 2 and "cannot be combined" in r.stderr


# ---- the analysis counts only traced time (synthetic traces) ----------------------------------------


def test_two_windows_nvtx_steps_window_and_gpu_idle_exactly(tmp_path):
    """20 NVTX steps, tracing off for 0.5 s after the 10th; each window opens 100 µs before its first
    event and closes 100 µs after its last. The GPU is idle only in the stalls and those margins."""
    margin, untraced = 100 * US, 500_000 * US
    spec = generate(tmp_path / "w", Spec(steps=20, detach_after=9, untraced_ns=untraced, margin_ns=margin))
    generate(tmp_path / "whole", Spec(steps=20))
    gap = untraced - 2 * margin  # between the windows
    a = Analysis(tmp_path / "w", {"normal_call_us": spec.normal_call_ns / 1000})
    try:
        w = a.one("SELECT * FROM win")
        first, last = a.con.execute("SELECT min(start_ns), max(end_ns) FROM steps").fetchall()[0]
        idle = a.scalar("SELECT sum(end_ns - start_ns) FROM gpu_idle")
    finally:
        a.close()
    assert w["steps"] == 20 and w["step_source"] == "nvtx"
    assert (w["start_ns"], w["end_ns"]) == (first, last)
    assert w["traced_ns"] == last - first - gap
    assert idle == spec.truth["idle_stall_ns"] + 2 * margin
    params = {"normal_call_us": spec.normal_call_ns / 1000}
    rep, ref = report(tmp_path / "w", params), report(tmp_path / "whole", params)
    assert rep["window_ms"] == round(w["traced_ns"] / 1e6, 3)
    assert rep["gpu_idle_ms"] == round(idle / 1e6, 3)
    (w1, w2) = spec.truth["windows"]
    assert rep["traced"] == {
        "windows": 2,
        "traced_ms": round((w1[1] - w1[0] + w2[1] - w2[0]) / 1e6, 3),
        "run_ms": round((w2[1] + margin) / 1e6, 3),  # the recording ran on a little after the last window
    }
    assert ref["traced"] is None  # traced throughout: nothing to say
    said = "traced 2 windows, 48.0 ms of 1.5 s; the analysis counts traced time only"
    assert describe_traced(rep) == said and describe_traced(ref) is None
    assert f"\n{said}.\n" in report_markdown(rep) and "traced " not in report_markdown(ref)
    assert f'<p class="meta" id="traced">{said}</p>' in report_page(rep, [], [])
    assert 'id="traced"' not in report_page(ref, [], [])
    # the same events lost the same time; its share is of the traced time, not of the gap as well
    for c, cref in zip(rep["categories"], ref["categories"], strict=True):
        assert (c["events"], c["lost_ms"], c["per_step_us"]) == (cref["events"], cref["lost_ms"], cref["per_step_us"])
        assert c["pct_of_window"] == pytest.approx(100 * c["lost_ms"] / rep["window_ms"], abs=0.01)
    assert rep["window_ms"] == pytest.approx(ref["window_ms"] + 2 * margin / 1e6, abs=0.002)


@pytest.mark.parametrize("detach_at", [(), (151,), (101, 201)])
def test_no_detected_step_spans_a_detach(tmp_path, detach_at):
    """serve.py without NVTX: 301 readbacks make 300 steps; each detach drops the one interval across it."""
    lp = serve_loop(detach_at=detach_at)
    d = lp.write(tmp_path / "t")
    a = Analysis(d)
    try:
        w = a.one("SELECT * FROM win")
        longest = a.scalar("SELECT max(end_ns - start_ns) FROM steps")
        idle = a.scalar("SELECT coalesce(sum(end_ns - start_ns), 0) FROM gpu_idle")
        # GPU idle over the window's traced time only: the gaps end where a window closes or opens
        outside = a.scalar(
            "SELECT count(*) FROM gpu_idle g WHERE NOT EXISTS "
            "(SELECT 1 FROM traced t WHERE g.start_ns >= t.start_ns AND g.end_ns <= t.end_ns)"
        )
    finally:
        a.close()
    assert (w["steps"], w["step_source"]) == (300 - len(detach_at), "readback")
    assert longest < 50_000 * US  # no step holds a 50 ms detach
    assert w["traced_ns"] == w["end_ns"] - w["start_ns"] - 50_000 * US * len(detach_at)
    assert outside == 0 and idle < w["traced_ns"]


def test_a_process_own_detach_is_no_step_while_another_process_was_traced(tmp_path):
    """Windows merge across processes into the traced spans, but a step lies inside its own process's
    windows: another process traced throughout does not make this one's detach a step."""
    lp = serve_loop(detach_at=(151,))
    d = lp.write(tmp_path / "t")
    m = json.loads((d / "manifest.json").read_text())
    m["processes"].append({"pid": PID + 1, "argv": ["other"], "start_ns": 0, "windows": [[lp.windows[0][0], lp.t]]})
    (d / "manifest.json").write_text(json.dumps(m))
    load(d)
    a = Analysis(d)
    try:
        w = a.one("SELECT * FROM win")
        longest = a.scalar("SELECT max(end_ns - start_ns) FROM steps")
    finally:
        a.close()
    assert w["traced_ns"] == w["end_ns"] - w["start_ns"]  # the other process kept the whole run traced
    assert (w["steps"], w["step_source"]) == (299, "readback") and longest < 50_000 * US


def test_a_stray_event_does_not_widen_the_window(tmp_path):
    """Events outside every window (none can be recorded there, but a clock may slip) do not widen the
    window (with no steps: every event, clamped to the traced time) nor the traced time."""
    lp = serve_loop(steps=20, detach_at=(10,))
    t0, t1 = lp.windows[0][0], lp.t
    for t in (t0 - 5_000 * US, t1 + 5_000 * US):  # before the first window, after the last
        lp.apis.append((PID, TID, "cudaGetDevice", "runtime", t, t + US, 99_999, 0, "synthetic", None))
    d = lp.write(tmp_path / "t")
    a = Analysis(d, {"steps_from": "none"})
    try:
        w = a.one("SELECT * FROM win")
    finally:
        a.close()
    assert w["steps"] == 0
    assert (w["start_ns"], w["end_ns"]) == (t0, t1)  # the first and last window's edges, not the strays
    assert w["traced_ns"] == w["end_ns"] - w["start_ns"] - 50_000 * US


def test_traced_windows_from_the_manifest(tmp_path):
    """processes[].windows of every process, merged: overlapping windows are one span; a process of a
    windowed recording without windows traced its life; an open window ends at the last event; odd
    values are left out."""
    no_windows = {"processes": [{"pid": 1, "start_ns": 0, "end_ns": 9, "windows": None}]}
    assert traced_windows_table(no_windows).num_rows == 0
    assert traced_windows_table({}).num_rows == 0
    m = {
        "options": {"window": {"windows": [[0, 1]]}},
        "processes": [
            {"pid": 1, "windows": [[10, 20], [30, 40], "x", [5], [7, 6], [True, 8], [50, None]]},
            {"pid": 2, "windows": [[15, 25], [35, 38]]},
            {"pid": 3, "start_ns": 60, "end_ns": 70, "windows": None},  # its listener failed: traced its life
            {"pid": 4, "start_ns": 80},  # attach's record: no windows, no end yet
            {"pid": 0, "windows": [[1, 2]]},  # no pid: left out
        ],
    }
    rows = traced_windows_table(m).to_pylist()
    assert [(r["pid"], r["start_ns"], r["end_ns"]) for r in rows] == [
        (1, 10, 20), (1, 30, 40), (1, 50, None), (2, 15, 25), (2, 35, 38), (3, 60, 70), (4, 80, None),
    ]  # fmt: skip
    lp = serve_loop(steps=5)
    d = lp.write(tmp_path / "t")
    base = lp.windows[0][0]
    procs = [
        {"pid": 1, "windows": [[base + 10, base + 20], [base + 30, base + 40], [base + 100, None]]},
        {"pid": 2, "windows": [[base + 15, base + 25], [base + 35, base + 38]]},
    ]
    manifest = json.loads((d / "manifest.json").read_text()) | {"processes": procs}
    (d / "manifest.json").write_text(json.dumps(manifest))
    load(d)
    a = Analysis(d)
    try:
        spans = a.con.execute("SELECT start_ns - ?, end_ns - ? FROM traced ORDER BY 1", [base, base]).fetchall()
        last = a.scalar("SELECT max(end_ns) FROM api_calls")
        summary = a.one("SELECT * FROM traced_summary")
    finally:
        a.close()
    assert spans == [(10, 25), (30, 40), (100, last - base)]  # the open window: to the last event
    assert summary == {"windows": 3, "traced_ns": 15 + 10 + last - base - 100}


async def test_the_explorer_says_what_was_traced(tmp_path):
    """The explorer's overview carries the report's sentence on the traced share (none when traced throughout)."""
    from textual.widgets import Static

    from cctrace.ui.explore import Explorer

    generate(tmp_path / "w", Spec(steps=6, detach_after=2, untraced_ns=900_000 * US))
    app = Explorer(tmp_path / "w")
    async with app.run_test(size=(120, 40)):
        overview = str(app.query_one("#overview-text", Static).render())
    assert "6 steps (nvtx)" in overview
    assert "traced 2 windows, 14.3 ms of 1.9 s; the analysis counts traced time only" in overview
