-- name: overview
-- answers: What does the trace hold? Window, steps, and copies by direction x host memory kind x size bucket.
-- needs: transfers
-- columns: copy_kind, host_kind, size_bucket, copies, bytes, time_ms, gbps, per_step
SELECT copy_kind, host_kind,
       CASE WHEN bytes < 4096 THEN '<4K' WHEN bytes < 65536 THEN '4K-64K' WHEN bytes < 1048576 THEN '64K-1M'
            WHEN bytes < 16777216 THEN '1M-16M' ELSE '>=16M' END AS size_bucket,
       count(*) AS copies, sum(bytes)::BIGINT AS bytes, round(sum(dur_ns) / 1e6, 3) AS time_ms,
       round(sum(bytes) / greatest(sum(dur_ns), 1), 3) AS gbps,
       round(count(*) / greatest((SELECT steps FROM win), 1), 2) AS per_step
FROM xfer_dir
GROUP BY ALL
ORDER BY copy_kind, host_kind, min(bytes);
