"""Third-party workloads (tests/workloads/) recorded on a real GPU: the copies cctrace finds between
each workload's fences are exactly the ones it issued, plain and under --emulate-bridge b300-tdx (which
must never change what the program does, CUDA-graph capture included). Counts are read from the shards
with pyarrow (the GPU machine has no duckdb); step counts need duckdb and skip without it."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest

from tests.conftest import ROOT, cctrace, project_env

pytestmark = pytest.mark.gpu
WORKLOADS_DIR = ROOT / "tests" / "workloads"
sys.path.insert(0, str(WORKLOADS_DIR))
from _common import KEYS, WORKLOADS, parse_summary, window_counts  # noqa: E402

# interpose: the driver interposer alone (no CUPTI), which must find the same copies
MODES = {
    "default": [],
    "bridge": ["--emulate-bridge", "b300-tdx"],
    "interpose": ["--kinds", "none", "--interpose", "on"],
}


def summary(stdout: str) -> dict:
    s = parse_summary(stdout)
    assert s is not None, stdout[-2000:]
    return s


def run_workload(name: str, tmp, mode: str | None) -> tuple[dict, object]:
    """(summary, trace dir or None): plain when mode is None, else recorded with --no-load."""
    import subprocess

    need, plain_extra = WORKLOADS[name]
    if importlib.util.find_spec(need) is None:
        pytest.skip(f"{need} is not installed")
    cmd = [sys.executable, str(WORKLOADS_DIR / f"{name}.py"), "--json"]
    if mode is None:
        r = subprocess.run(cmd + plain_extra, capture_output=True, text=True, timeout=300, env=project_env())
        assert r.returncode == 0, r.stderr[-3000:]
        return summary(r.stdout), None
    out = tmp / f"{name}-{mode}"
    r = cctrace("record", "-q", "--no-load", "-o", str(out), *MODES[mode], "--", *cmd, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return summary(r.stdout), out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    cache: dict = {}
    tmp = tmp_path_factory.mktemp("workloads")

    def get(name: str, mode: str | None):
        if (name, mode) not in cache:
            cache[(name, mode)] = run_workload(name, tmp, mode)
        return cache[(name, mode)]

    return get


@pytest.mark.parametrize("name", WORKLOADS)
@pytest.mark.parametrize("mode", MODES)
def test_copies_between_the_fences_are_exactly_the_issued_ones(runs, name, mode):
    plain, _ = runs(name, None)
    assert plain["window_exact"], plain
    _, out = runs(name, mode)
    found = window_counts(out)
    assert found["fences"] == 2, found
    assert {k: found[k] for k in KEYS} == {k: plain["window"][k] for k in KEYS}, (found, plain)


@pytest.mark.parametrize("name", WORKLOADS)
def test_the_emulated_bridge_does_not_change_the_program(runs, name):
    """Same iterations and the same summary counts under b300-tdx (graph capture included: the
    emulator used to invalidate it)."""
    plain, _ = runs(name, None)
    bridged, out = runs(name, "bridge")
    assert bridged["iterations"] == plain["iterations"]
    m = json.loads((out / "manifest.json").read_text())
    inj = m["bridge_emulation"]["injected"]
    # every crossing in the window paid its toll (graph_replay: the replayed memcpy nodes)
    assert inj["h2d_toll_count"] >= plain["window"]["h2d"] and inj["d2h_toll_count"] >= plain["window"]["d2h"]
    assert inj["errors"] == 0 and inj["records_lost"] == 0


@pytest.mark.parametrize("name", WORKLOADS)
def test_bridge_injection_rows_sum_to_the_manifest_totals(runs, name):
    """The per-injection ground truth (bridge_injections) adds up to the manifest's counters."""
    from cctrace.trace.shards import read_shard

    _, out = runs(name, "bridge")
    inj = json.loads((out / "manifest.json").read_text())["bridge_emulation"]["injected"]
    rows = [r for f in out.glob("bridge_injections.*.arrows") for r in read_shard(f).data.to_pylist()]
    for kind in ("toll", "bandwidth", "serialize", "async_block"):
        mine = [r for r in rows if r["kind"] == kind]
        assert (len(mine), sum(r["ns"] for r in mine)) == (inj[f"{kind}_count"], inj[f"{kind}_ns"]), kind
    tolls = [r for r in rows if r["kind"] == "toll"]
    assert sum(r["direction"] == "h2d" for r in tolls) == inj["h2d_toll_count"]


def test_jax_driver_calls_are_recorded(runs):
    """XLA calls the driver API directly: its copies and waits are api_calls rows of domain 'driver'
    (none of them also recorded as a runtime call)."""
    from cctrace.trace.shards import read_shard

    plain, _ = runs("jax_loop", None)
    _, out = runs("jax_loop", "default")
    calls = [r for f in out.glob("api_calls.*.arrows") for r in read_shard(f).data.to_pylist()]
    calls = [r for r in calls if r["source"] == "cupti"]  # not the host probes' view of the same calls
    driver = [r for r in calls if r["domain"] == "driver"]
    copies = [r for r in driver if r["name"].startswith(("cuMemcpyHtoD", "cuMemcpyDtoH"))]
    waits = [r for r in driver if r["name"] in ("cuStreamSynchronize", "cuEventSynchronize", "cuCtxSynchronize")]
    assert len(copies) >= plain["window"]["h2d"] + plain["window"]["d2h"], sorted({r["name"] for r in driver})
    assert len(waits) >= plain["iterations"], sorted({r["name"] for r in driver})
    assert len({r["correlation_id"] for r in calls}) == len(calls)  # each call once


@pytest.mark.parametrize("name", WORKLOADS)
def test_report_finds_one_step_per_iteration(runs, name):
    """Steps detected without NVTX: within 5% of the iterations the workload ran (needs duckdb)."""
    if importlib.util.find_spec("duckdb") is None:
        pytest.skip("duckdb is not installed (the report needs it)")
    plain, _ = runs(name, None)
    _, out = runs(name, "default")
    assert cctrace("load", str(out)).returncode == 0
    r = cctrace("report", str(out), "--json", timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    steps = json.loads(r.stdout)["steps"]
    lo, hi = plain["iterations"], plain["iterations_total"]
    assert 0.95 * lo <= steps <= 1.05 * hi, (steps, lo, hi)


def test_hf_generate_counted_crossings_are_the_derived_ones(runs):
    """Two independent counts of what HF generate issues in the window agree: the dispatch mode's
    (decomposing composite ops, which reach it whole under inference_mode) and the derivation from
    transformers' source; and the trace holds exactly those, size by size."""
    plain, _ = runs("hf_generate", None)
    assert plain["counted"] is not None and plain["counted_agrees"], (plain["counted"], plain["by_size"])
    _, out = runs("hf_generate", "default")
    assert window_counts(out)["by_size"] == plain["by_size"]
