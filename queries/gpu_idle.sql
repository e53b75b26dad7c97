-- name: gpu_idle
-- answers: Bridge-induced GPU idle: how much GPU idle time overlaps host time stuck at the boundary, by category (the serving time actually lost)? Kernels must be recorded (--kernels) for GPU busy time to be complete.
-- needs: categories
-- columns: category, idle_overlap_ms, per_step_us, gpu_idle_ms
SELECT category, round(idle_ns / 1e6, 3) AS idle_overlap_ms,
       round(idle_ns / 1e3 / greatest((SELECT steps FROM win), 1), 3) AS per_step_us,
       round((SELECT sum(end_ns - start_ns) FROM gpu_idle) / 1e6, 3) AS gpu_idle_ms
FROM category_totals WHERE idle_ns <> 0 ORDER BY idle_overlap_ms DESC, c;
