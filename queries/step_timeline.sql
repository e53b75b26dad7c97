-- name: step_timeline
-- answers: Per step (NVTX range or detected iteration), how long it took and the time in each category.
-- params: step_pattern (default 'step%')
-- columns: step, name, step_us, small_crossings_us, stream_concurrency_us, async_stalls_us, alloc_and_copy_us, sync_waits_us
WITH ev AS (
    SELECT start_ns AS t, excess_ns AS ns, 'small_crossings' AS category FROM xfer_costs WHERE small
    UNION ALL SELECT copy_start_ns, wait_ns, 'stream_concurrency' FROM bridge_waits
    UNION ALL SELECT start_ns, stall_ns, 'async_stalls' FROM async_calls WHERE stall_ns > 0
    UNION ALL SELECT alloc_ns, alloc_call_ns + copy_call_ns, 'alloc_and_copy' FROM alloc_copy_pairs
    UNION ALL SELECT start_ns, wait_ns, 'sync_waits' FROM sync_calls
)
SELECT s.step, s.name, round((s.end_ns - s.start_ns) / 1e3, 3) AS step_us,
       round(coalesce(sum(ns) FILTER (WHERE category = 'small_crossings'), 0) / 1e3, 3) AS small_crossings_us,
       round(coalesce(sum(ns) FILTER (WHERE category = 'stream_concurrency'), 0) / 1e3, 3) AS stream_concurrency_us,
       round(coalesce(sum(ns) FILTER (WHERE category = 'async_stalls'), 0) / 1e3, 3) AS async_stalls_us,
       round(coalesce(sum(ns) FILTER (WHERE category = 'alloc_and_copy'), 0) / 1e3, 3) AS alloc_and_copy_us,
       round(coalesce(sum(ns) FILTER (WHERE category = 'sync_waits'), 0) / 1e3, 3) AS sync_waits_us
FROM steps s LEFT JOIN ev ON ev.t >= s.start_ns AND ev.t < s.end_ns
GROUP BY s.step, s.name, s.start_ns, s.end_ns ORDER BY s.step;
