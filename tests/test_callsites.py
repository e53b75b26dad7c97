"""Call sites in the outputs: the `callsites` query gives each category's lost time to the Python
line whose calls lost it, on a synthetic trace where every call's stack is known (tests/synth.py)."""

import pytest

from tests import test_attribution
from tests.synth import APP, SITES

synth = test_attribution.synth  # the synthetic trace, as the attribution tests build it


def _row(rows, site: str, category: str) -> dict:
    (r,) = [r for r in rows if r["callsite"] == f"{APP}:{SITES[site]}" and r["category"] == category]
    return r


def test_each_category_goes_to_the_line_that_lost_it(synth):
    _, spec, a = synth
    rows = a.rows("callsites")
    t, steps = spec.truth, spec.steps
    small = _row(rows, "small", "small_crossings")
    assert small["calls"] == t["small_count"] and small["bytes"] == t["small_count"] * spec.small_bytes
    assert small["lost_ms"] == pytest.approx(t["small_excess_ns"] / 1e6, rel=0.02)
    assert small["function"] == f"Server.line{SITES['small']}"  # the call site, not the torch frame below it
    assert small["per_step"] == spec.small_per_step
    stall = _row(rows, "stall", "async_stalls")
    assert stall["calls"] == t["stall_count"] and stall["lost_ms"] == pytest.approx(t["stall_ns"] / 1e6, rel=0.02)
    pair = _row(rows, "alloc_copy", "alloc_and_copy")  # an alloc-and-copy pair is its copy call's
    assert pair["calls"] == t["alloc_pairs"] and pair["lost_ms"] == pytest.approx(t["alloc_copy_ns"] / 1e6, rel=0.02)
    readback, sync = _row(rows, "readback", "sync_waits"), _row(rows, "sync", "sync_waits")
    assert readback["calls"] == sync["calls"] == steps
    assert sync["lost_ms"] == pytest.approx(steps * spec.sync_ns / 1e6, rel=0.02)
    streams = _row(rows, "streams", "stream_concurrency")
    assert streams["lost_ms"] == pytest.approx(t["stream_wait_ns"] / 1e6, rel=0.02)
    # every lost stretch has a call site here; the totals are the attribution's
    assert not [r for r in rows if r["callsite"] == "(no stack)"]
    totals = {r["category"]: r["lost_ms"] for r in a.rows("attribution")}
    for cat, lost in totals.items():
        got = sum(r["lost_ms"] for r in rows if r["category"] == cat)
        assert got == pytest.approx(lost, abs=0.01), cat
