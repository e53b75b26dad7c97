"""The driver interposer on a real GPU (no CUPTI): examples/serve.py recorded by the interposer alone holds
the same H2D/D2H copies (count, bytes, direction, host memory kind) as the same program recorded by
CUPTI, every copy serve.py says it issued, nothing dropped, no entry point left unwrapped. Read from the
shards with pyarrow (the GPU machine has no duckdb). The third-party workloads (HF generate, JAX, CuPy,
the CUDA-graph replay loop) are checked interposer-only in test_gpu_workloads.py (mode `interpose`)."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from tests.conftest import cctrace
from tests.test_gpu_record import SERVE, _summary

pytestmark = pytest.mark.gpu
INTERPOSE_ONLY = ["--kinds", "none", "--interpose", "on"]


def _record(tmp_path, name: str, opts: list[str]):
    out = tmp_path / name
    r = cctrace(
        "record",
        "-q",
        "--no-load",
        "-o",
        str(out),
        *opts,
        "--",
        *SERVE,
        "--steps",
        "30",
        "--swap-every",
        "10",
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return out, _summary(r.stdout)


def _copies(out, source: str) -> Counter:
    from cctrace.trace.shards import read_shard

    rows = [r for f in sorted(out.glob("copies.*.arrows")) for r in read_shard(f).data.to_pylist()]
    return Counter(
        (r["copy_kind"], r["bytes"], r["src_kind"] if r["copy_kind"] == "HtoD" else r["dst_kind"])
        for r in rows
        if r["source"] == source and r["op"] == "memcpy" and r["copy_kind"] in ("HtoD", "DtoH")
    )


@pytest.fixture(scope="module")
def traces(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("interpose")
    return {
        "cupti": _record(tmp, "cupti", ["--interpose", "off"]),
        "interposer": _record(tmp, "interposer", INTERPOSE_ONLY),
    }


def test_interposer_sees_the_copies_cupti_sees(traces):
    cupti, inter = _copies(traces["cupti"][0], "cupti"), _copies(traces["interposer"][0], "interposer")
    assert cupti and inter == cupti, {"only_cupti": cupti - inter, "only_interposer": inter - cupti}


def test_interposer_holds_every_copy_serve_issued(traces):
    out, s = traces["interposer"]
    got = _copies(out, "interposer")
    issued = s["issued_total"]
    for d, kind in (("h2d", "HtoD"), ("d2h", "DtoH")):
        mine = [(n, b) for (k, b, _m), n in got.items() if k == kind]
        assert sum(n for n, _ in mine) >= issued[d] and sum(n * b for n, b in mine) >= issued[d + "_bytes"], (d, got)
    pinned = sum(n for (k, _b, m), n in got.items() if k == "HtoD" and m == "pinned")
    assert pinned >= issued["h2d_pinned"]


def test_interposer_health(traces):
    out, _ = traces["interposer"]
    m = json.loads((out / "manifest.json").read_text())
    assert m["options"]["interpose"]["mode"] == "on"
    health = [p["sources"]["interposer"] for p in m["processes"] if "interposer" in (p.get("sources") or {})]
    assert health, m["processes"]
    assert all(h["dropped"] == 0 and h["unmatched_symbols"] == 0 for h in health), health
    assert sum(h["records"]["calls"] for h in health) > 0
