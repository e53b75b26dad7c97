-- name: cost_model
-- answers: What does one crossing cost here? Fitted fixed toll (us) and bandwidth (GB/s) per direction and host memory kind.
-- needs: cost_model
-- columns: copy_kind, host_kind, copies, toll_us, gbps, bandwidth_assumed, small_below_bytes
SELECT copy_kind, host_kind, copies, round(toll_ns / 1e3, 3) AS toll_us, round(bytes_per_ns, 3) AS gbps,
       bandwidth_assumed, round(small_below_bytes)::BIGINT AS small_below_bytes
FROM cost_model ORDER BY copy_kind, host_kind;
