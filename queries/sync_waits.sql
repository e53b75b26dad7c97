-- name: sync_waits
-- answers: How long did the host wait in synchronizations and blocking readbacks (.tolist(), .item(), cudaStreamSynchronize)?
-- needs: calls
-- columns: wait_kind, name, tid, calls, wait_ms, wait_per_step_us, max_us
SELECT wait_kind, name, tid, count(*) AS calls, round(sum(wait_ns) / 1e6, 3) AS wait_ms,
       round(sum(wait_ns) / 1e3 / greatest((SELECT steps FROM win), 1), 3) AS wait_per_step_us,
       round(max(wait_ns) / 1e3, 3) AS max_us
FROM sync_calls GROUP BY ALL ORDER BY wait_ms DESC;
