"""Steps slowed by something other than crossings (the slow_steps query, report's slow_steps and the diff's
row for them) on synthetic traces with injected host pauses: which steps, and their excess, exactly."""

from __future__ import annotations

from cctrace.analyze.analysis import Analysis, diff, report
from tests.synth import US, Spec, generate

PAUSES = {5: 20_000 * US, 12: 31_000 * US}  # step index -> nothing recorded for this long


def test_paused_steps_are_slow_and_a_step_slowed_by_crossings_is_not(tmp_path):
    spec = generate(tmp_path / "t", Spec(steps=20, pause_ns=PAUSES, extra_stalls={8: 40}))
    a = Analysis(tmp_path / "t")
    try:
        rows = a.rows("slow_steps")
        durations = {r["name"]: r["step_us"] for r in a.rows("step_timeline")}
    finally:
        a.close()
    assert [r["name"] for r in rows] == ["step 5", "step 12"]
    assert [r["excess_us"] for r in rows] == [PAUSES[5] / 1e3, PAUSES[12] / 1e3]
    assert durations["step 8"] >= 4 * durations["step 0"]  # as long as a slow step, but its stalls explain it
    r = report(tmp_path / "t")
    assert r["slow_steps"] == {"steps": 2, "excess_ms": sum(PAUSES.values()) / 1e6}
    assert spec.truth["stall_count"] == 20 * 2 + 40


def test_the_diff_puts_the_pauses_beside_the_categories(tmp_path):
    generate(tmp_path / "base", Spec(steps=20))
    generate(tmp_path / "paused", Spec(steps=20, pause_ns=PAUSES))
    d = diff(tmp_path / "base", tmp_path / "paused")
    per_step_ms = sum(PAUSES.values()) / 20 / 1e6
    assert d["slow_steps"] == {"base": 0, "trace": 2}
    assert d["gap_ms_per_step"] == round(per_step_ms, 5)
    assert d["slow_steps_ms_per_step"] == round(per_step_ms, 5)
    assert d["explained_ms_per_step"] == 0 and d["unexplained_ms_per_step"] == 0
    # a higher factor: no step is slow enough, and the pauses are unexplained again
    d = diff(tmp_path / "base", tmp_path / "paused", {"slow_step_factor": 20.0})
    assert d["slow_steps"] == {"base": 0, "trace": 0} and d["unexplained_ms_per_step"] == round(per_step_ms, 5)


def test_no_step_is_slow_in_a_regular_run_or_without_steps(tmp_path):
    """Steps alike: none is slow; a factor at or below 1 still needs a step longer than the median."""
    generate(tmp_path / "even", Spec(steps=20))
    assert report(tmp_path / "even")["slow_steps"] == {"steps": 0, "excess_ms": 0}
    assert report(tmp_path / "even", {"slow_step_factor": 0.5})["slow_steps"]["steps"] == 0
    generate(tmp_path / "one", Spec(steps=1, pause_ns={0: 20_000 * US}))
    assert report(tmp_path / "one")["slow_steps"]["steps"] == 0  # one step is its own median


def test_the_markdown_report_says_so(tmp_path):
    from cctrace.ui.render import report_markdown

    generate(tmp_path / "t", Spec(steps=20, pause_ns=PAUSES))
    text = report_markdown(report(tmp_path / "t"))
    assert "2 step(s) ran at least 4x the median step" in text


def test_another_threads_call_does_not_hide_a_pause(tmp_path):
    """Steps detected from readbacks (no NVTX); in the 11th iteration the main thread pauses 20 ms while a
    worker thread sits in a 25 ms sync across it: the step is slow by exactly the pause (a step's call
    time is its own thread's)."""
    from tests.synth import Loop

    lp = Loop()
    for i in range(31):
        for n in (128, 64, 4096):
            lp.copy("cudaMemcpyAsync", "HtoD", "pageable", n)
        lp.launches(6)
        if i == 10:
            worker = (lp.pid, lp.tid + 1, "cudaStreamSynchronize", "runtime", lp.t - US, lp.t + 25_000 * US)
            lp.apis.append((*worker, 99_999, 0, "synthetic", None))
            lp.idle(20_000 * US)
        lp.copy("cudaMemcpyAsync", "DtoH", "pageable", 128, dur=60 * US)
        lp.idle(100 * US)
    lp.write(tmp_path / "t")
    a = Analysis(tmp_path / "t")
    try:
        assert a.scalar("SELECT count(*) FROM steps") == 30
        rows = a.rows("slow_steps")
    finally:
        a.close()
    assert [r["excess_us"] for r in rows] == [20_000.0]
