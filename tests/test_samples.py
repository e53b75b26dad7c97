"""Regression tests on the sample traces of serve.py (sample_traces/: H200, and serve-hostonly H100), against what serve.py issued
(each sample's serve_summary.json) and, for the emulated-bridge runs, what the emulator injected
(manifest.json bridge_emulation: the ground truth).

serve.py's defaults per timed step: 5 H2D (token_ids 128 B, seq_lens 64 B, block_table 4,096 B pageable;
positions and slot_mapping 128 B pinned), one 128 B D2H readback; every 25th step a 4 MiB D2H and H2D
(pinned). 300 timed steps after 5 warm-up steps, each an NVTX range. The remedied run packs the five
H2D into one pinned 8,704 B copy on a staging stream and reads back 128 B into pinned memory on a
worker thread.
"""

import json
import shutil

import pytest

from cctrace.analyze.analysis import Analysis, diff, report
from tests.conftest import ROOT

SAMPLES = ROOT / "sample_traces"
CUPTI_SAMPLES = ["serve-baseline", "serve-zero-bridge", "serve-bridge", "serve-bridge-remedied"]
BRIDGED = ["serve-bridge", "serve-bridge-remedied", "serve-hostonly"]
LARGE_LOG2 = 20  # tolled crossings of 1 MiB and more are the KV swaps (4 MiB): not small


def _copy(tmp_path_factory, name):
    d = tmp_path_factory.mktemp("s") / name
    shutil.copytree(SAMPLES / name, d, ignore=shutil.ignore_patterns("trace.duckdb"))
    return d


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    names = [*CUPTI_SAMPLES, "serve-hostonly"]
    dirs = {n: _copy(tmp_path_factory, n) for n in names}
    reports = {n: report(d) for n, d in dirs.items()}
    return dirs, reports


def _summary(name):
    return json.loads((SAMPLES / name / "serve_summary.json").read_text())


def _truth(name):
    return json.loads((SAMPLES / name / "manifest.json").read_text())["bridge_emulation"]


def _cat(rep, name):
    return next(c for c in rep["categories"] if c["category"] == name)


@pytest.mark.parametrize("name", CUPTI_SAMPLES)
def test_steps_and_copies_match_what_serve_issued(samples, name):
    dirs, _ = samples
    a = Analysis(dirs[name])
    try:
        assert a.scalar("SELECT count(*) FROM steps") == 300
        rows = {(r["copy_kind"], r["host_kind"], r["size_bucket"]): r["copies"] for r in a.rows("overview")}
    finally:
        a.close()
    timed = _summary(name)["issued_timed"]
    assert rows[("HtoD", "pinned", "1M-16M")] == rows[("DtoH", "pinned", "1M-16M")] == timed["swaps"] == 12
    if name == "serve-bridge-remedied":
        assert rows[("HtoD", "pinned", "4K-64K")] == 300  # one packed copy per step
        assert rows[("DtoH", "pinned", "<4K")] == 300  # readback into pinned memory, drained by a worker
        assert sum(v for (k, *_), v in rows.items() if k == "HtoD") == timed["h2d"]
        return
    assert rows[("HtoD", "pageable", "<4K")] == 600  # token_ids + seq_lens
    assert rows[("HtoD", "pageable", "4K-64K")] == 300  # block_table
    assert rows[("HtoD", "pinned", "<4K")] == 600  # positions + slot_mapping
    assert rows[("DtoH", "pageable", "<4K")] == 300  # .tolist()
    assert timed["h2d"] == 1500 + 12 and timed["d2h"] == 300 + 12


def _small_tolls_in_window(name: str) -> int:
    """Tolled crossings below 1 MiB, from the emulator's own histogram, less those before the window:
    the warm-up steps (NVTX samples), or the first detected step's (host-probe-only sample)."""
    t = _truth(name)["injected"]["toll_by_log2_bytes"]
    small = sum(c for d in ("h2d", "d2h") for b, c in t[d].items() if int(b) < LARGE_LOG2)
    s = _summary(name)
    per_step = (s["issued_total"]["h2d"] + s["issued_total"]["d2h"] - 2 * s["issued_total"]["swaps"]) // s[
        "issued_total"
    ]["steps"]
    before = s["warmup"] * per_step if name != "serve-hostonly" else per_step
    return small - before


@pytest.mark.parametrize("name", BRIDGED)
def test_emulated_toll_is_attributed_to_small_crossings(samples, name):
    """Counts exactly; time within 10% of the injected toll once the crossings' own native cost
    (per copy, from the zero-bridge run recorded beside them) is set aside."""
    _, reports = samples
    truth = _truth(name)
    toll_ms = truth["spec"]["h2d_toll_us"] / 1000
    small = _cat(reports[name], "small_crossings")
    n = _small_tolls_in_window(name)
    assert small["events"] == n
    zero = _cat(reports["serve-zero-bridge"], "small_crossings")
    native_ms = zero["lost_ms"] / zero["events"]
    injected_ms = n * toll_ms
    attributed_ms = small["lost_ms"] - n * native_ms
    assert abs(attributed_ms - injected_ms) <= 0.10 * injected_ms, (attributed_ms, injected_ms)
    if name == "serve-hostonly":  # host probes see no GPU time: GPU idle is not measured, not 0
        assert small["gpu_idle_overlap_ms"] is None and reports[name]["gpu_idle_ms"] is None
    else:  # the toll kept the GPU idle (kernels recorded)
        assert 0.9 * injected_ms <= small["gpu_idle_overlap_ms"] <= small["lost_ms"]


@pytest.mark.parametrize("name", BRIDGED)
def test_async_stalls_never_exceed_the_injected_blocking(samples, name):
    """serve.py's async copies find their stream (nearly) idle, so the emulated blocking is a few µs
    per call, below a normal call's cost here: the analysis must not inflate it into stalls."""
    dirs, _ = samples
    a = Analysis(dirs[name])
    try:
        stalled = a.scalar("SELECT coalesce(sum(stall_ns), 0) FROM async_calls WHERE regexp_matches(name, 'Memcpy')")
    finally:
        a.close()
    assert stalled <= 1.1 * _truth(name)["injected"]["async_block_ns"]


def test_diff_explains_the_bridge_gap(samples):
    dirs, _ = samples
    # the zero bridge runs the emulator with nothing to inject: the gap is the bridge's alone
    # (steps that another tenant or the host slowed, with no crossings to show for it, are set beside the
    # categories as slow steps: the categories must explain the rest)
    d = diff(dirs["serve-zero-bridge"], dirs["serve-bridge"])
    gap, slow = d["gap_ms_per_step"], d["slow_steps_ms_per_step"]
    explained = sum(r["delta_ms_per_step"] for r in d["categories"])
    assert gap > 1.0 and explained >= 0.90 * (gap - slow), (explained, gap, slow)
    assert explained + slow >= 0.90 * gap and 0 <= slow < gap
    # against the plain run the gap also holds the host's run-to-run variance, which on the lent
    # machines is as large as the bridge's toll (sample_traces/record.sh keeps each sample's median
    # run of three for that reason): issue 6's floor, 90% of the mean step's gap, and the same for
    # the median step, which the steps another tenant slowed do not move
    d = diff(dirs["serve-baseline"], dirs["serve-bridge"])
    explained = sum(r["delta_ms_per_step"] for r in d["categories"])
    gap, slow = d["gap_ms_per_step"], d["slow_steps_ms_per_step"]
    assert explained >= 0.90 * (gap - slow) and explained + slow >= 0.90 * gap, (explained, gap, slow)
    assert explained >= 0.90 * d["gap_median_ms_per_step"], (explained, d["gap_median_ms_per_step"])
    top = max(d["categories"], key=lambda r: r["delta_ms_per_step"])
    assert top["category"] == "small_crossings"
    # against the ground truth: what the emulator injected per step (whole run, so a little more
    # than the window's own), explained to within 10%
    injected = d["bridge_injected_ms_per_step"]
    assert 0.9 * injected <= explained <= 1.02 * injected, (explained, injected)


def test_remedied_run_recovers_the_small_crossings(samples):
    dirs, reports = samples
    bridged, remedied = (
        _cat(reports["serve-bridge"], "small_crossings"),
        _cat(reports["serve-bridge-remedied"], "small_crossings"),
    )
    assert remedied["events"] == 600 and bridged["events"] == 1800  # 2 crossings per step instead of 6
    assert remedied["per_step_us"] < 0.4 * bridged["per_step_us"]
    d = diff(dirs["serve-bridge"], dirs["serve-bridge-remedied"])
    small = next(r for r in d["categories"] if r["category"] == "small_crossings")
    assert small["delta_ms_per_step"] < -1.0  # over a millisecond per step won back
    assert _summary("serve-bridge-remedied")["steps_per_s"] > _summary("serve-bridge")["steps_per_s"]


def test_host_probe_only_sample_detects_steps_and_names_the_toll(samples):
    _, reports = samples
    r = reports["serve-hostonly"]
    assert r["step_source"] == "readback" and r["steps"] == 304  # one per readback after the first
    assert max(r["categories"], key=lambda c: c["lost_ms"])["category"] == "small_crossings"


def test_advice_fits_each_sample(samples):
    """Nothing the trace already does (the remedied run packs its H2D, stages it and drains readbacks on
    a worker), nothing that measured worse on the calibrated H100 (the staging stream, -8.8%), and
    host-only words for the host-probe-only sample."""
    _, reports = samples
    advice = {n: {c["category"]: c["advice"] or "" for c in r["categories"]} for n, r in reports.items()}
    assert "pack per-step inputs" in advice["serve-bridge"]["small_crossings"]
    assert "pack" not in advice["serve-bridge-remedied"]["small_crossings"]
    assert "worker thread" not in advice["serve-bridge-remedied"]["sync_waits"]
    assert reports["serve-bridge-remedied"]["facts"] == {
        "host_only": False,
        "gpu_times": True,
        "packed_h2d": True,
        "staging_stream": True,
        "async_readback": True,
        "readbacks_dominate": False,
    }
    assert all("staging stream" not in text for a in advice.values() for text in a.values())
    assert reports["serve-hostonly"]["host_only"] and "record with CUPTI" in advice["serve-hostonly"]["small_crossings"]
    # host probes see calls, not the GPU: what needs GPU-side copy times is not measured, in that sample only
    assert [n for n, r in reports.items() if not r["gpu_times"]] == ["serve-hostonly"]
    assert [c["category"] for c in reports["serve-hostonly"]["categories"] if not c["measured"]] == ["stream_concurrency"]


def test_traces_without_per_injection_rows_keep_the_whole_run_truth(samples, tmp_path):
    """serve-hostonly predates bridge_injections, and so do copies of the others with those shards taken
    out: report and diff keep the manifest's whole-run counters, labelled as such. With the rows the
    truth is the window's. A diff of two runs of serve.py judges, a diff against the remedied program warns."""
    dirs, reports = samples
    assert reports["serve-hostonly"]["ground_truth"] is None
    assert reports["serve-bridge"]["ground_truth"] and reports["serve-bridge-remedied"]["ground_truth"]
    old = {}
    for name in ("serve-zero-bridge", "serve-bridge"):
        old[name] = tmp_path / name
        shutil.copytree(dirs[name], old[name], ignore=shutil.ignore_patterns("trace.duckdb*", "bridge_injections.*"))
    assert report(old["serve-bridge"])["ground_truth"] is None
    d = diff(old["serve-zero-bridge"], old["serve-bridge"])
    assert d["bridge_injected_scope"] == "whole_run" and d["same_program"]
    assert d["warnings"] == []
    assert diff(dirs["serve-baseline"], dirs["serve-bridge"])["bridge_injected_scope"] == "window"
    d = diff(dirs["serve-bridge"], dirs["serve-bridge-remedied"])
    assert not d["same_program"] and any("different programs" in w for w in d["warnings"])
    d = diff(dirs["serve-bridge"], dirs["serve-hostonly"])
    assert any("host probes only" in w for w in d["warnings"])
