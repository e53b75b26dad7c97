-- name: step_timeline
-- answers: Per step (NVTX range, step function call or detected iteration), how long it took and the time in each category.
-- needs: categories
-- columns: step, name, step_us, <category>_us
-- (one <category>_us column per category, in the order of cctrace/analyze/categories.py)
WITH ev AS (
    SELECT s.step, e.c, e.ns FROM steps s JOIN category_events e ON e.t >= s.start_ns AND e.t < s.end_ns
), per AS (
    SELECT s.step, k.category, coalesce(sum(ev.ns), 0) / 1e3 AS us
    FROM steps s CROSS JOIN categories k LEFT JOIN ev ON ev.step = s.step AND ev.c = k.c
    GROUP BY ALL
), wide AS (
    PIVOT per ON category IN (SELECT category FROM categories ORDER BY c) USING round(sum(us), 3) AS us GROUP BY step
)
SELECT s.step, s.name, round((s.end_ns - s.start_ns) / 1e3, 3) AS step_us, wide.* EXCLUDE (step)
FROM steps s JOIN wide USING (step) ORDER BY s.step;
