-- name: slow_steps
-- answers: Which steps took far longer than the median step outside any recorded CUDA call (the host, another tenant, a GC pause, other work)?
-- needs: steps
-- columns: step, name, step_us, in_calls_us, excess_us
-- A step is slow when it lasts at least slow_step_factor times the median step and the time its thread
-- spent in recorded CUDA calls during it (copies, syncs, allocations, launches: every crossing's host time),
-- beyond the median step's, accounts for less than half of its excess over the median step.
-- excess_us is that excess less the calls' share: the time the step lost to something else. Time inside a
-- call is never counted as something else, so a stall the host caused inside a call is not found.
-- (A step's call time is the difference of its thread's running total of call time at the step's two ends,
-- two ASOF lookups: right for nested or overlapping steps too. A call that starts in the step counts whole.)
WITH c AS (
    SELECT pid, tid, start_ns,
           sum(greatest(end_ns - start_ns, 0)) OVER (PARTITION BY pid, tid ORDER BY start_ns RANGE UNBOUNDED PRECEDING) AS cum
    FROM calls WHERE end_ns IS NOT NULL
), lo AS (
    SELECT s.step, coalesce(c.cum, 0) AS cum FROM steps s ASOF LEFT JOIN c
        ON c.pid = s.pid AND c.tid = s.tid AND c.start_ns < s.start_ns
), hi AS (
    SELECT s.step, coalesce(c.cum, 0) AS cum FROM steps s ASOF LEFT JOIN c
        ON c.pid = s.pid AND c.tid = s.tid AND c.start_ns < s.end_ns
), per AS (
    SELECT s.step, s.name, s.end_ns - s.start_ns AS ns, hi.cum - lo.cum AS in_calls
    FROM steps s JOIN lo USING (step) JOIN hi USING (step)
), judged AS (
    SELECT *, ns - median(ns) OVER () AS over,
           ns - median(ns) OVER () - greatest(in_calls - median(in_calls) OVER (), 0) AS other,
           ns >= getvariable('slow_step_factor') * median(ns) OVER () AS long
    FROM per
)
SELECT step, name, round(ns / 1e3, 3) AS step_us, round(in_calls / 1e3, 3) AS in_calls_us, round(other / 1e3, 3) AS excess_us
FROM judged WHERE long AND over > 0 AND other >= 0.5 * over ORDER BY step;
