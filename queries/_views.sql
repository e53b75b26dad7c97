-- Shared building blocks for the canned queries: mostly TEMP tables computed once per connection
-- (materialised, so every query reuses them and DuckDB plans each step on its own); cheap
-- projections stay views to save memory.
-- Parameters are DuckDB variables (SET VARIABLE), bound by cctrace from --param k=v; defaults here.
-- Times are ns on CLOCK_MONOTONIC. Works on CUPTI traces, host-probe-only traces and both merged.

-- Whether CUPTI recorded copies and calls. Where it did, the probed (source ebpf) copy calls are the
-- same calls seen again: they add detail, never a second count.
CREATE OR REPLACE TEMP TABLE cupti_present AS
SELECT EXISTS (SELECT 1 FROM copies WHERE source = 'cupti') AS copies,
       EXISTS (SELECT 1 FROM api_calls WHERE source = 'cupti') AS calls;

-- Steps: NVTX ranges whose name matches step_pattern; without them, detected iterations
-- (the intervals between consecutive blocking readbacks, D2H into pageable memory).
CREATE OR REPLACE TEMP VIEW nvtx_steps AS
SELECT row_number() OVER (ORDER BY start_ns) AS step, name, pid, tid, start_ns, end_ns
FROM markers WHERE name LIKE coalesce(getvariable('step_pattern'), 'step%') AND end_ns > start_ns;

-- Host-probe-only traces know no memory kinds: there, small D2H copy calls (sampled tokens) mark them.
CREATE OR REPLACE TEMP VIEW readbacks AS
SELECT pid, end_ns FROM copies WHERE copy_kind = 'DtoH' AND dst_kind = 'pageable' AND op = 'memcpy'
UNION ALL
SELECT pid, end_ns FROM api_calls
WHERE source = 'ebpf' AND copy_kind = 'DtoH' AND bytes < 65536 AND NOT (SELECT copies FROM cupti_present);

CREATE OR REPLACE TEMP VIEW detected_steps AS
SELECT row_number() OVER (ORDER BY end_ns) AS step, 'iteration' AS name, pid, NULL::BIGINT AS tid,
       prev_end AS start_ns, end_ns
FROM (SELECT pid, end_ns, lag(end_ns) OVER (ORDER BY end_ns) AS prev_end FROM readbacks)
WHERE prev_end IS NOT NULL;

CREATE OR REPLACE TEMP TABLE steps AS
SELECT * FROM nvtx_steps
UNION ALL
SELECT * FROM detected_steps WHERE NOT EXISTS (SELECT 1 FROM nvtx_steps);

-- The analysed window: first step start to last step end, else everything recorded.
CREATE OR REPLACE TEMP TABLE win AS
WITH ev AS (
    SELECT start_ns, end_ns FROM copies UNION ALL SELECT start_ns, end_ns FROM api_calls
    UNION ALL SELECT start_ns, end_ns FROM kernels
)
SELECT coalesce((SELECT min(start_ns) FROM steps), (SELECT min(start_ns) FROM ev)) AS start_ns,
       coalesce((SELECT max(end_ns) FROM steps), (SELECT max(end_ns) FROM ev)) AS end_ns,
       (SELECT count(*) FROM steps) AS steps,
       EXISTS (SELECT 1 FROM nvtx_steps) AS nvtx;

-- Every host<->device transfer with its issuing call: CUPTI copies, or (host-probe-only traces)
-- the probed copy calls, whose GPU time is unknown and approximated by the call's duration.
CREATE OR REPLACE TEMP VIEW xfers AS
SELECT c.copy_row, c.pid, c.copy_kind, c.src_kind, c.dst_kind, c.bytes, c.start_ns, c.end_ns, c.stream_id,
       c.correlation_id, c.api_name, c.api_tid, c.api_start_ns, c.api_end_ns, 'gpu' AS timing,
       NULL::BIGINT AS on_cpu_ns, NULL::BIGINT AS off_cpu_ns, NULL::BIGINT AS ioctl_ns, c.source AS api_source
FROM copies_with_api c WHERE c.op IN ('memcpy', 'p2p')
UNION ALL
SELECT NULL::BIGINT, a.pid, a.copy_kind, 'unknown', 'unknown', a.bytes, a.start_ns, a.end_ns, a.stream::BIGINT,
       a.correlation_id, a.name, a.tid, a.start_ns, a.end_ns, 'host', a.on_cpu_ns, a.off_cpu_ns, a.ioctl_ns, a.source
FROM api_calls a
WHERE a.source = 'ebpf' AND a.bytes IS NOT NULL AND a.copy_kind IS NOT NULL
  AND NOT (SELECT copies FROM cupti_present);

-- Each transfer in the window with its crossing time: the GPU copy plus the host work of its call
-- right before it (pre: staging/encrypting before the copy could start, not waiting for the stream)
-- and right after it (post: copying out/decrypting after it landed). Host-probe-only transfers
-- have only the call's duration. stream_free_ns: when the copy's stream became free, the latest end
-- of the copies and kernels before it on its stream (one window pass, keyed by the copy's row).
CREATE OR REPLACE TEMP TABLE xfer_dir AS
WITH ops AS (
    SELECT pid, stream_id, start_ns, end_ns, rowid AS copy_row FROM copies WHERE op IN ('memcpy', 'p2p')
    UNION ALL
    SELECT pid, stream_id, start_ns, end_ns, NULL FROM kernels
), stream_free AS (
    SELECT copy_row, max(end_ns) OVER (PARTITION BY pid, stream_id ORDER BY start_ns, end_ns
                                       ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS stream_free_ns
    FROM ops QUALIFY copy_row IS NOT NULL
), d AS (
    SELECT x.* EXCLUDE (copy_row, src_kind, dst_kind),
           CASE x.copy_kind WHEN 'HtoD' THEN x.src_kind WHEN 'DtoH' THEN x.dst_kind ELSE 'device' END AS host_kind,
           x.end_ns - x.start_ns AS dur_ns, f.stream_free_ns,
           -- a copy that started well after its call returned was held by something else, not by the call
           CASE WHEN x.timing = 'gpu' AND x.api_start_ns IS NOT NULL
                     AND x.start_ns <= x.api_end_ns + coalesce(getvariable('launch_gap_us'), 10) * 1000
                THEN greatest(least(x.start_ns, x.api_end_ns) - greatest(x.api_start_ns, coalesce(f.stream_free_ns, 0)), 0)
                ELSE 0 END AS pre_ns,
           CASE WHEN x.timing = 'gpu' AND x.api_end_ns IS NOT NULL
                THEN greatest(x.api_end_ns - greatest(x.end_ns, x.api_start_ns), 0)
                ELSE 0 END AS post_ns
    FROM xfers x LEFT JOIN stream_free f USING (copy_row), win
    WHERE x.copy_kind IN ('HtoD', 'DtoH', 'DtoD', 'PtoP') AND x.start_ns >= win.start_ns AND x.start_ns <= win.end_ns
)
SELECT *, dur_ns + pre_ns + post_ns AS cross_ns FROM d;

-- Crossing cost model per direction and host memory kind, fitted on the trace's own crossing times:
-- bandwidth from large copies, toll (fixed cost) from small ones, each a median (robust to outliers).
CREATE OR REPLACE TEMP TABLE cost_model AS
WITH p AS (
    SELECT coalesce(getvariable('small_fit_bytes'), 65536) AS small_fit,
           coalesce(getvariable('large_fit_bytes'), 1048576) AS large_fit,
           coalesce(getvariable('default_gbps'), 25.0) AS default_gbps
), bw0 AS (  -- every group once (with its count); the medians below each scan only the copies they fit
    SELECT copy_kind, host_kind, count(*) AS copies,
           median(bytes / greatest(cross_ns, 1)) FILTER (WHERE bytes >= p.large_fit) AS bpn0
    FROM xfer_dir, p GROUP BY ALL
), toll AS (
    SELECT b.copy_kind, b.host_kind, b.copies, s.toll_ns
    FROM bw0 b LEFT JOIN (
        SELECT x.copy_kind, x.host_kind, median(x.cross_ns - x.bytes / coalesce(b.bpn0, p.default_gbps)) AS toll_ns
        FROM xfer_dir x JOIN bw0 b USING (copy_kind, host_kind), p WHERE x.bytes <= p.small_fit GROUP BY ALL
    ) s USING (copy_kind, host_kind)
), bw AS (
    SELECT t.copy_kind, t.host_kind, l.bpn
    FROM toll t LEFT JOIN (
        SELECT x.copy_kind, x.host_kind, median(x.bytes / greatest(x.cross_ns - coalesce(t.toll_ns, 0), 1)) AS bpn
        FROM xfer_dir x JOIN toll t USING (copy_kind, host_kind), p WHERE x.bytes >= p.large_fit GROUP BY ALL
    ) l USING (copy_kind, host_kind)
)
SELECT t.copy_kind, t.host_kind, t.copies, greatest(coalesce(t.toll_ns, 0), 0) AS toll_ns,
       coalesce(bw.bpn, p.default_gbps) AS bytes_per_ns, bw.bpn IS NULL AS bandwidth_assumed
FROM toll t JOIN bw USING (copy_kind, host_kind), p;

-- Each transfer priced by the model: what its bytes need, and what it cost beyond that; host_ns is
-- the part of its call that was the crossing's own host work (the rest of the call waited). A view:
-- the join with the few model rows is cheap, a second copy of every transfer is not.
CREATE OR REPLACE TEMP VIEW xfer_costs AS
SELECT x.*, m.toll_ns, m.bytes_per_ns, x.bytes / m.bytes_per_ns AS byte_ns,
       greatest(x.cross_ns - x.bytes / m.bytes_per_ns, 0) AS excess_ns,
       x.bytes < coalesce(getvariable('small_bytes'), m.toll_ns * m.bytes_per_ns) AS small,
       CASE WHEN x.timing = 'gpu' THEN x.pre_ns + x.post_ns
            -- host-probe-only: what the model explains, but never time spent asleep (off-CPU is waiting)
            ELSE least(x.dur_ns - coalesce(x.off_cpu_ns, 0), m.toll_ns + x.bytes / m.bytes_per_ns) END AS host_ns
FROM xfer_dir x JOIN cost_model m USING (copy_kind, host_kind);

-- Each distinct call name once, with what kind of call it is: names are matched here, not per call.
CREATE OR REPLACE TEMP TABLE call_names AS
SELECT name,
       regexp_matches(name, '^cu(da)?(Memset(D8|D16|D32|2D)?.*Async|LaunchKernel|LaunchCooperativeKernel|GraphLaunch|MallocAsync|FreeAsync|MemAllocAsync|MemFreeAsync)') AS returns_at_once,
       regexp_matches(name, '^cu(da)?Memcpy.*Async') AS async_copy,
       regexp_matches(name, '^cu(da)?(Stream|Event|Device|Ctx)Synchronize') AS sync,
       regexp_matches(name, '^cuMemcpyDtoH(_v2)?(_ptds)?$') AS blocking_readback_probe
FROM (SELECT DISTINCT name FROM api_calls);

-- Calls that are meant to return at once; time beyond normal_call_us is an async stall. For async
-- copies (pinned or device memory) the crossing's own host work is not a stall: only the rest is.
CREATE OR REPLACE TEMP TABLE async_calls AS
WITH names AS (SELECT name FROM call_names WHERE returns_at_once), normal AS (SELECT coalesce(getvariable('normal_call_us'), 20) * 1000 AS ns)
SELECT a.pid, a.tid, a.name, a.start_ns, a.end_ns, a.correlation_id, a.on_cpu_ns, a.off_cpu_ns, a.ioctl_ns,
       a.source, a.end_ns - a.start_ns AS dur_ns, 0::BIGINT AS pre_ns, 0::BIGINT AS post_ns,
       greatest(a.end_ns - a.start_ns - normal.ns, 0) AS stall_ns
FROM api_calls a SEMI JOIN names USING (name), win, normal
WHERE a.start_ns >= win.start_ns AND a.start_ns <= win.end_ns
  -- merged traces: the CUPTI record of a call is the call; its probe (source ebpf) would count it twice
  AND (a.source <> 'ebpf' OR NOT (SELECT calls FROM cupti_present))
UNION ALL
-- (each transfer carries its call's columns: no join back to api_calls)
SELECT x.pid, x.api_tid, x.api_name, x.api_start_ns, x.api_end_ns, x.correlation_id, x.on_cpu_ns, x.off_cpu_ns,
       x.ioctl_ns, x.api_source, x.api_end_ns - x.api_start_ns, x.pre_ns, x.post_ns,
       greatest(x.api_end_ns - x.api_start_ns - x.host_ns - normal.ns, 0)
FROM xfer_costs x, normal
WHERE x.api_start_ns IS NOT NULL AND x.api_name IN (SELECT name FROM call_names WHERE async_copy)
  AND (x.timing = 'host' OR x.host_kind IN ('pinned', 'device'));

-- Sync waits: stream/event/context synchronize calls, and blocking readbacks (D2H into pageable):
-- wait_ns is the call's time less the readback's own crossing work (counted as a crossing).
CREATE OR REPLACE TEMP TABLE sync_calls AS
WITH names AS (SELECT name FROM call_names WHERE sync)
SELECT a.pid, a.tid, a.name, a.start_ns, a.end_ns, a.correlation_id, a.source, a.end_ns - a.start_ns AS dur_ns,
       a.end_ns - a.start_ns AS wait_ns, 'sync' AS wait_kind
FROM api_calls a SEMI JOIN names USING (name), win
WHERE a.start_ns >= win.start_ns AND a.start_ns <= win.end_ns
  AND (a.source <> 'ebpf' OR NOT (SELECT calls FROM cupti_present))
UNION ALL
SELECT pid, api_tid, api_name, api_start_ns, api_end_ns, correlation_id, api_source, api_end_ns - api_start_ns,
       greatest(api_end_ns - api_start_ns - host_ns, 0), 'readback'
FROM xfer_costs
WHERE api_start_ns IS NOT NULL AND copy_kind = 'DtoH'
  AND (host_kind = 'pageable'
       OR (timing = 'host' AND api_name IN (SELECT name FROM call_names WHERE blocking_readback_probe)));

-- GPU idle gaps in the window: where a copy or kernel starts after everything before it ended
-- (one window pass over the GPU work in the window sorted by start; the running max of end times is
-- the busy edge, the window's start before the first). before_ns: idle time before the gap, for the
-- overlap by category below (gaps are disjoint and ordered). The bounds are variables, not a join.
SET VARIABLE win_start_ns = (SELECT start_ns FROM win);
SET VARIABLE win_end_ns = (SELECT end_ns FROM win);
CREATE OR REPLACE TEMP TABLE gpu_idle AS
WITH ev AS (
    SELECT start_ns, end_ns FROM copies
    WHERE end_ns > getvariable('win_start_ns') AND start_ns < getvariable('win_end_ns')
    UNION ALL
    SELECT start_ns, end_ns FROM kernels
    WHERE end_ns > getvariable('win_start_ns') AND start_ns < getvariable('win_end_ns')
), o AS (
    SELECT start_ns, coalesce(max(end_ns) OVER (ORDER BY start_ns ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING),
                              getvariable('win_start_ns')) AS busy_until
    FROM ev
), g AS (
    SELECT greatest(busy_until, getvariable('win_start_ns')) AS start_ns, least(start_ns, getvariable('win_end_ns')) AS end_ns
    FROM o WHERE start_ns > busy_until
)
SELECT start_ns, end_ns, (sum(end_ns - start_ns) OVER (ORDER BY start_ns ROWS UNBOUNDED PRECEDING) - (end_ns - start_ns))::BIGINT AS before_ns
FROM g WHERE end_ns > start_ns;

-- Allocation followed, within alloc_window_us on the same thread, by an H2D copy that fits in it.
CREATE OR REPLACE TEMP TABLE alloc_copy_pairs AS
SELECT a.pid, ac.tid, a.ts_ns AS alloc_ns, a.bytes AS alloc_bytes, coalesce(ac.name, 'alloc') AS alloc_call,
       coalesce(ac.end_ns - ac.start_ns, 0) AS alloc_call_ns, x.bytes AS copy_bytes, x.api_name AS copy_call,
       x.api_end_ns - x.api_start_ns AS copy_call_ns, x.dur_ns AS copy_ns, x.api_start_ns AS copy_call_start_ns
FROM allocs a
LEFT JOIN api_calls ac ON ac.pid = a.pid AND ac.correlation_id = a.correlation_id AND a.correlation_id > 0
JOIN xfer_dir x ON x.pid = a.pid AND x.copy_kind = 'HtoD' AND x.bytes <= a.bytes
     AND x.api_start_ns >= coalesce(ac.end_ns, a.ts_ns)
     AND x.api_start_ns <= coalesce(ac.end_ns, a.ts_ns) + coalesce(getvariable('alloc_window_us'), 200) * 1000
     AND (ac.tid IS NULL OR x.api_tid = ac.tid)
WHERE a.op = 'alloc' AND a.memory_kind = 'device'
QUALIFY row_number() OVER (PARTITION BY a.pid, a.ts_ns, a.address ORDER BY x.api_start_ns) = 1;

-- Host time stuck at the boundary, as intervals for the GPU-idle overlap. Intervals of one call
-- overlap only where its copy or the work it waits for keeps the GPU busy: no idle time twice.
-- Categories travel as small codes (category_codes), not strings: there are millions of intervals.
CREATE OR REPLACE TEMP TABLE category_codes AS
SELECT * FROM (VALUES (1::UTINYINT, 'small_crossings'), (2, 'async_stalls'), (3, 'alloc_and_copy'), (4, 'sync_waits'))
    AS t(c, category);

CREATE OR REPLACE TEMP TABLE stuck AS
SELECT pid, c, start_ns::BIGINT AS start_ns, end_ns::BIGINT AS end_ns FROM (
SELECT pid, 2::UTINYINT AS c, end_ns - post_ns - stall_ns AS start_ns, end_ns - post_ns AS end_ns
FROM async_calls WHERE stall_ns > 0
UNION ALL
SELECT pid, 3, copy_call_start_ns - alloc_call_ns, copy_call_start_ns FROM alloc_copy_pairs
UNION ALL
-- one interval from the crossing's host work before the copy to the end of its call: the copy itself
-- in between keeps the GPU busy, so it adds no idle overlap, and one row per copy is half the join
SELECT pid, 1, least(start_ns, api_end_ns) - pre_ns, greatest(api_end_ns, least(start_ns, api_end_ns))
FROM xfer_costs
WHERE small AND timing = 'gpu' AND pre_ns + post_ns > 0
UNION ALL
SELECT pid, 1, api_start_ns, api_start_ns + host_ns FROM xfer_costs WHERE small AND timing = 'host'
UNION ALL
SELECT pid, 4, end_ns - wait_ns, end_ns FROM sync_calls WHERE wait_kind = 'sync'
UNION ALL
SELECT pid, 4, start_ns, start_ns + wait_ns FROM sync_calls WHERE wait_kind = 'readback'
)
WHERE end_ns > start_ns;

-- Lost stream concurrency, per (delayed copy, copy of another stream that held the bridge): the
-- part of the delayed copy's ready-to-start wait that the other copy covered.
CREATE OR REPLACE TEMP TABLE copy_streams AS
SELECT count(DISTINCT stream_id) AS n FROM xfer_dir WHERE copy_kind IN ('HtoD', 'DtoH');

CREATE OR REPLACE TEMP TABLE bridge_waits AS
WITH c AS MATERIALIZED (
    SELECT x.pid, x.stream_id, x.start_ns, greatest(x.api_start_ns, coalesce(x.stream_free_ns, 0)) AS ready_ns
    FROM xfer_dir x
    WHERE x.timing = 'gpu' AND x.copy_kind IN ('HtoD', 'DtoH') AND x.api_start_ns IS NOT NULL
      -- with copies on one stream only no copy can wait for another stream's: skip all of this
      AND (SELECT n FROM copy_streams) > 1
), o AS MATERIALIZED (
    SELECT pid, stream_id, start_ns, end_ns FROM xfer_dir WHERE copy_kind IN ('HtoD', 'DtoH')
)
SELECT c.pid, c.stream_id, o.stream_id AS blocked_by_stream, c.start_ns AS copy_start_ns,
       least(o.end_ns, c.start_ns) - greatest(o.start_ns, c.ready_ns) AS wait_ns
FROM (SELECT * FROM c WHERE c.start_ns > c.ready_ns) c
-- only the two range conditions in the join, so DuckDB uses its inequality join (IEJoin)
JOIN o ON o.start_ns < c.start_ns AND o.end_ns > c.ready_ns
WHERE o.pid = c.pid AND o.stream_id <> c.stream_id;

-- GPU idle time overlapping each category's stuck host time. The idle gaps are disjoint, so with
-- F(t) = idle time before t, an interval [s, e] overlaps F(e) - F(s) of it: one ASOF join (a sorted
-- merge) per interval end instead of a range join of every stuck interval with every gap. An end
-- before the first gap has F = 0 and no match.
CREATE OR REPLACE TEMP TABLE idle_by_category AS
WITH ends AS (
    SELECT c, unnest([start_ns, end_ns]) AS t, unnest([-1, 1]) AS sign FROM stuck
), per AS (
    SELECT e.c, sum(e.sign * (i.before_ns + least(e.t, i.end_ns) - i.start_ns))::BIGINT AS idle_ns
    FROM ends e ASOF JOIN gpu_idle i ON e.t >= i.start_ns
    GROUP BY ALL
)
SELECT k.category, per.idle_ns FROM per JOIN category_codes k USING (c);
