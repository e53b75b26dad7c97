"""The real H200 traces of the third-party workloads (CuPy, a torch CUDA-graph replay, HF generate, JAX/XLA;
each recorded plainly and under the emulated b300-tdx bridge), read by benchmarks/truth.py's report phase:
the steps it finds against the iterations each workload ran, the copies against what it issued, and the
injected time the categories explain. Two sets: sample_traces/workloads (CUPTI, the default kinds) and
sample_traces/workloads-interposer (the CUPTI-free mode, `--kinds none --interpose on`: the same answers
from the driver interposer alone, without GPU-side copy times).

Each workload runs its warm-up from another line than its measured loop, so the warm-up's readbacks
and replays carry another Python stack: a right detector marks the N measured iterations' ends, which
make N - 1 steps (the intervals between them), in both runs of the pair."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys

import pytest

from tests.conftest import ROOT

pytest.importorskip("duckdb")

# sample set -> whether its copies carry GPU-side times
SETS = {"workloads": True, "workloads-interposer": False}
SUMMARIES = {s: json.loads((ROOT / "sample_traces" / s / "summaries.json").read_text()) for s in SETS}
# how each workload's iterations end, as the trace shows them: a sync after a readback on the issuing
# thread (cupy, HF generate), or a graph replay (torch's replay + stream sync; XLA's command buffer,
# launched on the main thread while its copies come from other threads and nothing recorded waits)
SOURCES = {"cupy_loop": "readback", "graph_replay": "graph_replay", "hf_generate": "readback", "jax_loop": "graph_replay"}
TRACES = [(s, f"{w}-{m}") for s in SETS for w in sorted(SOURCES) for m in ("default", "bridge")]
WORKLOADS = [(s, w) for s in SETS for w in sorted(SOURCES)]


def _truth():
    spec = importlib.util.spec_from_file_location("truth", ROOT / "benchmarks" / "truth.py")
    truth = importlib.util.module_from_spec(spec)
    sys.modules["truth"] = truth
    spec.loader.exec_module(truth)
    return truth


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    """Each workload's truth-table row, made on demand from copies of its two traces (the DuckDB files
    are built in the copies)."""
    truth, made = _truth(), {}

    def row(sample_set: str, workload: str) -> dict:
        if (sample_set, workload) not in made:
            traces = tmp_path_factory.mktemp(sample_set)
            for mode in truth.MODES:
                name = f"{workload}-{mode}"
                src = ROOT / "sample_traces" / sample_set / "traces" / name
                shutil.copytree(src, traces / name, ignore=shutil.ignore_patterns("trace.duckdb*"))
            made[sample_set, workload] = truth.workload_row(workload, SUMMARIES[sample_set][workload], traces)
        return made[sample_set, workload]

    return row


@pytest.mark.parametrize("sample_set", SETS)
def test_every_workload_has_both_traces(sample_set):
    assert sorted(SUMMARIES[sample_set]) == sorted(SOURCES)
    found = (ROOT / "sample_traces" / sample_set / "traces").iterdir()
    assert sorted(p.name for p in found if p.is_dir()) == sorted(t for s, t in TRACES if s == sample_set)


@pytest.mark.parametrize(("sample_set", "trace"), TRACES)
def test_steps_are_the_measured_iterations(rows, sample_set, trace):
    workload, mode = trace.rsplit("-", 1)
    r = rows(sample_set, workload)
    assert (r[f"steps_{mode}"], r[f"step_source_{mode}"]) == (r["iterations"] - 1, SOURCES[workload])


@pytest.mark.parametrize(("sample_set", "trace"), TRACES)
def test_copies_found_are_the_copies_issued(rows, sample_set, trace):
    workload, mode = trace.rsplit("-", 1)
    r = rows(sample_set, workload)
    assert r[f"copies_exact_{mode}"], (r["issued"], r[f"copies_{mode}"])
    # the interposer's copies carry host call times: the report says what it cannot measure from them
    assert r[f"gpu_times_{mode}"] is SETS[sample_set]


@pytest.mark.parametrize(("sample_set", "workload"), WORKLOADS)
def test_the_categories_explain_the_injected_time_in_the_window(rows, sample_set, workload):
    """The issue's targets: the report explains 90-110% of what the emulator injected inside the window,
    and diff explains at least 90% of the injected time per step."""
    r = rows(sample_set, workload)
    # each category that most of the injected time went to explains it itself (a graph replay's tolls are
    # its memcpy nodes' crossings, not the launch's async stall: they were, on the interposer, before
    # 2026-11-30); the emulator's few µs of blocking per async copy (1-2% here) end up in the crossings
    main = {k: c for k, c in r["by_category"].items() if c["injected_ms"] >= 0.1 * r["injected_window_ms"]}
    assert list(main) == ["small_crossings"], r["by_category"]
    assert 0.9 <= main["small_crossings"]["explained_share"] <= 1.1, r["by_category"]
    assert r["injected_window_ms"] > 0
    assert 0.9 <= r["explained_share_of_injected"] <= 1.1, r
    assert r["diff_share_of_injected_gap"] >= 0.9, r
