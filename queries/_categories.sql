-- module: categories
-- needs: calls, concurrency, gpu_idle
-- answers: The time lost per category, event by event, and the GPU idle time it overlapped.
-- Categories are the table in cctrace/analyze/categories.py, bound as the temp table `categories`
-- (c, category, label, query, injected_kinds) and one code variable per category (c_<name>): rows
-- travel as small codes, not strings, for there are millions of them.

-- Each event of each category: one row per lost stretch of time, tied to the call that lost it.
--   c: the category's code; pid; t: when it began; ns: the time it lost
--   correlation_id: its call (an alloc-and-copy pair: its copy's; a delayed copy: its own)
--   bytes: the bytes it moved (transfers), else NULL
--   source: who recorded that call (CUPTI and the interposer number their calls independently)
CREATE OR REPLACE TEMP VIEW category_events AS
SELECT getvariable('c_small_crossings')::UTINYINT AS c, pid, start_ns AS t, excess_ns AS ns, correlation_id, bytes,
       api_source AS source
FROM xfer_costs WHERE small
UNION ALL
-- a copy delayed by several other streams' copies is one event
SELECT getvariable('c_stream_concurrency'), pid, copy_start_ns, sum(wait_ns), any_value(correlation_id), any_value(bytes),
       any_value(source)
FROM bridge_waits GROUP BY pid, copy_start_ns
UNION ALL
SELECT getvariable('c_async_stalls'), pid, start_ns, stall_ns, correlation_id, NULL, source FROM async_calls WHERE stall_ns > 0
UNION ALL
SELECT getvariable('c_alloc_and_copy'), pid, alloc_ns, alloc_call_ns + copy_call_ns, copy_correlation_id, copy_bytes,
       copy_source
FROM alloc_copy_pairs
UNION ALL
SELECT getvariable('c_sync_waits'), pid, start_ns, wait_ns, correlation_id, NULL, source FROM sync_calls;

-- Host time stuck at the boundary, as intervals for the GPU-idle overlap. Intervals of one call
-- overlap only where its copy or the work it waits for keeps the GPU busy: no idle time twice.
--   pid; c: the category's code; start_ns, end_ns: the interval
CREATE OR REPLACE TEMP TABLE stuck AS
SELECT pid, c::UTINYINT AS c, start_ns::BIGINT AS start_ns, end_ns::BIGINT AS end_ns FROM (
SELECT pid, getvariable('c_async_stalls') AS c, end_ns - post_ns - stall_ns AS start_ns, end_ns - post_ns AS end_ns
FROM async_calls WHERE stall_ns > 0
UNION ALL
SELECT pid, getvariable('c_alloc_and_copy'), copy_call_start_ns - alloc_call_ns, copy_call_start_ns FROM alloc_copy_pairs
UNION ALL
-- one interval from the crossing's host work before the copy to the end of its call: the copy itself
-- in between keeps the GPU busy, so it adds no idle overlap, and one row per copy is half the join
SELECT pid, getvariable('c_small_crossings'), least(start_ns, api_end_ns) - pre_ns, greatest(api_end_ns, least(start_ns, api_end_ns))
FROM xfer_costs
WHERE small AND timing = 'gpu' AND pre_ns + post_ns > 0
UNION ALL
SELECT pid, getvariable('c_small_crossings'), api_start_ns, api_start_ns + host_ns FROM xfer_costs WHERE small AND timing = 'host'
UNION ALL
SELECT pid, getvariable('c_sync_waits'), end_ns - wait_ns, end_ns FROM sync_calls WHERE wait_kind = 'sync'
UNION ALL
SELECT pid, getvariable('c_sync_waits'), start_ns, start_ns + wait_ns FROM sync_calls WHERE wait_kind = 'readback'
)
WHERE end_ns > start_ns;

-- GPU idle time overlapping each category's stuck host time. The idle gaps are disjoint, so with
-- F(t) = idle time before t, an interval [s, e] overlaps F(e) - F(s) of it: one ASOF join (a sorted
-- merge) per interval end instead of a range join of every stuck interval with every gap. An end
-- before the first gap has F = 0 and no match.
--   c: the category's code; idle_ns: GPU idle time its stuck intervals overlap
CREATE OR REPLACE TEMP TABLE idle_by_category AS
WITH ends AS (
    SELECT c, unnest([start_ns, end_ns]) AS t, unnest([-1, 1]) AS sign FROM stuck
)
SELECT e.c, sum(e.sign * (i.before_ns + least(e.t, i.end_ns) - i.start_ns))::BIGINT AS idle_ns
FROM ends e ASOF JOIN gpu_idle i ON e.t >= i.start_ns
GROUP BY ALL;

-- Per category (every one, in the table's order): its events and lost time in the window.
--   c, category, label; events: how many; lost_ns: time lost; idle_ns: GPU idle time it overlapped
CREATE OR REPLACE TEMP TABLE category_totals AS
SELECT k.c, k.category, k.label, coalesce(t.events, 0) AS events, coalesce(t.lost_ns, 0)::BIGINT AS lost_ns,
       coalesce(i.idle_ns, 0) AS idle_ns
FROM categories k
LEFT JOIN (SELECT c, count(*) AS events, sum(ns) AS lost_ns FROM category_events GROUP BY c) t USING (c)
LEFT JOIN idle_by_category i USING (c);
