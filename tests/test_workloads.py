"""The third-party workloads without a GPU: each explains itself (--help runs without its framework),
and the fence-window count a GPU test relies on counts exactly the copies between the two fences."""

from __future__ import annotations

import subprocess
import sys

import pytest

from cctrace.trace.shards import ShardWriter
from tests.conftest import ROOT, project_env

WORKLOADS_DIR = ROOT / "tests" / "workloads"
sys.path.insert(0, str(WORKLOADS_DIR))
from _common import FENCE_BYTES, window, window_calls, window_counts  # noqa: E402

NAMES = ("hf_generate", "jax_loop", "cupy_loop", "graph_replay")


@pytest.mark.parametrize("name", NAMES)
def test_help_runs_without_the_framework(name):
    r = subprocess.run(
        [sys.executable, str(WORKLOADS_DIR / f"{name}.py"), "--help"], capture_output=True, text=True, env=project_env()
    )
    assert r.returncode == 0, r.stderr
    assert "--json" in r.stdout


def test_window_totals_follow_the_per_iteration_copies():
    per = [{"direction": "h2d", "bytes": 100}, {"direction": "h2d", "bytes": 8}, {"direction": "d2h", "bytes": 4}]
    assert window(per, 10) == {"h2d": 20, "d2h": 10, "h2d_bytes": 1080, "d2h_bytes": 40}


def test_window_counts_only_the_copies_strictly_between_the_fences(tmp_path):
    cols = ("pid", "op", "copy_kind", "bytes", "start_ns", "end_ns")
    rows = [
        (1, "memcpy", "HtoD", 64, 10, 11),  # before the window (weights)
        (1, "memcpy", "HtoD", FENCE_BYTES, 20, 21),
        (1, "memcpy", "HtoD", 64, 30, 31),
        (1, "memcpy", "DtoH", 4, 40, 41),
        (1, "memcpy", "DtoD", 64, 45, 46),  # not a crossing
        (1, "memset", "memset", 64, 47, 48),
        (1, "memcpy", "HtoD", 64, 50, 51),
        (1, "memcpy", "HtoD", FENCE_BYTES, 60, 61),
        (1, "memcpy", "DtoH", 4, 70, 71),  # after
    ]
    w = ShardWriter(tmp_path, 1)
    w.extend("copies", cols, rows)
    w.close()
    got = window_counts(tmp_path)
    assert got == {
        "h2d": 2,
        "d2h": 1,
        "h2d_bytes": 128,
        "d2h_bytes": 4,
        "fences": 2,
        "by_size": [["d2h", 4, 1], ["h2d", 64, 2]],
    }


def test_hf_generate_derived_window_is_what_cupti_found_on_the_h200():
    """The derivation from transformers' generate() source against the copies CUPTI found between the
    fences on the H200 (torch 2.11.0+cu130, transformers 5.17.0): benchmarks/truth.py's run (6 requests x
    64 tokens) and the sample pair's (3 x 32, sample_traces/hf-generate-*)."""
    from hf_generate import derived_window

    base = {"batch": 8, "prompt": 32}
    truth = derived_window(base | {"requests": 6, "new_tokens": 64})
    assert (truth["h2d"], truth["d2h"]) == (30, 792)
    assert truth["by_size"] == [["d2h", 1, 786], ["d2h", 6144, 6], ["h2d", 8, 18], ["h2d", 2048, 12]]
    sample = derived_window(base | {"requests": 3, "new_tokens": 32})
    assert sample == {
        "h2d": 15,
        "d2h": 204,
        "h2d_bytes": 12360,
        "d2h_bytes": 12489,
        "by_size": [["d2h", 1, 201], ["d2h", 4096, 3], ["h2d", 8, 9], ["h2d", 2048, 6]],
    }


def test_window_calls_counts_the_calls_between_the_fences_by_name(tmp_path):
    w = ShardWriter(tmp_path, 1)
    w.extend(
        "copies",
        ("pid", "op", "copy_kind", "bytes", "start_ns", "end_ns"),
        [(1, "memcpy", "HtoD", FENCE_BYTES, 20, 21), (1, "memcpy", "HtoD", FENCE_BYTES, 60, 61)],
    )
    cols = ("pid", "tid", "source", "domain", "name", "start_ns", "end_ns")
    w.extend(
        "api_calls",
        cols,
        [
            (1, 7, "cupti", "driver", "cuStreamSynchronize", 10, 11),  # before the window
            (1, 7, "cupti", "driver", "cuGraphLaunch", 30, 31),
            (1, 8, "cupti", "driver", "cuMemcpyDtoHAsync_v2", 35, 36),
            (1, 9, "cupti", "driver", "cuMemcpyDtoHAsync_v2", 40, 41),
            (1, 7, "cupti", "driver", "cuGraphLaunch", 50, 51),
            (1, 7, "cupti", "runtime", "cudaStreamSynchronize", 70, 71),  # after
        ],
    )
    w.close()
    assert window_calls(tmp_path) == [
        ["cupti", "driver", "cuGraphLaunch", 2, 1],
        ["cupti", "driver", "cuMemcpyDtoHAsync_v2", 2, 2],
    ]
