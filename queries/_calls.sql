-- module: calls
-- needs: cost_model
-- answers: Which calls held the host: async calls that stalled, syncs and readbacks that waited,
-- allocations followed by a copy into them. Parameters: normal_call_us, alloc_window_us.

-- Calls that are meant to return at once; time beyond normal_call_us is an async stall. For async
-- copies (pinned or device memory) the crossing's own host work is not a stall: only the rest is.
--   pid, tid, name, start_ns, end_ns, correlation_id, on_cpu_ns, off_cpu_ns, ioctl_ns, source: the call
--   dur_ns: its time; pre_ns, post_ns: its copy's host work (async copies); stall_ns: the stall
CREATE OR REPLACE TEMP TABLE async_calls AS
WITH names AS (SELECT name FROM call_names WHERE returns_at_once), normal AS (SELECT getvariable('normal_call_us') * 1000 AS ns)
SELECT a.pid, a.tid, a.name, a.start_ns, a.end_ns, a.correlation_id, a.on_cpu_ns, a.off_cpu_ns, a.ioctl_ns,
       a.source, a.end_ns - a.start_ns AS dur_ns, 0::BIGINT AS pre_ns, 0::BIGINT AS post_ns,
       greatest(a.end_ns - a.start_ns - normal.ns, 0) AS stall_ns
FROM calls a SEMI JOIN names USING (name), win, normal
WHERE a.start_ns >= win.start_ns AND a.start_ns <= win.end_ns
  -- a graph replay's time beyond a normal call is its memcpy nodes' crossings (graph_copies)
  AND (a.pid, a.correlation_id, a.source) NOT IN (SELECT (pid, correlation_id, source) FROM graph_copies)
UNION ALL
-- (each transfer carries its call's columns: no join back to api_calls)
SELECT x.pid, x.api_tid, x.api_name, x.api_start_ns, x.api_end_ns, x.correlation_id, x.on_cpu_ns, x.off_cpu_ns,
       x.ioctl_ns, x.api_source, x.api_end_ns - x.api_start_ns, x.pre_ns, x.post_ns,
       greatest(x.api_end_ns - x.api_start_ns - x.host_ns - normal.ns, 0)
FROM xfer_costs x, normal
WHERE x.api_start_ns IS NOT NULL AND x.api_name IN (SELECT name FROM call_names WHERE async_copy)
  AND (x.timing = 'host' OR x.host_kind IN ('pinned', 'device'));

-- Sync waits: stream/event/context synchronize calls (runtime and driver), and blocking readbacks
-- (D2H into pageable): wait_ns is the call's time less the readback's own crossing work.
--   pid, tid, name, start_ns, end_ns, correlation_id, source: the call; dur_ns: its time
--   wait_ns: the time it waited; wait_kind: sync | readback
CREATE OR REPLACE TEMP TABLE sync_calls AS
WITH names AS (SELECT name FROM call_names WHERE sync)
SELECT a.pid, a.tid, a.name, a.start_ns, a.end_ns, a.correlation_id, a.source, a.end_ns - a.start_ns AS dur_ns,
       a.end_ns - a.start_ns AS wait_ns, 'sync' AS wait_kind
FROM calls a SEMI JOIN names USING (name), win
WHERE a.start_ns >= win.start_ns AND a.start_ns <= win.end_ns
UNION ALL
SELECT pid, api_tid, api_name, api_start_ns, api_end_ns, correlation_id, api_source, api_end_ns - api_start_ns,
       greatest(api_end_ns - api_start_ns - host_ns, 0), 'readback'
FROM xfer_costs
WHERE api_start_ns IS NOT NULL AND copy_kind = 'DtoH'
  AND (host_kind = 'pageable'
       OR (timing = 'host' AND api_name IN (SELECT name FROM call_names WHERE blocking_readback_probe)));

-- Allocation followed, within alloc_window_us on the same thread, by an H2D copy that fits in it.
--   pid, tid; alloc_ns, alloc_bytes, alloc_call, alloc_call_ns: the allocation and its call
--   copy_bytes, copy_call, copy_call_ns, copy_ns, copy_call_start_ns, copy_correlation_id: the copy
--   into it and its call; copy_source: who recorded the copy's call
-- (copies are looked up in buckets one window wide, the allocation's own and the next: an equality join on
-- pid and bucket, then the exact test; a range join of every allocation against every copy took seconds)
CREATE OR REPLACE TEMP TABLE alloc_copy_pairs AS
WITH w AS (
    SELECT greatest(1, least(getvariable('alloc_window_us') * 1000, 1e15)::BIGINT) AS ns  -- at most ~12 days
), a AS (
    SELECT a.pid, a.ts_ns, a.address, a.bytes, ac.tid, ac.name, ac.start_ns AS call_start_ns, ac.end_ns AS call_end_ns,
           coalesce(ac.end_ns, a.ts_ns) AS from_ns
    FROM allocs a
    LEFT JOIN api_calls ac
           ON ac.pid = a.pid AND ac.correlation_id = a.correlation_id AND ac.source = a.source AND a.correlation_id > 0
    WHERE a.op = 'alloc' AND a.memory_kind = 'device'
      AND (a.source <> 'interposer' OR NOT (SELECT copies FROM cupti_present))
), x AS (
    SELECT x.*, x.api_start_ns // (SELECT ns FROM w) AS bucket FROM xfer_dir x WHERE x.copy_kind = 'HtoD'
)
SELECT a.pid, a.tid, a.ts_ns AS alloc_ns, a.bytes AS alloc_bytes, coalesce(a.name, 'alloc') AS alloc_call,
       coalesce(a.call_end_ns - a.call_start_ns, 0) AS alloc_call_ns, x.bytes AS copy_bytes, x.api_name AS copy_call,
       x.api_end_ns - x.api_start_ns AS copy_call_ns, x.dur_ns AS copy_ns, x.api_start_ns AS copy_call_start_ns,
       x.correlation_id AS copy_correlation_id, x.api_source AS copy_source
FROM a, unnest([a.from_ns // (SELECT ns FROM w), a.from_ns // (SELECT ns FROM w) + 1]) AS b(bucket)
JOIN x ON x.pid = a.pid AND x.bucket = b.bucket
WHERE x.bytes <= a.bytes
  AND x.api_start_ns >= a.from_ns
  AND x.api_start_ns <= a.from_ns + getvariable('alloc_window_us') * 1000
  AND (a.tid IS NULL OR x.api_tid = a.tid)
QUALIFY row_number() OVER (PARTITION BY a.pid, a.ts_ns, a.address ORDER BY x.api_start_ns, x.correlation_id, x.start_ns) = 1;
