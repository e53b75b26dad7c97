"""Steps without NVTX, the ground truth per window, and a diff that knows when it cannot judge, on
synthetic loops that mimic the third-party stacks (tests/synth.py): each expected count follows from
how the loop was built, and each injected amount is recovered exactly."""

from __future__ import annotations

import itertools
import json

import pytest

from cctrace.analyze.analysis import Analysis, diff, report
from cctrace.analyze.store import load
from cctrace.trace.shards import ShardWriter
from tests.conftest import cctrace
from tests.synth import (
    API,
    PID,
    TID,
    US,
    Loop,
    cupy_loop,
    graph_loop,
    hf_generate_loop,
    jax_loop,
    periodic_loop,
    piecewise_graph_loop,
    serve_loop,
    xla_compiled_loop,
    xla_graph_loop,
)

# loop -> (steps, how they were found): n ends of a loop make n - 1 steps (the intervals between them)
LOOPS = {
    # 1 warm-up + 300 readbacks; the 13 swaps (every 25th step, pinned + sync) are too sparse to count
    "serve": (serve_loop, 300, "readback"),
    # 6 x 64 stopping checks; 256 mask checks with the same 1-byte signature, 6 eos checks
    "hf_generate": (hf_generate_loop, 6 * 64 - 1, "readback"),
    # the same with a mask check in every forward (2 one-byte readbacks per forward pass)
    "hf_generate_every": (lambda: hf_generate_loop(mask_every=1), 6 * 64 - 1, "readback"),
    # 1 warm-up + 200 pinned D2H completed by cuEventSynchronize (driver API only)
    "jax": (jax_loop, 200, "readback"),
    # 150 replays completed by a stream sync; the warm-up's readbacks end in one device sync
    "graph": (graph_loop, 149, "graph_replay"),
    # without launch calls recorded, two stacks tell the stopping check from the mask check
    "hf_generate_stacks": (lambda: hf_generate_loop(launch_calls=False), 6 * 64 - 1, "readback"),
    # two readbacks per iteration (pinned + sync, pageable); no launch calls recorded
    "cupy": (cupy_loop, 300, "readback"),
    # one cuGraphLaunch per iteration and no recorded wait (XLA command buffers)
    "xla_graph": (xla_graph_loop, 200, "graph_replay"),
    # the same with uneven iterations, the copies from 3 threads, and compile threads' regular syncs
    # before the loop: those move no data, the replays' intervals do
    "xla_compiled": (xla_compiled_loop, 200, "graph_replay"),
    # 8 graph replays per step from one place: one step each, not eight
    "piecewise_graphs": (piecewise_graph_loop, 99, "graph_replay"),
    # nothing waits: the period of the recurring copies
    "periodic": (periodic_loop, 99, "period"),
}


def _steps(d, params=None) -> dict:
    a = Analysis(d, params)
    try:
        return a.one("SELECT steps, step_source, step_median_ns, step_p10_ns, step_p90_ns FROM win")
    finally:
        a.close()


@pytest.mark.parametrize("name", sorted(LOOPS))
def test_steps_are_found_without_nvtx(tmp_path, name):
    build, steps, source = LOOPS[name]
    w = _steps(build().write(tmp_path))
    assert (w["steps"], w["step_source"]) == (steps, source)


def test_driver_syncs_mark_the_loop_when_no_copy_was_recorded(tmp_path):
    w = _steps(jax_loop(correlate=False).write(tmp_path))
    assert (w["steps"], w["step_source"]) == (200, "driver_sync")


def test_a_worker_that_drains_readbacks_marks_the_steps(tmp_path):
    """The remedied serve.py: pinned readbacks issued by the launching thread, waited for by a worker."""
    lp = Loop()
    for _ in range(101):
        lp.copy("cudaMemcpyAsync", "HtoD", "pinned", 8704)
        lp.launches(4)
        lp.copy("cudaMemcpyAsync", "DtoH", "pinned", 128)
        lp.call("cudaEventSynchronize", 50 * US, tid=TID + 1)
        lp.idle(100 * US)
    w = _steps(lp.write(tmp_path))
    assert (w["steps"], w["step_source"]) == (100, "worker_sync")


def test_hf_generate_step_times_are_the_tokens(tmp_path):
    """Each step is one forward: its median is a token's time, not half of one (the mask checks)."""
    lp = hf_generate_loop()
    w = _steps(lp.write(tmp_path))
    # a token: 27 launches of 3 us + 2 us gaps, the stopping check (8 + 2, 400 + 2 us) and 150 us idle;
    # with a mask check (two tokens in three) 42 us more
    token = 27 * 5 * US + 10 * US + 402 * US + 150 * US
    assert w["step_median_ns"] == token + 42 * US and w["step_p10_ns"] == token


def test_marked_steps_take_precedence(tmp_path):
    lp = serve_loop(steps=20)
    ends = sorted(c[4] for c in lp.apis if c[2] == "cudaMemcpyAsync")[::5]
    lp.markers += [(PID, TID, "mod:step", "cctrace", a, b, "step_function") for a, b in itertools.pairwise(ends)]
    d = lp.write(tmp_path / "fn")
    assert _steps(d)["step_source"] == "step_function" and _steps(d)["steps"] == len(ends) - 1
    lp.markers.append((PID, TID, "step 0", "", ends[0], ends[3], "nvtx"))
    d = lp.write(tmp_path / "nvtx")
    assert (_steps(d)["steps"], _steps(d)["step_source"]) == (1, "nvtx")
    # the user picks a detector: the readbacks, whatever is marked
    assert (_steps(d, {"steps_from": "readback"})["steps"], _steps(d, {"steps_from": "none"})["steps"]) == (20, 0)


def test_report_says_how_steps_were_found_and_how_regular_they_are(tmp_path):
    d = serve_loop(steps=50, jitter=40 * US, seed=3).write(tmp_path)
    r = report(d)
    a = Analysis(d)
    try:
        durations = sorted(x[0] for x in a.con.execute("SELECT end_ns - start_ns FROM steps").fetchall())
        (row,) = a.rows("steps")
    finally:
        a.close()
    assert r["steps"] == 50 and r["step_source"] == "readback"
    assert r["step_median_ms"] * 1e6 == pytest.approx((durations[24] + durations[25]) / 2, abs=100)  # 0.1 us
    assert r["step_p10_ms"] < r["step_median_ms"] < r["step_p90_ms"]
    assert row["steps"] == 50 and row["step_median_us"] == pytest.approx(r["step_median_ms"] * 1e3, abs=1e-3)
    out = cctrace("report", str(d))
    assert out.returncode == 0 and "50 steps (from readback)" in out.stdout and "p10-p90" in out.stdout


# ---- ground truth ---------------------------------------------------------------------------------

TOLL = 300 * US


def test_ground_truth_is_counted_over_the_window(tmp_path):
    """The first step's copies come before the first readback: injected, but outside the window."""
    lp = serve_loop(steps=40, toll=TOLL)
    d = lp.write(tmp_path)
    r = report(d)
    gt = r["ground_truth"]
    assert len(lp.injections) == 41 * 3 and gt["scope"] == "window"
    assert gt["injected_ms"] == pytest.approx(40 * 3 * TOLL / 1e6)
    (small,) = [c for c in gt["categories"] if c["category"] == "small_crossings"]
    assert small["injections"] == 120 and small["injected_kinds"] == "toll"
    assert r["bridge_emulation"] is None  # no manifest counters: the rows are the truth


def test_diff_compares_injected_and_explained_over_the_same_window(tmp_path):
    base = serve_loop(steps=40).write(tmp_path / "base")
    slow = serve_loop(steps=40, toll=TOLL).write(tmp_path / "slow")
    d = diff(base, slow)
    assert d["bridge_injected_scope"] == "window"
    assert d["bridge_injected_ms_per_step"] == pytest.approx(3 * TOLL / 1e6)
    assert d["gap_ms_per_step"] == pytest.approx(3 * TOLL / 1e6)
    small = next(c for c in d["categories"] if c["category"] == "small_crossings")
    assert small["injected_ms_per_step"] == pytest.approx(3 * TOLL / 1e6)
    assert small["delta_ms_per_step"] == pytest.approx(3 * TOLL / 1e6, rel=1e-3)
    assert d["warnings"] == [] and d["same_program"]
    out = cctrace("diff", str(base), str(slow))
    assert out.returncode == 0 and "ground truth (over the analysed windows)" in out.stdout
    assert "injected +0.9000" in out.stdout


def test_a_graph_replays_tolls_are_its_memcpy_nodes_once(tmp_path):
    """The launch call pays both nodes' tolls: each node's crossing gets half of what the launch took
    beyond a normal call, and the launch is no async stall on top."""
    d = graph_loop(toll=TOLL).write(tmp_path)
    r = report(d, {"normal_call_us": 8.0})
    cats = {c["category"]: c for c in r["categories"]}
    gt = r["ground_truth"]
    assert cats["small_crossings"]["events"] == 2 * 149 and cats["async_stalls"]["lost_ms"] == 0
    assert gt["injected_ms"] == pytest.approx(2 * 149 * TOLL / 1e6)
    # each node's own 2 us copy is a crossing too
    assert cats["small_crossings"]["lost_ms"] == pytest.approx(2 * 149 * (TOLL + 2 * US) / 1e6, rel=1e-3)


# ---- diff that knows when it cannot judge --------------------------------------------------------


def test_diff_warns_when_the_gap_is_within_the_noise(tmp_path):
    a = serve_loop(steps=100, jitter=200 * US, seed=1).write(tmp_path / "a")
    b = serve_loop(steps=100, jitter=200 * US, seed=2).write(tmp_path / "b")
    d = diff(a, b)
    assert abs(d["gap_ms_per_step"]) < d["noise_ms_per_step"]
    assert any("noise" in w for w in d["warnings"])
    slow = serve_loop(steps=100, jitter=200 * US, seed=2, toll=TOLL).write(tmp_path / "slow")
    assert not any("noise" in w for w in diff(a, slow)["warnings"])


def test_diff_warns_when_steps_were_found_differently(tmp_path):
    lp = serve_loop(steps=20)
    a = lp.write(tmp_path / "a")
    lp.markers.append((PID, TID, "step 0", "", lp.apis[0][4], lp.t, "nvtx"))
    b = lp.write(tmp_path / "b")
    d = diff(a, b)
    assert (d["base_step_source"], d["trace_step_source"]) == ("readback", "nvtx")
    assert any("steps were found differently" in w for w in d["warnings"])


def test_diff_warns_when_one_trace_is_host_probes_only(tmp_path):
    a = serve_loop(steps=20).write(tmp_path / "a")
    b = tmp_path / "b"
    w = ShardWriter(b, 7)
    rows = [
        (7, 8, "cuMemcpyDtoH_v2", "driver", i * 200_000, i * 200_000 + 50_000, i, 0, "ebpf", 128, "DtoH")
        for i in range(21)
    ]
    w.extend("api_calls", (*API, "bytes", "copy_kind"), rows)
    w.close()
    (b / "manifest.json").write_text(json.dumps({"command": ["synthetic-loop"], "processes": []}))
    load(b)
    d = diff(a, b)
    assert any("host probes only" in w for w in d["warnings"])


def test_diff_never_calls_a_different_program_emulator_cost(tmp_path):
    base = serve_loop(steps=40).write(tmp_path / "base", command="serve.py")
    # a different program: the gap holds more than the injected toll
    other = serve_loop(steps=40, toll=TOLL, jitter=300 * US, seed=5).write(tmp_path / "other", command="serve.py --x")
    d = diff(base, other)
    assert not d["same_program"] and any("different programs" in w for w in d["warnings"])
    out = cctrace("diff", str(base), str(other))
    assert out.returncode == 0 and "emulator's own cost" not in out.stdout and "different programs" in out.stdout
    same = serve_loop(steps=40, toll=TOLL, jitter=300 * US, seed=5).write(tmp_path / "same", command="serve.py")
    out = cctrace("diff", str(base), str(same))
    assert diff(base, same)["same_program"] and "emulator's own cost" in out.stdout


def test_a_loop_without_crossings_is_not_lost_to_a_load_before_it(tmp_path):
    """Moving data decides between candidates of the same stretch of the run, not across it: a loop
    whose data stay on the device (XLA: launches and a stream sync per step, no copy) after a weight
    load (a copy and a context sync per layer, every interval a crossing) is still the loop."""
    lp = Loop(domain="driver")
    for _ in range(30):
        lp.copy("cuMemcpyHtoD_v2", "HtoD", "pinned", 1 << 20)
        lp.call("cuCtxSynchronize", 30 * US)
        lp.idle(50 * US)
    for _ in range(200):
        lp.launches(5)
        lp.call("cuStreamSynchronize", 100 * US)
        lp.idle(100 * US)
    w = _steps(lp.write(tmp_path))
    assert (w["steps"], w["step_source"]) == (199, "driver_sync")


def test_a_compile_burst_longer_than_the_loop_is_not_the_loop(tmp_path):
    """XLA's autotuning syncs (no crossing) outnumber and outlast the replays of the loop after them."""
    w = _steps(xla_compiled_loop(autotune=3000).write(tmp_path))
    assert (w["steps"], w["step_source"]) == (200, "graph_replay")
