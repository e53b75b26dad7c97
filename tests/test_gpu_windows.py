"""Bounded tracing on a real GPU: `record --toggle-signal` detaches CUPTI (cuptiFinalize at a CUDA
call's exit) and attaches it again; only the copies made inside the windows are recorded, and the
report counts only the traced time (no step, no GPU idle between the windows)."""

import json
import sys
from collections import Counter

import pytest

from cctrace.trace.shards import read_shard
from tests.conftest import ROOT, project_env, run_answering, toggle_when_asked
from tests.test_windows import check_traced_report

pytestmark = pytest.mark.gpu


def test_toggle_detaches_cupti_and_records_only_inside_the_windows(tmp_path):
    out = tmp_path / "t"
    cmd = [sys.executable, "-m", "cctrace", "record", "-o", str(out), "--toggle-signal", "USR2", "--no-load"]
    cmd += ["--host-probes", "off", "--", sys.executable, str(ROOT / "tests" / "workloads" / "toggled_copies.py")]
    run_answering(cmd, project_env(), toggle_when_asked, timeout=300)
    m = json.loads((out / "manifest.json").read_text())
    (proc,) = [q for q in m["processes"] if q["cupti"] == "active"]
    detach = proc["sources"]["cupti"]["detach"]
    assert detach["detaches"] == 1 and detach["finalized"] == 1 and detach["finalize_status"] == 0, detach
    assert detach["state"] == "attached"
    copies = read_shard(out / f"copies.{proc['pid']}.arrows").data.to_pylist()
    sizes = Counter(c["bytes"] for c in copies if c["copy_kind"] == "HtoD")
    assert (sizes[1001], sizes[1002], sizes[1003]) == (50, 0, 50), sizes
    calls = read_shard(out / f"api_calls.{proc['pid']}.arrows").data.to_pylist()
    assert calls, "runtime calls recorded again after the re-attach"
    windows = proc["windows"]
    assert len(windows) == 2
    assert all(any(a <= c["start_ns"] and c["end_ns"] <= b for a, b in windows) for c in copies)
    check_traced_report(out, proc)
