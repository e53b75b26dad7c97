-- module: gpu_idle
-- needs: steps
-- answers: When was the GPU idle in the window? (kernels must be recorded for busy time to be complete)

-- GPU idle gaps in the window: where a copy or kernel starts after everything before it ended (one
-- window pass over the GPU work in the window sorted by start; the running max of end times is the
-- busy edge, the window's start before the first). The bounds are variables, not a join. Only traced
-- time is idle: a gap is cut by the traced spans (between tracing windows nothing was recorded).
--   start_ns, end_ns: the gap; before_ns: idle time before it (gaps are disjoint and ordered)
SET VARIABLE win_start_ns = (SELECT start_ns FROM win);
SET VARIABLE win_end_ns = (SELECT end_ns FROM win);
CREATE OR REPLACE TEMP TABLE gpu_idle AS
WITH ev AS (  -- GPU work only: the interposer's copies carry host call times
    SELECT start_ns, end_ns FROM copies
    WHERE end_ns > getvariable('win_start_ns') AND start_ns < getvariable('win_end_ns') AND source <> 'interposer'
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
), t AS (
    SELECT greatest(g.start_ns, t.start_ns) AS start_ns, least(g.end_ns, t.end_ns) AS end_ns
    FROM g JOIN traced t ON t.start_ns < g.end_ns AND t.end_ns > g.start_ns
)
SELECT start_ns, end_ns, (sum(end_ns - start_ns) OVER (ORDER BY start_ns ROWS UNBOUNDED PRECEDING) - (end_ns - start_ns))::BIGINT AS before_ns
FROM t WHERE end_ns > start_ns;
