-- name: small_crossings
-- answers: Which copies are dominated by their fixed cost, and what do they cost beyond what their bytes need?
-- needs: cost_model
-- columns: copy_kind, host_kind, stream_id, api_name, copies, bytes, time_ms, excess_ms, per_step, excess_per_step_us
SELECT copy_kind, host_kind, stream_id, api_name, count(*) AS copies, sum(bytes)::BIGINT AS bytes,
       round(sum(dur_ns) / 1e6, 3) AS time_ms, round(sum(excess_ns) / 1e6, 3) AS excess_ms,
       round(count(*) / greatest((SELECT steps FROM win), 1), 2) AS per_step,
       round(sum(excess_ns) / 1e3 / greatest((SELECT steps FROM win), 1), 3) AS excess_per_step_us
FROM xfer_costs WHERE small
GROUP BY ALL ORDER BY sum(excess_ns) DESC;
