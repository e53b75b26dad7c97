-- name: latency_by_size
-- answers: The latency-vs-size table behind the cost model (median and p90 per power-of-two size, and the model's value).
-- needs: cost_model
-- columns: copy_kind, host_kind, size_bytes, copies, median_us, p90_us, model_us
WITH b AS (
    SELECT copy_kind, host_kind, cross_ns AS dur_ns, (2 ^ floor(log2(greatest(bytes, 1))))::BIGINT AS size_bytes FROM xfer_dir
)
SELECT b.copy_kind, b.host_kind, b.size_bytes, count(*) AS copies,
       round(median(b.dur_ns) / 1e3, 3) AS median_us, round(quantile_cont(b.dur_ns, 0.9) / 1e3, 3) AS p90_us,
       round((any_value(m.toll_ns) + b.size_bytes / any_value(m.bytes_per_ns)) / 1e3, 3) AS model_us
FROM b JOIN cost_model m USING (copy_kind, host_kind)
GROUP BY b.copy_kind, b.host_kind, b.size_bytes ORDER BY 1, 2, 3;
