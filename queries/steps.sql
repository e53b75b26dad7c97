-- name: steps
-- answers: How were steps found, and how regular are they? (count, median, p10 and p90 of the step time)
-- needs: steps
-- columns: step_source, steps, window_ms, step_median_us, step_p10_us, step_p90_us, step_mean_us
SELECT step_source, steps, round(traced_ns / 1e6, 3) AS window_ms,
       round(step_median_ns / 1e3, 3) AS step_median_us, round(step_p10_ns / 1e3, 3) AS step_p10_us,
       round(step_p90_ns / 1e3, 3) AS step_p90_us,
       round(traced_ns / 1e3 / greatest(steps, 1), 3) AS step_mean_us
FROM win;
