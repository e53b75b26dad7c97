-- name: stream_concurrency
-- answers: How long did copies wait for the bridge while a copy of another stream held it? (lost stream concurrency)
-- needs: concurrency
-- columns: stream_id, blocked_by_stream, copies_delayed, wait_ms, wait_per_step_us
SELECT stream_id, blocked_by_stream, count(DISTINCT (pid, copy_start_ns)) AS copies_delayed,
       round(sum(wait_ns) / 1e6, 3) AS wait_ms,
       round(sum(wait_ns) / 1e3 / greatest((SELECT steps FROM win), 1), 3) AS wait_per_step_us
FROM bridge_waits GROUP BY ALL ORDER BY wait_ms DESC;
