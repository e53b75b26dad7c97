-- Shared building blocks for the canned queries: mostly TEMP tables computed once per connection
-- (materialised, so every query reuses them and DuckDB plans each step on its own); cheap
-- projections stay views to save memory.
-- Parameters are DuckDB variables (SET VARIABLE), bound by cctrace from --param k=v; defaults here.
-- Times are ns on CLOCK_MONOTONIC. Works on CUPTI traces, host-probe-only traces and both merged.

-- Steps: NVTX ranges whose name matches step_pattern; without them, detected iterations
-- (the intervals between consecutive blocking readbacks, D2H into pageable memory).
CREATE OR REPLACE TEMP VIEW nvtx_steps AS
SELECT row_number() OVER (ORDER BY start_ns) AS step, name, pid, tid, start_ns, end_ns
FROM markers WHERE name LIKE coalesce(getvariable('step_pattern'), 'step%') AND end_ns > start_ns;

CREATE OR REPLACE TEMP VIEW readbacks AS
SELECT * FROM copies WHERE copy_kind = 'DtoH' AND dst_kind = 'pageable' AND op = 'memcpy';

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
SELECT c.pid, c.copy_kind, c.src_kind, c.dst_kind, c.bytes, c.start_ns, c.end_ns, c.stream_id,
       c.correlation_id, c.api_name, c.api_tid, c.api_start_ns, c.api_end_ns, 'gpu' AS timing
FROM copies_with_api c WHERE c.op IN ('memcpy', 'p2p')
UNION ALL
SELECT a.pid, a.copy_kind, 'unknown', 'unknown', a.bytes, a.start_ns, a.end_ns, a.stream::BIGINT,
       a.correlation_id, a.name, a.tid, a.start_ns, a.end_ns, 'host'
FROM api_calls a
WHERE a.source = 'ebpf' AND a.bytes IS NOT NULL AND a.copy_kind IS NOT NULL
  AND NOT EXISTS (SELECT 1 FROM copies WHERE source = 'cupti');

CREATE OR REPLACE TEMP TABLE xfer_dir AS
SELECT x.*, CASE x.copy_kind WHEN 'HtoD' THEN x.src_kind WHEN 'DtoH' THEN x.dst_kind ELSE 'device' END AS host_kind,
       x.end_ns - x.start_ns AS dur_ns
FROM xfers x, win
WHERE x.copy_kind IN ('HtoD', 'DtoH', 'DtoD', 'PtoP') AND x.start_ns >= win.start_ns AND x.start_ns <= win.end_ns;

-- Crossing cost model per direction and host memory kind, fitted on the trace's own copies:
-- bandwidth from large copies, toll (fixed cost) from small ones, each a median (robust to outliers).
CREATE OR REPLACE TEMP TABLE cost_model AS
WITH p AS (
    SELECT coalesce(getvariable('small_fit_bytes'), 65536) AS small_fit,
           coalesce(getvariable('large_fit_bytes'), 1048576) AS large_fit,
           coalesce(getvariable('default_gbps'), 25.0) AS default_gbps
), bw0 AS (
    SELECT copy_kind, host_kind, median(bytes / greatest(dur_ns, 1)) FILTER (WHERE bytes >= p.large_fit) AS bpn0
    FROM xfer_dir, p GROUP BY ALL
), toll AS (
    SELECT x.copy_kind, x.host_kind, count(*) AS copies,
           median(x.dur_ns - x.bytes / coalesce(b.bpn0, p.default_gbps)) FILTER (WHERE x.bytes <= p.small_fit) AS toll_ns
    FROM xfer_dir x JOIN bw0 b USING (copy_kind, host_kind), p GROUP BY ALL
), bw AS (
    SELECT x.copy_kind, x.host_kind,
           median(x.bytes / greatest(x.dur_ns - coalesce(t.toll_ns, 0), 1)) FILTER (WHERE x.bytes >= p.large_fit) AS bpn
    FROM xfer_dir x JOIN toll t USING (copy_kind, host_kind), p GROUP BY ALL
)
SELECT t.copy_kind, t.host_kind, t.copies, greatest(coalesce(t.toll_ns, 0), 0) AS toll_ns,
       coalesce(bw.bpn, p.default_gbps) AS bytes_per_ns, bw.bpn IS NULL AS bandwidth_assumed
FROM toll t JOIN bw USING (copy_kind, host_kind), p;

-- Each transfer priced by the model: what its bytes need, and what it cost beyond that.
CREATE OR REPLACE TEMP VIEW xfer_costs AS
SELECT x.*, m.toll_ns, m.bytes_per_ns, x.bytes / m.bytes_per_ns AS byte_ns,
       greatest(x.dur_ns - x.bytes / m.bytes_per_ns, 0) AS excess_ns,
       x.bytes < coalesce(getvariable('small_bytes'), m.toll_ns * m.bytes_per_ns) AS small
FROM xfer_dir x JOIN cost_model m USING (copy_kind, host_kind);

-- Calls that are meant to return at once; time beyond normal_call_us is an async stall.
CREATE OR REPLACE TEMP TABLE async_calls AS
WITH names AS (  -- match call names once, not once per call
    SELECT name FROM (SELECT DISTINCT name FROM api_calls)
    WHERE regexp_matches(name, '^cu(da)?(Memset(D8|D16|D32|2D)?.*Async|LaunchKernel|LaunchCooperativeKernel|GraphLaunch|MallocAsync|FreeAsync|MemAllocAsync|MemFreeAsync)')
       OR regexp_matches(name, '^cu(da)?Memcpy.*Async')
), pinned_copies AS (
    SELECT pid, correlation_id FROM copies
    WHERE src_kind IN ('pinned', 'device') AND dst_kind IN ('pinned', 'device')
)
SELECT a.pid, a.tid, a.name, a.start_ns, a.end_ns, a.correlation_id, a.on_cpu_ns, a.off_cpu_ns, a.ioctl_ns,
       a.source, a.end_ns - a.start_ns AS dur_ns,
       greatest(a.end_ns - a.start_ns - coalesce(getvariable('normal_call_us'), 20) * 1000, 0) AS stall_ns
FROM api_calls a SEMI JOIN names USING (name), win
WHERE a.start_ns >= win.start_ns AND a.start_ns <= win.end_ns
  AND (NOT regexp_matches(a.name, '^cu(da)?Memcpy') OR a.source = 'ebpf'
       OR (a.pid, a.correlation_id) IN (SELECT (pid, correlation_id) FROM pinned_copies));

-- Sync waits: stream/event/context synchronize calls, and blocking readbacks (D2H into pageable).
CREATE OR REPLACE TEMP TABLE sync_calls AS
WITH names AS (
    SELECT name FROM (SELECT DISTINCT name FROM api_calls)
    WHERE regexp_matches(name, '^cu(da)?((Stream|Event|Device|Ctx)Synchronize|Memcpy)')
), rb AS (SELECT pid, correlation_id FROM readbacks)
SELECT a.pid, a.tid, a.name, a.start_ns, a.end_ns, a.correlation_id, a.source, a.end_ns - a.start_ns AS dur_ns,
       CASE WHEN contains(a.name, 'Synchronize') THEN 'sync' ELSE 'readback' END AS wait_kind
FROM api_calls a SEMI JOIN names USING (name), win
WHERE a.start_ns >= win.start_ns AND a.start_ns <= win.end_ns
  AND (contains(a.name, 'Synchronize')
       OR (a.source = 'ebpf' AND regexp_matches(a.name, '^cuMemcpyDtoH(_v2)?(_ptds)?$'))
       OR (a.pid, a.correlation_id) IN (SELECT (pid, correlation_id) FROM rb));

-- GPU idle gaps in the window: where a copy or kernel starts after everything before it ended
-- (one window pass over GPU work sorted by start; the running max of end times is the busy edge).
CREATE OR REPLACE TEMP TABLE gpu_idle AS
WITH ev AS (
    SELECT start_ns, end_ns FROM copies UNION ALL SELECT start_ns, end_ns FROM kernels
), o AS (
    SELECT start_ns, max(end_ns) OVER (ORDER BY start_ns, end_ns ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS busy_until
    FROM ev
)
SELECT greatest(o.busy_until, win.start_ns) AS start_ns, least(o.start_ns, win.end_ns) AS end_ns
FROM o, win
WHERE o.start_ns > o.busy_until AND least(o.start_ns, win.end_ns) > greatest(o.busy_until, win.start_ns);

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

-- Host time stuck at the boundary, one category per call (first match wins: async stall,
-- alloc-and-copy, small crossing, sync wait), as intervals for the GPU-idle overlap.
CREATE OR REPLACE TEMP TABLE stuck AS
WITH s AS (
    SELECT pid, correlation_id, 'async_stalls' AS category, start_ns + (dur_ns - stall_ns) AS start_ns, end_ns, 1 AS prio
    FROM async_calls WHERE stall_ns > 0
    UNION ALL
    SELECT pid, NULL, 'alloc_and_copy', copy_call_start_ns - alloc_call_ns, copy_call_start_ns + copy_call_ns, 2
    FROM alloc_copy_pairs
    UNION ALL
    SELECT pid, correlation_id, 'small_crossings', api_start_ns, api_end_ns, 3
    FROM xfer_costs WHERE small AND api_start_ns IS NOT NULL
    UNION ALL
    SELECT pid, correlation_id, 'sync_waits', start_ns, end_ns, 4 FROM sync_calls
)
SELECT * FROM s
QUALIFY correlation_id IS NULL OR row_number() OVER (PARTITION BY pid, correlation_id ORDER BY prio) = 1;

-- Lost stream concurrency, per (delayed copy, copy of another stream that held the bridge): the
-- part of the delayed copy's ready-to-start wait that the other copy covered.
CREATE OR REPLACE TEMP TABLE copy_streams AS
SELECT count(DISTINCT stream_id) AS n FROM xfer_dir WHERE copy_kind IN ('HtoD', 'DtoH');

CREATE OR REPLACE TEMP TABLE bridge_waits AS
WITH ops AS (
    SELECT pid, stream_id, start_ns, end_ns, correlation_id, 1 AS is_copy FROM copies
    WHERE op IN ('memcpy', 'p2p') AND (SELECT n FROM copy_streams) > 1
    UNION ALL
    SELECT pid, stream_id, start_ns, end_ns, correlation_id, 0 FROM kernels
    -- with copies on one stream only no copy can wait for another stream's: skip all of this
    WHERE (SELECT n FROM copy_streams) > 1
), free AS (
    SELECT *, max(end_ns) OVER (PARTITION BY pid, stream_id ORDER BY start_ns, end_ns
                                ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS stream_free_ns
    FROM ops
), c AS MATERIALIZED (
    SELECT x.pid, x.stream_id, x.start_ns, greatest(x.api_start_ns, coalesce(f.stream_free_ns, 0)) AS ready_ns
    FROM xfer_dir x JOIN free f ON f.is_copy = 1 AND f.pid = x.pid AND f.correlation_id = x.correlation_id
         AND f.start_ns = x.start_ns
    WHERE x.timing = 'gpu' AND x.copy_kind IN ('HtoD', 'DtoH') AND x.api_start_ns IS NOT NULL
), o AS MATERIALIZED (
    SELECT pid, stream_id, start_ns, end_ns FROM xfer_dir WHERE copy_kind IN ('HtoD', 'DtoH')
)
SELECT c.pid, c.stream_id, o.stream_id AS blocked_by_stream, c.start_ns AS copy_start_ns,
       least(o.end_ns, c.start_ns) - greatest(o.start_ns, c.ready_ns) AS wait_ns
FROM (SELECT * FROM c WHERE c.start_ns > c.ready_ns) c
-- only the two range conditions in the join, so DuckDB uses its inequality join (IEJoin)
JOIN o ON o.start_ns < c.start_ns AND o.end_ns > c.ready_ns
WHERE o.pid = c.pid AND o.stream_id <> c.stream_id;

-- GPU idle time overlapping each category's stuck host time.
CREATE OR REPLACE TEMP TABLE idle_by_category AS
SELECT s.category, sum(greatest(least(s.end_ns, i.end_ns) - greatest(s.start_ns, i.start_ns), 0)) AS idle_ns
FROM stuck s JOIN gpu_idle i ON s.start_ns < i.end_ns AND s.end_ns > i.start_ns
GROUP BY ALL;
