-- module: cost_model
-- needs: transfers
-- answers: What does one crossing cost here, and what did each transfer cost beyond its bytes?
-- Parameters: small_fit_bytes, large_fit_bytes, default_gbps, small_bytes.

-- Crossing cost model per direction and host memory kind, fitted on the trace's own crossing times:
-- bandwidth from large copies, toll (fixed cost) from small ones, each a median (robust to outliers).
--   copy_kind, host_kind: the group; copies: transfers in it; toll_ns: fixed cost per crossing
--   bytes_per_ns: bandwidth (= GB/s); bandwidth_assumed: no large copies, default_gbps used
--   small_below_bytes: transfers below this many bytes are small (small_bytes, else toll x bandwidth)
CREATE OR REPLACE TEMP TABLE cost_model AS
WITH bw0 AS (  -- every group once (with its count); the medians below each scan only the copies they fit
    SELECT copy_kind, host_kind, count(*) AS copies,
           median(bytes / greatest(cross_ns, 1)) FILTER (WHERE bytes >= getvariable('large_fit_bytes')) AS bpn0
    FROM xfer_dir GROUP BY ALL
), toll AS (
    SELECT b.copy_kind, b.host_kind, b.copies, s.toll_ns
    FROM bw0 b LEFT JOIN (
        SELECT x.copy_kind, x.host_kind,
               median(x.cross_ns - x.bytes / coalesce(b.bpn0, getvariable('default_gbps'))) AS toll_ns
        FROM xfer_dir x JOIN bw0 b USING (copy_kind, host_kind)
        WHERE x.bytes <= getvariable('small_fit_bytes') GROUP BY ALL
    ) s USING (copy_kind, host_kind)
), bw AS (
    SELECT t.copy_kind, t.host_kind, l.bpn
    FROM toll t LEFT JOIN (
        SELECT x.copy_kind, x.host_kind, median(x.bytes / greatest(x.cross_ns - coalesce(t.toll_ns, 0), 1)) AS bpn
        FROM xfer_dir x JOIN toll t USING (copy_kind, host_kind)
        WHERE x.bytes >= getvariable('large_fit_bytes') GROUP BY ALL
    ) l USING (copy_kind, host_kind)
), m AS (
    SELECT t.copy_kind, t.host_kind, t.copies, greatest(coalesce(t.toll_ns, 0), 0) AS toll_ns,
           coalesce(bw.bpn, getvariable('default_gbps')) AS bytes_per_ns, bw.bpn IS NULL AS bandwidth_assumed
    FROM toll t JOIN bw USING (copy_kind, host_kind)
)
-- small_bytes NULL (its default) means: derived from the model, not a fixed size
SELECT *, coalesce(getvariable('small_bytes'), toll_ns * bytes_per_ns) AS small_below_bytes FROM m;

-- Each transfer priced by the model: what its bytes need, and what it cost beyond that. A view: the
-- join with the few model rows is cheap, a second copy of every transfer is not.
--   xfer_dir's columns, and the model's toll_ns, bytes_per_ns; byte_ns: what its bytes need
--   excess_ns: its crossing time beyond that; small: a host<->device crossing below the model's small size
--   host_ns: the part of its call that was the crossing's own host work (the rest of the call waited)
CREATE OR REPLACE TEMP VIEW xfer_costs AS
SELECT x.*, m.toll_ns, m.bytes_per_ns, x.bytes / m.bytes_per_ns AS byte_ns,
       greatest(x.cross_ns - x.bytes / m.bytes_per_ns, 0) AS excess_ns,
       x.copy_kind IN ('HtoD', 'DtoH') AND x.bytes < m.small_below_bytes AS small,
       CASE WHEN x.timing = 'gpu' THEN x.pre_ns + x.post_ns
            -- host-probe-only: what the model explains, but never time spent asleep (off-CPU is waiting)
            ELSE least(x.dur_ns - coalesce(x.off_cpu_ns, 0), m.toll_ns + x.bytes / m.bytes_per_ns) END AS host_ns
FROM xfer_dir x JOIN cost_model m USING (copy_kind, host_kind);
