"""Lost stream concurrency (bridge_waits) is found through time buckets and an equality join, with a range
join only for intervals over a second: its rows must be exactly those of the plain range join (the reference
below, the module's SQL before the buckets), on ordinary copies, copies longer than a second, and a copy whose
duration is absurd (a damaged clock: a list of buckets per millisecond would never fit)."""

from __future__ import annotations

import pytest

from cctrace.analyze.analysis import Analysis
from tests.synth import Spec, generate

REFERENCE = """
WITH c AS (
    SELECT x.pid, x.stream_id, x.start_ns, greatest(x.api_start_ns, coalesce(x.stream_free_ns, 0)) AS ready_ns,
           x.correlation_id, x.bytes, x.api_source AS source
    FROM xfer_dir x
    WHERE x.timing = 'gpu' AND x.copy_kind IN ('HtoD', 'DtoH') AND x.api_start_ns IS NOT NULL
      AND (SELECT n FROM copy_streams) > 1
), o AS (
    SELECT pid, stream_id, start_ns, end_ns FROM xfer_dir WHERE copy_kind IN ('HtoD', 'DtoH')
)
SELECT c.pid, c.stream_id, o.stream_id AS blocked_by_stream, c.start_ns AS copy_start_ns,
       least(o.end_ns, c.start_ns) - greatest(o.start_ns, c.ready_ns) AS wait_ns, c.correlation_id, c.bytes, c.source
FROM (SELECT * FROM c WHERE c.start_ns > c.ready_ns) c
JOIN o ON o.start_ns < c.start_ns AND o.end_ns > c.ready_ns
WHERE o.pid = c.pid AND o.stream_id <> c.stream_id
"""


@pytest.mark.parametrize(
    "spec",
    [
        Spec(steps=30),
        Spec(steps=3, stream_copy_bytes=30_000_000_000),  # 1.5 s copies on 3 streams: long waits, long copies
        Spec(steps=2, bytes_per_ns=2e-11),  # copies of hours to years
    ],
    ids=["ordinary", "over-a-second", "absurd"],
)
def test_bridge_waits_are_the_range_joins_rows(tmp_path, spec):
    generate(tmp_path / "t", spec)
    a = Analysis(tmp_path / "t")
    try:
        a.build(("concurrency",))
        got = sorted(a.con.execute("SELECT * FROM bridge_waits").fetchall())
        want = sorted(a.con.execute(REFERENCE).fetchall())
    finally:
        a.close()
    assert got == want and len(got) > 0
