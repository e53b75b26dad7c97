"""Regression tests on the traces recorded on the H100 (sample_traces/), against what serve.py issued.

serve.py's defaults per timed step: 5 H2D (token_ids 128 B, seq_lens 64 B, block_table 4,096 B pageable;
positions and slot_mapping 128 B pinned), one 128 B D2H readback; every 25th step a 4 MiB D2H and H2D
(pinned). 300 timed steps, each an NVTX range.
"""

import shutil

import pytest

from cctrace.analysis import Analysis, report
from tests.conftest import ROOT

SAMPLES = ROOT / "sample_traces"


@pytest.fixture(scope="module", params=["serve-baseline", "serve-kernels"])
def sample(request, tmp_path_factory):
    d = tmp_path_factory.mktemp("s") / request.param
    shutil.copytree(SAMPLES / request.param, d, ignore=shutil.ignore_patterns("trace.duckdb"))
    a = Analysis(d)
    yield request.param, d, a
    a.close()


def test_steps_and_copies_match_what_serve_issued(sample):
    _, _, a = sample
    assert a.scalar("SELECT count(*) FROM steps") == 300
    rows = {(r["copy_kind"], r["host_kind"], r["size_bucket"]): r["copies"] for r in a.rows("overview")}
    assert rows[("HtoD", "pageable", "<4K")] == 600  # token_ids + seq_lens
    assert rows[("HtoD", "pageable", "4K-64K")] == 300  # block_table
    assert rows[("HtoD", "pinned", "<4K")] == 600  # positions + slot_mapping
    assert rows[("DtoH", "pageable", "<4K")] == 300  # .tolist()
    assert rows[("HtoD", "pinned", "1M-16M")] == rows[("DtoH", "pinned", "1M-16M")] == 12  # KV swaps


def test_report_names_small_crossings_and_readbacks(sample):
    name, d, _ = sample
    r = report(d)
    cats = {c["category"]: c for c in r["categories"]}
    assert cats["small_crossings"]["events"] == 1800  # every per-step input copy and readback is small
    readbacks = next(x for x in r["top"]["sync_waits"] if x["wait_kind"] == "readback")
    assert readbacks["calls"] == 300
    assert cats["sync_waits"]["advice"] and cats["small_crossings"]["advice"]
    assert r["gpu_busy_complete"] == (name == "serve-kernels")
    pinned = next(m for m in r["cost_model"] if (m["copy_kind"], m["host_kind"]) == ("HtoD", "pinned"))
    assert 10 < pinned["gbps"] < 100 and not pinned["bandwidth_assumed"]  # PCIe/NVLink-C2C class H2D
