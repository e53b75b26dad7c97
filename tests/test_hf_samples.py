"""The Hugging Face generate sample pair (sample_traces/hf-generate-baseline and -bridge, recorded on an
H200 by sample_traces/record_hf.sh: random-init Llama, 1 warm-up + 3 requests x 32 new tokens, batch 8,
default kinds, no NVTX) against what the workload issued (derived from transformers' generate() source,
tests/workloads/hf_generate.py) and what the emulator injected (the bridge run's manifest and
bridge_injections)."""

from __future__ import annotations

import json
import shutil
import sys

import pytest

from tests.conftest import ROOT

pytest.importorskip("duckdb")

from cctrace.analyze.analysis import diff, report

SAMPLES = ROOT / "sample_traces"
NAMES = ("hf-generate-baseline", "hf-generate-bridge")
sys.path.insert(0, str(ROOT / "tests" / "workloads"))
from _common import FENCE_BYTES, window_counts  # noqa: E402
from hf_generate import derived_window  # noqa: E402


def _params(name: str) -> dict:
    return json.loads((SAMPLES / name / "workload_summary.json").read_text())["params"]


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    """Each sample copied (the loaded DuckDB file is made in the copy), and its report."""
    dirs = {}
    for name in NAMES:
        dirs[name] = tmp_path_factory.mktemp("hf") / name
        shutil.copytree(SAMPLES / name, dirs[name], ignore=shutil.ignore_patterns("trace.duckdb*"))
    return dirs, {name: report(d) for name, d in dirs.items()}


@pytest.mark.parametrize("name", NAMES)
def test_copies_between_the_fences_are_exactly_the_derived_ones(name):
    """15 H2D (6 x 2,048 B ids/mask, 9 x 8 B token ids) and 204 D2H (3 x 4,096 B outputs, 201 x 1 B bool
    checks: 2 per forward pass, 3 per request) between the fences, size by size."""
    found = window_counts(SAMPLES / name)
    want = derived_window(_params(name))
    assert found["fences"] == 2
    assert {k: found[k] for k in want} == want
    assert (found["h2d"], found["d2h"]) == (15, 204)


def test_the_emulator_tolled_every_crossing_of_the_run():
    """The ground truth: one toll per H2D/D2H copy of the whole run (the warm-up request included, and
    the two fences), by power-of-two size, exactly as derived."""
    p = _params("hf-generate-bridge")
    run = derived_window(p | {"requests": p["requests"] + p["warmup"]})
    want: dict = {"h2d": {}, "d2h": {}}
    for d, n, k in [*run["by_size"], ["h2d", FENCE_BYTES, 2]]:
        b = str(n.bit_length() - 1)
        want[d][b] = want[d].get(b, 0) + k
    inj = json.loads((SAMPLES / "hf-generate-bridge" / "manifest.json").read_text())["bridge_emulation"]["injected"]
    assert inj["toll_by_log2_bytes"] == want
    assert inj["errors"] == inj["records_lost"] == inj["skipped_calls"] == 0


@pytest.mark.parametrize("name", NAMES)
def test_report_finds_one_step_per_forward_pass(samples, name):
    """96 forward passes in the window, 128 with the warm-up request the report cannot tell from them."""
    _, reports = samples
    p = _params(name)
    lo, hi = p["requests"] * p["new_tokens"], (p["requests"] + p["warmup"]) * p["new_tokens"]
    assert reports[name]["step_source"] == "readback"
    assert 0.95 * lo <= reports[name]["steps"] <= 1.05 * hi, reports[name]["steps"]


def test_diff_explains_the_injected_gap_per_step(samples):
    """diff baseline -> bridge: the categories explain at least 90% of what the emulator injected per step,
    both counted over the bridge trace's analysis window."""
    dirs, reports = samples
    d = diff(dirs["hf-generate-baseline"], dirs["hf-generate-bridge"], trace_report=reports["hf-generate-bridge"])
    assert d["bridge_injected_scope"] == "window"
    assert d["explained_ms_per_step"] >= 0.9 * d["bridge_injected_ms_per_step"] > 0, d


def test_report_explains_the_injected_time_in_the_window(samples):
    """The bridge run's categories explain 90-110% of the time the emulator injected inside the window."""
    _, reports = samples
    gt = reports["hf-generate-bridge"]["ground_truth"]
    assert gt["scope"] == "window"
    assert 0.9 <= gt["explained_share"] <= 1.1, gt
