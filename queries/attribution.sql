-- name: attribution
-- answers: Where did the serving time go? Lost time per boundary effect, in total, per step and as a share of the window.
-- params: every parameter of the category queries (small_bytes, normal_call_us, alloc_window_us, ...)
-- columns: category, events, lost_ms, per_step_us, pct_of_window, gpu_idle_overlap_ms
WITH cat AS (
    SELECT 'small_crossings' AS category, count(*) AS events, sum(excess_ns) AS lost_ns FROM xfer_costs WHERE small
    UNION ALL
    SELECT 'stream_concurrency', count(DISTINCT (pid, copy_start_ns)), sum(wait_ns) FROM bridge_waits
    UNION ALL
    SELECT 'async_stalls', count(*) FILTER (WHERE stall_ns > 0), sum(stall_ns) FROM async_calls
    UNION ALL
    SELECT 'alloc_and_copy', count(*), sum(alloc_call_ns + copy_call_ns) FROM alloc_copy_pairs
    UNION ALL
    SELECT 'sync_waits', count(*), sum(wait_ns) FROM sync_calls
)
SELECT cat.category, cat.events, round(coalesce(cat.lost_ns, 0) / 1e6, 3) AS lost_ms,
       round(coalesce(cat.lost_ns, 0) / 1e3 / greatest(win.steps, 1), 3) AS per_step_us,
       round(100 * coalesce(cat.lost_ns, 0) / greatest(win.end_ns - win.start_ns, 1), 2) AS pct_of_window,
       round(coalesce(idle.idle_ns, 0) / 1e6, 3) AS gpu_idle_overlap_ms
FROM cat CROSS JOIN win LEFT JOIN idle_by_category idle USING (category)
ORDER BY lost_ms DESC;
