-- name: cost_model
-- answers: What does one crossing cost here? Fitted fixed toll (us) and bandwidth (GB/s) per direction and host memory kind.
-- params: small_fit_bytes (copies at most this big fit the toll, default 65536), large_fit_bytes (copies at least this big fit the bandwidth, default 1048576), default_gbps (bandwidth assumed when no large copies, default 25)
-- columns: copy_kind, host_kind, copies, toll_us, gbps, bandwidth_assumed, small_below_bytes
SELECT copy_kind, host_kind, copies, round(toll_ns / 1e3, 3) AS toll_us, round(bytes_per_ns, 3) AS gbps,
       bandwidth_assumed, round(coalesce(getvariable('small_bytes'), toll_ns * bytes_per_ns))::BIGINT AS small_below_bytes
FROM cost_model ORDER BY copy_kind, host_kind;
