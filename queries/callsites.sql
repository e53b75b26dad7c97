-- name: callsites
-- answers: Which lines of Python cause the lost time? Per call site (the innermost frame outside the frameworks, `record --callsite-skip/--callsite-keep`) and category: calls, bytes, lost time, per step.
-- needs: categories
-- columns: callsite, function, category, calls, bytes, lost_ms, per_step, lost_per_step_us
-- Each lost stretch of time (category_events) is tied to the call that lost it (its correlation id
-- in its source's numbering; an alloc-and-copy pair to its copy call, a copy delayed by other streams
-- to its own call), and the call to its Python stack's call site. Calls recorded without a stack (--no-stacks, host probes,
-- threads with no Python) count under a null callsite and function.
WITH ev AS (
    SELECT k.category, e.pid, e.correlation_id, e.source, e.bytes, e.ns FROM category_events e JOIN categories k USING (c)
), called AS (  -- the one call (with a stack) behind each event
    SELECT ev.*, a.stack_id
    FROM ev LEFT JOIN (SELECT pid, correlation_id, source, min(stack_id) AS stack_id FROM api_calls
                       WHERE stack_id IS NOT NULL GROUP BY ALL) a USING (pid, correlation_id, source)
)
SELECT s.file || ':' || s.line AS callsite, s.function,
       c.category, count(*) AS calls, sum(c.bytes)::BIGINT AS bytes, round(sum(c.ns) / 1e6, 3) AS lost_ms,
       round(count(*) / greatest((SELECT steps FROM win), 1), 2) AS per_step,
       round(sum(c.ns) / 1e3 / greatest((SELECT steps FROM win), 1), 3) AS lost_per_step_us
FROM called c LEFT JOIN stacks s ON s.pid = c.pid AND s.stack_id = c.stack_id AND s.is_callsite
GROUP BY ALL ORDER BY lost_ms DESC, callsite NULLS LAST, category;
