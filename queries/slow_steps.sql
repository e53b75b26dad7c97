-- name: slow_steps
-- answers: Which steps took far longer than the median step without crossings to show for it (the host, another tenant, a GC pause, other work)?
-- needs: categories
-- columns: step, name, step_us, lost_us, excess_us
-- A step is slow when it lasts at least slow_step_factor times the median step and the crossings' time
-- in it, beyond the median step's, accounts for less than half of its excess over the median step.
-- excess_us is that excess less the crossings' share: the time the step lost to something else.
WITH ev AS (
    SELECT s.step, sum(e.ns) AS lost
    FROM steps s JOIN category_events e ON e.t >= s.start_ns AND e.t < s.end_ns
    GROUP BY s.step
), per AS (
    SELECT s.step, s.name, s.end_ns - s.start_ns AS ns, coalesce(ev.lost, 0) AS lost
    FROM steps s LEFT JOIN ev USING (step)
), typical AS (
    SELECT median(ns) AS ns, median(lost) AS lost FROM per
), judged AS (
    SELECT per.*, per.ns - t.ns AS over, per.ns - t.ns - greatest(per.lost - t.lost, 0) AS other
    FROM per, typical t
    WHERE per.ns >= getvariable('slow_step_factor') * t.ns
)
SELECT step, name, round(ns / 1e3, 3) AS step_us, round(lost / 1e3, 3) AS lost_us, round(other / 1e3, 3) AS excess_us
FROM judged WHERE other >= 0.5 * over ORDER BY step;
