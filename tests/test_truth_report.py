"""benchmarks/truth.py's report phase on what a record phase leaves (summaries.json and tarred traces),
here made from the bundled serve.py samples: it loads, reports and diffs each pair and fills the table."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import sys
import tarfile

import pytest

from tests.conftest import ROOT

pytest.importorskip("duckdb")


def test_report_phase_fills_the_table_from_tarred_traces(tmp_path):
    spec = importlib.util.spec_from_file_location("truth", ROOT / "benchmarks" / "truth.py")
    truth = importlib.util.module_from_spec(spec)
    sys.modules["truth"] = truth
    spec.loader.exec_module(truth)
    out = tmp_path / "truth"
    out.mkdir()
    for mode, sample in (("default", "serve-baseline"), ("bridge", "serve-bridge")):
        src = tmp_path / f"w-{mode}"
        shutil.copytree(ROOT / "sample_traces" / sample, src)
        with tarfile.open(out / f"w-{mode}.tar.gz", "w:gz") as tar:
            tar.add(src, arcname=src.name)
    win = {"h2d": 5, "d2h": 2, "h2d_bytes": 50, "d2h_bytes": 16}
    summaries = {
        "w": {
            "plain": {"window": win, "iterations": 300, "iterations_total": 310},
            "default": {"window": {**win, "fences": 2}},
            "bridge": {"window": {**win, "d2h": 1, "fences": 2}},
        },
        "absent": {"skipped": "jax is not installed"},
        # recorded before hf_generate counted through inference_mode: its window held only lift_fresh
        "hf_generate": {
            "plain": {
                "window": {"h2d": 18, "d2h": 0, "h2d_bytes": 144, "d2h_bytes": 0},
                "params": {"requests": 6, "new_tokens": 64, "batch": 8, "prompt": 32},
                "iterations": 384,
            },
        },
    }
    (out / "summaries.json").write_text(json.dumps(summaries))
    rows = {r["workload"]: r for r in truth.report([out])}
    w = rows["w"]
    assert (w["copies_exact_default"], w["copies_exact_bridge"]) == (True, False)
    assert w["steps_default"] == 300 and w["steps_ok_default"] and w["step_source_default"] == "nvtx"
    assert w["diff_explained_share_of_gap"] is not None  # diff ran on the pair
    assert rows["absent"] == {"workload": "absent", "skipped": "jax is not installed"}
    assert rows["hf_generate"]["issued"] == {"h2d": 30, "d2h": 792}  # re-derived from its parameters
    assert w["step_median_ms_default"] > 0 and w["step_p10_ms_default"] <= w["step_p90_ms_default"]
    lines = truth.table_lines(list(rows.values()))
    cells = [re.split(r"  +", ln.strip()) for ln in lines]
    assert cells[1][:5] == ["w", "5/2", "5/2 ok", "5/1 NO", "300"]  # columns apart, never run together
    assert len({len(ln) for ln in lines[:3]}) == 1  # header, w, hf_generate: one width
    regular = next(c for c in cells if c[:3] == ["w", "default", "nvtx"])
    assert regular[3:5] == ["300", "300"] and float(regular[5]) > 0  # steps, iterations, median ms
    assert "absent: skipped: jax is not installed" in lines
