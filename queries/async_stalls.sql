-- name: async_stalls
-- answers: How long was the host held inside calls meant to return at once (async copies from pinned memory, memsets, launches, async alloc/free)?
-- needs: calls
-- columns: name, tid, calls, stalled_calls, stall_ms, on_cpu_ms, off_cpu_ms, ioctl_ms, stall_per_step_us
SELECT name, tid, count(*) AS calls, count(*) FILTER (WHERE stall_ns > 0) AS stalled_calls,
       round(sum(stall_ns) / 1e6, 3) AS stall_ms,
       round(sum(on_cpu_ns) FILTER (WHERE stall_ns > 0) / 1e6, 3) AS on_cpu_ms,
       round(sum(off_cpu_ns) FILTER (WHERE stall_ns > 0) / 1e6, 3) AS off_cpu_ms,
       round(sum(ioctl_ns) FILTER (WHERE stall_ns > 0) / 1e6, 3) AS ioctl_ms,
       round(sum(stall_ns) / 1e3 / greatest((SELECT steps FROM win), 1), 3) AS stall_per_step_us
FROM async_calls GROUP BY ALL HAVING sum(stall_ns) > 0 ORDER BY stall_ms DESC;
