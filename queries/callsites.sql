-- name: callsites
-- answers: Which lines of Python cause the lost time? Per call site (the innermost frame outside the frameworks, `record --callsite-skip/--callsite-keep`) and category: calls, bytes, lost time, per step.
-- needs: calls, concurrency
-- params: every parameter of the category queries (small_bytes, normal_call_us, alloc_window_us, ...)
-- columns: callsite, function, category, calls, bytes, lost_ms, per_step, lost_per_step_us
-- Each lost stretch of time is tied to the runtime call that lost it (its correlation id; an
-- alloc-and-copy pair to its copy call, a copy delayed by other streams to its own call), and the
-- call to its Python stack's call site. Calls recorded without a stack (--no-stacks, host probes,
-- threads with no Python) count under a null callsite and function.
WITH ev AS (
    SELECT 'small_crossings' AS category, pid, correlation_id, bytes, excess_ns AS ns FROM xfer_costs WHERE small
    UNION ALL
    SELECT 'stream_concurrency', x.pid, x.correlation_id, x.bytes, w.ns
    FROM (SELECT pid, stream_id, copy_start_ns, sum(wait_ns) AS ns FROM bridge_waits GROUP BY ALL) w
    JOIN xfer_dir x ON x.pid = w.pid AND x.stream_id = w.stream_id AND x.start_ns = w.copy_start_ns
    UNION ALL
    SELECT 'async_stalls', pid, correlation_id, NULL, stall_ns FROM async_calls WHERE stall_ns > 0
    UNION ALL
    SELECT 'alloc_and_copy', p.pid, c.correlation_id, p.copy_bytes, p.alloc_call_ns + p.copy_call_ns
    FROM alloc_copy_pairs p
    LEFT JOIN (SELECT pid, start_ns, min(correlation_id) AS correlation_id FROM api_calls
               WHERE stack_id IS NOT NULL GROUP BY ALL) c ON c.pid = p.pid AND c.start_ns = p.copy_call_start_ns
    UNION ALL
    SELECT 'sync_waits', pid, correlation_id, NULL, wait_ns FROM sync_calls
), called AS (  -- the one call (with a stack) behind each event
    SELECT ev.*, a.stack_id
    FROM ev LEFT JOIN (SELECT pid, correlation_id, min(stack_id) AS stack_id FROM api_calls
                       WHERE stack_id IS NOT NULL GROUP BY ALL) a USING (pid, correlation_id)
)
SELECT s.file || ':' || s.line AS callsite, s.function,
       c.category, count(*) AS calls, sum(c.bytes)::BIGINT AS bytes, round(sum(c.ns) / 1e6, 3) AS lost_ms,
       round(count(*) / greatest((SELECT steps FROM win), 1), 2) AS per_step,
       round(sum(c.ns) / 1e3 / greatest((SELECT steps FROM win), 1), 3) AS lost_per_step_us
FROM called c LEFT JOIN stacks s ON s.pid = c.pid AND s.stack_id = c.stack_id AND s.is_callsite
GROUP BY ALL ORDER BY lost_ms DESC, callsite NULLS LAST, category;
